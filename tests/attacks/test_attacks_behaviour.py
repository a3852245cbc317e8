"""Do the attacks attack? Closed-form optima, a trained classifier, segmentation and 3-D input,
early stopping, restarts, per-sample budgets, autocast, gradient contexts and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks import (
    ATTACKS,
    BIM,
    CW,
    FGSM,
    MIFGSM,
    PGD,
    Attack,
    GaussianNoise,
    argmax_violated,
    build_attack,
    input_gradient,
    losses,
    per_sample_norm,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


# ----------------------------------------------------------------------------- closed form


def _linear(shape: tuple[int, ...], seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(int(torch.tensor(shape).prod()), 1)
    return nn.Sequential(nn.Flatten(), lin), lin.weight.detach().view(shape)


def _output_loss(out: torch.Tensor, target: object) -> torch.Tensor:
    return out.squeeze(1)  # f(x) = w·x + b itself


def _two_class_ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = torch.cat([torch.zeros_like(out), out], dim=1)  # CE(label 0) grows with w·x
    return losses.cross_entropy(logits, target)


@pytest.mark.parametrize("loss_fn", [_output_loss, _two_class_ce])
def test_fgsm_hits_closed_form_and_pgd_matches_it(loss_fn) -> None:
    shape = (2, 4, 4)
    model, w = _linear(shape)
    x = torch.full((3, *shape), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    eps_inf, eps_2 = 0.01, 0.05

    x_inf = FGSM(eps=eps_inf, norm="linf")(model, x, y, loss_fn=loss_fn)
    torch.testing.assert_close(x_inf - x, (eps_inf * w.sign()).expand_as(x), atol=1e-6, rtol=0)
    x_2 = FGSM(eps=eps_2, norm="l2")(model, x, y, loss_fn=loss_fn)
    torch.testing.assert_close(x_2 - x, (eps_2 * w / w.norm()).expand_as(x), atol=1e-6, rtol=0)

    for norm, eps, x_opt in (("linf", eps_inf, x_inf), ("l2", eps_2, x_2)):
        best = loss_fn(model(x_opt), y).detach()
        attacks = [PGD(eps=eps, norm=norm, steps=10, random_start=False),
                   BIM(eps=eps, norm=norm, steps=5), MIFGSM(eps=eps, norm=norm, steps=5)]
        if norm == "linf":  # sign steps reach the corner from any random start
            attacks.append(PGD(eps=eps, norm=norm, steps=10))
        for atk in attacks:
            res = atk.perturb(model, x, y, loss_fn=loss_fn,
                              generator=torch.Generator().manual_seed(0))
            assert bool((res.loss >= best - 1e-5).all()), (atk, res.loss, best)
        # L2 from a random point of the sphere only converges towards the optimum (the angle
        # to w shrinks ~1.25x per step with the default step size): close after 10 steps.
        res = PGD(eps=eps, norm=norm, steps=10).perturb(
            model, x, y, loss_fn=loss_fn, generator=torch.Generator().manual_seed(0))
        base = loss_fn(model(x), y).detach()
        assert bool((res.loss - base >= 0.9 * (best - base)).all())


def test_fgsm_respects_arbitrary_bounds_at_the_edge() -> None:
    model, w = _linear((1, 3, 3))
    x = torch.full((1, 1, 3, 3), 4.99)  # z-scored-like range (-3, 5): close to hi
    x_adv = FGSM(eps=0.5, bounds=(-3.0, 5.0))(model, x, None, loss_fn=_output_loss)
    expected = torch.where(w > 0, torch.tensor(5.0), torch.tensor(4.49)).expand_as(x)
    torch.testing.assert_close(x_adv, expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- trained classifier


def _blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 1x8x8 images: bright left half vs bright right half, plus noise."""
    y = torch.randint(0, 2, (n,), generator=g)
    left = torch.zeros(1, 8, 8)
    left[..., :4] = 0.7
    left[..., 4:] = 0.3
    patterns = torch.stack([left, left.flip(-1)])
    x = (patterns[y] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x_train, y_train = _blobs(256, g)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 64, 2),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()
    x_test, y_test = _blobs(128, g)
    return model, x_test, y_test


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_trained_classifier_clean_eps0_and_large_eps(classifier) -> None:
    model, x, y = classifier
    clean = _accuracy(model, x, y)
    assert clean >= 0.95
    for atk in (PGD(eps=0.0, steps=3), FGSM(eps=0.0), PGD(eps=0.0, norm="l2", steps=3)):
        x_adv = atk(model, x, y, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x_adv, x)
    assert _accuracy(model, PGD(eps=0.3, steps=10)(model, x, y), y) <= 0.05
    assert _accuracy(model, PGD(eps=3.0, norm="l2", steps=10)(model, x, y), y) <= 0.05


