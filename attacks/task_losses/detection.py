"""Attack losses for detectors: TOG-vanishing on the post-processed scores ``[B, N]`` and DAG on
the class logits and boxes of the locations matched to ground-truth objects (see
:mod:`attacks.task_losses`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import AttackLoss, Loss


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


LOSSES: dict[str, AttackLoss] = {
    "vanishing": AttackLoss("detection", _vanishing, "TOG-vanishing: suppress confident detections"),
    "dag": AttackLoss("detection", _dag, "DAG: targeted misclassification of GT-matched locations",
                      inputs="matched"),
}
