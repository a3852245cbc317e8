"""The threat-model geometry PGD and APGD share (attacks.projection): APGD's start is the shared
random start, projected with the shared L∞ box / L2 projection (bit for bit); the L2 projection
works in place and lands inside the ball and the bounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import APGD, PGD, losses
from attacks.call import prepare_call
from attacks.projection import fit_l2_budget, linf_box, per_sample_norm, project_l2, random_start
from attacks.seeding import seeded_generator


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [0.05, torch.tensor([0.01, 0.05, 0.1])])
def test_apgd_starts_from_the_shared_random_start(norm: str, eps: float | torch.Tensor) -> None:
    """APGD with one step returns its start: the same point as ``random_start`` projected by
    the shared projection, from the same generator."""
    model, x = _model(), torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    got = APGD(eps=eps, norm=norm, steps=1)(model, x, y, generator=seeded_generator(9))  # type: ignore[arg-type]
    call = prepare_call(model, x, y, losses.cross_entropy, None, seeded_generator(9), (0.0, 1.0), "test")
    e = call.budget_tensor(eps, "eps")
    start = random_start(call, norm, e)  # type: ignore[arg-type]
    if norm == "linf":
        lower, upper = linf_box(call, e)
        want = start.clamp_(lower, upper)
    else:
        want = fit_l2_budget(call, project_l2(call, start, e), e)  # every L2 attack's last step
    assert torch.equal(got, want)
    # and PGD's start is the same draw (a step of size 0 leaves it there; an L2 projection
    # of a point already in the ball may round the last bit)
    pgd = PGD(eps=eps, norm=norm, steps=1, step_size=0.0)  # type: ignore[arg-type]
    torch.testing.assert_close(pgd(model, x, y, generator=seeded_generator(9)), want, rtol=0, atol=1e-6)


def test_project_l2_is_in_place_and_inside_ball_and_bounds() -> None:
    model, x = _model(), torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    call = prepare_call(model, x, None, losses.cross_entropy, None, None, (0.0, 1.0), "test")
    eps = torch.tensor([0.1, 0.5, 2.0])
    far = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out = project_l2(call, far, eps)
    assert out.data_ptr() == far.data_ptr()
    assert bool((per_sample_norm(out - x, "l2") <= eps + 1e-6).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
