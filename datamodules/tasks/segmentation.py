"""Segmentation, data side: ``mask`` int64 ``[B, H, W]`` (or ``[B, D, H, W]``) of class
indices, 0 = background."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from datamodules.tasks.base import DataTask


class SegmentationData(DataTask):
    """A class per pixel (voxel)."""

    name: ClassVar[str] = "segmentation"
    target_keys: ClassVar[tuple[str, ...]] = ("mask",)
    target_word: ClassVar[str] = "mask values"
    has_mask: ClassVar[bool] = True
    default_num_classes: ClassVar[int] = 2
    min_classes: ClassVar[int] = 2

    def check_target_tensor(self, x: Tensor, y: Tensor, who: str) -> Tensor:
        if y.shape[1:] != x.shape[2:] or y.is_floating_point():
            raise ValueError(f"{who}: segmentation masks y must be integers [N, *spatial] = "
                             f"[{x.shape[0]}, {', '.join(map(str, x.shape[2:]))}], got {y.dtype} {tuple(y.shape)}")
        return y.long()

    def folder_datamodule(self, path: Path, kwargs: Mapping[str, Any]) -> Any:
        """``images/`` and ``masks/`` paired by file stem
        (:class:`~datamodules.manifest.folders.PairedFoldersDataModule`)."""
        if not ((path / "images").is_dir() and (path / "masks").is_dir()):
            return None
        from datamodules.manifest.folders import PairedFoldersDataModule

        return PairedFoldersDataModule(images_dir=str(path / "images"), masks_dir=str(path / "masks"), **kwargs)

    def manifest_rows(self) -> type | None:
        from datamodules.manifest.tasks import SegmentationRows

        return SegmentationRows

    def synthetic_sample(self, rng: np.random.Generator, index: int, params: dict[str, Any]) -> dict[str, Any]:
        from datamodules.synthetic.samples import make_segmentation

        return make_segmentation(rng, index, params)

    def synthetic_class_names(self, k: int) -> list[str]:
        base = ["background", "lesion", "core"]
        return (base + [f"satellite_{i}" for i in range(3, k)])[:k]
