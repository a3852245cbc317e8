"""One detection image as indexed (:class:`DetectionRecord`) and the dataset that reads it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datamodules.imagefiles import IndexedImageDataset
from datamodules.transforms import JointTransform


@dataclass
class DetectionRecord:
    """One image and its valid boxes, in pixels of the image on disk.

    Attributes:
        image_id: VOC file stem or COCO image id (as a string).
        image_path: the image file.
        image_hw: ``(H, W)`` on disk.
        boxes: float32 ``[N, 4]`` xyxy, continuous pixel edges, all valid (x2 > x1, y2 > y1,
            inside the image).
        labels: int64 ``[N]`` in ``[0, num_classes)``.
        source: annotation file the boxes come from.
    """

    image_id: str
    image_path: Path
    image_hw: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    source: Path


class DetectionDataset(IndexedImageDataset):
    """Map-style dataset of :class:`DetectionRecord` items through a :class:`JointTransform`.

    Item: ``image`` float32 ``[C, H, W]`` in [0, 1], ``boxes`` float32 ``[N, 4]``,
    ``labels`` int64 ``[N]``, ``index`` int64 ``[]``.
    """

    def __init__(self, records: Sequence[DetectionRecord], transform: JointTransform,
                 channels: Literal[1, 3] = 3, name: str = "detection") -> None:
        super().__init__(records=records, transform=transform, channels=channels, name=name)

    def load(self, record: DetectionRecord) -> dict[str, Any]:
        image = self.read(record.image_path, record.image_hw)
        return self.transform(image, boxes=record.boxes, box_labels=record.labels)

    def targets(self, record: DetectionRecord, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        boxes, labels = out["boxes"].reshape(-1, 4), out["box_labels"].reshape(-1)
        # JointTransform already drops boxes an augmentation emptied; this guard keeps the
        # contract (x2 > x1, y2 > y1) even if that ever changes.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"boxes": boxes[keep].to(torch.float32), "labels": labels[keep].to(torch.int64)}

    def describe(self, record: DetectionRecord) -> str:
        return f"image {record.image_id}, {record.image_path}"
