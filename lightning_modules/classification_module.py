"""Image classification: binary (two logits or one), multi-class and multi-label.

Batch: ``image`` ``[B, C, *spatial]`` in ``data_info.bounds``; ``label`` int64 ``[B]``
(binary / multi-class) or float ``[B, K]`` in {0, 1} (multi-label, ``data_info.multilabel``).
Network output: logits ``[B, K]`` (``[B, 1]`` with ``binary_single_logit``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    AUROC,
    Accuracy,
    F1Score,
    MulticlassRecall,
    MultilabelStatScores,
)

from attacks.losses import bernoulli_kl, categorical_kl
from datamodules.info import DataInfo
from lightning_modules.base import TaskModule
from lightning_modules.fault_tolerance import NonFiniteMode
from lightning_modules.methods.base import TrainingMethod
from lightning_modules.optimization import OptimizerName, SchedulerName
from lightning_modules.panels import LabelPanel
from lightning_modules.protocol import Batch


class MultilabelBalancedAccuracy(Metric):
    """Mean over labels of ``(sensitivity + specificity) / 2`` (balanced accuracy per label,
    macro-averaged); labels without positives or without negatives count only their defined
    half."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_labels: int, threshold: float = 0.5) -> None:
        super().__init__()
        self.stats = MultilabelStatScores(num_labels, threshold=threshold, average=None)

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.stats.update(preds, target)

    def compute(self) -> Tensor:
        s = self.stats.compute()  # [K, 5]: tp, fp, tn, fn, support
        tp, fp, tn, fn = (s[:, i].float() for i in range(4))
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        return torch.stack([sens, spec], dim=1).nanmean(dim=1).nanmean()

    def reset(self) -> None:
        super().reset()
        self.stats.reset()


