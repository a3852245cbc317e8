"""Tables, curves and ``report.md`` of a paper suite (``benchmarks/run.py``), built only from the
``robustness.json`` records the runs wrote (test split, the configs' test-time attack suite)."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.paper_suites import Group, Suite  # noqa: E402
from callbacks.atomic import atomic_write_text  # noqa: E402
from callbacks.record import RobustnessRecord  # noqa: E402
from callbacks.report import package_versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fmt(v: Any) -> str:
    """Numbers as the tables show them (3 decimals; ``–`` for missing)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def fmt_eps(eps: float) -> str:
    return f"{eps:g}"


def record(res: dict[str, Any] | None, kind: str = "test") -> RobustnessRecord | None:
    """The ``kind`` record (``"test"`` / ``"noise"``) of one run of ``results.json``, typed."""
    data = (res or {}).get(kind)
    return None if not data else RobustnessRecord.coerce(data, f"results.json: {kind} record of {res.get('label')}")


def run_records(res: dict[str, Any] | None, kind: str = "test") -> list[RobustnessRecord]:
    """The ``kind`` record of every seed of one run (``--seeds N``; one seed: its record)."""
    from benchmarks.paper_evidence import seed_entries

    return [r for e in seed_entries(res or {}) if (r := record({**e, "label": (res or {}).get("label")}, kind))]


