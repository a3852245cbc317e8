"""Detection metric: a thin wrapper over torchmetrics' ``MeanAveragePrecision``.

The wrapped metric returns a dozen values (and a tensor of class ids) that loggers cannot take;
this one keeps the COCO-style numbers a robustness study reports: ``map`` (mAP@[.5:.95]),
``map_50`` and ``map_75``. Boxes are ``xyxy`` absolute pixels, labels in ``[0, C)`` (the batch
contract) — the background shift of some torchvision models is undone before the metric sees
them. Backend: ``pycocotools`` (a declared dependency of the project).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["DetectionMAP"]


class DetectionMAP(MeanAveragePrecision):
    """``MeanAveragePrecision(box_format="xyxy", iou_type="bbox")`` computing only ``keys``.

    ``update(preds, target)`` takes lists of per-image dicts: ``preds[i] = {"boxes": [N, 4],
    "scores": [N], "labels": [N]}``, ``target[i] = {"boxes": [M, 4], "labels": [M]}`` (``N`` or
    ``M`` may be 0). State is torchmetrics' list state (gathered across DDP ranks).

    Args:
        keys: which values of the full result ``compute()`` returns.
    """

    def __init__(self, keys: Sequence[str] = ("map", "map_50", "map_75"), **kwargs) -> None:
        kwargs.setdefault("box_format", "xyxy")
        kwargs.setdefault("iou_type", "bbox")
        kwargs.setdefault("backend", "pycocotools")
        super().__init__(**kwargs)
        self.keys = tuple(keys)

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        detach = [{k: v.detach() for k, v in p.items()} for p in preds]
        tgt = [{k: v.detach() for k, v in t.items()} for t in target]
        super().update(detach, tgt)

    def compute(self) -> dict[str, Tensor]:
        full = super().compute()
        missing = [k for k in self.keys if k not in full]
        if missing:
            raise KeyError(f"MeanAveragePrecision has no {missing}; available: {sorted(full)}")
        # COCO reports -1 when there is no ground truth at all; keep it a float tensor.
        return {k: torch.as_tensor(full[k], dtype=torch.float32) for k in self.keys}


def per_image_ap50(preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> Tensor:
    """``[B]`` average precision at IoU 0.5 of each image alone, averaged over the classes that
    have a ground-truth box in it; NaN for an image without ground truth (undefined: nothing
    to find).

    Per class, detections are matched greedily in descending score, each to the unmatched
    ground-truth box of highest IoU ≥ 0.5 (the COCO / VOC matching); AP is the area under the
    precision envelope (all-point interpolation). It is the per-image counterpart of
    ``map_50``: it falls when objects are missed *and* when false positives of the object's
    class outscore the true ones, which per-image recall at a fixed score threshold would not
    see (and recall needs a threshold the dataset-level mAP does not have).

    Args:
        preds: per image ``{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}``.
        target: per image ``{"boxes": [M, 4] xyxy, "labels": [M]}``.
    """
    from torchvision.ops import box_iou

    if len(preds) != len(target):
        raise ValueError(f"per_image_ap50: {len(preds)} predictions for {len(target)} targets")
    out = []
    for p, t in zip(preds, target):
        gl = t["labels"].reshape(-1).long()
        gb = t["boxes"].reshape(-1, 4).float()
        if gl.numel() == 0:
            out.append(float("nan"))
            continue
        pl = p["labels"].reshape(-1).long().to(gl.device)
        pb = p["boxes"].reshape(-1, 4).float().to(gb.device)
        ps = p["scores"].reshape(-1).float().to(gb.device)
        aps = []
        for c in gl.unique():
            g = gb[gl == c]
            keep = pl == c
            boxes, scores = pb[keep], ps[keep]
            if boxes.numel() == 0:
                aps.append(0.0)
                continue
            order = scores.argsort(descending=True, stable=True)
            iou = box_iou(boxes[order], g)  # [n, m]
            free = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
            tp = torch.zeros(order.numel())
            for i in range(order.numel()):
                cand = torch.where(free, iou[i], torch.full_like(iou[i], -1.0))
                j = int(cand.argmax())
                if float(cand[j]) >= 0.5:
                    free[j] = False
                    tp[i] = 1.0
            precision = tp.cumsum(0) / torch.arange(1, tp.numel() + 1)
            envelope = precision.flip(0).cummax(0).values.flip(0)
            aps.append(float((envelope * tp).sum()) / g.shape[0])
        out.append(sum(aps) / len(aps))
    return torch.tensor(out, dtype=torch.float32)


__all__ += ["per_image_ap50"]


# --- the matches mAP is computed from, kept per image for the bootstrap over images ------------
@functools.lru_cache(maxsize=1)
def _thresholds() -> tuple[tuple[float, ...], tuple[float, ...]]:
    metric = DetectionMAP()
    return tuple(float(t) for t in metric.iou_thresholds), tuple(float(t) for t in metric.rec_thresholds)


def coco_thresholds() -> tuple[list[float], list[float]]:
    """``(iou_thresholds, recall_thresholds)`` exactly as :class:`DetectionMAP` hands them to
    COCOeval (torchmetrics' float32 ``linspace`` values: 0.5:0.05:0.95 and 0:0.01:1)."""
    iou, rec = _thresholds()
    return list(iou), list(rec)


def _xywh64(boxes: Tensor) -> np.ndarray:
    """``xyxy`` boxes ``[N, 4]`` converted to ``xywh`` in float32 (as torchmetrics hands them to
    COCO), then float64 (COCO's arithmetic)."""
    from torchvision.ops import box_convert

    b = box_convert(boxes.detach().reshape(-1, 4).float().cpu(), in_fmt="xyxy", out_fmt="xywh")
    return np.asarray(b.tolist(), dtype=np.float64).reshape(-1, 4)


def _coco_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[n, m]`` IoU of ``xywh`` boxes as pycocotools' ``bbIou`` computes it (no crowd)."""
    ix = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2]) - \
        np.maximum(dt[:, None, 0], gt[None, :, 0])
    iy = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3]) - \
        np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.where((ix > 0) & (iy > 0), ix * iy, 0.0)
    union = (dt[:, None, 2] * dt[:, None, 3]) + (gt[None, :, 2] * gt[None, :, 3]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def coco_matches(pred: dict[str, Tensor], target: dict[str, Tensor], iou_thresholds: Sequence[float],
                 max_detections: int = 100) -> tuple[list[list[float]], list[list[int]]]:
    """One image's detections matched to its ground truth as COCOeval's ``evaluateImg`` matches
    them for :class:`DetectionMAP` (area "all", no crowd, ``max_detections`` per class).

    Per class: detections sorted by descending score (stable), the first ``max_detections``
    kept; at each IoU threshold ``t`` each detection in turn takes the unmatched ground-truth
    box of highest IoU ``≥ t`` (COCO's tie rule: the last such box).

    Returns:
        ``detections``: ``[[class, score, tp_bits], …]`` in that order, ``tp_bits`` bit ``k``
        set when the detection is a true positive at ``iou_thresholds[k]``;
        ``ground_truth``: ``[[class, count], …]`` sorted by class.
        Together they determine every image's contribution to AP, so AP can be recomputed on
        any multiset of images (:func:`average_precision_from_matches`).
    """
    gl = target["labels"].detach().reshape(-1).long().cpu().tolist()
    pl = pred["labels"].detach().reshape(-1).long().cpu().tolist()
    ps = pred["scores"].detach().reshape(-1).float().cpu().tolist()
    gb, pb = _xywh64(target["boxes"]), _xywh64(pred["boxes"])
    thresholds = [min(float(t), 1 - 1e-10) for t in iou_thresholds]
    dets: list[list[float]] = []
    for c in sorted(set(pl) | set(gl)):
        d_idx = [i for i, lab in enumerate(pl) if lab == c]
        g_idx = [j for j, lab in enumerate(gl) if lab == c]
        order = sorted(d_idx, key=lambda i: -ps[i])[:max_detections]  # stable, as COCO's mergesort
        if not order:
            continue
        bits = [0] * len(order)
        if g_idx:
            iou = _coco_iou(pb[order], gb[g_idx])                      # [n, m]
            thr = np.asarray(thresholds)[:, None]                      # [T, 1]
            taken = np.zeros((len(thresholds), len(g_idx)), dtype=bool)
            weight = 1 << np.arange(len(thresholds))
            # a detection below every threshold is a false positive everywhere and takes nothing
            for i in np.nonzero(iou.max(axis=1) >= float(thr.min()))[0].tolist():
                # COCO's loop over ground truth keeps the *last* unmatched box of highest IoU ≥ t
                cand = np.where(taken, -1.0, iou[i][None, :])          # [T, m]
                best = cand.max(axis=1)
                last = cand.shape[1] - 1 - np.argmax(cand[:, ::-1] == best[:, None], axis=1)
                hit = best >= thr[:, 0]
                taken[np.nonzero(hit)[0], last[hit]] = True
                bits[i] = int((weight * hit).sum())
        dets += [[int(c), ps[i], bits[n]] for n, i in enumerate(order)]
    counts = {}
    for c in gl:
        counts[c] = counts.get(c, 0) + 1
    return dets, [[int(c), int(counts[c])] for c in sorted(counts)]


def _count_at_most(thresholds: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``searchsorted(thresholds, x, side="right")`` (how many thresholds are ≤ each ``x``) for
    thresholds within a rounding error of ``0, 1/m, …, 1`` (COCO's recall thresholds) and ``x``
    in ``[0, 1]``: a guess from ``x·m``, corrected by one step either way — exact, and several
    times faster than a binary search on large arrays."""
    m = thresholds.size - 1
    above = np.r_[thresholds, np.inf]       # above[g]: the next threshold a count g would pass
    below = np.r_[-np.inf, thresholds]      # below[g]: the last threshold a count g includes
    g = np.clip(np.floor(x * m).astype(np.int64) + 1, 0, m + 1)
    g += above[g] <= x
    g -= below[g] > x
    return g


def average_precision_from_matches(detections: Sequence[Sequence[Sequence[float]]],
                                   ground_truth: Sequence[Sequence[Sequence[int]]],
                                   weights: np.ndarray, iou_thresholds: Sequence[float],
                                   rec_thresholds: Sequence[float],
                                   keys: Sequence[tuple[str, float | None]] = (("map", None), ("map_50", 0.5),
                                                                               ("map_75", 0.75)),
                                   ) -> dict[str, np.ndarray]:
    """COCO mAP of many image multisets at once, from each image's matches (:func:`coco_matches`).

    A multiset is given by image ``weights[R, n]`` (how often each of the ``n`` images is in
    it: a bootstrap resample; ``ones`` is the evaluated set). Per class, every image's kept
    detections are sorted once by descending score (stable, images in order: COCOeval's
    ``accumulate``), and cumulative true / false positives are weighted sums — an image drawn
    ``k`` times counts ``k`` times, which gives the same precision envelope at every recall
    threshold as ``k`` copies would (copies of a detection are adjacent with equal precision
    steps). Precision ``tp / (tp + fp + spacing(1))``, recall ``tp / (ground-truth count)``, the
    envelope, and the 101-point interpolation follow COCOeval; a class with no ground truth in a
    multiset is left out of its mean. Only the positions of true positives are evaluated (the
    false positives enter as counts before them): the envelope at every recall threshold is the
    same, and the cost scales with the ground truth, not with the detections.

    Returns ``{key: float64[R]}`` for ``keys`` (``(name, IoU threshold)``, ``None``: mean over all
    thresholds); NaN for a multiset without ground truth.
    """
    w_all = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if len(detections) != w_all.shape[1] or len(ground_truth) != w_all.shape[1]:
        raise ValueError(f"average_precision_from_matches: {len(detections)} detection lists and "
                         f"{len(ground_truth)} ground-truth lists for weights of {w_all.shape[1]} images")
    return ap_statistic(detections, ground_truth, iou_thresholds, rec_thresholds, keys)(w_all)


def ap_statistic(detections: Sequence[Sequence[Sequence[float]]], ground_truth: Sequence[Sequence[Sequence[int]]],
                 iou_thresholds: Sequence[float], rec_thresholds: Sequence[float],
                 keys: Sequence[tuple[str, float | None]] = (("map", None), ("map_50", 0.5), ("map_75", 0.75)),
                 ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """:func:`average_precision_from_matches` with the image lists parsed and every class's
    ranking prepared once: returns ``weights[R, n] -> {key: float64[R]}`` (call it on chunks of
    resamples)."""
    n = len(detections)
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    rec = np.asarray(rec_thresholds, dtype=np.float64)
    n_t = thr.size
    classes = sorted({int(c) for g in ground_truth for c, _ in g})
    gt_count = np.zeros((n, len(classes)))
    col = {c: k for k, c in enumerate(classes)}
    for i, g in enumerate(ground_truth):
        for c, cnt in g:
            gt_count[i, col[int(c)]] = cnt
    img, cls, score, bits = [], [], [], []
    for i, dets in enumerate(detections):
        for c, s, b in dets:
            if int(c) in col:
                img.append(i)
                cls.append(int(c))
                score.append(float(s))
                bits.append(int(b))
    img_a, cls_a, score_a, bits_a = (np.asarray(img, dtype=np.int64), np.asarray(cls, dtype=np.int64),
                                     np.asarray(score, dtype=np.float64), np.asarray(bits, dtype=np.int64))
    # Per class and IoU threshold, only its true-positive positions matter: recall rises only
    # there, and the precision of a false positive never exceeds that of the point before it,
    # so the envelope at every recall threshold is the same computed on them alone. The false
    # positives enter as counts: all detections up to each such position (``cnt``: per image,
    # its detections between consecutive true positives) minus the true ones. The cost scales
    # with the matched ground truth, not with the detections.
    prepared: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
    for c in classes:
        sel = np.nonzero(cls_a == c)[0]
        order = sel[np.argsort(-score_a[sel], kind="mergesort")]
        per_t = []
        for t in range(n_t):
            at = np.nonzero((bits_a[order] >> t) & 1)[0]
            if at.size == 0:
                continue
            im = img_a[order[:at[-1] + 1]]
            cnt = np.zeros((n, at.size))
            np.add.at(cnt, (im, np.searchsorted(at, np.arange(im.size))), 1.0)
            per_t.append((t, cnt, img_a[order[at]]))
        prepared.append(per_t)
    eps = np.spacing(1)
    named = []
    for name, t in keys:
        if t is None:
            named.append((name, None))
            continue
        hit = np.nonzero(np.isclose(thr, float(t)))[0]
        if hit.size == 0:
            raise ValueError(f"average_precision_from_matches: no IoU threshold {t} in {list(thr)}")
        named.append((name, int(hit[0])))

    def stat(weights: np.ndarray) -> dict[str, np.ndarray]:
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[1] != n:
            raise ValueError(f"average_precision_from_matches: weights of {w.shape[1]} images for {n}")
        ap = np.full((w.shape[0], n_t, len(classes)), np.nan)
        for k, per_t in enumerate(prepared):
            npig = w @ gt_count[:, k]                                      # [R] ground truth
            defined = npig > 0
            ap[defined, :, k] = 0.0
            g = np.where(defined, npig, 1.0)[:, None]
            for t, cnt, img_at in per_t:
                cw = np.cumsum(w @ cnt, axis=1)                             # [R, P] detections so far
                tpc = np.cumsum(w[:, img_at], axis=1)                       # true positives so far
                rc = tpc / g
                pr = tpc / (cw + eps)                                       # tp / (tp + fp + spacing(1))
                env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                # recall thresholds r with rc[i-1] < r <= rc[i] take the envelope at i (COCO's
                # searchsorted(rc, r, "left")); thresholds above the last recall take 0
                share = np.diff(_count_at_most(rec, rc), axis=1, prepend=0)
                vals = (env * share).sum(axis=1) / rec.size
                ap[defined, t, k] = vals[defined]
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a multiset without ground truth: NaN
            for name, t in named:
                out[name] = np.nanmean(ap.reshape(ap.shape[0], -1) if t is None else ap[:, t, :], axis=1)
        return out
    return stat


__all__ += ["ap_statistic", "average_precision_from_matches", "coco_matches", "coco_thresholds"]