class ClassificationModule(TaskModule):
    """Classification task module.

    Args:
        net, data_info, method, optimizer, lr, weight_decay, momentum, scheduler, mean, std,
        nonfinite, max_nonfinite_skips, corruption_augment:
            see :class:`lightning_modules.base.TaskModule`.
        binary_single_logit: for two classes, output one logit (sigmoid / BCE) instead of two
            (softmax / CE). Ignored for more classes and for multi-label data.
        label_smoothing: cross-entropy label smoothing (multi-class and two-logit binary).

    Loss: cross-entropy (softmax), or binary cross-entropy with logits averaged over labels
    (single logit, multi-label). Violation (AMAT, evaluation): the sample is misclassified —
    for multi-label any label wrong (no threshold). Metrics: ``accuracy``,
    ``balanced_accuracy`` (macro recall; multi-label: mean of per-label (TPR + TNR)/2),
    ``auroc`` and ``f1`` (binary: positive class; otherwise macro).
    """

    task = "classification"
    default_net = "lightning_modules.nets.SmallCNN"
    violation_direction = None
    main_metric: ClassVar[str] = "accuracy"
    #: the metric whose error the corruption CE / mCE uses (MedMNIST-C: balanced error)
    corruption_metric: ClassVar[str] = "balanced_accuracy"
    #: :meth:`build_metrics`' states are integer counts (accuracy, recall, F1) and lists of
    #: rows (AUROC), so one update over concatenated batches leaves the same states as one per
    #: batch (the evaluation then merges its updates: ``Speedups.merge_updates``). A subclass
    #: whose metrics keep float sums or per-batch values must set it to False.
    metrics_batch_invariant: ClassVar[bool] = True
    panel = LabelPanel()

    def __init__(
        self,
        net: dict | None = None,
        data_info: DataInfo | None = None,
        method: TrainingMethod | None = None,
        binary_single_logit: bool = False,
        label_smoothing: float = 0.0,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: SchedulerName = "none",
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        nonfinite: NonFiniteMode = "error",
        max_nonfinite_skips: int | None = None,
        corruption_augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net=net, data_info=data_info, method=method, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, momentum=momentum, scheduler=scheduler,
                         mean=mean, std=std,
                         nonfinite=nonfinite, max_nonfinite_skips=max_nonfinite_skips,
                         corruption_augment=corruption_augment)
        k = self.data_info.num_classes
        if k < 2 and not (self.data_info.multilabel and k >= 1):
            raise ValueError(
                f"ClassificationModule needs data_info.num_classes >= 2 (or >= 1 label for "
                f"multi-label), got {k}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"ClassificationModule.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.multilabel = bool(self.data_info.multilabel)
        self.num_classes = k
        self.single_logit = bool(binary_single_logit) and k == 2 and not self.multilabel
        self.binary = k == 2 and not self.multilabel
        self.label_smoothing = float(label_smoothing)
        self.build()

    def output_channels(self) -> int:
        return 1 if self.single_logit else self.num_classes

    # ------------------------------------------------------------------ outputs
    def _logits(self, output: Any) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[1] != self.output_channels():
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"classification expects logits [B, {self.output_channels()}] from the net, got {got}"
            )
        return output.float()

    def probabilities(self, output: Any) -> Tensor:
        """Class probabilities: ``[B, K]`` (softmax; two columns for a single logit) or
        per-label sigmoid ``[B, K]`` for multi-label."""
        logits = self._logits(output)
        if self.multilabel:
            return torch.sigmoid(logits)
        if self.single_logit:
            p = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p, p], dim=1)
        return logits.softmax(dim=1)

    def _labels(self, batch: Batch) -> Tensor:
        y = batch["label"]
        if self.multilabel:
            return y.float().reshape(y.shape[0], -1)
        return y.long().reshape(-1)

    # ------------------------------------------------------------------ protocol
    def per_sample_loss(self, output: Any, batch: Batch) -> Tensor:
        logits = self._logits(output)
        y = self._labels(batch)
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=1)
        if self.single_logit:
            return F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction="none")
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=self.label_smoothing)

    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> Tensor:
        probs = self.probabilities(output)
        y = self._labels(batch)
        if self.multilabel:
            return ((probs > 0.5) != (y > 0.5)).any(dim=1)
        return probs.argmax(dim=1) != y

    @property
    def violation_is_final(self) -> bool:
        """A misclassified sample's per-sample accuracy is 0, the worst it can be, so attacking it
        again at a larger ε cannot lower the main metric (the per-epoch evaluation's early exit,
        :class:`callbacks.speedups.Speedups`). Not for multi-label: one wrong label
        leaves the others to lose."""
        return not self.multilabel

    def violation_statistic(self, output: Any, batch: Batch) -> Tensor:
        """Per-sample loss (violation itself needs no threshold for classification)."""
        return self.per_sample_loss(output, batch).detach()

    def per_sample_metric(self, output: Any, batch: Batch) -> Tensor:
        """``[B]`` accuracy of each sample: 1.0 correct, 0.0 wrong (``1 − is_violated``);
        multi-label: the fraction of its labels predicted right (micro accuracy's share)."""
        with torch.no_grad():
            probs = self.probabilities(output.detach() if isinstance(output, Tensor) else output)
            y = self._labels(batch)
            if self.multilabel:
                return ((probs > 0.5) == (y > 0.5)).float().mean(dim=1)
            return (probs.argmax(dim=1) == y).float()

    def output_divergence(self, out_adv: Any, out_clean: Any) -> Tensor:
        """``KL(p_clean ‖ p_adv)`` per sample (TRADES); Bernoulli KL summed over labels for
        multi-label and single-logit outputs."""
        a, c = self._logits(out_adv), self._logits(out_clean)
        if self.multilabel or self.single_logit:
            return bernoulli_kl(c, a).sum(dim=1)
        return categorical_kl(c, a, dim=1)

    def build_metrics(self) -> MetricCollection:
        k = self.num_classes
        metrics: dict[str, Metric]
        if self.multilabel:
            metrics = {
                "accuracy": Accuracy(task="multilabel", num_labels=k, average="micro"),
                "balanced_accuracy": MultilabelBalancedAccuracy(k),
                "auroc": AUROC(task="multilabel", num_labels=k, average="macro"),
                "f1": F1Score(task="multilabel", num_labels=k, average="macro"),
            }
        elif self.binary:
            metrics = {
                "accuracy": Accuracy(task="binary"),
                "balanced_accuracy": MulticlassRecall(num_classes=2, average="macro"),
                "auroc": AUROC(task="binary"),
                "f1": F1Score(task="binary"),
            }
        else:
            metrics = {
                "accuracy": Accuracy(task="multiclass", num_classes=k, average="micro"),
                "balanced_accuracy": MulticlassRecall(num_classes=k, average="macro"),
                "auroc": AUROC(task="multiclass", num_classes=k, average="macro"),
                "f1": F1Score(task="multiclass", num_classes=k, average="macro"),
            }
        # Metrics get different views of the same output (see update_metrics), so no compute
        # groups: those assume identical update() inputs.
        return MetricCollection(metrics, compute_groups=False)

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        probs = self.probabilities(output).detach()
        y = self._labels(batch)
        if self.multilabel:
            yi = (y > 0.5).long()
            for name in metrics.keys(keep_base=True):
                metrics[name].update(probs, yi)
            return
        if self.binary:
            p1 = probs[:, 1]
            for name in metrics.keys(keep_base=True):
                if name == "balanced_accuracy":
                    metrics[name].update((p1 > 0.5).long(), y)
                else:
                    metrics[name].update(p1, y)
            return
        for name in metrics.keys(keep_base=True):
            metrics[name].update(probs, y)

    # ------------------------------------------------------------------ dataset-level evidence
    def evidence_spec(self) -> dict[str, Any]:
        """What :meth:`sample_evidence` keeps for the bootstrap over images of the metrics that
        are not means of per-sample values (:mod:`callbacks.dataset_metrics`): class scores,
        for ``auroc`` (and, single-label, ``balanced_accuracy`` and ``f1``)."""
        metrics = ["auroc"] if self.multilabel else ["auroc", "balanced_accuracy", "f1"]
        return {"kind": "scores", "metrics": metrics,
                "info": {"classes": self.num_classes, "multilabel": self.multilabel}}

    def sample_evidence(self, output: Any, batch: Batch) -> Tensor:
        """The scores :meth:`update_metrics` hands to the dataset-level metrics: ``[B]`` the
        positive-class probability (two classes), else ``[B, K]`` class (label) probabilities."""
        with torch.no_grad():
            probs = self.probabilities(output.detach() if isinstance(output, Tensor) else output).float()
        return probs[:, 1] if self.binary else probs

    def evidence_targets(self, batch: Batch) -> list[Any]:
        """Per sample: its label (multi-label: the 0/1 list)."""
        y = self._labels(batch).detach().cpu()
        return (y > 0.5).long().tolist() if self.multilabel else y.long().tolist()

    def attack_loss_inputs(self, output: Any, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits ``[B, K]`` and labels ``[B]`` (multi-label: ``[B, K]`` floats)."""
        return self._logits(output), self._labels(batch)

    def attack_loss_reference(self, output: Any) -> Tensor:
        """The clean logits ``[B, K]`` (targeted losses take their target classes from them)."""
        return self._logits(output).detach()

    certification: ClassVar[str | None] = "certification.tasks.ClassificationCertification"

    def hard_prediction(self, output: Any) -> Tensor:
        """``int64 [B]``: the predicted class (argmax of the probabilities; single-label only)."""
        if self.multilabel:
            raise ValueError("classification: hard_prediction (randomized smoothing) needs single-label "
                             "classes; this model is multi-label")
        return self.probabilities(output).argmax(dim=1)

    def predict_for_display(self, output: Any) -> dict[str, Tensor]:
        """``label`` ``[B]`` (multi-label: ``[B, K]`` 0/1), ``confidence`` ``[B]`` and ``probs``
        ``[B, K]``."""
        probs = self.probabilities(output).detach()
        if self.multilabel:
            return {"label": (probs > 0.5).long(), "confidence": probs.max(dim=1).values,
                    "probs": probs}
        conf, label = probs.max(dim=1)
        return {"label": label, "confidence": conf, "probs": probs}
