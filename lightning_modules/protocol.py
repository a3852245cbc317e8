"""The interface every task module offers to training methods and evaluation callbacks.

Methods (``lightning_modules/methods``) and callbacks (``callbacks/``) are written once for all
tasks; they talk to a task only through this protocol. A new task is one file implementing it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torchmetrics import MetricCollection

from datamodules.info import DataInfo

Batch = dict[str, Any]


@runtime_checkable
class RobustTask(Protocol):
    """What a task LightningModule exposes (in addition to being a ``LightningModule``)."""

    #: "classification" | "segmentation" | "landmarks" | "detection"
    task: str
    #: the data description the model was built from (bounds, classes, number of samples…)
    data_info: DataInfo

    def attack_model(self) -> nn.Module:
        """The whole differentiable pipeline an attacker faces, as an ``nn.Module``.

        ``attack_model()(x)`` maps images in ``data_info.bounds`` (``[B, C, *spatial]``) to the
        task's output; normalization and any embedded denoiser are inside it. For detection it
        is a wrapper returning whatever :meth:`per_sample_loss` consumes.
        """

    def per_sample_loss(self, output: Any, batch: Batch) -> torch.Tensor:
        """Per-sample task loss ``[B]`` of ``output`` against the targets in ``batch``.

        Used as the attack's ``loss_fn(output, target=batch)``; differentiable w.r.t. the input.
        """

    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> torch.Tensor:
        """Bool ``[B]``: the sample is no longer "correct" (AMAT's loss-defined margin test).

        Classification: misclassified (``threshold`` unused). Other tasks: the task's violation
        statistic crosses ``threshold`` (e.g. Dice below it, loss above it).
        """

    def violation_statistic(self, output: Any, batch: Batch) -> torch.Tensor:
        """Per-sample statistic ``[B]`` from which a violation threshold is computed."""

    def build_metrics(self) -> MetricCollection:
        """A fresh collection of the task's torchmetrics (synced across DDP ranks)."""

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        """Update ``metrics`` with one batch of predictions ``output``."""

    def predict_for_display(self, output: Any) -> Any:
        """Predictions in a drawable form (class + confidence, mask, points, boxes) for panels."""
