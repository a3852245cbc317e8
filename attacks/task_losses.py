"""Attack losses per task, by name, for :class:`attacks.AttackSpec` ``loss:`` entries.

An attack loss is what an attack *ascends*; it need not be the training loss. Each factory
here takes plain tensors (no task objects) and returns a per-sample loss ``-> [B]``:

===============  ==============  ==========================================================
name             task            paper
===============  ==============  ==========================================================
``ce``           classification  cross-entropy (Madry et al. 2018)
``dlr``          classification  difference of logits ratio (Croce & Hein 2020)
``dlr_targeted`` classification  targeted DLR, APGD-T (Croce & Hein 2020)
``ce_targeted``  classification  targeted CE (Croce & Hein 2020, APGD-T with CE)
``margin``       classification  CW margin (Carlini & Wagner 2017)
``mask_ce``      segmentation    CE on still-correct pixels (Croce et al. 2024, SEA)
``balanced_ce``  segmentation    class-balanced CE (Croce et al. 2024, SEA; our reading)
``js``           segmentation    Jensen–Shannon divergence to the label (Croce et al. 2024)
``segpgd``       segmentation    SegPGD's correct/wrong weighting (Gu et al. 2022)
``soft_argmax``  landmarks       distance of the soft-argmax point from the truth (ours)
``vanishing``    detection       TOG-vanishing: suppress confident detections (Chow et al. 2020)
===============  ==============  ==========================================================

Factories are called once per attack call as ``factory(clean_logits, steps, **args)`` and
return ``loss(logits, labels) -> [B]``. ``clean_logits`` (the model's output on the clean
batch) picks the targets of targeted losses; ``steps`` lets SegPGD schedule its weight over
the attack's iterations (it counts its own calls).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses

Loss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackLoss:
    """A named attack loss: the task it is for and its factory."""

    task: str
    factory: Callable[..., Loss]
    doc: str


def _per_sample(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).mean(dim=1)


# ---------------------------------------------------------------------- classification
def _ce(clean: Tensor | None, steps: int) -> Loss:
    return lambda z, y: losses.cross_entropy(z, y)


def _margin(clean: Tensor | None, steps: int) -> Loss:
    def loss(z: Tensor, y: Tensor) -> Tensor:
        if z.ndim == 2 and z.shape[1] == 1:  # single logit: margin of the wrong side
            return -(2 * y.float().reshape(-1) - 1) * z[:, 0].float()
        return losses.margin_loss(z, y)

    return loss


def _dlr(clean: Tensor | None, steps: int) -> Loss:
    """DLR needs ``K >= 3`` (``z_π3``). Documented fallback: with 1 or 2 logits it is the CW
    margin, since DLR's scale normaliser does not exist there."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        if z.ndim == 2 and z.shape[1] < 3:
            return _margin(clean, steps)(z, y)
        return losses.dlr_loss(z, y)

    return loss


def _target_classes(clean: Tensor | None, labels_rank: int) -> Callable[[Tensor], Tensor]:
    if clean is None:
        raise ValueError("targeted attack losses need the clean logits to choose the targets")

    def pick(y: Tensor) -> Tensor:
        z = clean.float().scatter(1, y.long().reshape(-1, 1), float("-inf"))
        k = z.shape[1] - 1
        if labels_rank > k:
            raise ValueError(f"target_rank={labels_rank} but only {k} other classes exist")
        return z.topk(labels_rank, dim=1).indices[:, labels_rank - 1]

    return pick


def _dlr_targeted(clean: Tensor | None, steps: int, target_rank: int = 1) -> Loss:
    """APGD-T's loss; the target is the ``target_rank``-th most likely wrong clean class."""
    pick = _target_classes(clean, int(target_rank))
    return lambda z, y: losses.dlr_targeted_loss(z, y, pick(y))


def _ce_targeted(clean: Tensor | None, steps: int, target_rank: int = 1) -> Loss:
    pick = _target_classes(clean, int(target_rank))
    return lambda z, y: losses.ce_targeted_loss(z, y, pick(y))


