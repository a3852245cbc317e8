"""Segmentation, model side: :class:`~lightning_modules.SegmentationModule` and the dense
suites (every member attacks every sample)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from attacks.suites import MASK_SUITES, SuiteRecipe
from datamodules.tasks.segmentation import SegmentationData
from lightning_modules.segmentation_module import SegmentationModule
from lightning_modules.tasks.base import AdapterRules, Task


class SegmentationRules(AdapterRules):
    """Logits ``[B, K, *spatial]`` and the mask ``[B, *spatial]`` (``[B, 1, *spatial]`` squeezed)."""

    def default_loss_inputs(self, output: Tensor, target: Any, image: Tensor) -> tuple[Tensor, Tensor] | None:
        if output.ndim < 3:
            return None
        mask = target[:, 0] if target.ndim == output.ndim else target
        if mask.shape[1:] != output.shape[2:]:
            raise ValueError(f"RobustTaskAdapter: segmentation logits {tuple(output.shape)} and mask "
                             f"{tuple(target.shape)} differ in their spatial size")
        return output, mask.long()


class SegmentationTask(Task, SegmentationData):
    module: ClassVar[type] = SegmentationModule
    adapter_rules: ClassVar[type[AdapterRules]] = SegmentationRules
    suite: ClassVar[SuiteRecipe | None] = MASK_SUITES
