"""Semantic segmentation, 2-D and 3-D.

Batch: ``image`` ``[B, C, *spatial]`` in ``data_info.bounds``; ``mask`` int64 ``[B, *spatial]``
of class indices, 0 = background, ``data_info.num_classes`` classes including background.
Network output: logits ``[B, K, *spatial]``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from attacks.losses import categorical_kl, class_argmax, dice_ce_loss
from datamodules.info import DataInfo
from lightning_modules.base import TaskModule
from lightning_modules.fault_tolerance import NonFiniteMode
from lightning_modules.methods.base import TrainingMethod
from lightning_modules.optimization import OptimizerName, SchedulerName
from lightning_modules.panels import MaskPanel
from lightning_modules.protocol import Batch


def hard_overlap(pred: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-sample, per-class Dice and IoU of label maps.

    Args:
        pred, target: int ``[B, *spatial]`` class indices.
        num_classes: ``K`` (including background).

    Returns:
        ``(dice, iou)``, each ``[B, K]``; NaN where the class is absent from both prediction and
        target (undefined — such entries are skipped by the means, not counted as 1 or 0).
    """
    b, k = pred.shape[0], num_classes
    p, t = pred.reshape(b, -1).long(), target.reshape(b, -1).long()
    if p.numel() and (int(torch.minimum(p.min(), t.min())) < 0 or int(torch.maximum(p.max(), t.max())) >= k):
        raise ValueError(f"hard_overlap: class indices must lie in [0, {k - 1}], got prediction range "
                         f"[{int(p.min())}, {int(p.max())}] and target range [{int(t.min())}, {int(t.max())}]")
    # Per-sample confusion counts [B, K(true), K(pred)] from one scatter-add, instead of two
    # [B, N, K] one-hot maps: the same integers, ~5x faster (AMAT evaluates it every attack step).
    joint = torch.zeros(b, k * k, dtype=torch.long, device=p.device)
    joint = joint.scatter_add_(1, t * k + p, torch.ones_like(p)).view(b, k, k)
    inter = joint.diagonal(dim1=1, dim2=2).float()
    ps, ts = joint.sum(dim=1).float(), joint.sum(dim=2).float()
    union = ps + ts - inter
    nan = torch.full_like(inter, float("nan"))
    dice = torch.where(ps + ts > 0, 2 * inter / (ps + ts).clamp_min(1), nan)
    iou = torch.where(union > 0, inter / union.clamp_min(1), nan)
    return dice, iou