# ---------------------------------------------------------------------- segmentation
def _seg_inputs(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if z.ndim < 3:
        raise ValueError(f"segmentation attack loss: logits must be [B, K, *spatial], got {tuple(z.shape)}")
    y = y.long()
    if y.ndim == z.ndim:  # [B, 1, *spatial]
        y = y[:, 0]
    if z.shape[1] == 1:  # binary single channel → two logits (0, z)
        z = torch.cat([torch.zeros_like(z), z], dim=1)
    return z.float(), y


def _mask_ce(clean: Tensor | None, steps: int) -> Loss:
    """Croce et al. 2024 (SEA), Mask-CE: CE summed over pixels that are still correct, divided
    by all pixels, so already-broken pixels stop drawing the gradient.

    A broken pixel adds the constant ``log K`` instead of 0 (no gradient, same direction as
    Mask-CE). Why: a correct pixel's CE is at most ``log K``, so the *value* then grows with
    every pixel broken, and an attack that keeps its highest-loss iterate (APGD) keeps the
    iterate that broke the most pixels, not one where few pixels broke (plain Mask-CE drops
    when a pixel flips)."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        ce = F.cross_entropy(z, y, reduction="none")
        correct = (losses.class_argmax(z) == y).float()
        return _per_sample(ce * correct + math.log(z.shape[1]) * (1 - correct))

    return loss


def _balanced_ce(clean: Tensor | None, steps: int) -> Loss:
    """Class-balanced CE: each pixel weighted by the inverse frequency of its true class in its
    image, so a small structure (a lesion) weighs as much as the background. SEA (Croce et al.
    2024) balances its CE; this is our reading for medical masks."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        ce = F.cross_entropy(z, y, reduction="none")
        k = z.shape[1]
        onehot = F.one_hot(y, k).flatten(1, -2).float()  # [B, N, K]
        freq = onehot.sum(dim=1)  # [B, K]
        present = (freq > 0).float().sum(dim=1).clamp_min(1)  # [B]
        w = (onehot / freq.clamp_min(1)[:, None]).sum(dim=2)  # [B, N], each class sums to 1
        return (ce.flatten(1) * w).sum(dim=1) / present

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
        return _per_sample((kl_pm + kl_qm) / 2)

    return loss


def _segpgd(clean: Tensor | None, steps: int) -> Loss:
    """Gu et al. 2022, "SegPGD": ``(1 − λ_t)·CE(correct pixels) + λ_t·CE(wrong pixels)`` with
    ``λ_t = (t − 1)/(2T)``: first break the correct pixels, later keep the broken ones broken.
    ``t`` counts this loss's gradient calls (one per attack step)."""
    state = {"t": 0}

    def loss(z: Tensor, y: Tensor) -> Tensor:
        z, y = _seg_inputs(z, y)
        if torch.is_grad_enabled():  # the no-grad evaluation forwards do not advance t
            state["t"] += 1
        lam = min((state["t"] - 1) / (2 * max(steps, 1)), 0.5)
        ce = F.cross_entropy(z, y, reduction="none")
        correct = (losses.class_argmax(z) == y).float()
        return _per_sample(ce * ((1 - lam) * correct + lam * (1 - correct)))

    return loss


# ---------------------------------------------------------------------- landmarks
def soft_argmax(heat: Tensor, beta: float = 50.0) -> Tensor:
    """``[B, K, h, w] -> [B, K, 2]`` differentiable ``(x, y)`` heatmap peak (softmax-weighted
    mean position at inverse temperature ``beta``)."""
    b, k, h, w = heat.shape
    p = (heat.float().flatten(2) * beta).softmax(dim=2).view(b, k, h, w)
    xs = torch.arange(w, device=heat.device, dtype=p.dtype)
    ys = torch.arange(h, device=heat.device, dtype=p.dtype)
    return torch.stack([(p.sum(dim=2) * xs).sum(dim=2), (p.sum(dim=3) * ys).sum(dim=2)], dim=2)


def _soft_argmax(clean: Tensor | None, steps: int, beta: float = 50.0) -> Loss:
    """Push each predicted point away from its true position: mean over visible landmarks of
    ``‖soft_argmax(heatmap) − truth‖₂`` in heatmap pixels. ``labels`` is ``[B, K, 3]``:
    ``(x, y)`` in the heatmap frame and the visibility flag. Unlike heatmap MSE, which can be
    raised by blurring every peak in place, it grows only when the decoded point moves."""
    def loss(heat: Tensor, labels: Tensor) -> Tensor:
        pts = soft_argmax(heat, beta)
        truth, vis = labels[..., :2].float(), labels[..., 2].float()
        d = (pts - truth).norm(dim=2) * vis
        return d.sum(dim=1) / vis.sum(dim=1).clamp_min(1)

    return loss


# ---------------------------------------------------------------------- detection
def _vanishing(clean: Tensor | None, steps: int, score_thresh: float = 0.05) -> Loss:
    """Chow et al. 2020, "Adversarial Objectness Gradient Attacks in Real-time Object
    Detection Systems" (TOG-vanishing): make every object vanish by driving the detector's
    confident outputs towards "no object", whatever the ground truth.

    Per image: ``Σ_{s_j >= score_thresh} log(1 − s_j)`` over the scores ``s_j`` of the
    detector's eval-mode, post-processed detections (``scores`` ``[B, N]`` in ``[0, 1]``,
    zero-padded; see :func:`callbacks.evaluation_loop.task_loss_tensors`). It is ``<= 0`` and
    reaches 0 when nothing is detected above the threshold, so ascending it lowers every
    confident score, and an attack that keeps its highest-loss iterate (APGD) keeps the one
    with the fewest / weakest detections. The ``labels`` argument is not used.

    What the scores are: for FCOS (and the tiny default) ``sqrt(σ(class logit)·σ(centre-ness))``
    of the locations that survive the detector's score threshold, top-k and NMS; for Faster
    R-CNN the RoI head's softmax class probability of each kept box (the RPN proposals are
    detached in torchvision's eval path, so the gradient reaches the image through the RoI
    head's features). The paper attacks YOLO's pre-NMS objectness; we use the post-NMS outputs
    because they are what every torchvision detector exposes alike — when the strongest box
    of a cluster is suppressed, its NMS-hidden neighbour surfaces and is attacked next step.
    """
    thr = float(score_thresh)
    if not 0.0 <= thr < 1.0:
        raise ValueError(f"vanishing: score_thresh must be in [0, 1), got {score_thresh!r}")

    def loss(scores: Tensor, labels: Tensor) -> Tensor:
        if scores.ndim != 2:
            raise ValueError(f"vanishing attack loss: scores must be [B, N], got {tuple(scores.shape)}")
        s = scores.float().clamp(0.0, 1.0 - 1e-6)
        keep = (s >= thr).float()
        return (torch.log1p(-s) * keep).sum(dim=1)

    return loss


ATTACK_LOSSES: dict[str, AttackLoss] = {
    "ce": AttackLoss("classification", _ce, "cross-entropy"),
    "margin": AttackLoss("classification", _margin, "CW logit margin"),
    "dlr": AttackLoss("classification", _dlr, "DLR (CW margin for K < 3)"),
    "dlr_targeted": AttackLoss("classification", _dlr_targeted, "targeted DLR (K >= 4)"),
    "ce_targeted": AttackLoss("classification", _ce_targeted, "targeted CE"),
    "mask_ce": AttackLoss("segmentation", _mask_ce, "CE on still-correct pixels"),
    "balanced_ce": AttackLoss("segmentation", _balanced_ce, "class-balanced CE"),
    "js": AttackLoss("segmentation", _js, "Jensen-Shannon to the label"),
    "segpgd": AttackLoss("segmentation", _segpgd, "SegPGD weighting"),
    "soft_argmax": AttackLoss("landmarks", _soft_argmax, "soft-argmax point distance"),
    "vanishing": AttackLoss("detection", _vanishing, "TOG-vanishing: suppress confident detections"),
}


def make_attack_loss(name: str, clean_logits: Tensor | None, steps: int, **args: Any) -> Loss:
    """The per-call loss ``(logits, labels) -> [B]`` of attack loss ``name``."""
    if name not in ATTACK_LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; known: {sorted(ATTACK_LOSSES)}")
    return ATTACK_LOSSES[name].factory(clean_logits, steps, **args)
