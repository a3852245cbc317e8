"""Attack losses per task, by name, for :class:`attacks.AttackSpec` ``loss:`` entries.

An attack loss is what an attack *ascends*; it need not be the training loss. Each factory
here takes plain tensors (no task objects) and returns a per-sample loss ``-> [B]``:

========================  ==============  ==========================================================================
name                      task            paper
========================  ==============  ==========================================================================
``ce``                    classification  cross-entropy (Madry et al. 2018)
``dlr``                   classification  difference of logits ratio (Croce & Hein 2020)
``dlr_targeted``          classification  targeted DLR, APGD-T (Croce & Hein 2020)
``ce_targeted``           classification  targeted CE (Croce & Hein 2020, APGD-T with CE)
``margin``                classification  CW margin (Carlini & Wagner 2017)
``mask_ce``               segmentation    CE on still-correct pixels (Croce et al. 2024, SEA)
``balanced_ce``           segmentation    class-balanced CE (Croce et al. 2024, SEA; our reading)
``js``                    segmentation    Jensen–Shannon divergence to the label (Croce et al. 2024)
``segpgd``                segmentation    SegPGD's correct/wrong weighting (Gu et al. 2022)
``seg_margin``            segmentation    class-balanced per-pixel logit margin, clipped at 0 (Square's loss; ours)
``seg_targeted``          segmentation    targeted: pixels to a class map (Xie et al. 2017; Metzen et al. 2017)
``dice``                  segmentation    1 − soft Dice over the foreground classes (Milletari et al. 2016, V-Net)
``soft_argmax``           landmarks       distance of the soft-argmax point from the truth (ours)
``expected_distance``     landmarks       expected distance from the truth under the heatmap's softmax (ours)
``soft_argmax_targeted``  landmarks       pull the points to truth + a shift (targeted; ours)
``peak_margin``           landmarks       best heatmap value off the truth minus best near it (Square's loss; ours)
``vanishing``             detection       TOG-vanishing: suppress confident detections (Chow et al. 2020)
``dag``                   detection       DAG: GT-matched locations to a wrong class, boxes off (Xie et al. 2017)
========================  ==============  ==========================================================================

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
    #: which ``(logits, labels)`` the evaluator hands over (``callbacks.evaluation_loop.
    #: task_loss_tensors``): ``"default"``, or ``"matched"`` (detection: class logits of the
    #: locations matched to ground-truth objects, for DAG)
    inputs: str = "default"


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
        return _per_sample(ce * ((1 - lam) * correct + lam * (1 - correct)))

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
        k = z.shape[1]
        onehot = F.one_hot(y, k).flatten(1, -2).float()  # [B, N, K]
        freq = onehot.sum(dim=1)  # [B, K]
        present = (freq > 0).float().sum(dim=1).clamp_min(1)  # [B]
        w = (onehot / freq.clamp_min(1)[:, None]).sum(dim=2)  # [B, N], each class sums to 1
        return (m.flatten(1) * w).sum(dim=1) / present

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
        return -_per_sample(F.cross_entropy(z, target, reduction="none"))

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


def _expected_distance(clean: Tensor | None, steps: int, beta: float = 10.0) -> Loss:
    """Expected distance of each landmark from its truth under the softmax of its heatmap,
    ``E_{u ~ softmax(β·heat)} ‖u − t‖₂``, averaged over the visible landmarks, in heatmap
    pixels (image pixels when the heatmap has the image's size, as with the shipped nets).
    ``labels``: ``[B, K, 3]`` as for ``soft_argmax``.

    Why it is a stronger objective than the soft-argmax distance ``‖E[u] − t‖`` (which it
    bounds from above, by Jensen): the soft-argmax point can stay on the truth while mass
    spreads symmetrically around it, and moving it needs a coherent shift of the whole peak;
    the expected distance grows with *any* mass placed far from the truth, so its gradient
    raises a second, distant peak, which the decoder (a local soft-argmax around the argmax)
    then jumps to once it outgrows the true one — the failure that costs the most radial
    error. It is 0 for a one-pixel peak on the truth and the distance of the peak for a
    displaced one. ``beta`` is an inverse temperature for heatmaps of peak ~1: 10 keeps the
    softmax of a trained peak from saturating (``β = 50``, the soft-argmax loss's, leaves
    almost no gradient outside the peak)."""
    b_ = float(beta)
    if not b_ > 0:
        raise ValueError(f"expected_distance: beta must be > 0, got {beta!r}")

    def loss(heat: Tensor, labels: Tensor) -> Tensor:
        if heat.ndim != 4 or labels.ndim != 3 or labels.shape[-1] != 3:
            raise ValueError(f"expected_distance: heatmaps must be [B, K, h, w] and labels [B, K, 3], "
                             f"got {tuple(heat.shape)} and {tuple(labels.shape)}")
        b, k, h, w = heat.shape
        p = (heat.float().flatten(2) * b_).softmax(dim=2)  # [B, K, h·w]
        ys, xs = torch.meshgrid(torch.arange(h, device=heat.device, dtype=p.dtype),
                                torch.arange(w, device=heat.device, dtype=p.dtype), indexing="ij")
        truth, vis = labels[..., :2].float(), labels[..., 2].float()
        dx = xs.reshape(1, 1, -1) - truth[..., 0:1]
        dy = ys.reshape(1, 1, -1) - truth[..., 1:2]
        dist = (dx * dx + dy * dy).sqrt()  # [B, K, h·w]
        d = (p * dist).sum(dim=2) * vis
        return d.sum(dim=1) / vis.sum(dim=1).clamp_min(1)

    return loss


def _soft_argmax_targeted(clean: Tensor | None, steps: int, shift: Any = (2.0, 2.0),
                          beta: float = 50.0) -> Loss:
    """Targeted landmark attack: pull each decoded point towards ``truth + shift`` — a
    plausible-looking but wrong anatomy, the landmark analogue of a targeted class (APGD-T,
    Croce & Hein 2020; targeted adversarial examples, Carlini & Wagner 2017). Per image
    ``−mean_visible ‖soft_argmax(heatmap) − clamp(truth + shift)‖₂`` (heatmap pixels), so
    ascending it shrinks the distance to the target and an attack keeping its highest-loss
    iterate (APGD) keeps the closest one. ``shift`` is ``(dx, dy)`` in heatmap pixels (image
    pixels when the heatmap has the image's size; one number: the same for x and y); the
    target is clamped into the heatmap so that it stays reachable. ``labels``: ``[B, K, 3]`` as
    for ``soft_argmax``."""
    vals = [float(v) for v in (shift if isinstance(shift, (list, tuple)) else (shift, shift))]
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals) or vals == [0.0, 0.0]:
        raise ValueError(f"soft_argmax_targeted: shift must be a nonzero (dx, dy) pair of finite "
                         f"pixels (or one number), got {shift!r}")

    def loss(heat: Tensor, labels: Tensor) -> Tensor:
        pts = soft_argmax(heat, beta)
        h, w = heat.shape[-2:]
        target = labels[..., :2].float() + pts.new_tensor(vals)
        target = torch.stack([target[..., 0].clamp(0, w - 1), target[..., 1].clamp(0, h - 1)], dim=-1)
        vis = labels[..., 2].float()
        d = (pts - target).norm(dim=2) * vis
        return -d.sum(dim=1) / vis.sum(dim=1).clamp_min(1)

    return loss


def _peak_margin(clean: Tensor | None, steps: int, radius: float = 4.0) -> Loss:
    """The landmark analogue of the classification margin: per visible landmark, the highest
    heatmap value farther than ``radius`` heatmap pixels from the truth minus the highest value
    within ``radius`` of it, averaged over visible landmarks. Positive exactly when the decoded
    (argmax) point lies more than ``radius`` from the truth. ``labels``: ``[B, K, 3]`` as for
    ``soft_argmax``.

    Square's landmark loss, chosen because it does not saturate: it is positively homogeneous in
    the heatmap (``h → c·h`` scales it by ``c``), so a random search ranks its proposals the same
    on a heatmap × 1000, where a soft-argmax (softmax of ``β·h``) collapses to a hard argmax that
    only changes when a peak jumps; and unlike heatmap MSE, which a random search raises by
    blurring every peak in place, it rises only as a rival peak off the truth grows. The default
    radius is 4 heatmap pixels, the shift of the task's own violation test."""
    r = float(radius)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"peak_margin: radius must be a finite number > 0 (heatmap pixels), got {radius!r}")

    def loss(heat: Tensor, labels: Tensor) -> Tensor:
        if heat.ndim != 4 or labels.ndim != 3 or labels.shape[:2] != heat.shape[:2]:
            raise ValueError(f"peak_margin: heatmaps must be [B, K, h, w] and labels [B, K, 3], got "
                             f"{tuple(heat.shape)} and {tuple(labels.shape)}")
        b, k, h, w = heat.shape
        ys = torch.arange(h, device=heat.device, dtype=torch.float32).view(1, 1, h, 1)
        xs = torch.arange(w, device=heat.device, dtype=torch.float32).view(1, 1, 1, w)
        t = labels[..., :2].float()
        d2 = (xs - t[..., 0, None, None]) ** 2 + (ys - t[..., 1, None, None]) ** 2  # [B, K, h, w]
        near = d2 <= r * r
        hf = heat.float()
        best_near = hf.masked_fill(~near, float("-inf")).flatten(2).amax(dim=2)
        best_far = hf.masked_fill(near, float("-inf")).flatten(2).amax(dim=2)
        # a truth off the heatmap (no near pixel) or a heatmap inside the radius (no far pixel)
        m = torch.nan_to_num(best_far - best_near, nan=0.0, posinf=0.0, neginf=0.0)
        vis = labels[..., 2].float()
        return (m * vis).sum(dim=1) / vis.sum(dim=1).clamp_min(1)

    return loss


# ---------------------------------------------------------------------- detection
def _vanishing(clean: Tensor | None, steps: int, score_thresh: float = 0.05) -> Loss:
    """Chow et al. 2020, "Adversarial Objectness Gradient Attacks in Real-time Object
    Detection Systems" (TOG-vanishing): make every object vanish by driving the detector's
    confident outputs towards "no object", whatever the ground truth.

    Per image: ``Σ_{s_j >= score_thresh} log(1 − s_j)`` over the scores ``s_j`` of the
    detector's eval-mode, post-processed detections (``scores`` ``[B, N]`` in ``[0, 1]``,
    zero-padded; see :func:`callbacks.attack_loss.task_loss_tensors`). It is ``<= 0`` and
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


def _box_iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise IoU of xyxy boxes ``[..., 4]`` and ``[..., 4]`` -> ``[...]``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp_min(0).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(dim=-1)
    return inter / (area_a + area_b - inter).clamp_min(1e-6)


def _dag(clean: Tensor | None, steps: int, target_shift: int | None = 1, kappa: float | None = 5.0,
         box_weight: float = 1.0) -> Loss:
    """Xie et al. 2017, "Adversarial Examples for Semantic Segmentation and Object Detection"
    (DAG, Dense Adversary Generation): targeted misclassification of every proposal / location
    that covers a ground-truth object, optionally with its box pushed off the object.

    ``pred`` ``[B, L, K + 4]``: the class head's logits at the detector's locations (FCOS,
    RetinaNet) or eval-mode proposals (Faster R-CNN) and each one's decoded box; ``target``
    ``[B, L, 5]``: the class of the ground-truth object each covers (``-1``: none, ignored)
    and its box; see ``DetectionOutput.matched_predictions``. Each matched location ``n``
    with true class ``y_n`` gets the fixed wrong target ``t_n = (y_n + target_shift) mod K``
    (DAG draws a random wrong label per target; a fixed permutation keeps the attack
    deterministic; ``target_shift=None``: the currently highest other class, an untargeted
    margin). Per image, the mean over the matched locations (0 for an image without objects) of

        ``min(z_{t_n} − z_{y_n}, kappa) + box_weight · (1 − IoU(box_n, gt_n))``.

    DAG ascends ``z_t − z_y`` only on the *active* targets, the locations still classified as
    ``y``; the clip at ``kappa`` is that active set — a location stops drawing gradient once
    its target beats its true class by ``kappa`` (``kappa = 0``: DAG's rule exactly) — and
    keeps the value growing with every location flipped, so APGD's best iterate is the one
    with the most flipped locations. The default ``kappa = 5`` keeps pushing past the flip:
    on sigmoid heads (FCOS) a barely flipped location still reports the true class at almost
    the same score (NMS is per class), and on a trained tiny FCOS ``kappa = 5`` lowered
    mAP@0.5 more than ``kappa = 0`` (0.25 vs 0.31 at ε = 0.02, PGD-10). With ``K = 1`` (one
    sigmoid class) the target logit is 0. The box term
    (our addition, in the spirit of DAG's joint detection loss) moves each matched location's
    box off its object: a detection with IoU < 0.5 is a false positive *and* a missed object
    at mAP@0.5, whatever its score, which neither a score-only loss (TOG-vanishing) nor a
    class flip achieves on sigmoid heads, where NMS is per class.
    """
    shift = None if target_shift is None else int(target_shift)
    if shift is not None and shift == 0:
        raise ValueError("dag: target_shift must not be 0 (the target would be the true class)")
    # kappa None: no clip (Square's setting: a plain margin stays positively homogeneous)
    kap, bw = (math.inf if kappa is None else float(kappa)), float(box_weight)
    if bw < 0:
        raise ValueError(f"dag: box_weight must be >= 0, got {box_weight!r}")

    def loss(pred: Tensor, target: Tensor) -> Tensor:
        if (pred.ndim != 3 or target.ndim != 3 or target.shape[2] != 5 or pred.shape[2] < 5
                or pred.shape[:2] != target.shape[:2]):
            raise ValueError(f"dag attack loss: pred must be [B, L, K + 4] and target [B, L, 5], "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        z, box = pred[..., :-4].float(), pred[..., -4:].float()
        k = z.shape[2]
        y = target[..., 0].round().long()
        matched = (y >= 0).float()
        yc = y.clamp_min(0)
        zy = z.gather(2, yc[..., None])[..., 0]
        if k == 1:
            zt = torch.zeros_like(zy)
        elif shift is None:
            zt = z.scatter(2, yc[..., None], float("-inf")).amax(dim=2)
        else:
            zt = z.gather(2, ((yc + shift) % k)[..., None])[..., 0]
        term = (zt - zy).clamp(max=kap)
        if bw > 0:
            term = term + bw * (1 - _box_iou_pairs(box, target[..., 1:].float()))
        return (term * matched).sum(dim=1) / matched.sum(dim=1).clamp_min(1)

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
    "seg_margin": AttackLoss("segmentation", _seg_margin, "class-balanced per-pixel margin, clipped at 0"),
    "seg_targeted": AttackLoss("segmentation", _seg_targeted, "pull pixels to a target class map"),
    "dice": AttackLoss("segmentation", _dice, "1 - soft Dice over the foreground"),
    "soft_argmax": AttackLoss("landmarks", _soft_argmax, "soft-argmax point distance"),
    "expected_distance": AttackLoss("landmarks", _expected_distance,
                                    "expected distance from the truth under the heatmap softmax"),
    "soft_argmax_targeted": AttackLoss("landmarks", _soft_argmax_targeted,
                                       "pull the soft-argmax points to truth + shift"),
    "peak_margin": AttackLoss("landmarks", _peak_margin, "best heatmap value off the truth minus near it"),
    "vanishing": AttackLoss("detection", _vanishing, "TOG-vanishing: suppress confident detections"),
    "dag": AttackLoss("detection", _dag, "DAG: targeted misclassification of GT-matched locations",
                      inputs="matched"),
}


def make_attack_loss(name: str, clean_logits: Tensor | None, steps: int, **args: Any) -> Loss:
    """The per-call loss ``(logits, labels) -> [B]`` of attack loss ``name``."""
    if name not in ATTACK_LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; known: {sorted(ATTACK_LOSSES)}")
    return ATTACK_LOSSES[name].factory(clean_logits, steps, **args)
