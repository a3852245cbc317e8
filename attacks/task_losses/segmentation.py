"""Attack losses for segmentation logits ``[B, K, *spatial]`` (``K = 1``: one binary logit)
with label maps ``[B, *spatial]`` or ``[B, 1, *spatial]``: Mask-CE, class-balanced CE, JS,
SegPGD, the class-balanced margin, targeted maps and soft Dice (see :mod:`attacks.task_losses`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import losses
from .base import AttackLoss, Loss


def _seg_inputs(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if z.ndim < 3:
        raise ValueError(f"segmentation attack loss: logits must be [B, K, *spatial], got {tuple(z.shape)}")
    y = y.long()
    if y.ndim == z.ndim:  # [B, 1, *spatial]
        y = y[:, 0]
    if z.shape[1] == 1:  # binary single channel → two logits (0, z)
        z = torch.cat([torch.zeros_like(z), z], dim=1)
    return z.float(), y


def _class_balanced_mean(values: Tensor, y: Tensor, k: int) -> Tensor:
    """``[B, *spatial] -> [B]``: the per-pixel ``values`` averaged with each pixel weighted by
    the inverse frequency of its true class ``y`` in its image, so that every class present
    weighs the same (a small lesion as much as the background)."""
    onehot = F.one_hot(y, k).flatten(1, -2).float()  # [B, N, K]
    freq = onehot.sum(dim=1)  # [B, K]
    present = (freq > 0).float().sum(dim=1).clamp_min(1)  # [B]
    w = (onehot / freq.clamp_min(1)[:, None]).sum(dim=2)  # [B, N], each class sums to 1
    return (values.flatten(1) * w).sum(dim=1) / present


def _mask_ce(clean: Tensor | None, steps: int) -> Loss:
    """Croce et al. 2024 (SEA), Mask-CE: CE summed over pixels that are still correct, divided
    by all pixels, so already-violated pixels stop drawing the gradient.

    A violated pixel adds the constant ``log K`` instead of 0 (no gradient, same direction as
    Mask-CE). Why: a correct pixel's CE is at most ``log K``, so the *value* then grows with
    every pixel violated, and an attack that keeps its highest-loss iterate (APGD) keeps the
    iterate that broke the most pixels, not one where few pixels broke (plain Mask-CE drops
    when a pixel flips)."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        ce = F.cross_entropy(z, y, reduction="none")
        correct = (losses.class_argmax(z) == y).float()
        return losses.mean_per_sample(ce * correct + math.log(z.shape[1]) * (1 - correct))

    return loss


def _balanced_ce(clean: Tensor | None, steps: int) -> Loss:
    """Class-balanced CE: each pixel weighted by the inverse frequency of its true class in its
    image, so a small structure (a lesion) weighs as much as the background. SEA (Croce et al.
    2024) balances its CE; this is our reading for medical masks."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        return _class_balanced_mean(F.cross_entropy(z, y, reduction="none"), y, z.shape[1])

    return loss


def _js(clean: Tensor | None, steps: int) -> Loss:
    """Croce et al. 2024 (SEA), JS-Avg: per-pixel Jensen–Shannon divergence between the
    softmax and the one-hot label, averaged; bounded by log 2, so no pixel dominates."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        p = z.softmax(dim=1)
        q = F.one_hot(y, z.shape[1]).movedim(-1, 1).float()
        m = (p + q) / 2
        eps = 1e-12
        kl_pm = (p * ((p + eps).log() - (m + eps).log())).sum(dim=1)
        kl_qm = (q * ((q + eps).log() - (m + eps).log())).sum(dim=1)
        return losses.mean_per_sample((kl_pm + kl_qm) / 2)

    return loss