class DiceIoU(Metric):
    """Dataset-level Dice and IoU from torchmetrics' ``DiceScore`` and ``MeanIoU``: per class,
    the mean over images of the per-image score (``aggregation_level="samplewise"``; images where
    the class is absent from both prediction and target are skipped); the reported ``dice`` /
    ``iou`` are the means over foreground classes (background excluded, as it dominates the
    pixel count and would inflate the score), plus one entry per class (``dice_<name>``,
    ``iou_<name>``, background included for reference).

    A class never seen in any image has no score: ``DiceScore`` gives NaN and ``MeanIoU`` the
    sentinel ``-1``, which is turned into NaN here, so both are left out of the means and
    ``iou_<name>`` reads NaN (as ``dice_<name>``) instead of a misleading -1.

    Args:
        num_classes: ``K`` (including background, ``>= 2``).
        class_names: ``K`` names for the per-class entries.
    """

    full_state_update = False
    higher_is_better = True  # Dice and IoU: overlap scores

    def __init__(self, num_classes: int, class_names: list[str]) -> None:
        super().__init__()
        from torchmetrics.segmentation import DiceScore, MeanIoU

        self.num_classes = num_classes
        self.class_names = class_names
        self.dice = DiceScore(num_classes=num_classes, include_background=True, average="none",
                              aggregation_level="samplewise", input_format="index")
        self.iou = MeanIoU(num_classes=num_classes, include_background=True, per_class=True,
                           input_format="index")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``, ``target``: int class indices ``[B, *spatial]``."""
        self.dice.update(pred.long(), target.long())
        self.iou.update(pred.long(), target.long())

    def compute(self) -> dict[str, Tensor]:
        dice = self.dice.compute().float().reshape(-1)
        iou = self.iou.compute().float().reshape(-1)
        iou = torch.where(iou < 0, torch.full_like(iou, float("nan")), iou)  # MeanIoU's -1
        fg = slice(1, None) if self.num_classes > 1 else slice(0, None)
        out = {"dice": dice[fg].nanmean(), "iou": iou[fg].nanmean()}
        for i, name in enumerate(self.class_names):
            out[f"dice_{name}"] = dice[i]
            out[f"iou_{name}"] = iou[i]
        return out

    def reset(self) -> None:
        super().reset()
        self.dice.reset()
        self.iou.reset()


class SegmentationModule(TaskModule):
    """Segmentation task module (2-D and 3-D: the same code for ``[B, C, H, W]`` and
    ``[B, C, D, H, W]``).

    Args:
        net, data_info, method, optimizer, lr, weight_decay, momentum, scheduler, mean, std,
        nonfinite, max_nonfinite_skips, corruption_augment:
            see :class:`lightning_modules.base.TaskModule`.
        include_background_in_loss: count the background channel in the soft Dice term.
        lambda_dice, lambda_ce: weights of the Dice + cross-entropy loss.
        violation_threshold: default Dice threshold of :meth:`is_violated` when the caller
            gives none (evaluation callbacks): a sample whose foreground Dice is below it is
            "no longer correct". AMAT uses its own threshold (given, or from the clean training
            Dice — Ma & Liang).

    Loss: ``lambda_dice · soft Dice + lambda_ce · CE`` per sample (``attacks.losses``).
    Violation statistic: the per-sample hard Dice over foreground classes (violated when
    *below* the threshold). Metrics: ``dice``, ``iou`` (foreground mean) and per class.
    """

    task = "segmentation"
    default_net = "lightning_modules.nets.SmallUNet"
    violation_direction = "below"
    main_metric: ClassVar[str] = "dice"
    panel = MaskPanel()

    def __init__(
        self,
        net: dict | None = None,
        data_info: DataInfo | None = None,
        method: TrainingMethod | None = None,
        include_background_in_loss: bool = False,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        violation_threshold: float = 0.5,
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
        if self.data_info.num_classes < 2:
            raise ValueError(
                "SegmentationModule needs data_info.num_classes >= 2 (background + at least one "
                f"class), got {self.data_info.num_classes}"
            )
        if not 0.0 <= violation_threshold <= 1.0:
            raise ValueError(
                f"SegmentationModule.violation_threshold must be a Dice in [0, 1], got {violation_threshold}"
            )
        self.num_classes = self.data_info.num_classes
        self.include_background_in_loss = bool(include_background_in_loss)
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.violation_threshold = float(violation_threshold)
        self.build()

    def output_channels(self) -> int:
        return self.num_classes

    def attack_loss_inputs(self, output: Any, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits ``[B, K, *spatial]`` and the mask ``[B, *spatial]`` (class indices)."""
        return self._logits(output, batch), batch["mask"]

    def _logits(self, output: Any, batch: Batch | None = None) -> Tensor:
        nd = self.data_info.spatial_dims + 2
        if not isinstance(output, Tensor) or output.ndim != nd or output.shape[1] != self.num_classes:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"segmentation expects logits [B, {self.num_classes}, *spatial] "
                f"({self.data_info.spatial_dims}-D) from the net, got {got}"
            )
        if batch is not None and output.shape[2:] != batch["mask"].shape[1:]:
            raise ValueError(
                f"net output spatial size {tuple(output.shape[2:])} differs from the mask's "
                f"{tuple(batch['mask'].shape[1:])}"
            )
        return output

    # ------------------------------------------------------------------ protocol
    def per_sample_loss(self, output: Any, batch: Batch) -> Tensor:
        logits = self._logits(output, batch)
        return dice_ce_loss(logits, batch["mask"], include_background=self.include_background_in_loss,
                            lambda_dice=self.lambda_dice, lambda_ce=self.lambda_ce)

    def violation_statistic(self, output: Any, batch: Batch) -> Tensor:
        """Per-sample hard Dice ``[B]`` over foreground classes (1.0 when no foreground class
        is present in either prediction or target)."""
        pred = class_argmax(self._logits(output, batch).detach())
        dice, _ = hard_overlap(pred, batch["mask"], self.num_classes)
        d = dice[:, 1:]
        score = d.nanmean(dim=1)
        return torch.nan_to_num(score, nan=1.0)

    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> Tensor:
        thr = self.violation_threshold if threshold is None else float(threshold)
        return self.violation_statistic(output, batch) < thr

    def per_sample_metric(self, output: Any, batch: Batch) -> Tensor:
        """``[B]`` hard Dice of each image over its foreground classes (the mean of those
        present in the prediction or the mask; 1.0 when neither has any foreground) — the
        per-image score that the ``dice`` metric averages. Per class, IoU = Dice / (2 − Dice)
        is monotone in Dice, so the image with the worst Dice is also the one with the worst
        IoU for a single foreground class (PH2, most medical masks)."""
        return self.violation_statistic(output, batch).float()

    def output_divergence(self, out_adv: Any, out_clean: Any) -> Tensor:
        """Per-pixel ``KL(p_clean ‖ p_adv)`` over classes, averaged over pixels: ``[B]``."""
        kl = categorical_kl(self._logits(out_clean), self._logits(out_adv), dim=1)
        return kl.reshape(kl.shape[0], -1).mean(dim=1)

    def class_names(self) -> list[str]:
        """Names of the per-class metric entries (``data_info.class_names``, else indices)."""
        k = max(self.data_info.num_classes, 0)
        names = list(self.data_info.class_names)
        return [str(n) for n in names] if len(names) == k else [str(i) for i in range(k)]

    def build_metrics(self) -> MetricCollection:
        return MetricCollection(
            {"overlap": DiceIoU(self.num_classes, self.class_names())},
            compute_groups=False,
        )

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        pred = class_argmax(self._logits(output, batch).detach())
        for name in metrics.keys(keep_base=True):
            metrics[name].update(pred, batch["mask"])

    certification: ClassVar[str | None] = "certification.tasks.SegmentationCertification"

    def hard_prediction(self, output: Any) -> Tensor:
        """``int64 [B, *spatial]``: the predicted class of every pixel (argmax)."""
        return class_argmax(self._logits(output))

    def predict_for_display(self, output: Any) -> dict[str, Tensor]:
        """``mask`` ``[B, *spatial]`` (argmax) and ``confidence`` ``[B, *spatial]``."""
        probs = self._logits(output).detach().float().softmax(dim=1)
        conf, mask = probs.max(dim=1)
        return {"mask": mask, "confidence": conf}
