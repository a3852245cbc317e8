"""Detection metric: a thin wrapper over torchmetrics' ``MeanAveragePrecision``.

The wrapped metric returns a dozen values (and a tensor of class ids) that loggers cannot take;
this one keeps the COCO-style numbers a robustness study reports: ``map`` (mAP@[.5:.95]),
``map_50`` and ``map_75``. Boxes are ``xyxy`` absolute pixels, labels in ``[0, C)`` (the batch
contract) — the background shift of some torchvision models is undone before the metric sees
them. Backend: ``pycocotools`` (a declared dependency of the project).
"""

from __future__ import annotations

from collections.abc import Sequence

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
