"""Dataset-level metrics as statistics of image weights: each metric of an evidence column
(:mod:`callbacks.evidence`) computed on many image multisets at once, ``weights[R, n] -> [R]``,
as torchmetrics computes it on the evaluated set (binary and macro AUROC, balanced accuracy, F1;
COCO mAP from per-image matches). The bootstrap of :mod:`callbacks.dataset_metrics` draws the
weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from callbacks.evidence import Evidence

__all__ = ["Statistic", "auroc_statistic", "statistics"]

#: statistics are vectorised over resamples; this bounds one chunk's image weights
_CHUNK_VALUES = 4_000_000
Statistic = Callable[[np.ndarray], np.ndarray]


def _chunked(fn: Statistic, n: int, per_row: int) -> Statistic:
    """``fn`` applied to row chunks of ``weights[R, n]`` (bounded memory)."""
    def run(weights: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(weights)
        step = max(1, int(_CHUNK_VALUES // max(1, n * per_row)))
        return np.concatenate([np.asarray(fn(w[s:s + step]), dtype=np.float64) for s in range(0, w.shape[0], step)])
    return run


def auroc_statistic(scores: np.ndarray, positive: np.ndarray) -> Statistic:
    """Binary AUROC (Mann–Whitney: P(score of a positive > score of a negative), ties ½; what
    torchmetrics' exact ROC integrates) as a statistic of image weights ``[R, n] -> [R]``, NaN
    where a multiset lacks a class. Equal to :func:`callbacks.image_bootstrap.weighted_auroc`, but
    the sort and the tie groups are computed once: per call it is a cumulative sum of the
    negatives' weights in score order and, per positive, the weight of the negatives below its
    score and tied with it (two gathers) — no per-resample sort."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order]
    new = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(new) - 1
    starts = np.nonzero(new)[0]
    ends = np.r_[starts[1:], s.size]                       # one past each tie group's end
    neg_before = np.r_[0, np.cumsum(~pos)]                  # negatives at sorted positions < i
    p_at = np.nonzero(pos)[0]
    below_idx = neg_before[starts[group[p_at]]]            # negatives strictly below each positive
    upto_idx = neg_before[ends[group[p_at]]]               # … below or tied with it
    neg_cols, pos_cols = order[~pos], order[pos]

    def stat(w: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(w)
        wn = w[:, neg_cols]
        c = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(wn, axis=1)], axis=1)
        below, upto = c[:, below_idx], c[:, upto_idx]
        wp = w[:, pos_cols]
        num = (wp * (0.5 * (below + upto))).sum(axis=1)
        den = wp.sum(axis=1) * c[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return _chunked(stat, scores.size, 4)


def _mean_over(stats: list[Statistic]) -> Statistic:
    """The macro average of per-class statistics; a class undefined in a multiset (absent) is
    left out of that multiset's mean."""
    def stat(w: np.ndarray) -> np.ndarray:
        per = np.stack([f(w) for f in stats])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(per, axis=0)
    return stat


def _score_statistics(evidence: Evidence, key: str) -> dict[str, Statistic]:
    """``{metric: statistic(weights[R, n]) -> [R]}`` of one ``scores`` column, each as
    torchmetrics computes it in :meth:`ClassificationModule.build_metrics`: binary AUROC of the
    positive-class probability, balanced accuracy and F1 at ``p > 0.5``; multi-class macro
    one-vs-rest AUROC, macro recall and macro F1 of the argmax; multi-label macro AUROC."""
    info = evidence.info
    k = int(info.get("classes", 2))
    multilabel = bool(info.get("multilabel", False))
    n = evidence.n
    values = evidence.columns[key]
    out: dict[str, Statistic] = {}
    if multilabel:
        probs = np.asarray(values, dtype=np.float64).reshape(n, k)
        labels = np.asarray(evidence.targets, dtype=np.float64).reshape(n, k) > 0.5
        out["auroc"] = _mean_over([auroc_statistic(probs[:, c], labels[:, c]) for c in range(k)])
        return out
    y = np.asarray(evidence.targets, dtype=np.int64).reshape(n)
    if k == 2:
        p1 = np.asarray(values, dtype=np.float64).reshape(n)
        pred = (p1 > 0.5).astype(np.int64)
        out["auroc"] = auroc_statistic(p1, y == 1)
    else:
        # torchmetrics' macro average keeps every class (an absent one counts 0 and warns); a
        # class absent from a resample is left out there
        probs = np.asarray(values, dtype=np.float64).reshape(n, k)
        pred = probs.argmax(axis=1)
        out["auroc"] = _mean_over([auroc_statistic(probs[:, c], y == c) for c in range(k)])
    onehot_y = (y[:, None] == np.arange(k)[None, :]).astype(np.float64)       # [n, K]
    onehot_p = (pred[:, None] == np.arange(k)[None, :]).astype(np.float64)
    design = np.concatenate([onehot_y * onehot_p, onehot_y, onehot_p], axis=1)  # [n, 3K]
    last: list[Any] = [None, None]

    def counts(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """tp, support, predicted per class ``[R, K]``: one product, shared by both metrics."""
        if last[0] is not w:
            last[0], last[1] = w, np.atleast_2d(w) @ design
        m = last[1]
        return m[:, :k], m[:, k:2 * k], m[:, 2 * k:]

    def balanced(w: np.ndarray) -> np.ndarray:
        tp, sup, predicted = counts(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(sup > 0, tp / np.where(sup > 0, sup, 1.0), 0.0)
        # torchmetrics' macro recall counts a class absent from the targets as 0 when it is
        # predicted and leaves out a class neither present nor predicted
        used = (sup + predicted) > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(used.any(axis=1), (recall * used).sum(axis=1) / used.sum(axis=1), np.nan)

    def f1(w: np.ndarray) -> np.ndarray:
        tp, sup, predicted = counts(w)
        den = sup + predicted                                                  # 2tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1.0), 0.0)
        if k == 2:
            return per[:, 1]                                                   # binary: the positive class
        present = den > 0
        return np.where(present.any(axis=1), (per * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1), np.nan)

    out["balanced_accuracy"] = balanced
    out["f1"] = f1
    return out


def _match_statistics(evidence: Evidence, key: str) -> dict[str, Statistic]:
    """``{map, map_50, map_75: statistic(weights[R, n]) -> [R]}`` of one ``matches`` column
    (:func:`lightning_modules.metrics.detection.ap_statistic`, the lists parsed once); the
    three share one computation per weight matrix."""
    from lightning_modules.metrics.detection import ap_statistic

    info = evidence.info
    names = [m for m in evidence.metrics if m in ("map", "map_50", "map_75")]
    keys = [(m, None if m == "map" else {"map_50": 0.5, "map_75": 0.75}[m]) for m in names]
    compute = ap_statistic(evidence.columns[key], evidence.targets, info["iou_thresholds"],
                           info["rec_thresholds"], keys)
    last: list[Any] = [None, None]

    def one(name: str) -> Statistic:
        def stat(w: np.ndarray) -> np.ndarray:
            if last[0] is not w:
                last[0], last[1] = w, compute(w)
            return last[1][name]
        return stat
    return {m: one(m) for m in names}


def statistics(evidence: Evidence, key: str) -> dict[str, Statistic]:
    """``{metric: statistic(weights[R, n]) -> float64[R]}`` for one column ``key`` of
    ``evidence``: the metric on the image multiset each weight row describes (NaN where it is
    undefined, e.g. AUROC of a resample with one class); ``ones((1, n))`` gives the metric of
    the evaluated set, the record's number."""
    if key not in evidence.columns:
        raise KeyError(f"dataset-level evidence has no column {key!r}; columns: {list(evidence.columns)[:6]}")
    fn = _score_statistics if evidence.kind == "scores" else _match_statistics
    return {m: s for m, s in fn(evidence, key).items() if m in evidence.metrics}
