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
