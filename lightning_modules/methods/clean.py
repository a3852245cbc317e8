"""Clean training: plain empirical risk minimisation on the unperturbed images."""

from __future__ import annotations

from torch import Tensor

from lightning_modules.methods.base import Logs, TrainingMethod
from lightning_modules.protocol import Batch, TrainableTask


class Clean(TrainingMethod):
    """Mean per-sample task loss of the clean batch."""

    name = "clean"

    def __init__(self) -> None:
        super().__init__()

    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        out = task.attack_model()(batch["image"])
        loss = task.batch_loss(out, batch)
        return loss, {}