def test_pgd_never_weaker_than_fgsm(classifier) -> None:
    model, x, y = classifier
    for norm, eps in (("linf", 0.2), ("l2", 1.5)):
        fgsm = FGSM(eps=eps, norm=norm).perturb(model, x, y)
        pgd = PGD(eps=eps, norm=norm, steps=20).perturb(
            model, x, y, generator=torch.Generator().manual_seed(0))
        acc_f = _accuracy(model, fgsm.x_adv, y)
        acc_p = _accuracy(model, pgd.x_adv, y)
        assert acc_p <= acc_f, (norm, acc_p, acc_f)
        assert float(pgd.loss.mean()) >= float(fgsm.loss.mean())
        assert acc_f < 0.9  # the budget matters, so the comparison is not vacuous


def test_cw_finds_small_adversarials(classifier) -> None:
    model, x, y = classifier
    x, y = x[:16], y[:16]
    res = CW(c=1.0, steps=30, binary_search_steps=3, lr=0.05).perturb(
        model, x, y, is_violated=argmax_violated)
    assert res.violated is not None and float(res.violated.float().mean()) >= 0.9
    # Successful samples really are misclassified, the rest are returned unchanged.
    assert torch.equal(res.violated, argmax_violated(model(res.x_adv), y))
    assert torch.equal(res.x_adv[~res.violated], x[~res.violated])
    capped = CW(steps=30, binary_search_steps=3, lr=0.05, eps=0.1)(model, x, y)
    assert bool((per_sample_norm(capped - x, "l2") <= 0.1 + 1e-6).all())


def test_noises_change_accuracy_little_at_small_std(classifier) -> None:
    model, x, y = classifier
    noisy = GaussianNoise(std=0.05)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert _accuracy(model, noisy, y) >= 0.9
    assert not torch.equal(noisy, x)


# ----------------------------------------------------------------------------- early stop, restarts


def test_early_stop_freezes_violated_samples(classifier) -> None:
    model, x, y = classifier
    x, y = x[:32], y[:32]
    y = y.clone()
    y[:2] = 1 - y[:2]  # two samples already "adversarial" at x (wrong label)
    # Same step size, so the long run repeats the short run's iterates first.
    short = BIM(eps=0.3, steps=3, step_size=0.05).perturb(model, x, y, is_violated=argmax_violated)
    long = BIM(eps=0.3, steps=8, step_size=0.05).perturb(model, x, y, is_violated=argmax_violated)
    assert short.violated is not None and long.violated is not None
    done = short.violated
    assert 0 < int(done.sum()) < 32
    # Frozen at their first violating iterate: more steps do not move them.
    assert torch.equal(long.x_adv[done], short.x_adv[done])
    assert torch.equal(short.x_adv[:2], x[:2])
    for res in (short, long):
        assert torch.equal(res.violated, argmax_violated(model(res.x_adv), y))


