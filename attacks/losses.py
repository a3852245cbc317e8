"""Per-sample losses and violation tests for attacks and training methods.

Every loss here maps ``(output, target)`` to a tensor of shape ``[B]`` (one value per sample,
never reduced over the batch): attacks ascend each sample's own loss, AMAT thresholds it per
sample, and the evaluation callback keeps per-sample worst cases. Reductions over classes and
spatial dimensions are means, so values do not depend on image size.

Spatial code is dimension-agnostic: the same function takes 2-D ``[B, K, H, W]`` and 3-D
``[B, K, D, H, W]`` maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bernoulli_kl",
    "categorical_kl",
    "cross_entropy",
    "dice_loss",
    "dice_ce_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "heatmap_mse",
    "logit_margin",
    "margin_loss",
    "mean_per_sample",
    "argmax_violated",
    "loss_above",
    "unwrap_target",
]


def unwrap_target(target: Any, key: str = "target") -> Tensor:
    """The label tensor inside ``target``: the tensor itself, or ``target[key]`` for a batch dict.

    Lets the default losses accept a whole batch dict ``{"image", "target", ...}``; anything
    else needs its own ``loss_fn``.
    """
    if isinstance(target, Tensor):
        return target
    if isinstance(target, Mapping) and key in target and isinstance(target[key], Tensor):
        return target[key]
    raise TypeError(
        f"expected target to be a Tensor or a mapping with a Tensor under {key!r}, got "
        f"{type(target).__name__}; pass a loss_fn/is_violated that understands your target"
    )


def class_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(dim=1)`` for ``[B, K, *spatial]`` score maps, as int64 ``[B, *spatial]``.

    Same result as ``argmax`` (the first maximum wins a tie). On the CPU it is computed as
    ``K − 1`` elementwise comparisons: there ``argmax`` over a short strided class axis is
    several times slower (about 3 ms for a ``[8, 2, 64, 64]`` map on one thread), and the
    segmentation path takes it on every attack step (AMAT's violation checks, Mask-CE, SegPGD).
    Maps holding a NaN, many classes and GPU tensors use ``argmax`` itself.
    """
    k = logits.shape[1] if logits.dim() >= 3 else 0
    if k < 2 or k > 16 or logits.device.type != "cpu" or bool(logits.isnan().any()):
        return logits.argmax(dim=1)
    best = logits[:, 0]
    index = torch.zeros(best.shape, dtype=torch.long, device=logits.device)
    for c in range(1, k):
        v = logits[:, c]
        better = v > best  # strict: the first maximum wins a tie, as in argmax
        best = torch.maximum(best, v)
        index.masked_fill_(better, c)
    return index


def mean_per_sample(t: Tensor) -> Tensor:
    """Mean over every dim but the first: ``[B, *] -> [B]``."""
    return t.reshape(t.shape[0], -1).mean(dim=1) if t.ndim > 1 else t