def _segpgd(clean: Tensor | None, steps: int) -> Loss:
    """Gu et al. 2022, "SegPGD": ``(1 − λ_t)·CE(correct pixels) + λ_t·CE(wrong pixels)`` with
    ``λ_t = (t − 1)/(2T)``: first break the correct pixels, later keep the violated ones violated.
    ``t`` counts this loss's gradient calls (one per attack step)."""
    state = {"t": 0}

    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        if torch.is_grad_enabled():  # the no-grad evaluation forwards do not advance t
            state["t"] += 1
        lam = min((state["t"] - 1) / (2 * max(steps, 1)), 0.5)
        ce = F.cross_entropy(z, y, reduction="none")
        correct = (losses.class_argmax(z) == y).float()
        return losses.mean_per_sample(ce * ((1 - lam) * correct + lam * (1 - correct)))

    return loss


def _seg_margin(clean: Tensor | None, steps: int) -> Loss:
    """The per-pixel logit margin ``m = max_{j≠y} z_j − z_y`` (CW margin, Carlini & Wagner 2017)
    clipped at 0 and averaged with class-balanced weights (each class present in the image
    weighs as much as the others, as in ``balanced_ce``): ``<= 0``, and 0 when every pixel is
    wrong. A flipped pixel adds exactly 0, more than any still-correct one, so the value rises
    with every pixel flipped and with every correct pixel moved towards its boundary.

    Square's segmentation loss: it is positively homogeneous in the logits (``z → c·z`` scales it
    by ``c``), so a random search, which only compares values, ranks its proposals the same on
    logits × 1000 — where cross-entropy and soft Dice saturate to constants in float32 and give
    a random search nothing to climb (the masked-gradient case of Athalye et al. 2018)."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        true = z.gather(1, y.unsqueeze(1))
        others = z.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1, keepdim=True)
        m = (others - true).squeeze(1).clamp(max=0.0)  # [B, *spatial]
        return _class_balanced_mean(m, y, z.shape[1])

    return loss


def _seg_targeted(clean: Tensor | None, steps: int, target_class: int | None = 0) -> Loss:
    """Targeted segmentation: pull every pixel towards a target class map, ``−mean CE(z,
    target)`` — the dense targeted attack of Xie et al. 2017 (DAG) and of the targeted
    segmentation attacks in Metzen et al. 2017 ("Universal Adversarial Perturbations Against
    Semantic Image Segmentation"). ``target_class`` an int: that class everywhere (the
    default 0, background: make every structure vanish); ``None``: each pixel's
    ``(label + 1) mod K`` (DAG's label permutation). Ascending it raises the share of pixels
    predicted as the target."""
    tc = None if target_class is None else int(target_class)

    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        k = z.shape[1]
        if tc is not None and not 0 <= tc < k:
            raise ValueError(f"seg_targeted: target_class={tc} but the logits have {k} classes")
        target = torch.full_like(y, tc) if tc is not None else (y + 1) % k
        return -losses.mean_per_sample(F.cross_entropy(z, target, reduction="none"))

    return loss


def _dice(clean: Tensor | None, steps: int) -> Loss:
    """``1 − soft Dice`` over the foreground classes (:func:`attacks.losses.dice_loss`; the
    soft Dice of Milletari et al. 2016, "V-Net"), in ``[0, 1]`` per image. The attack loss
    closest to the metric a segmentation study reports: pixel losses (CE and its masked,
    balanced, JS variants) weigh every pixel alike, so on a small lesion they spend the budget
    on background pixels that barely move the Dice; this one is the Dice itself, made smooth."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        return losses.dice_loss(z, y, include_background=False)

    return loss


LOSSES: dict[str, AttackLoss] = {
    "mask_ce": AttackLoss("segmentation", _mask_ce, "CE on still-correct pixels"),
    "balanced_ce": AttackLoss("segmentation", _balanced_ce, "class-balanced CE"),
    "js": AttackLoss("segmentation", _js, "Jensen-Shannon to the label"),
    "segpgd": AttackLoss("segmentation", _segpgd, "SegPGD weighting"),
    "seg_margin": AttackLoss("segmentation", _seg_margin, "class-balanced per-pixel margin, clipped at 0"),
    "seg_targeted": AttackLoss("segmentation", _seg_targeted, "pull pixels to a target class map"),
    "dice": AttackLoss("segmentation", _dice, "1 - soft Dice over the foreground"),
}
