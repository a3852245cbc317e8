"""The interface every task module offers to training methods and evaluation callbacks.

Methods (``lightning_modules/methods``) and callbacks (``callbacks/``) are written once for all
tasks; they talk to a task module only through this protocol. The module is one fact of its
task object (:mod:`lightning_modules.tasks`: ``model_task(name).module``), which also holds what
is asked before a module exists (batch keys, attack suites, how a foreign model is wrapped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection

from datamodules.info import DataInfo

Batch = dict[str, Any]


@runtime_checkable
class RobustTask(Protocol):
    """What a task LightningModule exposes (in addition to being a ``LightningModule``)."""

    #: the task's name, a key of the task registry (:func:`datamodules.tasks.task_named`), or the
    #: name of a module of the user's own
    task: str
    #: the metric (a key of ``build_metrics().compute()``) that picks the robust area, the
    #: checkpoint and the progress-bar value; its direction is :meth:`metric_higher_is_better`
    main_metric: str
    #: the data description the model was built from (bounds, classes, number of samples…)
    data_info: DataInfo
    #: how :meth:`violation_statistic` relates to a violation: ``"above"`` (a loss: violated
    #: when it exceeds the threshold), ``"below"`` (a score such as Dice: violated under it) or
    #: ``None`` (the test needs no threshold, e.g. classification's misclassification).
    violation_direction: str | None
    #: the pipeline's parts: ``attack_model() = net ∘ (method's embedded module) ∘ normalizer``
    normalizer: nn.Module
    net: nn.Module
    #: Lightning's counters (0 without a trainer); methods use them for schedules and seeding
    current_epoch: int
    global_step: int
    global_rank: int

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

    # Optional: ``violation_is_final: bool`` — a violated sample's per-sample metric is already
    # the worst it can be (classification: misclassified, accuracy 0), so the per-epoch
    # evaluation need not attack it again at a larger ε (``Speedups.early_exit``). Absent: False.
    #
    # Optional (not required of a task, so adapters and test doubles need not have it):
    # ``batch_loss(output, batch) -> Tensor[]``, the training loss of a whole batch when the
    # task's reference implementation does not reduce by the mean of ``per_sample_loss``
    # (detection: torchvision's batch normalisation). Methods ask for it through
    # ``lightning_modules.methods.base.batch_loss``.

    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> torch.Tensor:
        """Bool ``[B]``: the sample is no longer "correct" (AMAT's loss-defined margin test).

        Classification: misclassified (``threshold`` unused). Other tasks: the task's violation
        statistic crosses ``threshold`` (e.g. Dice below it, loss above it) in the sense of
        :attr:`violation_direction`; ``threshold=None`` uses the task's own default (a module
        hyperparameter, e.g. ``violation_threshold`` of the segmentation module), so callers
        that have no threshold (evaluation callbacks) still get a meaningful test.
        """

    def violation_statistic(self, output: Any, batch: Batch) -> torch.Tensor:
        """Per-sample statistic ``[B]`` from which a violation threshold is computed."""

    def per_sample_metric(self, output: Any, batch: Batch) -> torch.Tensor:
        """``[B]`` float: the task's main metric on each sample alone, in the direction of
        :meth:`metric_higher_is_better` (the single source of the direction). It is what the
        evaluation's per-sample worst case is judged by (``attacks/worst_case.py``): the suite
        keeps, per sample, the candidate with the worst value of it, the loss only breaking ties.

        Classification: correct (1.0) / wrong (0.0) — accuracy (multi-label: the fraction of
        labels right); segmentation: hard Dice over the foreground classes; landmarks: mean
        radial error over the visible landmarks, image pixels; detection: AP@0.5 of the image.
        NaN where undefined (the candidate then never wins on the metric, only on the loss).
        Not differentiable; computed on detached outputs.
        """

    def output_divergence(self, out_adv: Any, out_clean: Any) -> torch.Tensor:
        """Per-sample divergence ``[B]`` of ``out_adv`` from ``out_clean`` (TRADES' robust term).

        Classification: ``KL(p_clean ‖ p_adv)``; segmentation: the per-pixel KL averaged over
        pixels; landmarks: MSE of heatmaps. Differentiable w.r.t. both outputs.
        """

    def forward_joint(self, xs: Sequence[torch.Tensor]) -> list[Any]:
        """``[attack_model()(x) for x in xs]`` computed as *one* forward over the concatenated
        batch where the task's outputs allow it (one set of BatchNorm batch statistics: correct
        under DDP and cheaper); a task whose outputs cannot be split runs them one by one."""

    def build_metrics(self) -> MetricCollection:
        """A fresh collection of the task's torchmetrics (synced across DDP ranks)."""

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        """Update ``metrics`` with one batch of predictions ``output``."""

    def predict_for_display(self, output: Any) -> Any:
        """Predictions in a drawable form (class + confidence, mask, points, boxes) for panels."""

    def metric_higher_is_better(self, name: str | None = None) -> bool:
        """Whether larger values of metric ``name`` (default :attr:`main_metric`) are better,
        read from the torchmetrics object that computes it (``Metric.higher_is_better``)."""

    def attack_loss_inputs(self, output: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, labels)`` that the named attack losses (:mod:`attacks.task_losses`) take;
        ``ValueError`` for a task that has none. A task may take an ``inputs`` keyword for other
        kinds of loss inputs (detection: ``"matched"``, for DAG)."""

    def attack_loss_reference(self, output: Any) -> torch.Tensor | None:
        """The clean output's logits ``[B, K]`` from which targeted attack losses pick their
        target class, or ``None`` where the task has no per-sample class logits."""

    #: how predictions and ground truth are drawn on an image panel
    #: (:class:`lightning_modules.panels.Panel`)
    panel: Any


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