def cross_entropy(output: Tensor, target: Any) -> Tensor:
    """Per-sample cross-entropy, ``-> [B]`` (float32).

    Accepted pairs:
      * logits ``[B, K, *spatial]`` (``K >= 2``, spatial may be empty) with integer class
        indices ``[B, *spatial]`` (or ``[B, 1, *spatial]``): softmax CE, averaged over spatial
        positions;
      * a single logit ``[B]`` or ``[B, 1, *spatial]`` with 0/1 targets of the same number of
        elements per sample (int or float): binary CE with logits;
      * multi-label logits ``[B, K, *]`` with targets of the same shape (float or int 0/1):
        BCE with logits, averaged over labels (and positions).
    ``target`` may also be a batch dict holding the labels under ``"target"``.
    """
    target = unwrap_target(target)
    output = output.float()  # autocast may hand over bf16/fp16 logits; CE wants fp32
    b = output.shape[0]
    if target.shape == output.shape:  # binary [B] / multi-label [B, K, *]
        return mean_per_sample(
            F.binary_cross_entropy_with_logits(output, target.to(output.dtype), reduction="none")
        )
    if output.ndim >= 2 and output.shape[1] == 1 and target.numel() == output.numel():
        # single-logit binary map [B, 1, *] with targets [B, *]
        logit = output.reshape(b, -1)
        tgt = target.reshape(b, -1).to(output.dtype)
        return F.binary_cross_entropy_with_logits(logit, tgt, reduction="none").mean(dim=1)
    if output.ndim < 2:
        raise ValueError(
            f"cross_entropy: output of shape {tuple(output.shape)} needs target of the same "
            f"shape (binary), got {tuple(target.shape)}"
        )
    if target.ndim == output.ndim and target.shape[1] == 1:  # MONAI-style [B, 1, *] labels
        target = target.squeeze(1)
    if target.is_floating_point():
        raise ValueError(
            "cross_entropy: logits [B, K, *] need integer class targets [B, *] (or float "
            f"targets of the logits' shape for multi-label); got output {tuple(output.shape)}, "
            f"target {tuple(target.shape)} {target.dtype}"
        )
    return mean_per_sample(F.cross_entropy(output, target.long(), reduction="none"))


def _one_hot_like(target: Tensor, output: Tensor) -> Tensor:
    """Integer labels ``[B, *spatial]`` or ``[B, 1, *spatial]`` -> one-hot ``[B, K, *spatial]``;
    a target already shaped like ``output`` is returned as float."""
    if target.shape == output.shape:
        return target.to(output.dtype)
    k = output.shape[1]
    if target.ndim == output.ndim:  # [B, 1, *spatial]
        target = target.squeeze(1)
    if k == 1:  # binary segmentation with a single foreground channel
        return target.unsqueeze(1).to(output.dtype)
    one_hot = F.one_hot(target.long(), k)  # [B, *spatial, K]
    return one_hot.movedim(-1, 1).to(output.dtype)


def dice_loss(
    output: Tensor,
    target: Any,
    include_background: bool = False,
    softmax: bool = True,
    smooth: float = 1e-5,
) -> Tensor:
    """Per-sample soft Dice loss ``1 - mean_k Dice_k``, ``-> [B]`` in ``[0, 1]``.

    Args:
        output: ``[B, K, *spatial]`` logits (or probabilities if ``softmax=False``).
            ``K == 1`` is binary segmentation (sigmoid of the single foreground channel).
        target: integer labels ``[B, *spatial]`` / ``[B, 1, *spatial]``, or a one-hot/soft
            target ``[B, K, *spatial]``; or a batch dict with it under ``"target"``.
        include_background: count channel 0 in the mean (ignored when ``K == 1``).
        softmax: turn logits into probabilities (softmax over K, sigmoid if ``K == 1``).
        smooth: added to numerator and denominator, so a class absent from both prediction and
            target scores Dice 1 (loss 0) rather than 0/0.
    """
    target = unwrap_target(target)
    output = output.float()
    if output.ndim < 3:
        raise ValueError(f"dice_loss: output must be [B, K, *spatial], got {tuple(output.shape)}")
    k = output.shape[1]
    if softmax:
        prob = torch.sigmoid(output) if k == 1 else output.softmax(dim=1)
    else:
        prob = output
    onehot = _one_hot_like(target, output)
    if k > 1 and not include_background:
        prob, onehot = prob[:, 1:], onehot[:, 1:]
    dims = tuple(range(2, output.ndim))
    inter = (prob * onehot).sum(dim=dims)
    denom = prob.sum(dim=dims) + onehot.sum(dim=dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)  # [B, K']
    return 1.0 - dice.mean(dim=1)


def dice_ce_loss(
    output: Tensor,
    target: Any,
    include_background: bool = False,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
) -> Tensor:
    """``lambda_dice * dice_loss + lambda_ce * cross_entropy`` per sample, ``-> [B]``."""
    return lambda_dice * dice_loss(
        output, target, include_background=include_background
    ) + lambda_ce * cross_entropy(output, target)


