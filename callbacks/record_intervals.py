"""Confidence intervals of a record's numbers, from its per-sample file (issue 23).

:func:`record_intervals` turns the per-sample table of one evaluation
(:class:`callbacks.per_sample.SampleTable`: each sample's metric, clean, under each attack × ε
and for the worst case per ε) into the ``intervals`` object of ``robustness.json``::

    "intervals": {
      "metric": "accuracy", "level": 0.95, "seed": 0, "lower_is_better": false,
      "clean":  {"estimate": 0.91, "low": 0.84, "high": 0.95, "level": 0.95, "n": 64, "method": "agresti_coull"},
      "worst":  [{"eps": 0.002, "estimate": …, "low": …, "high": …, …}, …],
      "attacks": [{"attack": "pgd", "eps": 0.002, …}, …],
      "robust_area": {"estimate": …, …}
    }

What the intervals are of: the mean over samples of the task's per-sample metric
(``per_sample_metric``: correct / wrong, the image's Dice, its mean radial error, its AP@0.5).
For accuracy, Dice, IoU and radial error that mean is the record's own number; metrics that
are not a mean of per-sample values (AUROC, balanced accuracy, F1, detection's mAP) get their
intervals from the dataset-level evidence file instead, under ``"dataset_metrics"``
(:mod:`callbacks.dataset_metrics`: BCa bootstrap over images), and ``metric`` names
the per-sample quantity the intervals above describe (``ap50``: mean per-image AP@0.5).

* a 0/1 metric (accuracy): the Agresti–Coull interval of the proportion
  (:func:`callbacks.uncertainty.proportion_interval`);
* any other per-sample mean: BCa bootstrap at Hesterberg's expanded level
  (:func:`callbacks.uncertainty.mean_interval`), seeded, so the same file gives the same bounds;
* the robust area: it is linear in the per-ε means, so it is the mean over samples of each
  sample's own area (the same trapezoid over its clean and worst-case values); its interval is
  that mean's BCa interval.

Samples whose metric is undefined (NaN: no visible landmark, no box) are left out of the
interval they would enter; ``n`` says how many it rests on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from callbacks.per_sample import SampleTable, column_name
from callbacks.uncertainty import DEFAULT_LEVEL, Interval, mean_interval, proportion_interval

__all__ = ["interval_of", "record_intervals", "sample_area", "values_interval"]


def values_interval(values: np.ndarray, level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval | None:
    """The interval of the mean of per-sample ``values`` (NaN left out): Agresti–Coull for 0/1
    values, else BCa bootstrap (module docstring); ``None`` when no value is finite."""
    return _interval(np.asarray(values, dtype=np.float64), level, seed)


def _interval(values: np.ndarray, level: float, seed: int) -> Interval | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    if np.isin(values, (0.0, 1.0)).all():
        return proportion_interval(int(values.sum()), int(values.size), level)
    return mean_interval(values, level, seed)


def sample_area(clean: np.ndarray, curve: dict[float, np.ndarray], lower_is_better: bool) -> np.ndarray:
    """``[N]``: each sample's robust area — the trapezoid mean of its metric over
    ``ε ∈ [0, max ε]`` (ε = 0 is its clean value), negated when lower is better, as
    :func:`callbacks.evaluation_writers.robust_area` computes the record's from the means (NaN
    where a value is missing); vectorised over samples."""
    from callbacks.evaluation_writers import trapezoid_mean

    xs = [0.0, *sorted(curve)]
    ys = [np.asarray(clean, dtype=np.float64), *(np.asarray(curve[e], dtype=np.float64) for e in xs[1:])]
    if len(xs) < 2:
        return np.full(ys[0].shape, np.nan)
    area = trapezoid_mean(xs, ys)
    return -area if lower_is_better else area


def record_intervals(table: SampleTable, metric: str, eps: Sequence[float],
                     attacks: Sequence[tuple[str, float]], lower_is_better: bool,
                     level: float = DEFAULT_LEVEL, seed: int = 0) -> dict[str, Any]:
    """The ``intervals`` object of a record (module docstring) from its per-sample ``table``.

    Args:
        table: the evaluation's per-sample values; its columns ``clean/<metric>``,
            ``<attack>/<ε>/<metric>`` and ``worst/<ε>/<metric>`` (those present are used).
        metric: the per-sample metric's name in the column names.
        eps: the ε grid; ``attacks``: the (attack label, ε) pairs of the record.
        lower_is_better: the metric's direction (radial error: True).
    """
    def col(cond: str, level_: float | None = None) -> np.ndarray | None:
        name = column_name(cond, metric, level_)
        return table.columns.get(name)

    out: dict[str, Any] = {"metric": metric, "level": float(level), "seed": int(seed),
                           "lower_is_better": bool(lower_is_better)}
    clean = col("clean")
    if clean is None:
        raise ValueError(f"record_intervals: the per-sample table has no column {column_name('clean', metric)!r}; "
                         f"columns: {list(table.columns)[:6]}…")
    ci = _interval(clean, level, seed)
    out["clean"] = ci.to_dict() if ci is not None else None
    worst: list[dict[str, Any]] = []
    curve: dict[float, np.ndarray] = {}
    for e in eps:
        values = col("worst", e)
        if values is None:
            continue
        curve[float(e)] = values
        ci = _interval(values, level, seed)
        if ci is not None:
            worst.append({"eps": float(e), **ci.to_dict()})
    out["worst"] = worst
    entries: list[dict[str, Any]] = []
    for label, e in attacks:
        values = col(label, e)
        ci = None if values is None else _interval(values, level, seed)
        if ci is not None:
            entries.append({"attack": label, "eps": float(e), **ci.to_dict()})
    out["attacks"] = entries
    if curve:
        area = sample_area(clean, curve, lower_is_better)
        area = area[np.isfinite(area)]
        # a mean of per-sample areas, never a proportion (areas of 0/1 metrics take values in
        # between): always the bootstrap
        out["robust_area"] = mean_interval(area, level, seed).to_dict() if area.size else None
    return out


def interval_of(intervals: dict[str, Any] | None, kind: str, eps: float | None = None,
                attack: str | None = None, metric: str | None = None) -> Interval | None:
    """The :class:`Interval` of one number of a record's ``intervals`` object: ``kind`` is
    ``"clean"``, ``"robust_area"``, ``"worst"`` (with ``eps``) or ``"attack"`` (with ``attack``
    and ``eps``); ``metric``: of which metric (``None``: the per-sample metric ``intervals``
    are of; a dataset-level one such as ``auroc`` or ``map`` is looked up in
    ``intervals["dataset_metrics"]``, :mod:`callbacks.dataset_metrics`). ``None`` when the
    record has none for it (older records have no ``dataset_metrics``)."""
    if not intervals:
        return None
    if metric is not None and metric != intervals.get("metric"):
        intervals = (intervals.get("dataset_metrics") or {}).get(metric)
        if not intervals:
            return None
    if kind in ("clean", "robust_area"):
        data = intervals.get(kind)
        return None if data is None else Interval.from_dict(data)
    rows = intervals.get("worst" if kind == "worst" else "attacks") or []
    for row in rows:
        if abs(float(row["eps"]) - float(eps)) <= 1e-12 * max(1.0, abs(float(eps))) and \
                (kind == "worst" or row.get("attack") == attack):
            return Interval.from_dict(row)
    return None


def evaluation_intervals(record: Any, table: SampleTable, evidence: Any, task: Any, direction: Any,
                         level: float = DEFAULT_LEVEL, seed: int = 0) -> dict[str, Any]:
    """The record's ``intervals`` of one evaluation: :func:`record_intervals` of the per-sample
    ``table`` (the task's per-sample metric) and, with dataset-level ``evidence``, its
    ``"dataset_metrics"`` (:func:`callbacks.dataset_metrics.dataset_intervals`: AUROC, mAP…, a
    bootstrap over images). ``direction(task, metric, *fallback)``: whether higher is better
    (:func:`callbacks.common.metric_direction`)."""
    from callbacks.per_sample import metric_name

    eps = sorted({e.eps for e in record.attacks})
    attacks = [(e.attack, e.eps) for e in record.attacks]
    out = record_intervals(table, metric_name(task), eps, attacks, not direction(task, task.main_metric), level, seed)
    if evidence is not None:
        from callbacks.dataset_metrics import dataset_intervals

        higher = {m: d for m in evidence.metrics if (d := direction(task, m, None)) is not None}
        out["dataset_metrics"] = dataset_intervals(evidence, eps, attacks, higher, level, seed)
    return out
