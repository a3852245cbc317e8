"""What a task offers the code written once for every task: one definition of each contract.

* :class:`RobustTask` — what evaluation callbacks (``callbacks/``), attack suites and
  ``medrobust.evaluate`` ask of a task: the model an attacker faces, a per-sample loss, a
  violation test, the per-sample metric and the metrics with their direction, and how a
  prediction is drawn. medrobust's task modules implement it (:mod:`lightning_modules.base`), and
  so does :class:`callbacks.RobustTaskAdapter` for a LightningModule of the user's own.
* :class:`TrainableTask` — what a training method (:mod:`lightning_modules.methods`) asks in
  addition: the violation statistic and its direction (AMAT's thresholds), the divergence of two
  outputs (TRADES), a joint forward, the batch loss and Lightning's counters. Only the task
  modules implement it; a user's own module is evaluated, never trained, through the adapter.

The direction of a metric is decided once, here: :meth:`RobustTask.metric_higher_is_better`
reads the ``higher_is_better`` flag of the torchmetrics object that computes it (never the
metric's name); implementers inherit it by subclassing the protocol.

Optional members, asked with ``getattr`` by the callers that use them (absent: the feature is
off for the task): ``attack_loss_inputs(output, batch[, inputs=])`` (the named attack losses),
``attack_loss_reference(output)`` (targeted losses' clean logits), ``violation_is_final``
(``Speedups.early_exit``), ``per_sample_metric_name``, ``metrics_batch_invariant``,
``num_classes``, ``corruption_metric``, ``evidence_spec`` / ``sample_evidence`` /
``evidence_targets`` (dataset-level intervals), ``certification`` / ``hard_prediction``
(randomized smoothing) and ``method`` (its ``name`` goes into the record).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection

from datamodules.info import DataInfo

Batch = dict[str, Any]

#: how a task's violation statistic relates to a violation (:attr:`TrainableTask.violation_direction`)
ViolationDirection = Literal["above", "below"] | None


@runtime_checkable
class RobustTask(Protocol):
    """What a task exposes to evaluation (besides being, or wrapping, a ``LightningModule``)."""

    #: the task's name, a key of the task registry (:func:`datamodules.tasks.task_named`), or the
    #: name of a task of the user's own
    task: str
    #: the metric (a key of ``build_metrics().compute()``) that picks the robust area, the
    #: checkpoint and the progress-bar value; its direction: :meth:`metric_higher_is_better`
    main_metric: str
    #: the data description the model was built from (bounds, classes, number of samples…)
    data_info: DataInfo
    #: how predictions and ground truth are drawn (:class:`lightning_modules.panels.Panel`;
    #: ``None``: the panel of the registered task of this name)
    panel: Any

    @abstractmethod
    def attack_model(self) -> nn.Module:
        """The whole differentiable pipeline an attacker faces, as an ``nn.Module``: images in
        ``data_info.bounds`` (``[B, C, *spatial]``) to the task's output; normalization and any
        embedded denoiser are inside it."""

    @abstractmethod
    def per_sample_loss(self, output: Any, batch: Batch) -> torch.Tensor:
        """``[B]`` task loss of ``output`` against the targets in ``batch``; what attacks ascend
        (``loss_fn(output, target=batch)``), differentiable w.r.t. the input."""

    @abstractmethod
    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> torch.Tensor:
        """Bool ``[B]``: the sample is no longer "correct" (an adversarial success).

        Classification: misclassified (``threshold`` unused). Other tasks: the violation
        statistic crosses ``threshold`` in the sense of :attr:`TrainableTask.violation_direction`;
        ``None`` uses the task's own default, so evaluation (which has no threshold) still gets
        a meaningful test."""

    @abstractmethod
    def per_sample_metric(self, output: Any, batch: Batch) -> torch.Tensor:
        """``[B]`` float: the main metric on each sample alone, in the direction of
        :meth:`metric_higher_is_better`; the evaluation's per-sample worst case is judged by it
        (``attacks/worst_case.py``). Classification: correct 1 / wrong 0; segmentation: hard
        Dice; landmarks: mean radial error (pixels); detection: the image's AP@0.5. NaN where
        undefined. Computed on detached outputs."""

    @abstractmethod
    def build_metrics(self) -> MetricCollection:
        """A fresh collection of the task's torchmetrics (synchronised across DDP ranks); each
        metric object declares ``higher_is_better``."""

    @abstractmethod
    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        """Update ``metrics`` with one batch of predictions ``output``."""

    @abstractmethod
    def predict_for_display(self, output: Any) -> Any:
        """Predictions in a drawable form (class + confidence, mask, points, boxes) for panels."""

    def metric_higher_is_better(self, name: str | None = None) -> bool:
        """Whether larger values of metric ``name`` (default :attr:`main_metric`) are better: the
        ``higher_is_better`` of the metric object of :meth:`build_metrics` that reports it (see
        :func:`higher_is_better`). The one place a metric's direction is decided."""
        return higher_is_better(self.build_metrics(), name or self.main_metric, type(self).__name__)


