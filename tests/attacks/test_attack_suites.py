"""Named suites (``standard`` / ``quick``), the attack spec in ``attacks/``, the sequential
worst case, robustness.json records of every member, and the segmentation attack losses."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

import callbacks.evaluation_loop as loop
from attacks import APGD, PGD, AttackSpec, Square, losses, parse_attack_specs
from attacks.task_losses import make_attack_loss
from callbacks import AdversarialEvaluation
from callbacks.evaluation_loop import RobustnessEvaluator, task_loss_tensors
from datamodules.synthetic import SyntheticDataModule
from lightning_modules.tasks import suite_configs, suite_specs
from tests.support.attack_models import trained

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def test_spec_lives_in_attacks_and_builds() -> None:
    assert loop.AttackSpec is AttackSpec
    spec = AttackSpec.from_config({"name": "apgd", "steps": 7, "loss": "dlr"})
    atk = spec.build(0.01, (0.0, 1.0), ("train", "eval"))
    assert isinstance(atk, APGD) and atk.steps == 7 and atk.bn_mode == "train"
    assert spec.label == "apgd-dlr" and spec.loss == "dlr"
    with pytest.raises(TypeError, match=r"modes must be a pair \(bn_mode, dropout_mode\)"):
        spec.build(0.01, (0.0, 1.0), "eval")  # one call form: the modes are one pair
    with pytest.raises(ValueError, match=r"attacks\[0\].loss: unknown attack loss"):
        parse_attack_specs([{"name": "apgd", "loss": "nope"}], "attacks")


def test_standard_suite_per_task() -> None:
    four = [s.label for s in suite_specs("standard", "x", "classification", 4)]
    assert four == ["apgd-ce", "apgd-dlr", "apgd-t1", "apgd-t2", "apgd-t3", "fmn", "square"]
    binary = [s.label for s in suite_specs("standard", "x", "classification", 2)]
    assert binary == ["apgd-ce", "apgd-dlr", "fmn", "square"]  # DLR falls back to the CW margin
    seg = suite_specs("standard", "x", "segmentation")
    assert {s.loss for s in seg} == {"mask_ce", "balanced_ce", "js", "segpgd", "dice", "seg_margin"}
    assert all(s.params["steps"] == 100 for s in seg if s.name == "apgd")
    assert suite_configs("standard", "landmarks")[1]["loss"] == "soft_argmax"
    # the task loss runs two random starts (the brute-force ensemble's edge, docs/benchmarks.md)
    lmk = {s.label: s for s in suite_specs("standard", "x", "landmarks")}
    assert lmk["apgd-task"].params["restarts"] == 2 and lmk["apgd-task"].build(0.03, (0.0, 1.0)).restarts == 2
    det = {s.label: s for s in suite_specs("standard", "x", "detection")}
    assert list(det) == ["apgd-task", "apgd-dag", "apgd-dag_untargeted", "square"]
    assert det["apgd-dag_untargeted"].loss == "dag" and det["apgd-dag_untargeted"].loss_args == {"target_shift": None}
    assert [det[k].params.get("restarts", 1) for k in det] == [2, 1, 2, 1]
    with pytest.raises(ValueError, match="unknown suite"):
        suite_specs("strongest", "x", "classification")


def test_sequential_suite_skips_broken_samples_and_is_never_better_than_a_member() -> None:
    module, batch = trained("classification")
    specs = suite_specs("quick", "t", "classification", 4)
    ev = RobustnessEvaluator(module, specs, [0.006], sequential=True)
    ev.run_batch(0, batch)
    out = ev.compute()
    attacked = [out.gradients[(s.label, 0.006)]["attacked"] for s in specs]
    accs = [out.attacks[(s.label, 0.006)]["accuracy"] for s in specs]
    n = batch["image"].shape[0]
    # each member attacks exactly the samples that are still correct after the previous ones
    assert attacked[0] == round(out.clean["accuracy"] * n)
    for i in range(1, len(specs)):
        assert attacked[i] == round(accs[i - 1] * n), (attacked, accs)
    assert accs == sorted(accs, reverse=True)  # cumulative worst case
    assert out.ensemble[0.006]["accuracy"] <= min(accs) + 1e-9
    assert out.sequential


def test_quick_suite_beats_pgd10() -> None:
    module, batch = trained("classification")
    pgd = RobustnessEvaluator(module, parse_attack_specs([{"name": "pgd", "steps": 10}], "p"), [0.006])
    pgd.run_batch(0, batch)
    suite = RobustnessEvaluator(module, suite_specs("quick", "s", "classification", 4), [0.006],
                                sequential=True)
    suite.run_batch(0, batch)
    assert suite.compute().ensemble[0.006]["accuracy"] <= pgd.compute().ensemble[0.006]["accuracy"]


def test_robustness_json_records_every_member_and_sanity(tmp_path) -> None:
    module, _ = trained("classification")
    dm = SyntheticDataModule(task="classification", num_train=256, num_val=32, num_test=8,
                             image_size=(16, 16), seed=0, batch_size=32, num_classes=4)
    cb = AdversarialEvaluation(attacks=[{"name": "fgsm"}], eps=[0.006], test_attacks="quick",
                               test_eps=[0.006], subset=16, plot=False, report=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.validate(module, datamodule=dm)
    record = json.loads((tmp_path / "robustness.json").read_text())
    assert record["suite_name"] == "quick" and record["sequential"] is True
    members = {m["label"]: m for m in record["members"]}
    assert set(members) == {"apgd-ce", "apgd-dlr", "apgd-t1", "apgd-t2", "apgd-t3", "fmn", "square"}
    assert members["apgd-ce"]["steps"] == 20 and members["apgd-ce"]["restarts"] == 1
    assert members["square"]["steps"] == 100
    for entry in record["attacks"]:
        assert entry["steps"] is not None and entry["restarts"] is not None and "gradients" in entry
    assert set(record["sanity"]) >= {"gradient", "monotone", "large_eps", "black_box", "randomness"}


SEG_LOSSES = ["mask_ce", "balanced_ce", "js", "segpgd"]


@pytest.mark.parametrize("eps", [0.02, 0.04])
def test_segmentation_losses_beat_pgd_on_the_default_loss(eps: float) -> None:
    """At the same budget and iterations, APGD on the segmentation losses lowers Dice more than
    PGD on the attacks' default loss (cross-entropy) on a trained tiny U-Net: the strongest loss
    beats PGD, and every loss comes within 0.02 of PGD (none is a weak member).

    Since PGD's default step became ``max(2.5/steps, 1/4)·ε`` (fast-AT work), PGD-CE is stronger,
    and balanced_ce and segpgd land just below it at ε = 0.02 (measured error: PGD-CE 0.298,
    balanced_ce 0.294, segpgd 0.293, mask_ce 0.315, js 0.324), so "every loss beats PGD" is no
    longer claimed; the suite keeps the per-sample worst case over all of them."""
    module, batch = trained("segmentation")
    model, x = module.attack_model(), batch["image"]

    def error(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            return 1 - module.violation_statistic(model(x_adv), batch).mean().item()

    base = error(PGD(eps=eps, steps=20)(model, x, batch["mask"], generator=torch.Generator().manual_seed(0)))
    errors = {}
    for name in SEG_LOSSES:
        fn = make_attack_loss(name, None, 20)

        def loss(out, b, fn=fn):
            return fn(*task_loss_tensors(module, out, b))

        x_adv = APGD(eps=eps, steps=20)(model, x, batch, loss_fn=loss, generator=torch.Generator().manual_seed(0))
        errors[name] = error(x_adv)
    assert max(errors.values()) > base + 0.005, (errors, base)
    assert min(errors.values()) > base - 0.02, (errors, base)


def test_mask_ce_value_grows_with_broken_pixels() -> None:
    z = torch.tensor([[[[3.0, 3.0]], [[0.0, 0.0]]]])  # [1, 2, 1, 2]: both pixels class 0
    y = torch.zeros(1, 1, 2, dtype=torch.long)
    fn = make_attack_loss("mask_ce", None, 10)
    one_violated = z.clone()
    one_violated[0, 1, 0, 0] = 4.0
    assert fn(one_violated, y) > fn(z, y)


def test_segpgd_weight_moves_to_wrong_pixels() -> None:
    z = torch.tensor([[[[3.0, 0.0]], [[0.0, 3.0]]]])  # pixel 0 correct, pixel 1 wrong
    y = torch.zeros(1, 1, 2, dtype=torch.long)
    fn = make_attack_loss("segpgd", None, 10)
    with torch.enable_grad():
        first = fn(z, y).item()  # λ = 0: only the correct pixel counts
        for _ in range(9):
            last = fn(z, y).item()  # λ = 0.45
    ce = torch.nn.functional.cross_entropy(z, y[:, 0] if y.ndim == 4 else y, reduction="none")[0, 0]
    assert first == pytest.approx(ce[0].item() / 2)
    assert last == pytest.approx((0.55 * ce[0].item() + 0.45 * ce[1].item()) / 2)


def test_square_is_marked_gradient_free_and_in_every_standard_suite() -> None:
    assert Square.gradient_free
    for task in ("classification", "segmentation", "landmarks", "detection"):
        assert any(c["name"] == "square" for c in suite_configs("standard", task))
    assert losses.dlr_loss is not None


def test_minimal_eps_with_apgd_is_an_upper_bound_no_looser_than_pgd() -> None:
    from callbacks.minimal_eps import MinimalEpsConfig, minimal_eps_batch

    module, batch = trained("classification")
    model = module.attack_model()
    vals = {}
    for attack in ("pgd", "apgd"):
        cfg = MinimalEpsConfig.parse({"eps_max": 0.05, "n_bisect": 5,
                                      "attack": {"name": attack, "steps": 10}})
        vals[attack] = minimal_eps_batch(module, model, batch, cfg)
    finite = torch.isfinite(vals["apgd"])
    assert finite.float().mean() > 0.5
    # every finite APGD estimate is a real adversarial budget: APGD breaks the sample there
    eps = vals["apgd"].clone()
    eps[~finite] = 0.05
    res = APGD(eps=eps, steps=10, random_start=False).perturb(
        model, batch["image"], batch, loss_fn=module.per_sample_loss,
        is_violated=lambda o, b: module.is_violated(o, b))
    assert bool(res.violated[finite].all())
    assert vals["apgd"].median() <= vals["pgd"].median()
    with pytest.raises(ValueError, match="attack must be"):
        MinimalEpsConfig.parse({"attack": "cw"})


@pytest.mark.parametrize("eps", [0.02, 0.04])
def test_landmark_soft_argmax_loss_beats_pgd_on_the_task_loss(eps: float) -> None:
    """At the same budget and iterations, APGD on the soft-argmax distance moves the decoded
    landmarks further (MRE) than PGD on the task's heatmap loss, on a trained tiny U-Net."""
    module, batch = trained("landmarks")
    model, x = module.attack_model(), batch["image"]

    def mre(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            p = module.decode_points(model(x_adv))
        d = (p - batch["landmarks"]).norm(dim=-1) * batch["visible"]
        return d.sum().item() / batch["visible"].sum().item()

    gen = torch.Generator().manual_seed(0)
    base = mre(PGD(eps=eps, steps=20)(model, x, batch, loss_fn=module.per_sample_loss, generator=gen))
    fn = make_attack_loss("soft_argmax", None, 20)
    gen = torch.Generator().manual_seed(0)
    x_adv = APGD(eps=eps, steps=20)(model, x, batch, loss_fn=lambda o, b: fn(*task_loss_tensors(module, o, b)),
                                    generator=gen)
    assert mre(x_adv) > base > mre(x)
