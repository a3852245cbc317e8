"""Landmarks, model side: :class:`~lightning_modules.LandmarkModule` (heatmaps) and the
dense suites."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from attacks.suites import HEATMAP_SUITES, SuiteRecipe
from datamodules.tasks.landmarks import LandmarksData
from lightning_modules.landmark_module import LandmarkModule
from lightning_modules.tasks.base import AdapterRules, Task


class LandmarkRules(AdapterRules):
    """Heatmaps ``[B, L, h, w]`` and points ``[B, L, 2]`` (or ``[B, L, 3]`` with visibility)."""

    def default_loss_inputs(self, output: Tensor, target: Any, image: Tensor) -> tuple[Tensor, Tensor] | None:
        return (output, landmark_labels(output, target, image)) if output.ndim == 4 else None


def landmark_labels(heat: Tensor, target: Tensor, image: Tensor) -> Tensor:
    """``[B, L, 3]``: the target points ``(x, y)`` in the heatmap frame and the visibility.

    ``target`` is ``[B, L, 2]`` (all visible) or ``[B, L, 3]`` in image pixels; heatmaps
    ``[B, L, h, w]`` smaller than the image ``[B, C, H, W]`` get the points mapped with the
    pixel-centre convention of the resize transform (``(p + 0.5) / scale − 0.5``)."""
    if target.ndim != 3 or target.shape[-1] not in (2, 3) or target.shape[:2] != heat.shape[:2]:
        raise ValueError(f"RobustTaskAdapter: landmark targets must be [B, {heat.shape[1]}, 2] (x, y) or "
                         f"[B, {heat.shape[1]}, 3] (+ visibility) for heatmaps {tuple(heat.shape)}, "
                         f"got {tuple(target.shape)}")
    pts = target[..., :2].to(heat.device, torch.float32)
    vis = (target[..., 2].to(heat.device, torch.float32) if target.shape[-1] == 3
           else pts.new_ones(pts.shape[:2]))
    sx, sy = image.shape[-1] / heat.shape[-1], image.shape[-2] / heat.shape[-2]
    if (sx, sy) != (1.0, 1.0):
        pts = (pts + 0.5) / pts.new_tensor([sx, sy]) - 0.5
    return torch.cat([pts, vis[..., None]], dim=-1)


class LandmarksTask(Task, LandmarksData):
    module: ClassVar[type] = LandmarkModule
    adapter_rules: ClassVar[type[AdapterRules]] = LandmarkRules
    suite: ClassVar[SuiteRecipe | None] = HEATMAP_SUITES