def heatmap_mse(output: Tensor, target: Any) -> Tensor:
    """Mean squared error per sample over ``[K, *spatial]`` (landmark heatmaps), ``-> [B]``."""
    target = unwrap_target(target)
    if target.shape != output.shape:
        raise ValueError(
            f"heatmap_mse: output {tuple(output.shape)} and target {tuple(target.shape)} "
            "must have the same shape"
        )
    diff = output.float() - target.float()
    return mean_per_sample(diff * diff)


def margin_loss(output: Tensor, target: Any, kappa: float = math.inf) -> Tensor:
    """Carlini–Wagner logit margin ``max_{i != y} z_i - z_y`` per sample, ``-> [B]``.

    Positive exactly when the sample is misclassified; maximising it is the CW (2017) /
    "margin" attack objective, which does not saturate like cross-entropy. ``kappa`` caps it
    (CW's confidence: no reward for a margin beyond ``kappa``). Logits ``[B, K, *spatial]``
    with integer targets ``[B, *spatial]``; spatial margins are averaged.
    """
    target = unwrap_target(target).long()
    output = output.float()
    if output.ndim < 2 or output.shape[1] < 2:
        raise ValueError(f"margin_loss: needs logits [B, K>=2, *], got {tuple(output.shape)}")
    true = output.gather(1, target.unsqueeze(1))  # [B, 1, *]
    # Mask the true class with -inf to take the best other class.
    others = output.scatter(1, target.unsqueeze(1), float("-inf"))
    margin = (others.amax(dim=1, keepdim=True) - true).squeeze(1)
    if math.isfinite(kappa):
        margin = margin.clamp(max=kappa)
    return mean_per_sample(margin)


def logit_margin(output: Tensor, target: Any) -> Tensor:
    """:func:`margin_loss` that also takes a single logit ``[B, 1]`` with 0/1 labels ``[B]``:
    then the logit's margin on the wrong side, ``−(2y − 1)·z`` (positive exactly when
    misclassified, as the CW margin). FMN's default loss and the ``margin`` attack loss."""
    if isinstance(output, Tensor) and output.ndim == 2 and output.shape[1] == 1:
        y = unwrap_target(target).float().reshape(-1)
        return -(2 * y - 1) * output[:, 0].float()
    return margin_loss(output, target)


def _dlr_inputs(output: Tensor, target: Any, min_classes: int, what: str) -> tuple[Tensor, Tensor]:
    labels = unwrap_target(target).long().reshape(-1)
    output = output.float()
    if output.ndim != 2 or output.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: needs logits [B, K] and labels [B], got {tuple(output.shape)} "
                         f"and {tuple(labels.shape)}")
    if output.shape[1] < min_classes:
        raise ValueError(
            f"{what}: needs K >= {min_classes} classes (its denominator uses the "
            f"{min_classes - 1 if min_classes == 3 else min_classes}-th largest logit), got K = "
            f"{output.shape[1]}; for binary classification use margin_loss (the CW margin), as "
            "the classification `standard` suite does"
        )
    return output, labels


def dlr_loss(output: Tensor, target: Any) -> Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020), ``-> [B]``:
    ``-(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)`` with ``z_π`` the logits sorted decreasingly.

    Invariant to shifting and rescaling the logits, so a model whose softmax saturates (or is
    scaled to hide its gradient) cannot mislead it. Positive exactly when misclassified.
    Needs logits ``[B, K]`` with ``K >= 3`` (raises otherwise; use :func:`margin_loss` for 2).
    """
    z, y = _dlr_inputs(output, target, 3, "dlr_loss")
    srt = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return -(z_y - z_other) / (srt[:, 0] - srt[:, 2] + 1e-12)


def dlr_targeted_loss(output: Tensor, target: Any, target_class: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020), ``-> [B]``:
    ``-(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``; increasing it moves the prediction to the
    target class ``t`` (``target_class`` ``[B]`` int). Needs ``K >= 4`` classes."""
    z, y = _dlr_inputs(output, target, 4, "dlr_targeted_loss")
    t = target_class.long().to(z.device).reshape(-1, 1)
    srt = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_t = z.gather(1, t).squeeze(1)
    return -(z_y - z_t) / (srt[:, 0] - (srt[:, 2] + srt[:, 3]) / 2 + 1e-12)


