"""``report.md``: the robustness table, the curve and the exact settings of a test run.

Written by :class:`callbacks.AdversarialEvaluation` after ``trainer.test`` beside
``robustness.json``; :func:`write_report` also works on any saved record.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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


def markdown_table(record: Mapping[str, Any]) -> str:
    """Attacks × ε × metrics (clean first, ensemble last per ε) as a Markdown table."""
    metrics = list(record.get("clean", {}))
    head = ["attack", "ε", "norm", "steps", "step size", "restarts", "random start", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    clean = record.get("clean", {})
    lines.append("| clean | 0 | – | – | – | – | – | " + " | ".join(_fmt(clean.get(m)) for m in metrics) + " |")
    by_eps: dict[float, list[Mapping[str, Any]]] = {}
    for entry in record.get("attacks", []):
        by_eps.setdefault(float(entry["eps"]), []).append(entry)
    ens = {float(e["eps"]): e for e in record.get("ensemble", [])}
    for eps in sorted(set(by_eps) | set(ens)):
        for e in by_eps.get(eps, []):
            cells = [e["attack"], _fmt(eps), _fmt(e.get("norm")), _fmt(e.get("steps")),
                     _fmt(e.get("step_size")), _fmt(e.get("restarts")), _fmt(e.get("random_start"))]
            cells += [_fmt(e["metrics"].get(m)) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        if eps in ens:
            cells = ["**ensemble**", _fmt(eps), "", "", "", "", ""]
            cells += [f"**{_fmt(ens[eps]['metrics'].get(m))}**" for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    record: Mapping[str, Any],
    path: str | Path,
    plot_name: str | None = "robustness.png",
    checkpoint: str | None = None,
    extra_settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.md`` for one ``robustness.json`` record; returns its path."""
    path = Path(path)
    area = record.get("robust_area", {})
    subset = record.get("subset", {})
    settings = dict(record.get("settings", {}))
    if extra_settings:
        settings.update(extra_settings)
    parts = [
        f"# Robustness report — {record.get('task')} · {record.get('method')}",
        "",
        f"Split **{record.get('split')}**, epoch {record.get('epoch')}, "
        f"{subset.get('size')} samples, checkpoint `{checkpoint or 'in-memory model'}`.",
        f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}.",
        "",
        "## Results",
        "",
        markdown_table(record),
        "",
        f"Robust area (`adv/robust_area`, ensemble, metric `{area.get('metric')}`): "
        f"**{_fmt(area.get('value'))}** — {area.get('definition', '')}",
        "",
        f"Ensemble = per-sample worst case over the attacks at each ε ({record.get('ensemble_rule', '')}).",
        "",
    ]
    if plot_name:
        parts += [f"![metric vs ε]({plot_name})", ""]
    me = record.get("minimal_eps")
    if me:
        parts += [
            "## Minimal ε (bisection with early-stopping PGD)",
            "",
            f"median {_fmt(me.get('median'))} (None = more than half not broken at ε_max), "
            f"ε_max {me.get('eps_max')}, {me.get('steps')} steps, {me.get('n_bisect')} bisections "
            f"(resolution {_fmt(me.get('resolution'))}), censored {_fmt(me.get('censored_fraction'))}.",
            "",
        ]
    parts += ["## Settings", "", "| setting | value |", "|---|---|"]
    rows = {
        "subset size": subset.get("size"),
        "subset of split size": subset.get("of"),
        "subset selection": subset.get("selection"),
        "subset seed": subset.get("seed"),
        "subset indices": _indices(subset.get("indices")),
        "evaluation time (s)": record.get("eval_seconds"),
        **settings,
        **{f"version {k}": v for k, v in package_versions().items()},
    }
    for k, v in rows.items():
        parts.append(f"| {k} | {_fmt(v)} |")
    parts += ["", "### Attacks (as run)", ""]
    seen: set[str] = set()
    for e in record.get("attacks", []):
        if e["attack"] in seen:
            continue
        seen.add(e["attack"])
        # step sizes depend on ε: they are in the table above
        desc = {k: v for k, v in e.items() if k not in ("metrics", "eps", "attack", "step_size")}
        parts.append(f"- `{e['attack']}`: " + ", ".join(f"{k}={_fmt(v)}" for k, v in desc.items()))
    parts.append("")
    from callbacks.atomic import atomic_write_text

    atomic_write_text(path, "\n".join(parts))  # crash-safe (creates the folder)
    return path
