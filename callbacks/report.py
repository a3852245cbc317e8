"""``report.md``: the robustness table, the curve and the exact settings of a test run.

Written by :class:`callbacks.AdversarialEvaluation` after ``trainer.test`` beside
``robustness.json``; :func:`write_report` also works on any saved record.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from callbacks.record import RobustnessRecord


def package_versions() -> dict[str, str]:
    """Versions that decide the numbers: python, torch, lightning, torchmetrics, medrobust."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "lightning", "torchmetrics", "medrobust"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


def _indices(indices: Any) -> str:
    if not indices:
        return "–"
    shown = ", ".join(str(i) for i in indices[:32])
    return shown + (f", … ({len(indices)} in all, see robustness.json)" if len(indices) > 32 else "")


def _mark(flags: list[str] | None) -> str:
    """A table cell's mark for an unreliable upper bound, naming the flags."""
    return f" ⚠ upper bound ({', '.join(flags)})" if flags else ""


def unreliable_section(record: RobustnessRecord) -> list[str]:
    """``report.md`` lines for the fired sanity flags: what each means and what to run next."""
    if not record.unreliable:
        return []
    lines = ["## ⚠ Unreliable numbers: upper bounds", "",
             "Sanity checks fired. The numbers marked ⚠ above are upper bounds that are likely "
             "loose: the model is probably less robust than they say.", ""]
    for u in record.unreliable:
        lines += [f"- **`{u.get('flag')}`**: {u.get('message', '')}",
                  f"  - affects: {', '.join(u.get('affects') or []) or '–'}",
                  f"  - means: {u.get('meaning', '')}",
                  f"  - run next: {u.get('next', '')}"]
    return [*lines, ""]


def interval_section(record: RobustnessRecord) -> list[str]:
    """What the ``[low, high]`` in the table are (nothing when the record has no intervals)."""
    iv = record.intervals
    if not iv:
        return []
    clean, area = record.interval("clean"), record.interval("robust_area")
    methods = {"agresti_coull": "Agresti–Coull interval of the proportion",
               "bca-expanded": "BCa bootstrap over samples at Hesterberg's expanded level"}
    how = methods.get(clean.method, clean.method) if clean is not None else "–"
    lines = [f"Brackets: {iv['level']:.0%} confidence intervals of the mean per-sample `{iv['metric']}` "
             f"over n = {clean.n if clean else '–'} samples ({how}; seeded, from `robustness_samples.csv`)."]
    if area is not None:
        lines.append(f"Robust area as a mean of per-sample areas: {area} (BCa bootstrap).")
    dataset = iv.get("dataset_metrics") or {}
    if dataset:
        first = next((record.interval("clean", metric=m) for m in dataset), None)
        lines.append(f"Dataset-level metrics ({', '.join(f'`{m}`' for m in dataset)}): BCa bootstrap "
                     f"over {first.n if first else '–'} images, the metric recomputed on each resample "
                     "(seeded, from `robustness_evidence.json`).")
        for m in dataset:
            a = record.interval("robust_area", metric=m)
            if a is not None and record.robust_area is not None and record.robust_area.metric == m:
                lines.append(f"Robust area of `{m}`: {a} (the same resamples).")
    return [*lines, ""]


