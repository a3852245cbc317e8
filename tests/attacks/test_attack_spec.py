"""One attack vocabulary: ``attacks.AttackSpec`` in training methods, evaluation and minimal ε.

* every method's default attack is exactly the PGD it built by hand before (same settings, same
  adversarial example for a fixed generator);
* a config change is enough to train with another attack (APGD, MI-FGSM) or with restarts;
* bad attack fields fail at construction with the method and field named;
* a new attack defined in this file (public ``Attack`` base + ``@register_attack``) works in a
  training method and in the evaluation callback's attack list with no other edit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor

from attacks import (
    APGD,
    ATTACKS,
    MIFGSM,
    PGD,
    Attack,
    AttackCall,
    AttackSpec,
    parse_attack_specs,
    register_attack,
)
from attacks.projection import linf_box
from callbacks import AdversarialEvaluation
from callbacks.minimal_eps import MinimalEpsConfig
from datamodules.info import DataInfo
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import AMAT, SAT, TRADES, ClassificationModule, Denoise

TINY_CNN = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}}
CLS = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=3,
               num_train=8)


def batch(b: int = 6) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(b, 1, 16, 16, generator=g), "label": torch.arange(b) % 3,
            "index": torch.arange(b)}


# ------------------------------------------------------------------ a new attack, in one file
@register_attack
class SignFlip(Attack):
    """Test attack: one L∞ step of size ``eps`` *against* the gradient sign of a random
    perturbation's loss — deterministic given the generator, inside the ball by construction."""

    name = "test_sign_flip"

    def __init__(self, eps: float = 0.01, norm: str = "linf", steps: int = 1,
                 bounds: tuple[float, float] = (0.0, 1.0), bn_mode: str = "eval",
                 dropout_mode: str = "eval") -> None:
        super().__init__(eps, norm, bounds, bn_mode, dropout_mode)
        self.steps = steps

    def _run(self, call: AttackCall) -> Tensor:
        eps = call.budget(self.eps, "eps")
        lower, upper = linf_box(call, eps)
        x_adv = call.x.clone()
        for _ in range(self.steps):
            grad, _, _ = self.input_gradient(call, x_adv)
            x_adv = (x_adv + call.per_sample(eps) * grad.sign()).clamp_(lower, upper)
        return x_adv


# The decorator above is all a new attack needs. This module takes the class out of the
# process-wide registry again while other test modules run (they check the shipped set) and
# puts it back, as the decorator did, around each of its own tests.
ATTACKS.pop(SignFlip.name)


@pytest.fixture(autouse=True)
def _sign_flip_registered() -> Any:
    register_attack(SignFlip)
    yield
    ATTACKS.pop(SignFlip.name, None)


