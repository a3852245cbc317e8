"""Targeted attack losses: ``soft_argmax_targeted`` (landmarks) pulls the decoded points
towards ``truth + shift``, ``seg_targeted`` (segmentation) pulls pixels to a target class map,
on trained tiny U-Nets, with the attack invariants intact."""

from __future__ import annotations

import pytest
import torch

from attacks import APGD, PGD, per_sample_norm
from attacks.spec import parse_attack_specs
from attacks.task_losses import ATTACK_LOSSES, make_attack_loss
from callbacks.evaluation_loop import task_loss_tensors
from tests.support.attack_models import trained

SHIFT = (2.0, 2.0)  # the default shift


def test_targeted_landmark_loss_values_and_errors() -> None:
    """``−mean_visible ‖p − clamp(truth + shift)‖``: 0 exactly at the target, invisible
    landmarks ignored, the target clamped into the heatmap."""
    assert ATTACK_LOSSES["soft_argmax_targeted"].task == "landmarks"
    heat = torch.full((1, 2, 8, 8), -10.0)
    heat[0, 0, 5, 4] = 10.0  # point 0 at (x=4, y=5)
    heat[0, 1, 0, 7] = 10.0  # point 1 at (x=7, y=0)
    labels = torch.tensor([[[1.0, 7.0, 1.0], [7.0, 0.0, 0.0]]])  # truth 0 at (1, 7); 1 invisible
    fn = make_attack_loss("soft_argmax_targeted", None, 1, shift=[3.0, -2.0])
    assert fn(heat, labels).item() == pytest.approx(0.0, abs=1e-4)
    far = make_attack_loss("soft_argmax_targeted", None, 1, shift=[30.0, 0.0])  # x clamped to 7
    assert far(heat, labels).item() == pytest.approx(-((7 - 4) ** 2 + (7 - 5) ** 2) ** 0.5, abs=1e-3)
    for bad in ([0.0, 0.0], [1.0, 2.0, 3.0], float("nan")):
        with pytest.raises(ValueError, match="shift"):
            make_attack_loss("soft_argmax_targeted", None, 1, shift=bad)
    spec = parse_attack_specs([{"name": "apgd", "steps": 5,
                                "loss": {"name": "soft_argmax_targeted", "shift": [2, 2]}}], "x")[0]
    assert spec.loss == "soft_argmax_targeted" and spec.loss_args == {"shift": [2, 2]}


def test_targeted_landmark_attack_moves_points_to_the_target() -> None:
    """On a trained tiny U-Net at ε = 0.08 (L∞), 20 steps: APGD on the targeted loss (default
    shift) brings the decoded points clearly closer to ``truth + shift`` than they are clean,
    than the untargeted soft-argmax attack leaves them, and than PGD on the task loss does
    (measured: 2.82 clean, 1.68 targeted, 3.80 untargeted, 3.62 PGD); ε-ball and bounds hold."""
    module, batch = trained("landmarks")
    model, x, eps = module.attack_model(), batch["image"], 0.08
    vis = batch["visible"]
    h, w = x.shape[-2:]
    target = batch["landmarks"] + torch.tensor(SHIFT)
    target = torch.stack([target[..., 0].clamp(0, w - 1), target[..., 1].clamp(0, h - 1)], dim=-1)

    def dist(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            p = module.decode_points(model(x_adv))
        return ((p - target).norm(dim=-1) * vis).sum().item() / vis.sum().item()

    def attack(name: str) -> torch.Tensor:
        fn = make_attack_loss(name, None, 20)
        return APGD(eps=eps, steps=20)(model, x, batch, generator=torch.Generator().manual_seed(0),
                                       loss_fn=lambda o, b: fn(*task_loss_tensors(module, o, b)))

    x_t = attack("soft_argmax_targeted")
    x_pgd = PGD(eps=eps, steps=20)(model, x, batch, loss_fn=module.per_sample_loss,
                                   generator=torch.Generator().manual_seed(0))
    clean, targeted = dist(x), dist(x_t)
    untargeted, pgd = dist(attack("soft_argmax")), dist(x_pgd)
    assert targeted < 0.75 * clean, (clean, targeted)
    assert targeted < 0.6 * untargeted, (untargeted, targeted)
    assert targeted < 0.75 * pgd, (pgd, targeted)
    assert (per_sample_norm(x_t - x, "linf") <= eps + 1e-6).all()
    lo, hi = module.data_info.bounds
    assert x_t.min() >= lo and x_t.max() <= hi


def test_seg_targeted_values_and_errors() -> None:
    z = torch.tensor([[[[2.0, 0.0]], [[0.0, 3.0]]]])  # [1, 2, 1, 2]
    y = torch.tensor([[[0, 1]]])
    to0 = make_attack_loss("seg_targeted", None, 1)(z, y)
    ce0 = torch.nn.functional.cross_entropy(z, torch.zeros(1, 1, 2, dtype=torch.long), reduction="none")
    assert to0.item() == pytest.approx(-ce0.mean().item())
    perm = make_attack_loss("seg_targeted", None, 1, target_class=None)(z, y)
    ce = torch.nn.functional.cross_entropy(z, (y + 1) % 2, reduction="none")
    assert perm.item() == pytest.approx(-ce.mean().item())
    with pytest.raises(ValueError, match="target_class"):
        make_attack_loss("seg_targeted", None, 1, target_class=5)(z, y)


def test_seg_targeted_erases_the_foreground_more_than_untargeted_attacks() -> None:
    """On a trained tiny U-Net at ε = 0.04 (L∞), 20 steps: APGD pulling every pixel to the
    background relabels far more foreground pixels as background than PGD on the default loss
    or APGD on Mask-CE (measured: 0.15 clean, 0.51 targeted, 0.29 PGD, 0.19 Mask-CE)."""
    module, batch = trained("segmentation")
    model, x, eps = module.attack_model(), batch["image"], 0.04

    def erased(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            z, y = task_loss_tensors(module, model(x_adv), batch)
        pred = z.argmax(1) if z.shape[1] > 1 else (z[:, 0] > 0).long()
        return (pred == 0)[y > 0].float().mean().item()

    def apgd(name: str) -> torch.Tensor:
        fn = make_attack_loss(name, None, 20)
        return APGD(eps=eps, steps=20)(model, x, batch, generator=torch.Generator().manual_seed(0),
                                       loss_fn=lambda o, b: fn(*task_loss_tensors(module, o, b)))

    x_t = apgd("seg_targeted")
    pgd = erased(PGD(eps=eps, steps=20)(model, x, batch["mask"], generator=torch.Generator().manual_seed(0)))
    clean, targeted, mask_ce = erased(x), erased(x_t), erased(apgd("mask_ce"))
    assert targeted > clean + 0.2, (clean, targeted)
    assert targeted > pgd + 0.1, (pgd, targeted)
    assert targeted > mask_ce + 0.1, (mask_ce, targeted)
    assert (per_sample_norm(x_t - x, "linf") <= eps + 1e-6).all()
