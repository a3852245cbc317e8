"""Landmark detection, data side: ``landmarks`` float32 ``[B, K, 2]`` (x, y) pixels of the
delivered image, ``visible`` bool ``[B, K]``, ``spacing`` float32 ``[B]`` mm per pixel (NaN:
unknown)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from datamodules.tasks.base import DataTask


class LandmarksData(DataTask):
    """``K`` points per image; a missing point is not visible."""

    name: ClassVar[str] = "landmarks"
    target_keys: ClassVar[tuple[str, ...]] = ("landmarks",)
    target_word: ClassVar[str] = "landmarks"
    has_keypoints: ClassVar[bool] = True
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)

    def check_target_tensor(self, x: Tensor, y: Tensor, who: str) -> Tensor:
        if y.ndim != 3 or y.shape[-1] != 2:
            raise ValueError(f"{who}: landmark targets y must be [N, L, 2] (x, y) pixels, got {tuple(y.shape)}")
        return y.float()

    def tensor_item(self, y: Any) -> dict[str, Any]:
        """NaN coordinates mark a missing point (``visible`` False, coordinates 0)."""
        return {"landmarks": torch.nan_to_num(y), "visible": torch.isfinite(y).all(dim=-1),
                "spacing": torch.tensor(float("nan"))}

    def check_target_classes(self, y: Any, k: int, who: str = "evaluate") -> None:
        """Landmarks have no classes: nothing to check."""

    def info_fields(self, y: Any, k: int) -> dict[str, Any]:
        return {"num_classes": 0, "num_landmarks": int(y.shape[1])}

    def check_synthetic(self, num_landmarks: int, max_objects: int) -> None:
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")

    def synthetic_num_landmarks(self, num_landmarks: int) -> int:
        return num_landmarks

    def manifest_rows(self) -> type | None:
        from datamodules.manifest.task_geometry import LandmarkRows

        return LandmarkRows

    def synthetic_sample(self, rng: np.random.Generator, index: int, params: dict[str, Any]) -> dict[str, Any]:
        from datamodules.synthetic.samples import make_landmarks

        return make_landmarks(rng, index, params)
