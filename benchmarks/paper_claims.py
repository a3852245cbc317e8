"""The helpers every paper suite's claim rules share: a run's values averaged over its seeds,
paired estimates between two runs, and one row of the claims table.

Every rule is a test on an interval (:mod:`benchmarks.paper_evidence`): confirmed when the
interval lies on the claim's side of its threshold, refuted when it lies on the other side,
inconclusive otherwise; a rule of several parts is their conjunction (confirmed only when every
part is, refuted when any part is). Time ratios have no sampling interval: point comparisons,
labelled. :func:`medmnist_check` is the clean sanity rule the classification suites share.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import finite_mean, seed_entries, typed_record


def seed_value(entry: dict[str, Any] | None, attack: str | None, eps: float | None, metric: str,
           kind: str = "test") -> float:
    """A metric of a run's ``kind`` record — clean (attack None) or one attack/ensemble at ε —
    averaged over the run's seeds (``nan`` where missing)."""
    vals = []
    for e in seed_entries(entry):
        rec = e.get(kind)
        v = typed_record(rec).value(metric, attack, eps) if rec else None
        vals.append(math.nan if v is None else float(v))
    return finite_mean(vals)


def entries_mean(entry: dict[str, Any] | None, metric: str, kind: str = "test") -> float:
    """``metric`` averaged over every attack × ε entry of a run's ``kind`` record (and its seeds)."""
    per_seed = []
    for e in seed_entries(entry):
        rec = e.get(kind)
        if rec:
            per_seed.append(finite_mean([math.nan if x.metrics.get(metric) is None else float(x.metrics[metric])
                                   for x in typed_record(rec).attacks]))
    return finite_mean(per_seed)


def attack_sample_columns(entry: dict[str, Any], metric: str, kind: str = "test") -> list[str]:
    """The per-sample columns of every attack × ε entry of a run's ``kind`` record."""
    from callbacks.per_sample import column_name

    rec = typed_record(entry.get(kind))
    return [] if rec is None else [column_name(x.attack, metric, x.eps) for x in rec.attacks]


def sample_metric(task: str) -> str:
    """The name of the task's per-sample metric in the per-sample files (detection: ``ap50``,
    the per-image AP@0.5; the others: their main metric)."""
    from callbacks.per_sample import metric_name
    from lightning_modules.tasks import model_task

    return metric_name(model_task(task).module)


def fmt3(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def seeds_note(*entries: dict[str, Any] | None) -> str:
    n = max((len(seed_entries(e)) for e in entries if e), default=1)
    return f" (mean of {n} seeds)" if n > 1 else ""


def claim_row(claim: str, measured: str, tests: list[Any], verdict: str | None = None,
           basis: str = "interval", point: str | None = None) -> dict[str, str]:
    """One row of the claims table: the rule, the point values, each interval test with its n
    and smallest detectable effect, the verdict (the conjunction of the tests unless given) and
    what the point estimates alone would say (``point``; default: the conjunction of the tests'
    point verdicts)."""
    from benchmarks.paper_intervals import all_of, point_reading, tests_summary

    out = {"claim": claim, "measured": measured, "tests": tests_summary(tests) if tests else "–",
           "verdict": verdict if verdict is not None else all_of([t.verdict for t in tests]), "basis": basis}
    reading = point if point is not None else (point_reading(tests) if basis == "interval" else None)
    if reading is not None:
        out["point_verdict"] = reading
    return out


#: MedMNIST v2's ResNet-18 (28) on PneumoniaMNIST's test split, and how far below we still call "at the level"
MEDMNIST_ACC, MEDMNIST_AUC, MEDMNIST_SLACK = 0.854, 0.944, 0.02


def medmnist_check(results: dict[str, Any], keys: list[str]) -> list[dict[str, str]]:
    """Clean PneumoniaMNIST vs MedMNIST v2's ResNet-18 (28): ACC 0.854, AUC 0.944 (test)."""
    from benchmarks.paper_evidence import Term, column
    from benchmarks.paper_intervals import IntervalTest, dataset_estimate, linear_estimate

    out = []
    for key in keys:
        entry = results.get(key, {})
        if entry.get("test") is None:
            continue
        acc, auc = seed_value(entry, None, None, "accuracy"), seed_value(entry, None, None, "auroc")
        tests = [
            IntervalTest("clean accuracy", linear_estimate([Term(entry, column("clean/accuracy"), fallback=("clean", None),
                                                                 fallback_metric="accuracy")]),
                         "greater", MEDMNIST_ACC - MEDMNIST_SLACK, point=acc),
            # AUROC is not a mean of per-sample values: bootstrap over images from the scores
            # each run keeps (robustness_evidence.json), or the record's interval
            IntervalTest("clean AUROC", dataset_estimate(entry, "auroc"),
                         "greater", MEDMNIST_AUC - MEDMNIST_SLACK, point=auc),
        ]
        out.append(claim_row(
            f"MedMNIST v2: ResNet-18 (28) reaches test ACC {MEDMNIST_ACC} / AUC {MEDMNIST_AUC} on PneumoniaMNIST "
            f"(sanity level for clean training; rule: both above the paper's value − {MEDMNIST_SLACK} — a "
            "conjunction: confirmed when both intervals lie above, refuted when either lies below)",
            f"`{key}` ({entry.get('params')} parameters): test ACC {fmt3(acc)}, AUC {fmt3(auc)}{seeds_note(entry)} "
            f"on all {typed_record(entry['test']).subset.size} test images", tests))
    return out


# ------------------------------------------------------------------------------ Xue et al. 2019
def paired_estimate(a: dict[str, Any], b: dict[str, Any], values: Any, kind: str = "test",
                fallback: tuple[str, float | None] | None = None, fallback_metric: str | None = None) -> Any:
    """The paired estimate of mean(values of run ``a``) − mean(values of run ``b``) on their shared samples."""
    from benchmarks.paper_evidence import Term
    from benchmarks.paper_intervals import linear_estimate

    return linear_estimate([Term(a, values, 1.0, kind, fallback, fallback_metric),
                            Term(b, values, -1.0, kind, fallback, fallback_metric)])
