"""Clean training: plain empirical risk minimisation on the unperturbed images."""

from __future__ import annotations

from torch import Tensor

from lightning_modules.methods.base import Logs, TrainingMethod, batch_loss
from lightning_modules.protocol import Batch, RobustTask


class Clean(TrainingMethod):
    """Mean per-sample task loss of the clean batch."""

    name = "clean"

    def __init__(self) -> None:
        super().__init__()

    def training_loss(self, task: RobustTask, batch: Batch) -> tuple[Tensor, Logs]:
        out = task.attack_model()(batch["image"])
        loss = batch_loss(task, out, batch)
        return loss, {}
