"""Object detection, data side: ``boxes`` a list of ``B`` float32 ``[N_i, 4]`` (x1, y1, x2, y2
pixels of the delivered image) and ``labels`` a list of ``B`` int64 ``[N_i]`` in
``[0, num_classes)`` (no background class); ``N_i`` may be 0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from datamodules.tasks.base import DataTask


class DetectionData(DataTask):
    """Boxes with a class each; ragged per image."""

    name: ClassVar[str] = "detection"
    target_keys: ClassVar[tuple[str, ...]] = ("boxes", "labels")
    target_word: ClassVar[str] = "box labels"
    has_boxes: ClassVar[bool] = True
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)
    default_num_classes: ClassVar[int] = 3
    min_classes: ClassVar[int] = 1

    def check_tensors(self, x: Any, y: Any, who: str = "evaluate") -> tuple[Tensor, Any]:
        """``x`` float ``[N, C, H, W]``; ``y`` one ``{"boxes" [N_i, 4] xyxy pixels, "labels" [N_i]}``
        per image."""
        if not isinstance(x, Tensor):
            return super().check_tensors(x, y, who)
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{who}: detection images x must be float [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if not isinstance(y, (list, tuple)) or len(y) != x.shape[0]:
            raise ValueError(f"{who}: detection targets y must be a list of {x.shape[0]} dicts "
                             "{'boxes': [N_i, 4], 'labels': [N_i]}, one per image")
        out = []
        for i, t in enumerate(y):
            if not (isinstance(t, Mapping) and {"boxes", "labels"} <= set(t)):
                raise ValueError(f"{who}: detection target {i} must be a dict with 'boxes' and 'labels'")
            boxes, labels = torch.as_tensor(t["boxes"], dtype=torch.float32), torch.as_tensor(t["labels"])
            if boxes.reshape(-1, 4).shape[0] != labels.reshape(-1).shape[0] or (boxes.numel() and boxes.shape[-1] != 4):
                raise ValueError(f"{who}: detection target {i}: boxes [N, 4] and labels [N] disagree: "
                                 f"{tuple(boxes.shape)} vs {tuple(labels.shape)}")
            out.append({"boxes": boxes.reshape(-1, 4), "labels": labels.reshape(-1).long()})
        return x.float(), out

    def tensor_item(self, y: Any) -> dict[str, Any]:
        return {"boxes": y["boxes"], "labels": y["labels"]}

    def check_target_classes(self, y: Any, k: int, who: str = "evaluate") -> None:
        bad = [i for i, t in enumerate(y) if t["labels"].numel() and not (0 <= int(t["labels"].min())
                                                                        and int(t["labels"].max()) < k)]
        if bad:
            raise ValueError(f"{who}: box labels out of range [0, {k}) for the detector's {k} object "
                             f"classes at samples {bad[:10]}{' …' if len(bad) > 10 else ''}")

    def check_synthetic(self, num_landmarks: int, max_objects: int) -> None:
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")

    def manifest_rows(self) -> type | None:
        from datamodules.manifest.task_geometry import DetectionRows

        return DetectionRows

    def synthetic_sample(self, rng: np.random.Generator, index: int, params: dict[str, Any]) -> dict[str, Any]:
        from datamodules.synthetic.samples import make_detection

        return make_detection(rng, index, params)

    def synthetic_class_names(self, k: int) -> list[str]:
        names = ["rbc", "wbc", "platelet"]
        return [names[i % 3] + (f"_{i // 3 + 1}x" if i >= 3 else "") for i in range(k)]
