"""The tables of a paper-suite report (``benchmarks/run.py``), as Markdown, built only from the
``robustness.json`` records the runs wrote (kept in ``results.json``, one entry per run and seed):
the metric per attack × ε, general noises, costs, AMAT's margins and the uncertainty per run."""

from __future__ import annotations

import json
import math
from typing import Any

from benchmarks.common import ROOT, seed_entries, typed_record
from benchmarks.paper_spec import Group, Suite
from callbacks.record import RobustnessRecord


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
    return typed_record(data, f"results.json: {kind} record of {res.get('label')}") if data else None


def run_records(res: dict[str, Any] | None, kind: str = "test") -> list[RobustnessRecord]:
    """The ``kind`` record of every seed of one run (``--seeds N``; one seed: its record)."""

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


def table(head: list[str], rows: list[list[str]]) -> str:
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
    return table(head, rows)


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
    return table(["method", f"clean {metric}", *labels, "mean"], rows)


def _seed_mean_field(res: dict[str, Any], key: str) -> float | None:
    """A numeric field of a run's entry (``fit_s``…) averaged over its seeds."""

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
    return table(head, rows)


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
    from benchmarks.paper_claims import sample_metric
    from benchmarks.paper_evidence import column, robust_area
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
    return table(head, rows)


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
    return table(head, rows)
