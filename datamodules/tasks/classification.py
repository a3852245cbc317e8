"""Classification, data side: ``label`` int64 ``[B]`` (binary / multi-class) or float32
``[B, K]`` in {0, 1} (multi-label)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from datamodules.tasks.base import DataTask


class ClassificationData(DataTask):
    """One class (or a set of classes) per image."""

    name: ClassVar[str] = "classification"
    target_keys: ClassVar[tuple[str, ...]] = ("label",)
    target_word: ClassVar[str] = "labels"
    default_num_classes: ClassVar[int] = 2
    min_classes: ClassVar[int] = 2

    def check_target_tensor(self, x: Tensor, y: Tensor, who: str) -> Tensor:
        if y.ndim != 1 or y.is_floating_point():
            raise ValueError(f"{who}: classification labels y must be integers [N], got {y.dtype} {tuple(y.shape)}")
        return y.long()

    def manifest_rows(self) -> type | None:
        from datamodules.manifest.tasks import ClassificationRows

        return ClassificationRows

    def synthetic_sample(self, rng: np.random.Generator, index: int, params: dict[str, Any]) -> dict[str, Any]:
        from datamodules.synthetic.samples import make_classification

        return make_classification(rng, index, params)

    def synthetic_class_names(self, k: int) -> list[str]:
        named = {2: ["benign", "malignant"], 3: ["benign", "atypical", "malignant"]}
        return named.get(k, [f"grade_{i}" for i in range(k)])

    def finish_item(self, sample: Mapping[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        item["label"] = torch.tensor(sample["label"], dtype=torch.int64)
        return item
