"""Dataset-level metrics under bootstrap image weights, and their percentile intervals.

A bootstrap resample of ``n`` images is a vector of multinomial counts (:func:`bootstrap_weights`),
so a metric that is a ratio of weighted sums — AUROC as a weighted Mann–Whitney sum
(:func:`weighted_auroc`, :func:`weighted_macro_auroc`), balanced accuracy as weighted per-class
recalls (:func:`weighted_balanced_accuracy`) — is computed for every resample at once (a matrix
product, not a loop). :func:`weighted_interval` is the percentile interval of such a
statistic; :func:`resampled_interval` the same for a statistic of resampled indices (one call
per resample). The record's own dataset-level intervals are BCa (:mod:`callbacks.dataset_metrics`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

from callbacks.uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Interval, _check_level

__all__ = ["bootstrap_weights", "resampled_interval", "weighted_auroc", "weighted_balanced_accuracy",
           "weighted_interval", "weighted_macro_auroc"]


def resampled_interval(statistic: Callable[[np.ndarray], float], n: int, level: float = DEFAULT_LEVEL,
                       seed: int = 0, n_resamples: int = 500) -> Interval:
    """Percentile bootstrap over images of a dataset-level metric (AUROC, mAP).

    Args:
        statistic: ``statistic(indices) -> float``: the metric recomputed on the images
            ``indices`` (an ``int64[n]`` resample with repetition; ``np.arange(n)`` is the
            observed set). A resample on which the metric is undefined (NaN, e.g. AUROC with
            one class) is dropped; the interval says how many were kept through ``method``.
        n: number of images.
        n_resamples: fewer than for means: each resample recomputes the whole metric.
    """
    level = _check_level(level)
    if n <= 0:
        raise ValueError(f"resampled_interval: need n > 0 images, got {n}")
    estimate = float(statistic(np.arange(n)))
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(int(n_resamples))], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size < max(20, n_resamples // 2):
        return Interval(estimate, math.nan, math.nan, level, n, f"percentile ({draws.size} defined resamples)")
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(estimate, float(min(low, estimate)), float(max(high, estimate)), level, n, "percentile")


def bootstrap_weights(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``float64[R, n]``: how often each of ``n`` images is drawn in each of ``R`` resamples
    (multinomial counts summing to ``n``): a resample as weights, so a metric that is a ratio of
    weighted sums is computed for every resample at once (a matrix product, not a loop)."""
    if n <= 0:
        raise ValueError(f"bootstrap_weights: need n > 0 images, got {n}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_resamples)).astype(np.float64)


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Binary AUROC (Mann–Whitney: P(score of a positive > score of a negative), ties count ½)
    under image weights.

    Args:
        scores: ``[n]`` scores of the positive class.
        positive: ``Bool[n]`` labels.
        weights: ``[R, n]`` (e.g. :func:`bootstrap_weights`) or ``[n]``.
    Returns:
        ``[R]`` (or a scalar array); NaN where a resample has no positive or no negative.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    _, starts = np.unique(scores[order], return_index=True)
    w_sorted, pos_sorted = w[:, order], positive[order]
    pos_g = np.add.reduceat(w_sorted * pos_sorted, starts, axis=1)    # [R, groups of tied scores]
    neg_g = np.add.reduceat(w_sorted * ~pos_sorted, starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g                            # negatives strictly below
    num = (pos_g * (below + 0.5 * neg_g)).sum(axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out if np.ndim(weights) == 2 else out[0]


def weighted_macro_auroc(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC averaged over classes (torchmetrics' multiclass ``average="macro"``);
    ``probs`` ``[n, K]``, ``labels`` ``int[n]``, ``weights`` ``[R, n]`` → ``[R]``. A class absent
    from a resample is left out of that resample's average."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    per_class = np.stack([weighted_auroc(probs[:, c], labels == c, weights) for c in range(probs.shape[1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resample: stays NaN
        return np.nanmean(per_class, axis=0)


def weighted_balanced_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int,
                               weights: np.ndarray) -> np.ndarray:
    """Mean over classes of the per-class recall under image weights ``[R, n]`` → ``[R]``;
    a class absent from a resample is left out of that resample's mean."""
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    onehot = (labels[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)   # [n, K]
    hits, totals = w @ (onehot * correct[:, None]), w @ onehot                         # [R, K]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(totals > 0, hits / np.where(totals > 0, totals, 1.0), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(recall, axis=1)
    return out if np.ndim(weights) == 2 else out[0]


def weighted_interval(statistic: Callable[[np.ndarray], np.ndarray], n: int, level: float = DEFAULT_LEVEL,
                      seed: int = 0, n_resamples: int = DEFAULT_RESAMPLES) -> Interval:
    """Percentile bootstrap over images of a dataset-level metric given as a vectorised
    ``statistic(weights[R, n]) -> [R]`` (see :func:`weighted_auroc`): the estimate is the
    statistic at unit weights; resamples where it is undefined (NaN) are dropped."""
    level = _check_level(level)
    estimate = float(np.asarray(statistic(np.ones((1, n))))[0])
    draws = np.asarray(statistic(bootstrap_weights(n, n_resamples, seed)), dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size < max(20, n_resamples // 2) or not math.isfinite(estimate):
        return Interval(estimate, math.nan, math.nan, level, n, f"percentile ({draws.size} defined resamples)")
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(estimate, float(min(low, estimate)), float(max(high, estimate)), level, n, "percentile")
