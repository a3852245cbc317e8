"""The 2-D dataset of a manifest's classification, segmentation or landmark samples."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.imagefiles import IndexedImageDataset
from datamodules.manifest.handler import TaskRows
from datamodules.manifest.sample import Sample
from datamodules.transforms import JointTransform

__all__ = ["ManifestDataset"]


class ManifestDataset(IndexedImageDataset):
    """2-D samples of a manifest through a :class:`JointTransform`; the task's row handler
    reads what moves with the image (mask, points) and names the item's target keys.

    Items: ``image`` float32 ``[C, H, W]`` in [0, 1], ``index`` int64 ``[]``, and
    ``label`` int64 ``[]`` (or float32 ``[K]`` multi-label) / ``mask`` int64 ``[H, W]`` /
    ``landmarks`` float32 ``[K, 2]`` + ``visible`` bool ``[K]`` + ``spacing`` float32 ``[]``.
    A failure names the manifest row and file, also from inside a DataLoader worker.
    """

    def __init__(self, samples: list[Sample], rows: TaskRows, channels: int,
                 transform: JointTransform, num_classes: int, multilabel: bool, name: str) -> None:
        super().__init__(records=samples, transform=transform, channels=channels, name=name)
        self.rows, self.num_classes, self.multilabel = rows, num_classes, multilabel

    def load(self, s: Sample) -> dict[str, Any]:
        image = self.read(s.image, s.hw)  # type: ignore[arg-type]
        moving = self.rows.load_targets(s, image, self.num_classes)
        return self.transform(image, mask=moving.get("mask"), keypoints=moving.get("keypoints"))

    def targets(self, s: Sample, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.rows.item(s, out, self.num_classes, self.multilabel)

    def describe(self, s: Sample) -> str:
        return f"row {', '.join(map(str, s.rows))}, {s.image}"