@runtime_checkable
class TrainableTask(RobustTask, Protocol):
    """What a training method asks of the task module it trains (in addition to
    :class:`RobustTask`)."""

    #: how :meth:`violation_statistic` relates to a violation: ``"above"`` (a loss: violated
    #: when it exceeds the threshold), ``"below"`` (a score such as Dice: violated under it) or
    #: ``None`` (no threshold, e.g. classification's misclassification)
    violation_direction: ViolationDirection
    #: the network inside ``attack_model()`` (a method may read or swap its weights)
    net: nn.Module
    #: Lightning's counters (0 without a trainer): schedules and seeding
    current_epoch: int
    global_step: int
    global_rank: int

    @abstractmethod
    def violation_statistic(self, output: Any, batch: Batch) -> torch.Tensor:
        """``[B]`` statistic from which a violation threshold is computed (AMAT)."""

    @abstractmethod
    def output_divergence(self, out_adv: Any, out_clean: Any) -> torch.Tensor:
        """``[B]`` divergence of ``out_adv`` from ``out_clean`` (TRADES' robust term),
        differentiable w.r.t. both. Classification: ``KL(p_clean ‖ p_adv)``; segmentation: the
        per-pixel KL averaged over pixels; landmarks: MSE of heatmaps."""

    @abstractmethod
    def forward_joint(self, xs: Sequence[torch.Tensor]) -> list[Any]:
        """``[attack_model()(x) for x in xs]`` as *one* forward over the concatenated batch
        where the outputs allow it (one set of BatchNorm statistics: correct under DDP)."""

    def batch_loss(self, output: Any, batch: Batch) -> torch.Tensor:
        """``[]``: the training loss of the whole batch: the mean of :meth:`per_sample_loss`,
        unless the task's reference implementation reduces differently (detection)."""
        return self.per_sample_loss(output, batch).mean()


def metric_of(metrics: MetricCollection, name: str) -> Metric | None:
    """The metric object of ``metrics`` that reports ``name`` in ``compute()``, or ``None``.

    Looked up structurally, never from what the name means: the collection key ``name``; else
    the longest key that ``name`` extends (``sdr_2px`` → ``sdr``, ``mre_l3`` → ``mre``); else
    the only metric of a one-metric collection (segmentation's ``DiceIoU`` and detection's mAP
    each report several values from one object).
    """
    keys = list(metrics.keys(keep_base=True))
    if name in keys:
        return metrics[name]
    extended = [k for k in keys if name.startswith(f"{k}_")]
    if extended:
        return metrics[max(extended, key=len)]
    if len(keys) == 1:
        return metrics[keys[0]]
    return None


def higher_is_better(metrics: MetricCollection, name: str, who: str = "task") -> bool:
    """``higher_is_better`` of the metric object reporting ``name`` (see :func:`metric_of`).

    Raises ``ValueError`` naming the metric when no object reports it or the object does not
    declare a direction (set the class attribute ``higher_is_better`` on a metric of your own).
    """
    metric = metric_of(metrics, name)
    if metric is None:
        raise ValueError(f"{who}: no metric of {list(metrics.keys(keep_base=True))} reports {name!r}")
    flag = getattr(metric, "higher_is_better", None)
    if flag is None:
        raise ValueError(
            f"{who}: metric {type(metric).__name__} (reporting {name!r}) declares no direction; "
            "set its class attribute `higher_is_better = True/False`"
        )
    return bool(flag)