def certified_section(record: RobustnessRecord) -> list[str]:
    """``report.md``'s randomized-smoothing section: per σ and L2 radius the certified metric and
    abstain rate with intervals, beside the empirical (attack-suite worst case) number of the same
    model and samples at the same L2 budget, where the record has one."""
    entries = record.certified or []
    if not entries:
        return []
    metric = str(entries[0]["metric"])
    lower = bool(entries[0].get("lower_is_better"))

    def cell(row: Mapping[str, Any], name: str) -> str:
        ci = row.get(f"{name}_interval")
        text = _fmt(row.get(name))
        return f"{text} [{_fmt(ci['low'])}, {_fmt(ci['high'])}]" if ci else text

    def empirical(radius: float) -> str:
        if radius == 0:
            value, ci = record.clean.get(metric), record.interval("clean")
        else:
            hits = [e for e in record.ensemble if abs(e.eps - radius) <= 1e-9 and
                    all(a.norm == "l2" for a in record.attacks if abs(a.eps - radius) <= 1e-9)]
            if not hits:
                return "—"
            value, ci = hits[0].metrics.get(metric), record.interval("worst", radius)
        if (record.intervals or {}).get("metric") != metric:
            ci = None
        return _fmt(value) + (f" [{_fmt(ci.low)}, {_fmt(ci.high)}]" if ci is not None else "")

    extra = [k for k in entries[0]["curve"][0] if k not in ("radius", metric, "abstain") and
             not k.endswith("_interval")] if entries[0]["curve"] else []
    lines = [
        "## Certified robustness (randomized smoothing)",
        "",
        f"{entries[0].get('reference', '')}. Certified {metric} at L2 radius R: "
        f"a {'upper' if lower else 'lower'} bound that holds for every perturbation of L2 norm ≤ R "
        f"(each sample's certificate with probability ≥ 1 − α over the noise); abstentions count as "
        f"{'the image border' if lower else 'wrong'}. Empirical: the attack suite's per-sample worst case at "
        f"L2 ε = R on the base model (R = 0: clean), the same samples — an "
        f"{'lower' if lower else 'upper'} bound. Brackets: 95 % intervals over samples.",
        "",
        "| σ | R | certified " + metric + "".join(f" | certified {k}" for k in extra) +
        " | abstain | empirical " + metric + " |",
        "|---|---|---" + "|---" * len(extra) + "|---|---|",
    ]
    for entry in entries:
        for row in entry["curve"]:
            r = float(row["radius"])
            cells = [_fmt(entry["sigma"]), _fmt(r), cell(row, metric), *(cell(row, k) for k in extra),
                     cell(row, "abstain"), empirical(r)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for entry in entries:
        lines.append(f"- σ={_fmt(entry['sigma'])}: n0={entry.get('n0')}, n={entry.get('n')}, α={entry.get('alpha')}, "
                     f"batch={entry.get('batch')}, correction={entry.get('correction')}, seed={entry.get('seed')}, "
                     f"{entry.get('samples')} samples, {_fmt(entry.get('seconds'))} s, "
                     f"{entry.get('forwards')} noisy forwards")
    lines += ["", "![certified vs empirical](certified.png)", ""]
    return lines


def markdown_table(record: RobustnessRecord | Mapping[str, Any]) -> str:
    """Attacks × ε × metrics (clean first, ensemble last per ε) as a Markdown table."""
    record = RobustnessRecord.coerce(record)
    metrics = record.metric_names()
    head = ["attack", "ε", "norm", "steps", "step size", "restarts", "random start", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    clean = record.clean
    def ci(m: str, kind: str, eps: float | None = None, attack: str | None = None) -> str:
        """`` [low, high]`` after the number the record has an interval for (the per-sample
        metric's, or a dataset-level metric's: AUROC, mAP)."""
        interval = record.interval(kind, eps, attack, metric=m)
        if interval is None or not (math.isfinite(interval.low) and math.isfinite(interval.high)):
            return ""  # none, or one the bootstrap could not define
        return f" [{interval.low:.3f}, {interval.high:.3f}]"

    lines.append("| clean | 0 | – | – | – | – | – | "
                 + " | ".join(_fmt(clean.get(m)) + ci(m, "clean") for m in metrics) + " |")
    ens = {e.eps: e for e in record.ensemble}
    for eps in record.eps_grid():
        for e in (a for a in record.attacks if a.eps == eps):
            cells = [e.attack, _fmt(eps), _fmt(e.norm), _fmt(e.steps), _fmt(e.step_size), _fmt(e.restarts),
                     _fmt(e.random_start)]
            mark = _mark(e.unreliable)
            cells += [_fmt(e.metrics.get(m)) + ci(m, "attack", eps, e.attack) + mark for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        if eps in ens:
            cells = ["**ensemble**", _fmt(eps), "", "", "", "", ""]
            mark = _mark(ens[eps].unreliable)
            cells += [f"**{_fmt(ens[eps].metrics.get(m))}**{ci(m, 'worst', eps)}{mark}" for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    record: RobustnessRecord | Mapping[str, Any],
    path: str | Path,
    plot_name: str | None = "robustness.png",
    checkpoint: str | None = None,
    extra_settings: Mapping[str, Any] | None = None,
    corruption_plot: str | None = None,
) -> Path:
    """Write ``report.md`` for one robustness record (or its ``robustness.json`` dict)."""
    record = RobustnessRecord.coerce(record)
    path = Path(path)
    area = record.robust_area
    subset = record.subset
    settings = dict(record.settings)
    if extra_settings:
        settings.update(extra_settings)
    parts = [
        f"# Robustness report — {record.task} · {record.method}",
        "",
        f"Split **{record.split}**, epoch {record.epoch}, "
        f"{subset.size if subset else None} samples, checkpoint `{checkpoint or 'in-memory model'}`.",
        f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}.",
        "",
        *([f"**Incomplete** ({record.incomplete.get('reason')}): "
           f"{record.incomplete.get('samples_evaluated')} of {record.incomplete.get('samples_planned')} "
           f"samples evaluated; not run: {record.incomplete.get('not_run')}. Every number below rests "
           "on the evaluated samples only.", ""] if record.incomplete else []),
        "## Results",
        "",
        markdown_table(record),
        "",
        f"Robust area (`adv/robust_area`, ensemble, metric `{area.metric if area else None}`): "
        f"**{_fmt(area.value if area else None)}** — {area.definition if area else ''}",
        "",
        f"Ensemble = per-sample worst case over the attacks at each ε ({record.ensemble_rule}).",
        "",
        *interval_section(record),
        *unreliable_section(record),
        *certified_section(record),
    ]
    if plot_name:
        parts += [f"![metric vs ε]({plot_name})", ""]
    if record.corruptions is not None:
        from callbacks.corruption_report import report_section

        section = record.corruptions
        shown = section.error_metric if section.error_metric in record.clean else record.metric_names()[0]
        main = record.robust_area.metric if record.robust_area else shown
        parts += report_section(section, main, (record.intervals or {}).get("corruptions"),
                                corruption_plot)
    me = record.minimal_eps
    if me:
        parts += [
            "## Minimal ε (bisection with early-stopping PGD)",
            "",
            f"median {_fmt(me.median)} (None = more than half not violated at ε_max), "
            f"ε_max {me.eps_max}, {me.steps} steps, {me.n_bisect} bisections "
            f"(resolution {_fmt(me.resolution)}), censored {_fmt(me.censored_fraction)}.",
            "",
        ]
    if record.compute is not None:
        parts += ["## Compute", "", record.compute.markdown(), ""]
    parts += ["## Settings", "", "| setting | value |", "|---|---|"]
    rows = {
        "subset size": subset.size if subset else None,
        "subset of split size": subset.of if subset else None,
        "subset selection": subset.selection if subset else None,
        "subset seed": subset.seed if subset else None,
        "subset indices": _indices(subset.indices if subset else None),
        "evaluation time (s)": record.eval_seconds,
        **settings,
        **{f"version {k}": v for k, v in package_versions().items()},
    }
    for k, v in rows.items():
        parts.append(f"| {k} | {_fmt(v)} |")
    parts += ["", "### Attacks (as run)", ""]
    seen: set[str] = set()
    for e in record.attacks:
        if e.attack in seen:
            continue
        seen.add(e.attack)
        # step sizes depend on ε: they are in the table above
        parts.append(f"- `{e.attack}`: " + ", ".join(f"{k}={_fmt(v)}" for k, v in e.settings().items()))
    parts.append("")
    from callbacks.atomic import atomic_write_text

    atomic_write_text(path, "\n".join(parts))  # crash-safe (creates the folder)
    return path
