"""The pieces :mod:`benchmarks.suite_vs_ensemble` compares with: the brute-force ensemble's
losses per task (``SETTINGS[task]["losses"]`` of :mod:`benchmarks.ensemble_models`), a suite
member that keeps its adversarial images, each image's metric / loss / violation, and the old
and new worst-case rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from attacks.task_losses import ATTACK_LOSSES, make_attack_loss
from attacks.worst_case import badness
from callbacks.attack_loss import task_loss_tensors


# ---------------------------------------------------------------------- the brute-force losses
# Per task: ``name -> factory() -> loss(output, batch) -> [B]`` of the independent ensemble; a
# factory per attack run, since SegPGD schedules its weight over its own calls.
def _named(module: Any, steps: int, name: str, **kw: Any) -> Callable[[], Any]:
    """A factory of the named attack loss (:mod:`attacks.task_losses`) on ``module``'s outputs."""
    def factory() -> Any:
        fn = make_attack_loss(name, None, steps, **kw)
        inputs = ATTACK_LOSSES[name].inputs
        return lambda out, batch: fn(*task_loss_tensors(module, out, batch, inputs))
    return factory


def _plain(fn: Any) -> Callable[[], Any]:
    return lambda: fn


def mask_losses(module: Any, steps: int) -> dict[str, Callable[[], Any]]:
    """Segmentation: pixel cross-entropy and the named mask losses."""
    def ce_pixel(out: Any, batch: Any) -> torch.Tensor:
        z, y = task_loss_tensors(module, out, batch)
        return F.cross_entropy(z.float(), y.long(), reduction="none").flatten(1).mean(dim=1)
    return {"ce_pixel": _plain(ce_pixel), **{k: _named(module, steps, k) for k in ("mask_ce", "dice", "js", "segpgd")}}


def landmark_losses(module: Any, steps: int) -> dict[str, Callable[[], Any]]:
    """Landmarks: the heatmap loss, soft-argmax and expected distance at two temperatures, the
    radial error of the reported points and the heatmap peak at the true point."""
    def peak_suppress(out: Any, batch: Any) -> torch.Tensor:
        # lower each heatmap at its true landmark (nearest heatmap pixel)
        heat, lab = task_loss_tensors(module, out, batch)
        h, w = heat.shape[-2:]
        xi = lab[..., 0].round().long().clamp(0, w - 1)
        yi = lab[..., 1].round().long().clamp(0, h - 1)
        v = heat.float().flatten(2).gather(2, (yi * w + xi)[..., None])[..., 0]
        vis = lab[..., 2]
        return -(v * vis).sum(dim=1) / vis.sum(dim=1).clamp_min(1)

    def radial_error(out: Any, batch: Any) -> torch.Tensor:
        # the task metric itself on the points the module reports (differentiable when
        # they come from the regression head; a constant of the heatmaps' argmax otherwise)
        pts = module.decode_points(out).float()
        truth = batch["landmarks"].to(pts.device, torch.float32)
        vis = batch["visible"].to(pts.device).float()
        err = (pts - torch.nan_to_num(truth)).norm(dim=-1) * vis
        return err.sum(dim=1) / vis.sum(dim=1).clamp_min(1)
    return {"heatmap_mse": _plain(module.per_sample_loss), "soft_argmax": _named(module, steps, "soft_argmax"),
            "radial_error": _plain(radial_error),
            "soft_argmax_b10": _named(module, steps, "soft_argmax", beta=10.0),
            "expected_distance": _named(module, steps, "expected_distance"),
            "expected_distance_b3": _named(module, steps, "expected_distance", beta=3.0),
            "peak_suppress": _plain(peak_suppress)}


def detection_losses(module: Any, steps: int) -> dict[str, Callable[[], Any]]:
    """Detection: the task loss, DAG (three variants) and the vanishing loss."""
    return {"task": _plain(module.per_sample_loss), "dag": _named(module, steps, "dag"),
            "vanishing": _named(module, steps, "vanishing"),
            "dag_margin": _named(module, steps, "dag", target_shift=None),
            "dag_nobox": _named(module, steps, "dag", box_weight=0.0)}


# ---------------------------------------------------------------------- the comparison
class Recording:
    """Wraps a suite member: calls it and keeps each batch's ``x_adv`` (by batch number)."""

    def __init__(self, attack: Any) -> None:
        self.attack, self.outputs = attack, []
        self.gradient_free = getattr(attack, "gradient_free", False)

    def __call__(self, *a: Any, **kw: Any) -> torch.Tensor:
        x_adv = self.attack(*a, **kw)
        self.outputs.append(x_adv.detach())
        return x_adv

    def __getattr__(self, name: str) -> Any:
        return getattr(self.attack, name)


def per_sample(module: Any, model: Any, x: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(x)
        return {"metric": module.per_sample_metric(out, batch).float(),
                "loss": module.per_sample_loss(out, batch).detach().float(),
                "violated": module.is_violated(out, batch).bool()}


def combine(cands: list[dict[str, torch.Tensor]], rule: str, higher: bool) -> torch.Tensor:
    """Per-sample metric of the candidate kept by ``rule`` ("old": violation, then the higher
    loss; "new": the worse metric, then the higher loss; the first candidate is the clean one)."""
    best = cands[0]
    metric, loss, viol = best["metric"].clone(), best["loss"].clone(), best["violated"].clone()
    for c in cands[1:]:
        if rule == "old":
            take = (c["violated"] & ~viol) | ((c["violated"] == viol) & (c["loss"] > loss))
        else:
            s, b = badness(c["metric"], higher), badness(metric, higher)
            take = (s > b) | ((s == b) & (c["loss"] > loss))
        metric = torch.where(take, c["metric"], metric)
        loss = torch.where(take, c["loss"], loss)
        viol = torch.where(take, c["violated"], viol)
    return metric
