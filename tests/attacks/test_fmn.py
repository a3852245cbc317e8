"""FMN (Pintor et al. 2021): the attack contract, the closed-form minimal ε on a linear model,
the budget where it reports violated; and what one Square L∞ query changes (the paper's
Algorithm 2: every channel of the window, each with its own sign)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import FMN, AttackSpec, Square, argmax_violated, build_attack, per_sample_norm

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear2(nn.Module):
    """Two logits ``(0, w·x + b)``: the decision boundary is the hyperplane ``w·x + b = 0``."""

    def __init__(self, d: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(d, generator=g))
        self.b = nn.Parameter(torch.tensor(0.1))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.score(x)
        return torch.stack([torch.zeros_like(f), f], dim=1)


def _linear_batch(n: int = 8) -> tuple[Linear2, torch.Tensor, torch.Tensor]:
    model = Linear2(16)
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4
    with torch.no_grad():
        y = (model.score(x) > 0).long()
    return model, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_minimal_eps_matches_the_closed_form_on_a_linear_model(norm: str) -> None:
    model, x, y = _linear_batch()
    w = model.w.detach()
    with torch.no_grad():
        f = model.score(x)
    # distance to the hyperplane in the norm: |f| / ‖w‖_dual (L1 for L∞, L2 for L2)
    closed = f.abs() / (w.abs().sum() if norm == "linf" else w.norm())
    atk = FMN(eps=None, norm=norm, steps=100, bounds=(-10.0, 10.0))
    x_adv = atk(model, x, y)
    found = atk.last_min_eps
    assert found is not None and found.shape == (8,)
    assert torch.all(found >= closed * (1 - 1e-4))  # nothing adversarial lies closer
    assert torch.allclose(found, closed, rtol=1e-3)
    assert torch.all(model(x_adv).argmax(1) != y)
    assert torch.allclose(per_sample_norm(x_adv - x, norm), found, rtol=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_keeps_the_budget_bounds_and_reports_violation_only_inside_it(norm: str) -> None:
    model, x, y = _linear_batch()
    found = FMN(eps=None, norm=norm, steps=50).minimal_eps(model, x, y)
    eps = float(found.median())  # about half the samples break inside the budget
    res = FMN(eps=eps, norm=norm, steps=50).perturb(model, x, y, is_violated=argmax_violated)
    assert torch.all(res.delta_norm <= eps + 1e-6)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.violated is not None and bool(res.violated.any()) and not bool(res.violated.all())
    # where it reports violated its perturbation is inside the budget, and the minimal ε it
    # found is too; where it does not, the minimal ε lies beyond the budget
    assert torch.all(res.delta_norm[res.violated] <= eps + 1e-6)
    assert torch.equal(res.violated, found <= eps)
    # a per-sample budget
    per = found * torch.linspace(0.5, 1.5, 8)
    res = FMN(eps=per, norm=norm, steps=30).perturb(model, x, y, is_violated=argmax_violated)
    assert torch.all(res.delta_norm <= per + 1e-6)


def test_fmn_contract_grads_mode_determinism_and_registry() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    net.train()
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    stats = net[1].running_mean.clone()
    atk = build_attack("fmn", eps=0.05, steps=10)
    assert isinstance(atk, FMN)
    a = atk(net, x, y, generator=torch.Generator().manual_seed(3))
    b = atk(net, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not a.requires_grad
    assert net.training and torch.equal(net[1].running_mean, stats)
    assert all(p.grad is None for p in net.parameters())
    assert float((a - x).abs().amax()) <= 0.05 + 1e-6
    spec = AttackSpec.from_config({"name": "fmn", "steps": 20, "loss": "margin"})
    assert spec.build(0.01, (0.0, 1.0)).steps == 20
    with pytest.raises(ValueError, match="alpha_init"):
        FMN(alpha_init=0)
    with pytest.raises(ValueError, match="norm"):
        FMN(norm="l1")


def test_minimal_eps_machinery_uses_fmn_directly() -> None:
    from callbacks.minimal_eps import MinimalEpsConfig, minimal_eps_batch

    model, x, y = _linear_batch()

    class Task:
        """The two task calls minimal_eps_batch makes, on the linear model."""

        class data_info:  # noqa: N801 - the task attribute's name
            bounds = (0.0, 1.0)

        @staticmethod
        def per_sample_loss(out: torch.Tensor, batch: dict) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(out, batch["target"], reduction="none")

        @staticmethod
        def is_violated(out: torch.Tensor, batch: dict) -> torch.Tensor:
            return out.argmax(1) != batch["target"]

        @staticmethod
        def attack_loss_inputs(out: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return out, batch["target"]

    cfg = MinimalEpsConfig.parse({"eps_max": 0.06, "attack": {"name": "fmn", "steps": 100, "loss": "margin"}})
    values = minimal_eps_batch(Task, model, {"image": x, "target": y}, cfg)
    with torch.no_grad():
        closed = model.score(x).abs() / model.w.abs().sum()
    inside = closed <= 0.06
    assert bool(inside.any()) and not bool(inside.all())
    assert torch.allclose(values[inside], closed[inside], rtol=1e-3)
    assert torch.all(torch.isinf(values[~inside]))


def test_one_square_linf_query_changes_every_channel_of_the_window_with_its_own_sign() -> None:
    """The paper's L∞ proposal (Andriushchenko et al. 2020, Algorithm 2): one window position,
    every channel set to ±ε with a sign drawn per channel."""
    eps = 0.1
    x = torch.full((64, 3, 8, 8), 0.5)
    calls = {"n": 0}

    def model(z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return z

    def rising(out: torch.Tensor, target: object) -> torch.Tensor:
        return torch.full((out.shape[0],), float(calls["n"]))  # every query beats the last

    def falling(out: torch.Tensor, target: object) -> torch.Tensor:
        return torch.full((out.shape[0],), -float(calls["n"]))  # no query is kept

    atk = Square(eps=eps, steps=1, p_init=0.3)
    x0 = atk(model, x, None, loss_fn=falling, generator=torch.Generator().manual_seed(0))  # stripes
    x1 = atk(model, x, None, loss_fn=rising, generator=torch.Generator().manual_seed(0))  # + 1 query
    assert torch.allclose((x0 - x).abs(), torch.full_like(x, eps))  # L∞ vertices
    assert torch.allclose((x1 - x).abs(), torch.full_like(x, eps))
    changed = (x1 != x0).any(dim=1)  # [B, H, W]
    signs = torch.sign(x1 - x)
    mixed = 0
    for i in range(x.shape[0]):
        if not bool(changed[i].any()):
            continue  # the proposal equalled the stripes there
        rows = changed[i].any(dim=1).nonzero().flatten()
        cols = changed[i].any(dim=0).nonzero().flatten()
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        # one window: everything outside its bounding box is untouched ...
        outside = changed[i].clone()
        outside[box] = False
        assert not bool(outside.any())
        # ... and inside it each channel holds one sign, possibly a different one per channel
        per_channel = signs[i][(slice(None), *box)].flatten(1)
        assert torch.all(per_channel == per_channel[:, :1])
        mixed += int(per_channel[:, 0].unique().numel() > 1)
    assert mixed > 0
