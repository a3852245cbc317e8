"""One cephalogram as indexed (:class:`LandmarkCase`) and the dataset that reads it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.imagefiles import IndexedImageDataset
from datamodules.transforms import JointTransform


@dataclass
class LandmarkCase:
    """One image with its landmarks as read from disk.

    Attributes:
        case_id: file stem shared by image and annotations (e.g. ``"001"``).
        image_path: the image file.
        image_hw: ``(H, W)`` of the image on disk.
        points: float32 ``[K, 2]`` ``(x, y)`` in pixels of the image on disk; NaN = no usable
            point (missing or ambiguous in every annotator used).
        sources: the annotation files the points come from.
    """

    case_id: str
    image_path: Path
    image_hw: tuple[int, int]
    points: np.ndarray
    sources: tuple[Path, ...]


class LandmarkDataset(IndexedImageDataset):
    """Map-style dataset of :class:`LandmarkCase` items through a :class:`JointTransform`.

    Item: ``image`` float32 ``[1, H, W]`` in [0, 1], ``landmarks`` float32 ``[K, 2]``,
    ``visible`` bool ``[K]``, ``spacing`` float32 ``[]`` (mm per delivered pixel, NaN when
    unknown), ``index`` int64 ``[]``.
    """

    def __init__(self, cases: Sequence[LandmarkCase], transform: JointTransform,
                 spacing_mm: float | None, name: str = "landmarks") -> None:
        super().__init__(records=cases, transform=transform, channels=1, name=name)
        self.spacing_mm = spacing_mm

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.records]

    def load(self, case: LandmarkCase) -> dict[str, Any]:
        return self.transform(self.read(case.image_path, case.image_hw), keypoints=case.points)

    def targets(self, case: LandmarkCase, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        h, w = out["image"].shape[-2:]
        spacing = delivered_spacing(self.spacing_mm, case.image_hw, (h, w))
        return {"landmarks": out["keypoints"], "visible": out["visible"],
                "spacing": torch.tensor(math.nan if spacing is None else spacing,
                                        dtype=torch.float32)}

    def describe(self, case: LandmarkCase) -> str:
        return f"case {case.case_id}, {case.image_path}"


def delivered_spacing(spacing_mm: float | None, disk_hw: tuple[int, int],
                      out_hw: tuple[int, int]) -> float | None:
    """mm per delivered pixel: on-disk spacing times the geometric mean of the resize factors."""
    if spacing_mm is None:
        return None
    fy, fx = disk_hw[0] / out_hw[0], disk_hw[1] / out_hw[1]
    return float(spacing_mm * math.sqrt(fx * fy))