def ce_targeted_loss(output: Tensor, target: Any, target_class: Tensor) -> Tensor:
    """Targeted cross-entropy, ``-> [B]``: ``−CE(z, t)``; increasing it pulls the prediction
    towards ``target_class`` ``[B]``. Logits ``[B, K, *spatial]`` (targets per position then)."""
    t = target_class.long().to(output.device)
    return -mean_per_sample(F.cross_entropy(output.float(), t, reduction="none"))


def bernoulli_kl(logit_p: Tensor, logit_q: Tensor) -> Tensor:
    """Elementwise ``KL(Bernoulli(σ(p)) ‖ Bernoulli(σ(q)))`` from logits (any shape, the same
    for both), in float32 and numerically stable (log-sigmoids, never ``log(σ)``).

    Used by TRADES (Zhang et al. 2019) for single-logit / multi-label classifiers and for the
    dense heads of one-stage detectors; ``p`` is the reference (clean) output.
    """
    p_, q_ = logit_p.float(), logit_q.float()
    p = torch.sigmoid(p_)
    return p * (F.logsigmoid(p_) - F.logsigmoid(q_)) + (1 - p) * (F.logsigmoid(-p_) - F.logsigmoid(-q_))


def categorical_kl(logits_p: Tensor, logits_q: Tensor, dim: int = 1) -> Tensor:
    """``KL(softmax(p) ‖ softmax(q))`` over the class dimension ``dim`` (summed out), in
    float32: ``[B, K, *S] → [B, *S]``. TRADES's divergence for classifiers (``[B, K] → [B]``)
    and, per pixel, for segmentation."""
    logp, logq = logits_p.float().log_softmax(dim=dim), logits_q.float().log_softmax(dim=dim)
    return (logp.exp() * (logp - logq)).sum(dim=dim)


def argmax_violated(output: Tensor, target: Any) -> Tensor:
    """Success test for classification, ``-> Bool[B]``: the prediction differs from the label.

    Logits ``[B, K]`` (``K >= 2``) with integer labels ``[B]``: argmax != label. A single logit
    ``[B]`` / ``[B, 1]`` with 0/1 labels: ``(logit > 0) != label``. Multi-label ``[B, K]``
    with targets of the same shape: any label wrong. For segmentation or landmarks use a
    loss-defined test, :func:`loss_above`.
    """
    target = unwrap_target(target)
    b = output.shape[0]
    if target.shape == output.shape or (output.ndim == 2 and output.shape[1] == 1):
        pred = output.reshape(b, -1) > 0
        truth = target.reshape(b, -1) > 0.5
        return (pred != truth).any(dim=1)
    if output.ndim != 2:
        raise ValueError(
            f"argmax_violated: expects logits [B, K], got {tuple(output.shape)}; for dense "
            "outputs use attacks.losses.loss_above(loss_fn, threshold)"
        )
    return output.argmax(dim=1) != target.long()


def loss_above(
    loss_fn: Callable[[Any, Any], Tensor], threshold: float | Tensor
) -> Callable[[Any, Any], Tensor]:
    """Loss-defined violation test: ``is_violated(output, target) = loss_fn(output, target) >
    threshold`` (threshold a float or a per-sample tensor ``[B]``). This is AMAT's "violation"
    for segmentation/landmarks/detection, e.g. ``loss_above(dice_loss, 1 - clean_mean_dice)``.
    """

    def is_violated(output: Any, target: Any) -> Tensor:
        loss = loss_fn(output, target)
        thr = threshold.to(loss.device) if isinstance(threshold, Tensor) else threshold
        return loss > thr

    return is_violated