def seed_mean(res: dict[str, Any] | None, value: Any, kind: str = "test") -> float | None:
    """``value(record)`` averaged over the run's seeds (``None`` where no seed has it)."""
    vals = [float(v) for r in run_records(res, kind) if (v := value(r)) is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def attack_columns(rec: RobustnessRecord | dict[str, Any]) -> list[tuple[str, float]]:
    """``(attack label, ε)`` of a record's attacks, in attack order then ε."""
    rec = RobustnessRecord.coerce(rec)
    eps = sorted({e.eps for e in rec.attacks})
    return [(a, e) for a in rec.attack_labels() for e in eps]


def lookup(rec: RobustnessRecord | dict[str, Any], attack: str, eps: float, metric: str) -> float | None:
    return RobustnessRecord.coerce(rec).value(metric, attack, eps)


def lower_is_better(group: Group, suite: Suite, results: dict[str, Any]) -> bool:
    """The direction of ``group.metric`` as the runs' records state it (the task's metric
    object, through the robust area); higher-is-better when no record says."""
    for r in suite.runs:
        rec = record(results.get(r.key)) if r.group == group.name else None
        if rec is not None and rec.lower_is_better(group.metric) is not None:
            return bool(rec.lower_is_better(group.metric))
    return False


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def metric_table(suite: Suite, group: Group, results: dict[str, Any], metric: str,
                 ensemble_only: bool = False, only_eps: float | None = None) -> str:
    """Rows: methods; columns: clean, then attack × ε (or the worst case per ε, or every attack
    at ``only_eps``) of ``metric``; a one-seed run's cells carry its record's interval
    (``0.734 [0.690, 0.775]``) where the record has one for ``metric``."""
    runs = [r for r in suite.runs if r.group == group.name and results.get(r.key, {}).get("test")]
    if not runs:
        return "_no results_"
    first = record(results[runs[0].key])
    if ensemble_only:
        cols = [("ensemble", e.eps) for e in first.entries("ensemble")]
    else:
        cols = [c for c in attack_columns(first) if only_eps is None or math.isclose(c[1], only_eps)]
        if only_eps is not None and first.ensemble:
            cols.append(("ensemble", only_eps))
    steps = {e.attack: e.steps for e in first.attacks}

    def name(a: str, e: float) -> str:
        label = "worst case" if a == "ensemble" else f"{a.upper()}" + (f"-{steps[a]}" if steps.get(a, 1) not in (None, 0, 1) else "")
        txt = f"{label} ε={fmt_eps(e)}"
        return f"**{txt}**" if suite.headline_eps is not None and math.isclose(e, suite.headline_eps) else txt

    head = ["method", f"clean {metric}", *(name(a, e) for a, e in cols), "robust area"]
    rows = []
    for r in runs:
        res = results[r.key]

        def area(rec: RobustnessRecord) -> float | None:
            return rec.robust_area.value if rec.robust_area and rec.robust_area.metric == metric else None

        recs = run_records(res)

        def ci(kind: str, eps: float | None = None, attack: str | None = None,
               recs: list[RobustnessRecord] = recs) -> str:
            """`` [low, high]`` of a one-seed run's number (the record's interval of ``metric``:
            the per-sample metric's or a dataset-level one's, AUROC, mAP); several seeds: none
            here (their interval over seeds and samples is in the uncertainty table)."""
            if len(recs) != 1:
                return ""
            iv = recs[0].interval(kind, eps, attack, metric=metric)
            ok = iv is not None and math.isfinite(iv.low) and math.isfinite(iv.high)
            return f" [{iv.low:.3f}, {iv.high:.3f}]" if ok else ""

        def cell(a: str, e: float, res: dict[str, Any] = res) -> str:
            value = fmt(seed_mean(res, lambda rec: lookup(rec, a, e, metric)))
            return value + (ci("worst", e) if a == "ensemble" else ci("attack", e, a))

        area_ci = ci("robust_area") if recs and recs[0].robust_area is not None \
            and recs[0].robust_area.metric == metric else ""
        rows.append([res["label"], fmt(seed_mean(res, lambda rec: rec.clean.get(metric))) + ci("clean"),
                     *(cell(a, e) for a, e in cols), fmt(seed_mean(res, area)) + area_ci])
    return _table(head, rows)


def noise_table(suite: Suite, group: Group, results: dict[str, Any], metric: str) -> str:
    """Rows: methods; columns: clean, then each general-noise level (``robustness_noise.json``)."""
    runs = [r for r in suite.runs if r.group == group.name and results.get(r.key, {}).get("noise")]
    if not runs:
        return "_no noise results_"
    labels = [e.attack for e in record(results[runs[0].key], "noise").attacks]
    rows = []
    for r in runs:
        res = results[r.key]
        by = {x: seed_mean(res, lambda rec, x=x: next((e.metrics.get(metric) for e in rec.attacks if e.attack == x),
                                                      None), "noise") for x in labels}
        mean = [v for v in by.values() if v is not None]
        rows.append([res["label"], fmt(seed_mean(res, lambda rec: rec.clean.get(metric), "noise")),
                     *(fmt(by.get(x)) for x in labels), fmt(sum(mean) / len(mean) if mean else None)])
    return _table(["method", f"clean {metric}", *labels, "mean"], rows)


def _seed_mean_field(res: dict[str, Any], key: str) -> float | None:
    """A numeric field of a run's entry (``fit_s``…) averaged over its seeds."""
    from benchmarks.paper_evidence import seed_entries

    vals = [float(e[key]) for e in seed_entries(res) if isinstance(e.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else None


def cost_table(suite: Suite, group: Group, results: dict[str, Any]) -> str:
    head = ["method", "config", "epochs", "best epoch (0-based)", "train s/epoch (eval excluded)", "fit s",
            "test s", "test samples"]  # seconds: mean over seeds; epochs: the first seed's
    rows = []
    for r in suite.runs:
        res = results.get(r.key)
        if r.group != group.name or not res:
            continue
        rec = record(res)
        secs = [f"{v:.1f}" if (v := _seed_mean_field(res, k)) is not None else "–"
                for k in ("train_s_per_epoch", "fit_s", "test_s")]
        rows.append([res["label"], f"`{r.config}`", fmt(res.get("epochs")), fmt(res.get("best_epoch")),
                     *secs, fmt(rec.subset.size if rec and rec.subset else None)])
    return _table(head, rows)


def _spread(res: dict[str, Any], values: Any, fallback: tuple[str, float | None], metric: str) -> str:
    """``mean ± SD over seeds [interval]`` of one run's per-sample ``values``: the two-level
    (seeds × samples) interval with several seeds, the record's own interval with one (computed
    from the per-sample file when the record has none); the reason when there is neither."""
    import numpy as np

    from benchmarks.paper_evidence import Term, run_matrices
    from callbacks.uncertainty import mean_interval, proportion_interval, seeds_interval

    mats, reason = run_matrices([Term(res, values)])
    recs = run_records(res)
    if mats is None:
        rec = recs[0] if len(recs) == 1 else None
        iv = rec.interval(*fallback) if rec is not None and (rec.intervals or {}).get("metric") == metric else None
        return str(iv) if iv is not None else f"– ({reason})"
    m = mats[0][:, np.isfinite(mats[0]).all(axis=0)]
    if m.shape[1] < 2:
        return "– (fewer than 2 samples with defined values)"
    if m.shape[0] == 1:
        iv = recs[0].interval(*fallback) if recs and (recs[0].intervals or {}).get("metric") == metric else None
        if iv is None:
            v = m[0]
            iv = (proportion_interval(int(v.sum()), v.size) if np.isin(v, (0.0, 1.0)).all()
                  else mean_interval(v))
        return str(iv)
    iv = seeds_interval(m)
    sd = float(np.std(m.mean(axis=1), ddof=1))
    return f"{iv.estimate:.3f} ± {sd:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def uncertainty_table(suite: Suite, group: Group, results: dict[str, Any]) -> str | None:
    """Per run: its seeds, n, and the clean metric, the worst case at the headline ε (when the
    suite has one) and the robust area, each as ``mean ± SD over seeds [interval]`` (one seed:
    ``estimate [interval]``) of the task's per-sample metric."""
    from benchmarks.paper_evidence import column, robust_area, seed_entries
    from benchmarks.paper_suites import sample_metric
    from callbacks.per_sample import column_name

    runs = [r for r in suite.runs if r.group == group.name and results.get(r.key, {}).get("test")]
    if not runs:
        return None
    first = record(results[runs[0].key])
    sm = sample_metric(first.task)
    lower = bool(first.lower_is_better(sm)) if first.lower_is_better(sm) is not None else False
    eps = sorted(e.eps for e in first.ensemble)
    head = ["method", "seeds", "test samples", f"clean {sm}"]
    if suite.headline_eps is not None:
        head.append(f"worst case ε={fmt_eps(suite.headline_eps)}")
    head.append(f"robust area ({sm}{', negated' if lower else ''})")
    rows = []
    for r in runs:
        res = results[r.key]
        seeds = [e.get("seed") for e in seed_entries(res)]
        rec = record(res)
        row = [res["label"], ", ".join(str(x) for x in seeds), fmt(rec.subset.size if rec.subset else None),
               _spread(res, column(column_name("clean", sm)), ("clean", None), sm)]
        if suite.headline_eps is not None:
            row.append(_spread(res, column(column_name("worst", sm, suite.headline_eps)),
                               ("worst", suite.headline_eps), sm))
        row.append(_spread(res, robust_area(sm, eps, lower), ("robust_area", None), sm) if eps else "–")
        rows.append(row)
    return _table(head, rows)


def verdict_summary(claims: list[dict[str, str]]) -> str:
    """``Verdicts on intervals: 3 confirmed, 1 refuted, 4 inconclusive. Of the 7 rules the point
    estimates alone decide (…), 3 are inconclusive on intervals; 1 point comparison (confirmed)``."""
    from collections import Counter

    on = Counter(c["verdict"] for c in claims if c.get("basis", "interval") == "interval")
    point = [c["verdict"] for c in claims if c.get("basis") == "point"]
    parts = [f"{on.get(v, 0)} {v}" for v in ("confirmed", "refuted", "inconclusive")]
    parts += [f"{k}: {v}" for k, v in on.items() if k not in ("confirmed", "refuted", "inconclusive")]
    text = "Verdicts on intervals: " + ", ".join(parts)
    read = [c for c in claims if c.get("basis", "interval") == "interval"
            and c.get("point_verdict") in ("confirmed", "refuted")]
    if read:
        became = sum(c["verdict"] == "inconclusive" for c in read)
        flipped = sum(c["verdict"] in ("confirmed", "refuted") and c["verdict"] != c["point_verdict"] for c in read)
        text += (f". Of the {len(read)} rule(s) that the point estimates alone decide "
                 f"({sum(c['point_verdict'] == 'confirmed' for c in read)} confirmed, "
                 f"{sum(c['point_verdict'] == 'refuted' for c in read)} refuted), {became} "
                 f"{'is' if became == 1 else 'are'} inconclusive on intervals"
                 + (f" and {flipped} reverse{'s' if flipped == 1 else ''}" if flipped else ""))
    if point:
        text += f"; {len(point)} point comparison(s) ({', '.join(point)})"
    return text + "."


def _margin_history(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch lines of ``margins/diagnostics.jsonl`` (``MarginMonitor``) of a run."""
    log_dir = res.get("log_dir")
    path = (ROOT / log_dir / "margins" / "diagnostics.jsonl") if log_dir else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def margin_table(suite: Suite, group: Group, results: dict[str, Any]) -> str | None:
    """AMAT's final margin distribution (after the last epoch) against the SAT budgets, and
    how the margins moved in each epoch (fraction grown by δ; clean-violated)."""
    rows, budgets = [], None
    for r in suite.runs:
        res = results.get(r.key)
        hist = _margin_history(res) if r.group == group.name and res else []
        if not hist:
            continue
        last = hist[-1]
        budgets = last.get("budgets") or []
        ge = [fmt(last.get(f"margin_ge{e:g}")) for e in budgets]
        grown = " / ".join(f"{100 * h['margin_grown']:.0f}" for h in hist if "margin_grown" in h)
        viol = " / ".join(f"{100 * h['clean_violated']:.0f}" for h in hist if "clean_violated" in h)
        rows.append([res["label"], fmt(last.get("threshold")),
                     *[fmt(last.get(k)) for k in ("margin_q10", "margin_q50", "margin_q90", "margin_mean",
                                                 "margin_max")],
                     *ge, grown or "–", viol or "–"])
    if not rows:
        return None
    head = ["method", "threshold", "q10", "median", "q90", "mean", "max",
            *[f"share ≥ SAT ε={e:g}" for e in budgets or []], "grown by δ, % per epoch",
            "clean-violated, % per epoch"]
    return _table(head, rows)


def plot_group(suite: Suite, group: Group, results: dict[str, Any], path: Path) -> Path | None:
    """Metric vs ε per attack (one panel each, plus the per-sample worst case), one line per method."""
    runs = [r for r in suite.runs if r.group == group.name and results.get(r.key, {}).get("test")]
    if not runs:
        return None
    first = record(results[runs[0].key])
    attacks = first.attack_labels()
    panels = attacks + (["ensemble"] if len(attacks) > 1 and first.ensemble else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.5), squeeze=False)
    for ax, attack in zip(axes[0], panels):
        for r in runs:
            res = results[r.key]
            xs = [e.eps for e in record(res).entries(attack)]
            ys = [seed_mean(res, lambda rec, x=x, a=attack: rec.value(group.metric, a, x)) for x in xs]
            ys = [math.nan if y is None else y for y in ys]
            clean = seed_mean(res, lambda rec: rec.clean.get(group.metric))
            if suite.log_eps:  # log axis: the clean value is a dashed level of the same colour
                line, = ax.plot(xs, ys, marker="o", ms=3, label=results[r.key]["label"])
                ax.axhline(clean, color=line.get_color(), ls=":", lw=1)
            else:
                ax.plot([0.0, *xs], [clean, *ys], marker="o", ms=3, label=results[r.key]["label"])
        if suite.log_eps:
            ax.set_xscale("log")
        if suite.headline_eps is not None:
            ax.axvline(suite.headline_eps, color="grey", lw=0.8, ls="--")
        norm = next((e.norm for e in first.attacks if e.attack == attack), None) or "linf"
        ax.set_title("worst case over attacks" if attack == "ensemble" else attack.upper(), fontsize=10)
        ax.set_xlabel(f"ε ({'L2' if norm == 'l2' else 'L∞'}, pixels on [0, 1])")
        ax.grid(alpha=0.3)
    arrow = "↓" if lower_is_better(group, suite, results) else "↑"
    axes[0][0].set_ylabel(f"{group.metric} {arrow}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{suite.name}: {group.title} (test split)", fontsize=10, y=1.03)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def attack_settings(results: dict[str, Any], suite: Suite) -> list[str]:
    """One line per distinct test-time attack as run (from the records)."""
    seen: dict[str, str] = {}
    for r in suite.runs:
        rec = record(results.get(r.key))
        for e in rec.attacks if rec else []:
            if e.attack not in seen:
                keep = {"name": e.name, "norm": e.norm, "steps": e.steps, "restarts": e.restarts,
                        "random_start": e.random_start}
                seen[e.attack] = ", ".join(f"{k}={v}" for k, v in keep.items() if v is not None)
    return [f"- `{a}`: {d}; step size per ε in each run's robustness.json" for a, d in seen.items()]


def suite_section(suite: Suite, results: dict[str, Any], meta: dict[str, Any], figures: dict[str, str],
                  heading: str = "#") -> str:
    """The tables, curves and claim comparison of one suite (report.md and docs/benchmarks.md)."""
    h = heading
    parts = [f"{h} {suite.title}", "", f"Paper: {suite.paper}.", "",
             f"Command: `{meta['command']}`  ",
             f"Mode: **{meta['mode']}** · wall time **{meta['wall_s']:.0f} s** ({meta['wall_s'] / 60:.1f} min) · "
             f"torch threads {meta['threads']} · seeds: `seed_everything` {meta['seeds']} "
             f"({meta.get('n_seeds', 1)} per run), "
             "evaluation seed 0 (subset and attack random starts)  ",
             f"Machine: {meta['machine']}  ",
             f"Load average (1 min) at start / end: {meta['load_start']} / {meta['load_end']}. {meta.get('note', '')}",
             ""]
    for group in suite.groups:
        if not any(r.group == group.name and r.key in results for r in suite.runs):
            continue
        parts += [f"{h}# {group.title}", "",
                  f"Test split, every attack × ε on the same test images; `{group.metric}` "
                  f"({'lower' if lower_is_better(group, suite, results) else 'higher'} is better). Worst case = per "
                  "sample, the worst of the attacks at that ε.", ""]
        if suite.headline_eps is not None:  # a fine ε grid: worst case per ε, attacks at the headline ε
            parts += [metric_table(suite, group, results, group.metric, ensemble_only=True), "",
                      f"Each attack at the headline ε = {fmt_eps(suite.headline_eps)}:", "",
                      metric_table(suite, group, results, group.metric, only_eps=suite.headline_eps), ""]
        else:
            parts += [metric_table(suite, group, results, group.metric), ""]
        if group.secondary:
            parts += [f"`{group.secondary}`, worst case over the attacks:", "",
                      metric_table(suite, group, results, group.secondary, ensemble_only=True), ""]
        if suite.noise:
            parts += [f"General noises (`{group.metric}`; Gaussian / speckle std, salt-and-pepper fraction):", "",
                      noise_table(suite, group, results, group.metric), ""]
        if group.name in figures:
            parts += [f"![{group.name} curves]({figures[group.name]})", ""]
        margins = margin_table(suite, group, results)
        if margins:
            parts += ["AMAT's margins (L2) after the last training epoch, against the SAT ε of this "
                      "table (as trained), and their movement per epoch:", "", margins, ""]
        spread = uncertainty_table(suite, group, results)
        if spread:
            n_seeds = max(len(run_records(results.get(r.key))) for r in suite.runs if r.key in results)
            parts += [("Uncertainty: mean ± SD over seeds [95 % interval over seeds and test samples, two-level "
                       "bootstrap]:" if n_seeds > 1 else
                       "Uncertainty (one seed: the 95 % interval over test samples; it leaves out the "
                       "seed-to-seed variation, see `--seeds`):"), "", spread, ""]
        parts += ["Runs:", "", cost_table(suite, group, results), ""]
    claims = suite.claims(results)
    parts += [f"{h}# What the paper claims / what we measured", "",
              "Rules fixed before measuring (benchmarks/paper_suites.py), each restated as tests on 95 % "
              "intervals: **confirmed** when the interval lies on the claim's side of its threshold, **refuted** "
              "when it lies on the other side, **inconclusive** otherwise (the data cannot decide at this n). A "
              "rule of several tests is confirmed only when every test is and refuted when any is. Comparisons of "
              "two models are paired on the same test samples. n is the number of test samples; 'detects ≥ x' "
              "is the smallest true effect n detects with 80 % power. Time ratios are point comparisons.", "",
              verdict_summary(claims) if claims else "", "",
              _table(["claim", "measured", "tests on intervals (n, smallest detectable effect)", "verdict"],
                     [[c["claim"], c["measured"], c.get("tests", "–"),
                       f"**{c['verdict']}**" + (" (point)" if c.get("basis") == "point" else "")
                       + (f" (point estimates alone: {c['point_verdict']})" if c.get("point_verdict") else "")]
                      for c in claims]) if claims
              else "_no complete comparison_", ""]
    return "\n".join(parts)


def settings_section(suite: Suite, results: dict[str, Any], meta: dict[str, Any]) -> str:
    parts = ["## Exact settings", "",
             "Each run is the shipped config plus the overrides listed (none in the full mode but "
             "per-run ones); the resolved config is in the run folder (`config.yaml`) and in "
             f"`results/{suite.name}/configs/`.", ""]
    for r in suite.runs:
        res = results.get(r.key)
        if not res:
            continue
        ov = res.get("overrides") or {}
        shown = "; ".join(f"`{k}` = `{v}`" for k, v in ov.items()) or "none"
        seeds = res.get("seeds") or [res]
        where = "; ".join(f"seed {e.get('seed')}: run folder `{e.get('log_dir')}`, checkpoint `{e.get('ckpt')}`"
                          for e in seeds) if len(seeds) > 1 else \
            f"Run folder `{res.get('log_dir')}`, checkpoint `{res.get('ckpt')}`"
        parts.append(f"- **{r.key}** (`configs/experiment/{r.config}.yaml`, seed {res.get('seed')}): "
                     f"overrides {shown}. {where}.")
    parts += ["", "Test-time attacks:", "", *attack_settings(results, suite), "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()), ""]
    return "\n".join(parts)


def write_report(suite: Suite, results: dict[str, Any], meta: dict[str, Any], out_dir: Path) -> Path:
    """``out_dir/report.md`` and one ``<group>_curves.png`` per group; returns the report path."""
    figures = {}
    for group in suite.groups:
        p = plot_group(suite, group, results, out_dir / f"{group.name}_curves.png")
        if p is not None:
            figures[group.name] = p.name
    text = (suite_section(suite, results, meta, figures) + "\n" + settings_section(suite, results, meta)
            + f"\nGenerated {_dt.datetime.now().isoformat(timespec='seconds')}.\n")
    path = out_dir / "report.md"
    atomic_write_text(path, text)
    return path


def update_docs(docs: Path, suite: Suite, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """Replace this suite's section of ``docs`` (between its markers) with the latest tables."""
    start, end = f"<!-- suite:{suite.name}:start -->", f"<!-- suite:{suite.name}:end -->"
    body = suite_section(suite, results, meta, {}, heading="##")
    body += (f"\nCurves and the exact settings: `results/{suite.name}/report.md` (not committed).\n")
    block = f"{start}\n{body}\n{end}"
    text = docs.read_text() if docs.exists() else "# Paper benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(docs, text)