# ------------------------------------------------------------------ defaults unchanged
def _captured_attack(method: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Run one training step of ``method`` and return (the attack it built, the module)."""
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=method)
    seen: dict[str, Any] = {}
    spec = m.method.attack
    original = AttackSpec.build

    def spy(self: AttackSpec, *args: Any, **kwargs: Any) -> Any:
        atk = original(self, *args, **kwargs)
        if self is spec:
            seen["attack"] = atk
        return atk

    monkeypatch.setattr(AttackSpec, "build", spy)
    m.method.training_loss(m, batch())
    monkeypatch.setattr(AttackSpec, "build", original)
    return seen["attack"], m


def _same_attack(new: Any, old: PGD, m: Any) -> None:
    """Same class and settings, and the same adversarial example for the same generator."""
    assert type(new) is type(old)
    for key in ("norm", "steps", "random_start", "restarts", "bn_mode", "dropout_mode", "bounds"):
        assert getattr(new, key) == getattr(old, key), key
    for key in ("eps", "step_size", "init_radius"):
        a, b = getattr(new, key), getattr(old, key)
        assert (torch.equal(a, b) if isinstance(a, Tensor) else a == b), key
    b = batch()
    model = m.attack_model()
    x_new = new(model, b["image"], b, loss_fn=m.per_sample_loss, generator=torch.Generator().manual_seed(5))
    x_old = old(model, b["image"], b, loss_fn=m.per_sample_loss, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x_new, x_old)
    assert not torch.equal(x_new, b["image"])


def test_sat_default_attack_is_the_old_pgd(monkeypatch: pytest.MonkeyPatch) -> None:
    new, m = _captured_attack(SAT(eps=0.03), monkeypatch)
    _same_attack(new, PGD(eps=0.03, norm="linf", steps=10, step_size=None, random_start=True,
                          bounds=(0.0, 1.0)), m)
    # Joel et al. 2022: PGD-7, step ε/4 (the old rel_step_size field)
    new, m = _captured_attack(SAT(eps=0.02, attack={"steps": 7, "rel_step_size": 0.25}), monkeypatch)
    _same_attack(new, PGD(eps=0.02, norm="linf", steps=7, step_size=0.25 * 0.02, random_start=True), m)


def test_trades_default_attack_is_the_authors_pgd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Zhang et al.'s code starts at x + 0.001·N(0, 1) (was: uniform of radius 0.1·ε here)
    new, m = _captured_attack(TRADES(eps=0.03), monkeypatch)
    _same_attack(new, PGD(eps=0.03, norm="linf", steps=10, step_size=None, random_start=True,
                          init_radius=0.001, init_distribution="normal"), m)
    # a changed default keeps TRADES' start
    new, m = _captured_attack(TRADES(eps=0.03, attack={"steps": 3}), monkeypatch)
    assert new.steps == 3 and new.init_radius == 0.001 and new.init_distribution == "normal"


def test_amat_default_attack_is_the_old_pgd(monkeypatch: pytest.MonkeyPatch) -> None:
    method = AMAT(delta=0.1, max_margin=1.0, threshold_from="running")
    new, m = _captured_attack(method, monkeypatch)
    margins = m.method.margins[batch()["index"]].float()
    start = torch.maximum(margins - 0.1, torch.full_like(margins, 0.1))
    _same_attack(new, PGD(eps=margins, norm="l2", steps=20, step_size=4.0 * margins / 20,
                          random_start=True, init_radius=torch.minimum(start, margins)), m)


def test_denoise_default_attack_is_the_old_pgd(monkeypatch: pytest.MonkeyPatch) -> None:
    method = Denoise(denoiser={"class_path": "lightning_modules.nets.DenoisingAutoEncoder",
                               "init_args": {"features": [4, 8]}}, adversarial_fraction=1.0, adv_eps=0.02)
    new, m = _captured_attack(method, monkeypatch)
    _same_attack(new, PGD(eps=0.02, norm="linf", steps=5), m)


def test_minimal_eps_default_attack_is_the_old_pgd() -> None:
    cfg = MinimalEpsConfig.parse({"eps_max": 0.1})
    atk = cfg.attack.build(0.05, (0.0, 1.0))
    assert type(atk) is PGD and (atk.norm, atk.steps, atk.random_start) == ("linf", 10, False)
    assert (cfg.steps, cfg.norm) == (10, "linf")
    apgd = MinimalEpsConfig.parse({"attack": "apgd"}).attack.build(0.05, (0.0, 1.0))
    assert type(apgd) is APGD and (apgd.norm, apgd.steps, apgd.random_start) == ("linf", 10, False)
    with pytest.raises(ValueError, match=r"minimal_eps: \['steps'\] belong to the attack spec"):
        MinimalEpsConfig.parse({"steps": 3})


# ------------------------------------------------------------------ other attacks: a config change
def _sat_step(attack: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=SAT(eps=0.03, attack=attack))
    loss, logs = m.method.training_loss(m, batch())
    loss.backward()
    assert torch.isfinite(loss) and logs["eps"] == 0.03
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.net.parameters())
    return m, logs


def test_sat_trains_with_apgd_mifgsm_and_restarts() -> None:
    m, _ = _sat_step({"name": "apgd", "steps": 3})
    atk = m.method.make_attack(m, 0.03)
    assert type(atk) is APGD and atk.steps == 3
    m, _ = _sat_step({"name": "mi-fgsm", "steps": 3, "decay": 0.5})
    atk = m.method.make_attack(m, 0.03)
    assert type(atk) is MIFGSM and atk.decay == 0.5 and atk.steps == 3
    m, _ = _sat_step({"name": "pgd", "restarts": 2, "steps": 2})
    atk = m.method.make_attack(m, 0.03)
    assert type(atk) is PGD and atk.restarts == 2 and atk.norm == "linf"  # default norm kept
    # the resolved spec is what the checkpoint records, and it rebuilds the same method
    assert m.method.config()["init_args"]["attack"] == {"name": "pgd", "norm": "linf", "steps": 2,
                                                        "restarts": 2}
    again = SAT(**m.method.config()["init_args"])
    assert again.attack == m.method.attack


def test_amat_trains_with_apgd_inside_each_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another attack for AMAT is a config change too: the per-sample margins are its budget
    (the step / start-radius overrides apply only where the attack has them)."""
    method = AMAT(delta=0.1, max_margin=1.0, threshold_from="running",
                  attack={"name": "apgd", "norm": "l2", "steps": 3})
    atk, m = _captured_attack(method, monkeypatch)
    margins = m.method.margins[batch()["index"]].float()
    assert type(atk) is APGD and atk.norm == "l2" and torch.equal(atk.eps, margins)
    b = batch()
    x_adv = atk(m.attack_model(), b["image"], b, loss_fn=m.per_sample_loss)
    assert bool(((x_adv - b["image"]).flatten(1).norm(dim=1) <= margins + 1e-6).all())


def test_bad_attack_fields_name_the_method_and_field() -> None:
    cases = [
        (lambda: SAT(attack={"name": "pgdd"}), r"SAT\.attack\.name: unknown attack 'pgdd'"),
        (lambda: SAT(attack={"steps": 0}), r"SAT\.attack\.steps must be an int >= 1, got 0"),
        (lambda: SAT(attack={"norm": "l1"}), r"SAT\.attack\.norm must be 'linf' or 'l2'"),
        (lambda: SAT(attack={"step_size": 0.1, "rel_step_size": 0.2}), r"SAT\.attack: give step_size or rel_step_size"),
        (lambda: SAT(attack={"eps": 0.1}), r"SAT\.attack\.eps: the budget is not part"),
        (lambda: SAT(attack={"name": "bim", "restarts": 2}), r"SAT\.attack: bim does not accept"),
        (lambda: SAT(attack={"name": "apgd", "loss": "dlr"}), r"SAT\.attack\.loss"),
        (lambda: SAT(attack=[1, 2]), r"SAT\.attack: an attack is a mapping"),
        (lambda: TRADES(attack={"name": "bim", "rel_init_radius": 0.1}), r"TRADES\.attack\.rel_init_radius: bim has no"),
        (lambda: AMAT(attack={"norm": "linf"}), r"AMAT\.attack\.norm must be 'l2'"),
        (lambda: AMAT(attack={"step_size": 0.1}), r"AMAT\.attack\.step_size: AMAT sets the step"),
        (lambda: Denoise(attack={"name": "pgd", "random_start": "yes"}), r"Denoise\.attack\.random_start must be true"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()


def test_spec_round_trips_and_keeps_the_evaluation_form() -> None:
    cfg = {"name": "pgd", "norm": "l2", "steps": 7, "rel_step_size": 0.25, "restarts": 2, "label": "p"}
    spec = AttackSpec.from_config(cfg)
    assert spec.to_config() == cfg and AttackSpec.from_config(spec.to_config()) == spec
    assert spec.params == {"norm": "l2", "steps": 7, "rel_step_size": 0.25, "restarts": 2}
    atk = spec.build(torch.tensor([0.4, 0.8]), (0.0, 1.0))
    assert torch.equal(atk.step_size, torch.tensor([0.1, 0.2]))
    # overrides (AMAT's per-sample settings) apply only where the attack takes them
    apgd = AttackSpec.from_config({"name": "apgd", "steps": 3}).build(
        0.1, (0.0, 1.0), overrides={"step_size": 0.5, "init_radius": 0.01})
    assert type(apgd) is APGD
    # evaluation lists take specs as well as mappings, and a string is a named suite
    specs = parse_attack_specs([spec, {"name": "fgsm"}], "attacks")
    assert [s.label for s in specs] == ["p", "fgsm"]


# ------------------------------------------------------------------ a new attack: one file
def test_new_attack_in_one_file_trains_and_evaluates(tmp_path: Path) -> None:
    assert ATTACKS["test_sign_flip"] is SignFlip
    # training: the name in the method's attack field
    m, _ = _sat_step({"name": "test_sign_flip", "steps": 2})
    assert type(m.method.make_attack(m, 0.03)) is SignFlip
    # ... or the dotted class path, as a YAML config would give it
    m, _ = _sat_step({"name": f"{__name__}.SignFlip"})
    assert type(m.method.make_attack(m, 0.03)) is SignFlip
    # evaluation: the callback's attack list
    dm = SyntheticDataModule(task="classification", num_train=8, num_val=6, num_test=6,
                             image_size=(16, 16), batch_size=6, seed=0)
    module = ClassificationModule(net=TINY_CNN, data_info=dm.info)
    cb = AdversarialEvaluation(attacks=[{"name": "test_sign_flip", "steps": 2}], eps=[0.05],
                               subset=6, batch_size=6, plot=False, report=False)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.validate(module, dm, verbose=False)
    record = json.loads((Path(trainer.default_root_dir) / "robustness.json").read_text())
    (entry,) = [a for a in record["attacks"] if a["attack"] == "test_sign_flip"]
    assert entry["eps"] == 0.05 and entry["steps"] == 2


def test_every_shipped_method_config_names_its_attack() -> None:
    """The configs give the method's attack as one spec, none of the old flat fields, and the
    method builds from its block (the attack is checked in the constructor)."""
    import inspect

    import yaml

    from lightning_modules.nets.builder import import_object
    from tests.conftest import PROJECT_ROOT

    old = {"norm", "steps", "step_size", "rel_step_size", "random_start", "adv_norm", "adv_steps"}
    for path in sorted((PROJECT_ROOT / "configs").rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        method = ((cfg.get("model") or {}).get("init_args") or {}).get("method") or {}
        args = method.get("init_args") or {}
        assert not (old & set(args)), (path.name, sorted(old & set(args)))
        if args and not method["class_path"].endswith("Clean"):
            cls = import_object(method["class_path"])
            built = cls(**args)
            if "attack" not in inspect.signature(cls).parameters:
                continue  # a method without an attack (GaussianAugment: noise only) builds, and that is all
            # (a config may keep the method's default attack: the Denoise of denoised smoothing)
            assert built.attack == AttackSpec.parse(args.get("attack"), path.name, built.default_attack)


def test_checkpoints_with_the_old_flat_fields_still_load() -> None:
    """hparams saved before the ``attack`` spec (flat ``steps``, ``norm``…) rebuild the same
    method: the fields are moved into the spec."""
    old_sat = {"class_path": "lightning_modules.methods.sat.SAT",
               "init_args": {"eps": 0.01, "norm": "linf", "steps": 3, "step_size": None,
                             "rel_step_size": 0.25, "random_start": True, "beta": 1.0,
                             "schedule": "constant", "warmup_epochs": 0, "stages": None,
                             "attack_bn_mode": "eval", "attack_dropout_mode": "eval", "seed": 0}}
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=old_sat)
    assert m.method.attack == SAT(attack={"steps": 3, "rel_step_size": 0.25, "random_start": True}).attack
    old_amat = {"class_path": "lightning_modules.methods.AMAT",
                "init_args": {"delta": 0.1, "steps": 4, "random_start": False}}
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=old_amat)
    assert (m.method.attack.steps, m.method.attack.random_start, m.method.attack.norm) == (4, False, "l2")
    old_trades = {"class_path": "lightning_modules.methods.TRADES",
                  "init_args": {"eps": 0.02, "norm": "l2", "steps": 2, "init_radius": 0.3}}
    m = ClassificationModule(net=TINY_CNN, data_info=CLS, method=old_trades)
    assert m.method.attack.to_config() == {"name": "pgd", "norm": "l2", "steps": 2, "random_start": True,
                                           "rel_init_radius": 0.3, "init_distribution": "uniform"}
    old_denoise = {"class_path": "lightning_modules.methods.Denoise",
                   "init_args": {"adv_eps": 0.02, "adv_norm": "l2", "adv_steps": 2}}
    from lightning_modules.hparams import as_method

    assert as_method(old_denoise, "t").attack.to_config() == {"name": "pgd", "norm": "l2", "steps": 2}
