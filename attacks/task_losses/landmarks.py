"""Attack losses for landmark heatmaps ``[B, K, h, w]`` with labels ``[B, K, 3]`` (``(x, y)`` in
the heatmap frame and a visibility flag): soft-argmax distance, expected distance, the targeted
pull and the peak margin (see :mod:`attacks.task_losses`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import AttackLoss, Loss


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


LOSSES: dict[str, AttackLoss] = {
    "soft_argmax": AttackLoss("landmarks", _soft_argmax, "soft-argmax point distance"),
    "expected_distance": AttackLoss("landmarks", _expected_distance,
                                    "expected distance from the truth under the heatmap softmax"),
    "soft_argmax_targeted": AttackLoss("landmarks", _soft_argmax_targeted,
                                       "pull the soft-argmax points to truth + shift"),
    "peak_margin": AttackLoss("landmarks", _peak_margin, "best heatmap value off the truth minus near it"),
}
