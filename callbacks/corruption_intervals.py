"""Intervals of the corruption results: per corruption × severity mean, per corruption, overall
(:func:`corruption_intervals`, from the per-sample file), and the paired bootstrap of a model's
mCE against a reference model's (:func:`mce_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from callbacks.corruption_eval import condition
from callbacks.corruption_section import CorruptionSection, mean_corruption_error

__all__ = ["corruption_intervals", "mce_interval"]


def corruption_intervals(table: Any, metric: str, section: CorruptionSection, level: float,
                         seed: int) -> dict[str, Any]:
    """Intervals of each corruption × severity mean, of each corruption's mean over severities
    and of the overall mean (the per-sample mean over the cells: a bootstrap), from the
    per-sample ``table``."""
    from callbacks.per_sample import column_name
    from callbacks.record_intervals import _interval
    from callbacks.uncertainty import mean_interval

    cells, means = [], []
    per_name: dict[str, list[np.ndarray]] = {}
    for name in section.names():
        for s in section.severities:
            col = table.columns.get(column_name(condition(name), metric, s))
            if col is None:
                continue
            per_name.setdefault(name, []).append(col)
            ci = _interval(col, level, seed)
            if ci is not None:
                cells.append({"corruption": name, "severity": int(s), **ci.to_dict()})
        if per_name.get(name):
            avg = np.nanmean(np.stack(per_name[name]), axis=0)
            avg = avg[np.isfinite(avg)]
            if avg.size:
                means.append({"corruption": name, **mean_interval(avg, level, seed).to_dict()})
    out: dict[str, Any] = {"cells": cells, "per_corruption": means}
    if per_name:
        allv = np.nanmean(np.stack([c for cols in per_name.values() for c in cols]), axis=0)
        allv = allv[np.isfinite(allv)]
        out["mean"] = mean_interval(allv, level, seed).to_dict() if allv.size else None
    return out


def mce_interval(columns: Mapping[str, np.ndarray], ref_columns: Mapping[str, np.ndarray], names: Sequence[str],
                 severities: Sequence[int], metric: str, lower_is_better: bool = False,
                 labels: np.ndarray | None = None, num_classes: int | None = None, level: float = 0.95,
                 seed: int = 0, n_resamples: int = 2000) -> dict[str, Any]:
    """Paired percentile bootstrap over test samples of a model's mCE and relative mCE against a
    reference model (Hendrycks & Dietterich 2019), from both runs' per-sample values.

    Each resample draws the test samples with repetition (as multinomial weights,
    :func:`callbacks.image_bootstrap.bootstrap_weights`) and applies the *same* draw to both models
    (paired: the samples are the same images), recomputes every corruption × severity error and
    the clean error of both, and passes them to :func:`mean_corruption_error`, so each resample's
    mCE has exactly the point estimate's definition. A corruption whose CE (or relative CE)
    denominator is ≤ 0 in a resample is left out of that resample's mean, as in the point
    estimate; ``undefined`` says in what fraction of resamples each corruption was left out.
    The interval is the percentile interval of the resamples whose mCE is defined: the mCE is a
    ratio of dataset-level errors (balanced error is not a mean of per-sample values), so the
    percentile bootstrap is used, as for the project's other dataset-level metrics
    (:func:`callbacks.image_bootstrap.weighted_interval`); BCa would need a jackknife over samples of
    the whole statistic and is not used.

    Args:
        columns, ref_columns: per-sample values ``[n]`` of the model and of the reference, on
            the same samples in the same order, keyed as in ``robustness_samples.csv``:
            ``clean/<metric>`` and ``corruption-<name>/<severity>/<metric>``.
        names, severities: the corruptions and severities to use.
        metric: the per-sample metric (``accuracy``: 0/1 correctness for classification).
        lower_is_better: the metric's direction (error ``m`` instead of ``1 − m``).
        labels: ``int[n]`` class labels: the error is the balanced error (1 − mean per-class
            recall of the 0/1 ``metric``; MedMNIST-C's), else the plain mean error.
        num_classes: classes of ``labels`` (default ``labels.max() + 1``).
    Returns:
        ``{"mce", "relative_mce"}`` (:class:`callbacks.uncertainty.Interval`; the estimate is the
        statistic on the observed samples), ``"error"`` (``"balanced"`` or ``"plain"``),
        ``"undefined"`` / ``"relative_undefined"`` (``{corruption: fraction of resamples}``),
        ``"estimate_undefined"`` / ``"estimate_relative_undefined"`` (the observed set's left-out
        corruptions), ``"resamples"`` and ``"defined"`` (resamples with a finite mCE / relative mCE).
    """
    from callbacks.image_bootstrap import bootstrap_weights, weighted_balanced_accuracy
    from callbacks.per_sample import column_name
    from callbacks.uncertainty import Interval, _check_level

    level = _check_level(level)
    keys = [column_name("clean", metric)] + [column_name(condition(c), metric, s) for c in names for s in severities]
    arrays = []
    for which, cols in (("model", columns), ("reference", ref_columns)):
        missing = [k for k in keys if k not in cols]
        if missing:
            raise KeyError(f"mce_interval: the {which}'s per-sample columns lack {missing[:3]}"
                           f"{' …' if len(missing) > 3 else ''}")
        arrays.append({k: np.asarray(cols[k], dtype=np.float64).reshape(-1) for k in keys})
    n = arrays[0][keys[0]].shape[0]
    if n == 0 or any(a.shape[0] != n for d in arrays for a in d.values()):
        raise ValueError(f"mce_interval: every per-sample column needs the same n > 0 samples (first has {n})")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.shape[0] != n:
            raise ValueError(f"mce_interval: labels has {labels.shape[0]} entries for {n} samples")
        bad = [k for d in arrays for k, a in d.items() if not np.isin(a, (0.0, 1.0)).all()]
        if bad:
            raise ValueError(f"mce_interval: balanced error needs 0/1 per-sample {metric!r}; {bad[0]} is not")
        k_cls = int(num_classes) if num_classes is not None else int(labels.max()) + 1

    def errors(weights: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per model: ``{column: error[R]}`` under sample ``weights[R, n]``."""
        out = []
        for d in arrays:
            errs = {}
            for k, a in d.items():
                if labels is not None:
                    errs[k] = 1.0 - weighted_balanced_accuracy(a, labels, k_cls, weights)
                    continue
                ok = np.isfinite(a)
                with np.errstate(invalid="ignore", divide="ignore"):
                    m = (weights @ np.where(ok, a, 0.0)) / (weights @ ok.astype(np.float64))
                errs[k] = m if lower_is_better else 1.0 - m
            out.append(errs)
        return out

    def statistic(weights: np.ndarray) -> list[dict[str, Any]]:
        mod, ref = errors(weights)
        res = []
        for r in range(weights.shape[0]):
            by = {c: {int(s): float(mod[column_name(condition(c), metric, s)][r]) for s in severities} for c in names}
            rby = {c: {int(s): float(ref[column_name(condition(c), metric, s)][r]) for s in severities} for c in names}
            res.append(mean_corruption_error(by, float(mod[keys[0]][r]), rby, float(ref[keys[0]][r])))
        return res

    point = statistic(np.ones((1, n)))[0]
    draws = statistic(bootstrap_weights(n, n_resamples, seed))
    alpha = (1 - level) / 2
    out: dict[str, Any] = {"error": "balanced" if labels is not None else "plain", "resamples": int(n_resamples)}
    for key, per in (("mce", "ce"), ("relative_mce", "relative_ce")):
        vals = np.array([d[key] for d in draws], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        est = float(point[key])
        if vals.size < max(20, n_resamples // 2) or not math.isfinite(est):
            out[key] = Interval(est, math.nan, math.nan, level, n, f"percentile ({vals.size} defined resamples)")
        else:
            low, high = (float(v) for v in np.quantile(vals, [alpha, 1 - alpha]))
            tol = 1e-9 * max(1.0, abs(est))  # float noise only: a genuine exclusion is kept and shown
            low = est if est < low <= est + tol else low
            high = est if est - tol <= high < est else high
            out[key] = Interval(est, low, high, level, n, "percentile, paired")
        out["defined" if key == "mce" else "relative_defined"] = int(vals.size)
        label = "undefined" if key == "mce" else "relative_undefined"
        out[label] = {c: float(np.mean([not math.isfinite(d[per][c]) for d in draws])) for c in names}
        out["estimate_" + label] = [c for c in names if not math.isfinite(point[per][c])]
    return out