def test_early_stop_ends_loop_when_all_are_violated(classifier) -> None:
    model, x, y = classifier
    calls = []

    def counting(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return model(t)

    PGD(eps=0.5, steps=50)(counting, x[:8], y[:8], is_violated=argmax_violated)
    assert len(calls) < 50


class _Scripted(Attack):
    """Restart r returns x + offsets[r]; to test the base's restart bookkeeping alone."""

    name = "scripted"

    def __init__(self, offsets: list[torch.Tensor]) -> None:
        super().__init__(eps=None, norm=None, bounds=(-10.0, 10.0))
        self.offsets, self.i = offsets, 0

    def _n_restarts(self) -> int:
        return len(self.offsets)

    def _run(self, call):
        self.i += 1
        return call.x + self.offsets[self.i - 1].view(-1, 1)


def test_restarts_keep_worst_case_violation_first() -> None:
    offsets = [torch.tensor([0.1, 0.9]), torch.tensor([0.3, 0.6]), torch.tensor([0.8, 0.4]),
               torch.tensor([0.45, 0.45])]
    x = torch.zeros(2, 1)

    def model(t: torch.Tensor) -> torch.Tensor:
        return t.squeeze(1)

    def loss(out: torch.Tensor, _: object) -> torch.Tensor:
        return out

    res = _Scripted(offsets).perturb(model, x, None, loss_fn=loss)
    torch.testing.assert_close(res.loss, torch.tensor([0.8, 0.9]))
    atk = _Scripted(offsets)
    res = atk.perturb(model, x, None, loss_fn=loss, is_violated=lambda out, _: out < 0.5)
    # Violating restarts beat the others, then the higher loss wins; once every sample
    # is adversarial (after restart 3) the remaining restarts are skipped.
    torch.testing.assert_close(res.loss, torch.tensor([0.3, 0.4]))
    torch.testing.assert_close(res.x_adv, torch.tensor([[0.3], [0.4]]))
    assert res.violated.tolist() == [True, True] and atk.i == 3


def test_pgd_restarts_equal_best_of_single_runs(classifier) -> None:
    model, x, y = classifier
    x, y = x[:16], y[:16]
    multi = PGD(eps=0.05, steps=3, restarts=3).perturb(
        model, x, y, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # restarts consume the generator like 3 single calls
    singles = [PGD(eps=0.05, steps=3).perturb(model, x, y, generator=g) for _ in range(3)]
    losses_ = torch.stack([s.loss for s in singles])
    torch.testing.assert_close(multi.loss, losses_.max(0).values)
    best = torch.stack([s.x_adv for s in singles])[losses_.argmax(0), torch.arange(16)]
    torch.testing.assert_close(multi.x_adv, best)


# ----------------------------------------------------------------------------- budgets, dtypes


@pytest.mark.parametrize("cls", [FGSM, BIM, PGD, MIFGSM])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_eps(classifier, cls, norm) -> None:
    model, x, y = classifier
    x, y = x[:3], y[:3]
    eps = torch.tensor([0.0, 0.05, 0.2]) * (1 if norm == "linf" else 8)
    x_adv = cls(eps=eps, norm=norm)(model, x, y, generator=torch.Generator().manual_seed(0))
    n = per_sample_norm(x_adv - x, norm)
    assert bool((n <= eps + 1e-6).all())
    assert torch.equal(x_adv[0], x[0])
    assert float(n[2]) > float(n[1]) > 0


def test_step_size_and_init_radius_per_sample(classifier) -> None:
    model, x, y = classifier
    x, y = x[:2], y[:2]
    atk = PGD(eps=torch.tensor([0.5, 0.5]), norm="l2", steps=1,
              step_size=torch.tensor([0.0, 0.0]), init_radius=torch.tensor([0.1, 0.3]))
    x_adv = atk(model, x, y, generator=torch.Generator().manual_seed(0))
    # No step: only the random start, at exactly the requested L2 radius (no clipping here).
    torch.testing.assert_close(per_sample_norm(x_adv - x, "l2"), torch.tensor([0.1, 0.3]),
                               atol=1e-5, rtol=0)


def test_autocast_gives_float32_input_gradient(classifier) -> None:
    model, x, y = classifier
    x, y = x[:8], y[:8]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad, loss = input_gradient(model, x, y)
        assert grad.dtype == torch.float32 and grad.shape == x.shape
        assert loss.dtype == torch.float32 and loss.shape == (8,)
        res = PGD(eps=0.1, steps=3).perturb(model, x, y,
                                            generator=torch.Generator().manual_seed(0))
    assert res.x_adv.dtype == torch.float32
    assert bool((per_sample_norm(res.x_adv - x, "linf") <= 0.1 + 1e-6).all())
    assert bool((res.loss > loss).all())


def test_gradient_contexts(classifier) -> None:
    model, x, y = classifier
    x, y = x[:4], y[:4]
    atk = PGD(eps=0.05, steps=2)
    ref = atk(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the attack enables grad itself
        assert torch.equal(atk(model, x, y, generator=torch.Generator().manual_seed(0)), ref)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        with pytest.raises(RuntimeError, match=r"inference_mode\(False\)"):
            atk(model, xi, yi)
    # Inference tensors handed over outside inference mode (forgotten .clone()) still work.
    with torch.inference_mode(False), torch.enable_grad():
        out = atk(model, xi, {"target": yi}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------- segmentation, 3-D


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_dice_pgd_on_2d_and_3d(spatial) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d if len(spatial) == 2 else nn.Conv3d
    model = nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 3, 3, padding=1))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, *spatial, generator=g)
    target = (x.squeeze(1) * 3).long().clamp(max=2)  # [B, *spatial] labels 0..2
    clean = losses.dice_loss(model(x), target).detach()
    for norm, eps in (("linf", 0.1), ("l2", 2.0)):
        res = PGD(eps=eps, norm=norm, steps=5).perturb(
            model, x, target, loss_fn=losses.dice_loss, generator=g)
        assert res.loss.shape == (2,)
        assert bool((res.loss > clean).all()), (res.loss, clean)
        assert bool((per_sample_norm(res.x_adv - x, norm) <= eps + 1e-6).all())


def test_structured_outputs_and_targets() -> None:
    """The attack never looks at the output: a dict output and a dict batch work."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def model(t: torch.Tensor) -> dict:
        return {"logits": net(t), "aux": [t.mean()]}

    batch = {"image": torch.rand(2, 1, 4, 4), "label": torch.tensor([0, 2])}

    def loss_fn(out: dict, b: dict) -> torch.Tensor:
        return losses.cross_entropy(out["logits"], b["label"])

    res = PGD(eps=0.1, steps=2).perturb(model, batch["image"], batch, loss_fn=loss_fn,
                                        is_violated=lambda o, b: argmax_violated(o["logits"],
                                                                              b["label"]))
    assert res.x_adv.shape == batch["image"].shape and res.violated.shape == (2,)


# ----------------------------------------------------------------------------- bad input


def test_clear_errors(classifier) -> None:
    model, x, y = classifier
    x, y = x[:3], y[:3]
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        PGD(eps=-0.1)
    with pytest.raises(ValueError, match=r"eps must be .*\[B\]=\[3\]"):
        PGD(eps=torch.tensor([0.1, 0.2]))(model, x, y)
    with pytest.raises(ValueError, match="norm must be one of"):
        PGD(norm="l1")
    with pytest.raises(ValueError, match="bounds must satisfy lo < hi"):
        PGD(bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"x has values in .* outside bounds=\(0.0, 0.5\)"):
        PGD(bounds=(0.0, 0.5))(model, x + 0.6, y)
    with pytest.raises(ValueError, match=r"loss_fn must return a per-sample loss of shape \[B\]"):
        PGD()(model, x, y, loss_fn=lambda o, t: F.cross_entropy(o, t))
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        PGD(steps=0)
    with pytest.raises(ValueError, match="restarts > 1 needs random_start"):
        PGD(restarts=2, random_start=False)
    with pytest.raises(ValueError, match="x must be batched"):
        PGD()(model, torch.rand(3), y)
    with pytest.raises(ValueError, match="CW needs integer class labels"):
        CW(steps=1, binary_search_steps=1)(model, x, y.float())
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("deepfool")


def test_registry_and_describe() -> None:
    assert set(ATTACKS) == {"fgsm", "bim", "pgd", "mifgsm", "cw", "gaussian", "uniform",
                            "salt_pepper", "speckle", "apgd", "square", "fmn"}
    for name, cls in ATTACKS.items():
        atk = build_attack(name.upper())
        assert isinstance(atk, cls)
        d = atk.describe()
        for key in ("name", "norm", "eps", "steps", "step_size", "restarts", "random_start"):
            assert key in d, (name, key)
        assert d["name"] == name
    d = build_attack("pgd", eps=0.004, steps=7, norm="l2").describe()
    assert (d["steps"], d["norm"], d["eps"]) == (7, "l2", 0.004)
    assert d["step_size"] == pytest.approx(2.5 * 0.004 / 7)
    assert isinstance(build_attack("I-FGSM"), BIM)
    assert build_attack("pgd", eps=torch.tensor([0.1, 0.3])).describe()["eps"]["max"] == \
        pytest.approx(0.3)
