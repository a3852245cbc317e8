"""APGD (Croce & Hein 2020) and Square (Andriushchenko et al. 2020): the attack contract under
property tests, the paper's schedule, best-point bookkeeping, step halving, and strength
against PGD on a trained tiny model; DLR's invariances and its binary handling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attacks import APGD, PGD, Square, build_attack, losses, task_losses
from attacks.apgd import apgd_checkpoints
from tests.attacks.test_attacks import (
    SETTINGS,
    _assert_budget,
    _assert_contract,
    _draw_eps,
    _setup,
    _state,
)
from tests.support.attack_models import trained

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_apgd_and_square_contract(data: st.DataObject, seed: int) -> None:
    """Budget, range, detached output, no parameter .grad, modes and BN stats restored, and
    the same result for the same generator — 2-D and 3-D, per-sample ε, any bounds."""
    model, x, y, bounds = _setup(data, seed)
    cls = data.draw(st.sampled_from([APGD, Square]), label="attack")
    norm = data.draw(st.sampled_from(["linf", "l2"]), label="norm")
    eps = _draw_eps(data, x.shape[0], 2.0)
    kwargs: dict = {"eps": eps, "norm": norm, "bounds": bounds,
                    "steps": data.draw(st.integers(1, 6), label="steps"),
                    "restarts": data.draw(st.integers(1, 2), label="restarts"),
                    "bn_mode": data.draw(st.sampled_from(["eval", "train", "keep"]), label="bn"),
                    "dropout_mode": data.draw(st.sampled_from(["eval", "train"]), label="dropout")}
    atk = cls(**kwargs)
    x_before = x.clone()
    before = _state(model)
    use_violation = data.draw(st.booleans(), label="is_violated")
    sfn = losses.argmax_violated if use_violation else None
    res = atk.perturb(model, x, y, is_violated=sfn, generator=torch.Generator().manual_seed(seed))
    _assert_contract(model, before, x, x_before, res.x_adv, bounds)
    _assert_budget(x_before, res.x_adv, eps, norm)
    again = atk.perturb(model, x, y, is_violated=sfn, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again.x_adv, res.x_adv), "same generator seed, different result"


def test_checkpoints_follow_the_paper() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(0 < w < 10 for w in apgd_checkpoints(10))


class Recorder(nn.Module):
    """Wraps a model and remembers every loss the attack computed (per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = losses.cross_entropy(out, y)
        if torch.is_grad_enabled():
            self.seen.append(loss.detach().clone())
        return loss


def test_apgd_returns_each_samples_best_iterate() -> None:
    module, batch = trained("classification")
    model = module.attack_model()
    rec = Recorder()
    atk = APGD(eps=0.05, steps=25)
    res = atk.perturb(model, batch["image"], batch["label"], loss_fn=rec.loss,
                      generator=torch.Generator().manual_seed(0))
    assert len(rec.seen) == 25, "APGD-25 takes exactly 25 gradient evaluations"
    best = torch.stack(rec.seen).amax(dim=0)
    torch.testing.assert_close(res.loss, best, rtol=1e-5, atol=1e-6)


def test_step_halving_converges_where_fixed_steps_oscillate() -> None:
    """Loss −‖x − c‖² with its maximum c inside the ball: PGD's fixed sign steps keep bouncing
    around c, APGD halves its step at the checkpoints and settles on c."""
    torch.manual_seed(0)
    x = torch.full((4, 1, 6, 6), 0.5)
    c = x + 0.013 * (torch.rand_like(x) * 2 - 1)

    def model(v: torch.Tensor) -> torch.Tensor:
        return v

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -((out - target) ** 2).flatten(1).sum(1)

    kw = {"eps": 0.03, "norm": "linf", "steps": 100, "random_start": False}
    pgd = PGD(step_size=0.01, **kw)(model, x, c, loss_fn=loss)
    apgd = APGD(**kw)(model, x, c, loss_fn=loss)
    err_pgd = (pgd - c).abs().amax().item()
    err_apgd = (apgd - c).abs().amax().item()
    assert err_apgd < 1e-3 < err_pgd, (err_apgd, err_pgd)


@pytest.mark.parametrize("norm,eps", [("linf", 0.006), ("linf", 0.01), ("l2", 0.05), ("l2", 0.1)])
def test_apgd_never_weaker_than_pgd_same_iterations(norm: str, eps: float) -> None:
    module, batch = trained("classification")
    model = module.attack_model()
    x, y = batch["image"], batch["label"]
    gen = torch.Generator().manual_seed(1)
    r_pgd = PGD(eps=eps, norm=norm, steps=10).perturb(model, x, y, generator=gen)
    gen = torch.Generator().manual_seed(1)
    r_apgd = APGD(eps=eps, norm=norm, steps=10).perturb(model, x, y, generator=gen)
    with torch.no_grad():
        acc_pgd = (model(r_pgd.x_adv).argmax(1) == y).float().mean().item()
        acc_apgd = (model(r_apgd.x_adv).argmax(1) == y).float().mean().item()
    assert 0 < acc_apgd <= acc_pgd < 1, (acc_apgd, acc_pgd)  # an informative budget
    assert r_apgd.loss.mean() >= r_pgd.loss.mean()


def test_apgd_is_violated_keeps_first_adversarial_point() -> None:
    module, batch = trained("classification")
    model = module.attack_model()
    x, y = batch["image"], batch["label"]
    res = APGD(eps=0.1, steps=20).perturb(model, x, y, is_violated=losses.argmax_violated,
                                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wrong = model(res.x_adv).argmax(1) != y
    assert torch.equal(wrong, res.violated)
    assert res.violated.float().mean() > 0.5


def test_square_finds_adversarials_without_gradients() -> None:
    module, batch = trained("classification")
    model = module.attack_model()
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        clean_wrong = (model(x).argmax(1) != y).float().mean()
    res = Square(eps=0.15, steps=200).perturb(model, x, y, is_violated=losses.argmax_violated,
                                              generator=torch.Generator().manual_seed(0))
    assert res.gradients is None, "Square must not take a single input gradient"
    assert res.violated.float().mean() > clean_wrong + 0.2


def test_dlr_invariant_to_logit_shift_and_scale() -> None:
    z = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    torch.testing.assert_close(losses.dlr_loss(7.0 * z + 3.0, y), losses.dlr_loss(z, y))
    t = torch.randint(0, 5, (8,))
    torch.testing.assert_close(losses.dlr_targeted_loss(4.0 * z - 1.0, y, t),
                               losses.dlr_targeted_loss(z, y, t))
    # positive exactly when misclassified
    assert torch.equal(losses.dlr_loss(z, y) > 0, z.argmax(1) != y)


def test_dlr_binary_is_a_clear_error_and_the_suite_loss_falls_back() -> None:
    z, y = torch.randn(4, 2), torch.randint(0, 2, (4,))
    with pytest.raises(ValueError, match="K >= 3"):
        losses.dlr_loss(z, y)
    with pytest.raises(ValueError, match="K >= 4"):
        losses.dlr_targeted_loss(torch.randn(4, 3), y, y)
    fallback = task_losses.make_attack_loss("dlr", None, 10)
    torch.testing.assert_close(fallback(z, y), losses.margin_loss(z, y))


def test_registry_builds_by_class_name() -> None:
    assert isinstance(build_attack("auto-pgd", eps=0.1), APGD)
    assert isinstance(build_attack("square", eps=0.1), Square)
