"""The 2-D dataset of a manifest's classification, segmentation or landmark samples."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from datamodules.imagefiles import BadSampleError, read_image
from datamodules.manifest.handler import TaskRows
from datamodules.manifest.sample import Sample
from datamodules.transforms import JointTransform

__all__ = ["ManifestDataset"]


class ManifestDataset(Dataset):
    """2-D samples of a manifest through a :class:`JointTransform`; the task's row handler
    reads what moves with the image (mask, points) and names the item's target keys.

    Items: ``image`` float32 ``[C, H, W]`` in [0, 1], ``index`` int64 ``[]``, and
    ``label`` int64 ``[]`` (or float32 ``[K]`` multi-label) / ``mask`` int64 ``[H, W]`` /
    ``landmarks`` float32 ``[K, 2]`` + ``visible`` bool ``[K]`` + ``spacing`` float32 ``[]``.
    A failure names the manifest row and file, also from inside a DataLoader worker.
    """

    def __init__(self, samples: list[Sample], rows: TaskRows, channels: int,
                 transform: JointTransform, num_classes: int, multilabel: bool, name: str) -> None:
        self.samples, self.rows, self.channels = samples, rows, channels
        self.transform, self.num_classes, self.multilabel = transform, num_classes, multilabel
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        try:
            image = read_image(s.image, self.channels)  # type: ignore[arg-type]
            if image.shape[:2] != s.hw:
                raise BadSampleError(f"image is {image.shape[:2]} (H, W) but was {s.hw} when "
                                     "the manifest was indexed")
            moving = self.rows.load_targets(s, image, self.num_classes)
            out = self.transform(image, mask=moving.get("mask"), keypoints=moving.get("keypoints"))
        except Exception as err:
            raise BadSampleError(f"{self.name}: sample {index} (row {', '.join(map(str, s.rows))}, "
                                 f"{s.image}): {err}") from err
        item: dict[str, torch.Tensor] = {"image": out["image"]}
        item.update(self.rows.item(s, out, self.num_classes, self.multilabel))
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item
