"""Fast (single-step) adversarial training — FGSM-RS, N-FGSM, GradAlign — on every task, the
attack options they need, and the fidelity fixes held with them (PGD's default step, TRADES'
start and forwards)."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from attacks import FGSM, PGD
from attacks.spec import parse_attack_specs
from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import (
    FGSMRS,
    NFGSM,
    TRADES,
    ClassificationModule,
    DetectionModule,
    GradAlign,
    LandmarkModule,
    SegmentationModule,
)

EPS = 0.03
NETS: dict[str, Any] = {
    "classification": (ClassificationModule, {"class_path": "lightning_modules.nets.SmallCNN",
                                              "init_args": {"features": [4, 8]}}),
    "segmentation": (SegmentationModule, {"class_path": "lightning_modules.nets.SmallUNet",
                                          "init_args": {"features": [4, 8]}}),
    "landmarks": (LandmarkModule, {"class_path": "lightning_modules.nets.SmallUNet",
                                   "init_args": {"features": [4, 8]}}),
    "detection": (DetectionModule, None),  # the task's tiny default detector
}
METHODS = {"fgsm_rs": FGSMRS, "nfgsm": NFGSM, "gradalign": GradAlign}
#: the largest L∞ perturbation each method's training attack may make, in units of ε
BUDGET = {"fgsm_rs": 1.0, "nfgsm": 3.0, "gradalign": 1.0}


def _task_batch(task: str, method: Any) -> tuple[Any, dict]:
    size = 32 if task == "detection" else 16
    dm = SyntheticDataModule(task=task, num_train=4, num_val=2, num_test=2,
                             image_size=(size, size), batch_size=4, seed=0)
    cls, net = NETS[task]
    module = cls(net=net, data_info=dm.info, method=method)
    dm.setup("fit")
    batch = collate_batch([dm.dataset("train")[i] for i in range(4)])
    return module, batch


@pytest.mark.parametrize("task", list(NETS))
@pytest.mark.parametrize("name", list(METHODS))
def test_inner_attack_keeps_its_budget_no_grads_and_seed(task: str, name: str) -> None:
    """FGSM-RS and GradAlign stay in the ε-ball, N-FGSM in its enlarged 3ε box (and uses it:
    no clip back), all within bounds; the attack touches no parameter gradient, is
    deterministic for a seed, and the training step trains every task."""
    module, batch = _task_batch(task, METHODS[name](eps=EPS, seed=1))
    module.train()
    method = module.method
    atk = method.make_attack(module, EPS)
    model = module.attack_model()
    x = batch["image"]
    runs = [atk(model, x, batch, loss_fn=module.per_sample_loss,
                generator=method.generator(module, x.device, method.seed)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert all(p.grad is None for p in module.parameters())
    delta = (runs[0] - x).abs().flatten(1).amax(1)
    assert bool((delta <= BUDGET[name] * EPS + 1e-6).all()), delta
    lo, hi = module.data_info.bounds
    assert runs[0].min() >= lo and runs[0].max() <= hi
    if name == "nfgsm":  # the unclipped step really leaves the ε-ball
        assert float(delta.max()) > 1.5 * EPS
    loss, logs = method.training_loss(module, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and logs["eps"] == EPS
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.net.parameters())


def test_method_defaults_follow_their_papers() -> None:
    rs = FGSMRS(eps=0.01).make_attack(_task_batch("classification", FGSMRS(eps=0.01))[0], 0.01)
    assert isinstance(rs, FGSM) and rs.random_start and rs.project
    assert rs.step_size == pytest.approx(0.0125)  # Wong et al.: 1.25·ε
    nf = NFGSM(eps=0.01)
    a = nf.make_attack(_task_batch("classification", nf)[0], 0.01)
    assert a.random_start and not a.project  # de Jorge et al.: k = 2, α = ε, no clip
    assert (a.init_radius, a.step_size) == (pytest.approx(0.02), pytest.approx(0.01))
    ga = GradAlign(eps=0.01)
    assert ga.attack.to_config() == {"name": "fgsm", "norm": "linf", "random_start": False}
    assert ga.align_weight == 0.2
    with pytest.raises(ValueError, match=r"GradAlign\.align_weight"):
        GradAlign(align_weight=-1.0)


def test_gradalign_penalises_misaligned_gradients() -> None:
    """The regulariser is ``1 − cos`` of the input gradients at x and x + η: in [0, 2], and
    ``align_weight = 0`` is exactly FGSM training."""
    ga = GradAlign(eps=0.05, align_weight=0.0)
    module, batch = _task_batch("classification", ga)
    module.eval()  # BatchNorm statistics stay fixed, so the two losses differ by the term only
    base, _ = ga.training_loss(module, batch)
    gen = torch.Generator().manual_seed(0)
    mis = ga.alignment(module, batch, 0.05, gen)
    assert mis.shape == (4,) and bool(((mis >= 0) & (mis <= 2 + 1e-6)).all())
    ga.align_weight = 1.0
    loss, logs = ga.training_loss(module, batch)
    assert float((loss - base).detach()) == pytest.approx(float(logs["grad_misalignment"]), rel=1e-4)
    # the term is differentiable w.r.t. the parameters (double backpropagation)
    mis.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.net.parameters())


# ---------------------------------------------------------------------------- attack options
def test_unprojected_step_holds_bounds_and_its_construction_bound() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    x = torch.rand(16, 1, 8, 8)
    x[0] = 0.0  # at the edge of the range: the clamp must hold it
    y = torch.arange(16) % 3
    for norm in ("linf", "l2"):
        eps = 0.05 if norm == "linf" else 0.5
        atk = FGSM(eps=eps, norm=norm, random_start=True, init_radius=2 * eps, step_size=eps,
                   project=False)
        xa = atk(net, x, y, generator=torch.Generator().manual_seed(1))
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert bool((size <= 3 * eps + 1e-5).all()) and float(size.max()) > eps
        assert xa.min() >= 0.0 and xa.max() <= 1.0
    with pytest.raises(ValueError, match="project must be true or false"):
        PGD(project="no")


def test_evaluation_suites_refuse_an_unprojected_attack() -> None:
    with pytest.raises(ValueError, match=r"attacks\[1\]\.project: an evaluation attack must stay"):
        parse_attack_specs([{"name": "pgd"}, {"name": "fgsm", "project": False}], "attacks")


# ---------------------------------------------------------------------------- PGD's default step
def test_pgd_default_step_does_not_shrink_below_a_quarter_eps() -> None:
    steps_to_rel = {1: 2.5, 5: 0.5, 10: 0.25, 20: 0.25, 50: 0.25, 100: 0.25}
    for steps, rel in steps_to_rel.items():
        assert PGD(eps=0.1, steps=steps).default_step_size(0.1) == pytest.approx(0.1 * rel), steps


def _trained_tiny_classifier() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained on two classes that differ by a faint intensity ramp in noise."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, 256).view(1, 1, 16, 16)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=g)
        noise = 0.1 * torch.randn(n, 1, 16, 16, generator=g)
        return (0.5 + (2 * y - 1).view(-1, 1, 1, 1) * 0.05 * ramp + noise).clamp(0, 1), y

    xt, yt = data(512)
    x, y = data(128)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(30):
        for i in range(0, 512, 64):
            opt.zero_grad()
            F.cross_entropy(net(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    return net.eval(), x, y


def test_pgd50_is_at_least_as_strong_as_pgd10_on_a_trained_model() -> None:
    """With the default step, PGD-50 breaks every sample PGD-10 breaks (same seed: its first
    10 iterates are PGD-10's, and a violated sample is frozen there), so its accuracy is never
    higher. (The old default ``2.5·ε/steps`` gave PGD-50 steps 5× smaller than PGD-10's and no
    such guarantee; the step itself is tested above.)"""
    net, x, y = _trained_tiny_classifier()

    def is_violated(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out.argmax(1) != target

    with torch.no_grad():
        clean = net(x).argmax(1) == y
    assert float(clean.float().mean()) > 0.8
    violated = {}
    for steps in (10, 50):
        res = PGD(eps=0.02, steps=steps).perturb(net, x, y, is_violated=is_violated,
                                                generator=torch.Generator().manual_seed(3))
        violated[steps] = res.violated | ~clean
    assert 0 < int(violated[10].sum()) < len(y) // 2  # a non-trivial comparison
    assert bool((violated[50] | ~violated[10]).all())  # every sample PGD-10 violates, PGD-50 violates
    assert int(violated[50].sum()) >= int(violated[10].sum())


# ---------------------------------------------------------------------------- TRADES fidelity
def test_trades_starts_at_x_plus_small_gaussian() -> None:
    """Zhang et al.'s start ``x + 0.001·N(0, 1)``: a step of 0 leaves exactly that (inside the
    ball and the range), Gaussian — not uniform of radius 0.1·ε."""
    spec = TRADES(eps=0.03).attack
    atk = spec.build(0.03, (0.0, 1.0), ("eval", "eval"), overrides=None)
    atk.step_size = 0.0
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2))
    x = torch.full((64, 1, 16, 16), 0.5)
    d = atk(net, x, torch.zeros(64, dtype=torch.long), generator=torch.Generator().manual_seed(0)) - x
    assert float(d.std()) == pytest.approx(0.001, rel=0.05)
    assert float(d.abs().max()) > 0.003  # Gaussian tails; a uniform start of 0.1·ε stops at 0.003
    assert abs(float(d.mean())) < 1e-4


def test_trades_runs_the_authors_separate_train_mode_forwards() -> None:
    """``forward="separate"``: the loss is ``CE(f(x)) + β·KL(f(x) ‖ f(x_adv))`` with f(x) and
    f(x_adv) two train-mode forwards (BatchNorm: each batch its own statistics), as in the
    authors' ``trades_loss``; ``"joint"`` (one forward over both) gives another number."""
    module, batch = _task_batch("classification", TRADES(eps=0.05))
    joint, _ = _task_batch("classification", TRADES(eps=0.05, forward="joint"))
    joint.load_state_dict(module.state_dict())
    copy = deepcopy(module)  # the expected value, computed on an untouched copy
    losses = {}
    for name, m in (("separate", module), ("joint", joint)):
        m.train()
        losses[name] = float(m.method.training_loss(m, batch)[0])
    model = copy.attack_model()
    copy.eval()
    with torch.no_grad():
        ref = model(batch["image"]).detach()
    atk = copy.method.attack.build(0.05, (0.0, 1.0), ("eval", "eval"))
    x_adv = atk(model, batch["image"], batch, loss_fn=lambda out, _: copy.output_divergence(out, ref),
                generator=copy.method.generator(copy, torch.device("cpu"), 0))
    copy.train()
    logits = model(batch["image"])
    logits_adv = model(x_adv)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
    expected = F.cross_entropy(logits, batch["label"]) + 6.0 * kl
    assert losses["separate"] == pytest.approx(float(expected), rel=1e-5)
    assert losses["separate"] != pytest.approx(losses["joint"], rel=1e-4)
    with pytest.raises(ValueError, match=r"TRADES\.forward must be one of"):
        TRADES(forward="both")
