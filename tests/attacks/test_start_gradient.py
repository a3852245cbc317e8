"""A gradient at x computed once (attacks.StartGradient): attacks that start at x give bit-identical
results with it, one forward + backward cheaper; where it does not apply it is ignored."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from attacks import APGD, BIM, FGSM, MIFGSM, PGD, StartGradient, losses, start_gradient

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


class Counted(nn.Module):
    """A small CNN with BatchNorm and Dropout that counts its sample forwards and the forwards
    whose input needs a gradient (each attack forward is followed by exactly one backward)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Dropout(0.3), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
        self.forwards = 0
        self.grad_forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += x.shape[0]
        self.grad_forwards += x.shape[0] if x.requires_grad else 0
        return self.net(x)


def _data(b: int = 6) -> tuple[Counted, torch.Tensor, torch.Tensor]:
    model = Counted().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (b,), generator=g)
    return model, x, y


ATTACKS = [
    lambda e: PGD(eps=e, norm="linf", steps=3, random_start=False),
    lambda e: PGD(eps=e, norm="l2", steps=3, random_start=False),
    lambda e: BIM(eps=e, steps=4),
    lambda e: FGSM(eps=e),
    lambda e: MIFGSM(eps=e, steps=3),
    lambda e: APGD(eps=e, steps=4, random_start=False),
]


@pytest.mark.parametrize("make", ATTACKS)
def test_start_gives_bit_identical_results_with_one_pass_less(make: Any) -> None:
    model, x, y = _data()
    eps = torch.tensor([0.01, 0.02, 0.03, 0.05, 0.1, 0.2])  # per-sample budgets
    plain = make(eps)
    want = plain.perturb(model, x, y, losses.cross_entropy)
    f0, g0 = model.forwards, model.grad_forwards
    start, out = start_gradient(model, x, y, losses.cross_entropy)
    with torch.no_grad():
        assert torch.equal(out, model.net(x))  # the pass's output is the clean output
    assert (model.forwards - f0, model.grad_forwards - g0) == (6, 6)
    f1, g1 = model.forwards, model.grad_forwards
    atk = make(eps)
    got = atk.perturb(model, x, y, losses.cross_entropy, start=start)
    assert torch.equal(got.x_adv, want.x_adv) and torch.equal(got.loss, want.loss)
    assert torch.equal(got.gradients.nonfinite, want.gradients.nonfinite)
    assert torch.equal(got.gradients.zero, want.gradients.zero)
    assert got.gradients.evaluations == want.gradients.evaluations
    # exactly the first forward + backward saved
    assert (model.forwards - f1, model.grad_forwards - g1) == (f0 - 6, g0 - 6)


def test_repeated_start_serves_one_call_over_every_budget() -> None:
    """The ε-stacked call: x repeated per ε, budgets per row — the same as one call per ε."""
    model, x, y = _data()
    start, _ = start_gradient(model, x, y)  # default loss: the attacks' own default object
    eps = [0.01, 0.04]
    stacked_eps = torch.tensor(eps).repeat_interleave(x.shape[0])
    f0 = model.grad_forwards
    # each row's step rounded as its own ε's float step is (what the evaluator's stacking does)
    steps = torch.tensor([PGD(eps=e, steps=3).default_step_size(e) for e in eps], dtype=torch.float64)
    atk = PGD(eps=stacked_eps, steps=3, random_start=False, step_size=steps.repeat_interleave(x.shape[0]))
    both = atk(model, torch.cat([x, x]), torch.cat([y, y]), start=start.repeat(2))
    assert model.grad_forwards - f0 == 2 * 2 * x.shape[0]  # steps 2 and 3 only
    for i, e in enumerate(eps):
        one = PGD(eps=e, steps=3, random_start=False)(model, x, y)
        assert torch.equal(both[i * 6:(i + 1) * 6], one)


def _ignored(model: Counted, atk: Any, x: torch.Tensor, y: torch.Tensor, start: StartGradient,
             **kw: Any) -> None:
    """The call computes every gradient itself (same count as without a start), same result."""
    g0 = model.grad_forwards
    want = atk(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    spent = model.grad_forwards - g0
    got = atk(model, x, y, generator=torch.Generator().manual_seed(3), start=start, **kw)
    assert model.grad_forwards - g0 == 2 * spent
    assert torch.equal(got, want)


def test_a_start_that_does_not_apply_is_ignored() -> None:
    model, x, y = _data()
    start, _ = start_gradient(model, x, y, losses.cross_entropy)
    # another loss object, a random start, another x, train-mode BatchNorm, a is_violated the
    # start was not computed with: each computes its own first gradient
    _ignored(model, PGD(eps=0.03, steps=2, random_start=False), x, y, start, loss_fn=losses.margin_loss)
    _ignored(model, PGD(eps=0.03, steps=2, random_start=True), x, y, start, loss_fn=losses.cross_entropy)
    _ignored(model, PGD(eps=0.03, steps=2, random_start=False), x.flip(0), y, start,
             loss_fn=losses.cross_entropy)
    _ignored(model, PGD(eps=0.03, steps=2, random_start=False, bn_mode="train"), x, y, start,
             loss_fn=losses.cross_entropy)
    _ignored(model, PGD(eps=0.03, steps=2, random_start=False), x, y, start,
             loss_fn=losses.cross_entropy, is_violated=losses.argmax_violated)
    with pytest.raises(TypeError, match="start must be a StartGradient"):
        PGD(eps=0.03, steps=2)(model, x, y, start="gradient")  # type: ignore[arg-type]


def test_start_with_violation_serves_early_stopping() -> None:
    model, x, y = _data()
    start, _ = start_gradient(model, x, y, losses.cross_entropy, is_violated=losses.argmax_violated)
    assert start.violated is not None and torch.equal(start.violated, model.net(x).argmax(1) != y)
    atk = PGD(eps=0.2, steps=5, random_start=False)
    want = atk.perturb(model, x, y, losses.cross_entropy, losses.argmax_violated)
    g0 = model.grad_forwards
    got = atk.perturb(model, x, y, losses.cross_entropy, losses.argmax_violated, start=start)
    assert torch.equal(got.x_adv, want.x_adv) and torch.equal(got.violated, want.violated)
    # the call without the start took one more gradient pass over the batch
    assert model.grad_forwards - g0 < g0 - 6
