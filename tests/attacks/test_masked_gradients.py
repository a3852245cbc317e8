"""The ``standard`` suite behind masked gradients (issue 22): on tiny 8×8 models with a
zero-gradient input quantisation, logits × 1000 (a saturated softmax), and both, it breaks at
least what a margin-loss Square with 5000 queries breaks, and the record, ``report.md`` and
the CLI summary mark the robust number as an unreliable upper bound.

Also: the scale-free Square losses (``margin``, ``seg_margin``, ``peak_margin``) rank
candidates the same on logits × 1000, where cross-entropy is exactly 0."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from attacks import Square
from attacks.seeding import seeded_generator
from attacks.task_losses import make_attack_loss
from benchmarks.common import fit_plain
from benchmarks.masked_models import frozen, record_of
from benchmarks.masking import Masked, Quantised, Scaled
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.report import write_report
from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import ClassificationModule, SegmentationModule
from lightning_modules.tasks import suite_specs

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.03


MASKINGS = {
    "quantised": lambda m: Quantised(m),
    "logits_x1000": lambda m: Scaled(m),
    "both": lambda m: Scaled(Quantised(m)),
}


@functools.cache
def tiny(task: str) -> tuple[Any, dict[str, Any]]:
    """A tiny net trained for a few seconds on 8×8 synthetic data, and 8 validation samples."""
    torch.manual_seed(0)
    kw: dict[str, Any] = {"num_classes": 2} if task == "classification" else {}
    dm = SyntheticDataModule(task=task, num_train=256, num_val=8, num_test=8, image_size=(8, 8),
                             seed=0, batch_size=32, **kw)
    dm.setup("fit")
    net = {"class_path": f"lightning_modules.nets.{'SmallCNN' if task == 'classification' else 'SmallUNet'}",
           "init_args": {"features": [8, 16]}}
    cls = ClassificationModule if task == "classification" else SegmentationModule
    lr = 3e-3 if task == "classification" else 1e-2
    module = cls(net=net, data_info=dm.info, lr=lr)
    train = collate_batch([dm.dataset("train")[i] for i in range(256)])
    g = torch.Generator().manual_seed(0)
    steps = 200 if task == "classification" else 120
    batches = ({k: v[idx] if isinstance(v, torch.Tensor) else v for k, v in train.items()}
               for idx in (torch.randint(0, 256, (32,), generator=g) for _ in range(steps)))
    fit_plain(module, batches, torch.optim.Adam(module.parameters(), lr=lr))
    return frozen(module), collate_batch([dm.dataset("val")[i] for i in range(8)])


def _square_reference(task: Any, model: Any, batch: dict[str, Any], loss: str, index: int,
                      violated: Any = None) -> torch.Tensor:
    """A margin-loss Square with 5000 queries, seeded as the suite seeds its member ``index``."""
    x = batch["image"]
    gen = seeded_generator(0, 0, index, 0)
    fn = make_attack_loss(loss, None, 5000)
    from callbacks.attack_loss import task_loss_tensors

    return Square(eps=EPS, steps=5000, bounds=tuple(task.data_info.bounds))(
        model, x, batch, loss_fn=lambda o, b: fn(*task_loss_tensors(task, o, b)),
        is_violated=violated, generator=gen)


@pytest.mark.parametrize("masking", sorted(MASKINGS))
def test_classification_standard_suite_breaks_what_square_5000_breaks_and_is_marked(
        masking: str, tmp_path: Any) -> None:
    module, batch = tiny("classification")
    task = Masked(module, MASKINGS[masking])
    model = task.attack_model()
    specs = suite_specs("standard", "test_attacks", "classification", 2)
    ev = RobustnessEvaluator(task, specs, [EPS], sequential=True, large_eps=0.25)
    ev.run_batch(0, batch)
    record = record_of(task, ev, specs, "accuracy", False)
    suite_acc = record.value("accuracy", "ensemble", EPS)
    y = batch["label"]

    def wrong(o: torch.Tensor, b: Any) -> torch.Tensor:
        return o.argmax(1) != b["label"]

    square_index = [s.label for s in specs].index("square")
    x_sq = _square_reference(task, model, batch, "margin", square_index + 1, wrong)
    with torch.no_grad():
        square_acc = float((model(x_sq).argmax(1) == y).float().mean())
        clean_acc = float((model(batch["image"]).argmax(1) == y).float().mean())
    assert clean_acc >= 0.5  # the masked model still classifies
    assert square_acc < clean_acc  # the gradient-free reference breaks something
    assert suite_acc <= square_acc + 1e-9, (masking, suite_acc, square_acc)
    # a flag fired, and the record says the numbers are upper bounds, naming it
    fired = record.unreliable_flags()
    assert fired and set(fired) <= set(record.sanity)
    ens = record.entries("ensemble")[0]
    assert ens.unreliable and set(ens.unreliable) <= set(fired)
    assert all(e.unreliable for e in record.attacks if not e.extra.get("gradient_free"))
    data = record.to_dict()
    assert data["unreliable"][0]["next"] and data["ensemble"][0]["unreliable"]
    assert "aa_budget" in " ".join(u["next"] for u in data["unreliable"])
    # old readers: every key they know is still there with its old meaning
    assert {"task", "method", "epoch", "split", "clean", "attacks"} <= set(data)
    assert all({"attack", "norm", "eps", "steps", "metrics"} <= set(a) for a in data["attacks"])
    # the report and the CLI summary carry the mark and what to run next
    text = write_report(record, tmp_path / "report.md", plot_name=None).read_text()
    assert "⚠ upper bound" in text and "Unreliable numbers" in text and fired[0] in text

    from medrobust.cli_summary import summarise_record

    line = summarise_record(record.to_dict(), "accuracy")
    assert "ensemble eps=0.03 accuracy" in line and "⚠ upper bound" in line and "next:" in line


@pytest.mark.parametrize("masking", sorted(MASKINGS))
def test_segmentation_standard_suite_breaks_what_square_5000_breaks_and_is_marked(masking: str) -> None:
    module, batch = tiny("segmentation")
    task = Masked(module, MASKINGS[masking])
    model = task.attack_model()
    specs = suite_specs("standard", "test_attacks", "segmentation")
    labels = [s.label for s in specs]
    ev = RobustnessEvaluator(task, specs, [EPS], sequential=False, large_eps=0.25)
    ev.run_batch(0, batch)
    record = record_of(task, ev, specs, "dice", False)
    suite_dice = record.value("dice", "ensemble", EPS)
    strongest = min(record.value("dice", label, EPS) for label in labels)
    # an independent reference: another seed than the suite's own Square member
    x_sq = _square_reference(task, model, batch, "seg_margin", len(labels) + 1)
    with torch.no_grad():
        metrics = module.build_metrics()
        module.update_metrics(metrics, model(x_sq), batch)
        square_dice = float(metrics.compute()["dice"])
        clean = module.build_metrics()
        module.update_metrics(clean, model(batch["image"]), batch)
        clean_dice = float(clean.compute()["dice"])
    assert square_dice < clean_dice  # the gradient-free reference lowers Dice
    # the suite's strongest member reaches the reference, up to the spread of two random
    # searches on 8 images (two seeds of Square 5000 gave 0.657 and 0.635 on "both"; the
    # suite with Square 1000 queries reached only 0.693 there, and fails this check)
    assert strongest <= square_dice + 0.04, (masking, strongest, square_dice, clean_dice)
    if "metric" in record.ensemble_rule:  # a worst case kept by the task metric (issue 22, part A)
        assert suite_dice <= strongest + 1e-6
    assert record.unreliable_flags()
    assert record.entries("ensemble")[0].unreliable


def test_square_losses_are_scale_free_where_cross_entropy_saturates() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 3) * 5
    y = z.argmax(1)  # every sample confidently correct
    ce = make_attack_loss("ce", None, 1)
    margin = make_attack_loss("margin", None, 1)
    assert torch.all(ce(z * 1000, y) == 0)  # saturated: nothing to climb
    assert torch.allclose(margin(z * 1000, y), margin(z, y) * 1000)
    seg = make_attack_loss("seg_margin", None, 1)
    zs, ys = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    assert torch.allclose(seg(zs * 1000, ys), seg(zs, ys) * 1000, rtol=1e-5)
    assert torch.all(seg(zs, ys) <= 0)
    # every pixel flipped: 0, the highest value
    wrong = (zs.argmax(1) + 1) % 3
    assert torch.all(seg(zs, wrong) <= 0) and float(seg(zs, zs.argmax(1)).max()) < 0
    # peak_margin: positive exactly when the argmax lies farther than the radius
    heat = torch.zeros(1, 2, 16, 16)
    heat[0, 0, 3, 3], heat[0, 1, 12, 12] = 1.0, 1.0
    truth = torch.tensor([[[3.0, 3.0, 1.0], [3.0, 3.0, 1.0]]])  # (x, y, visible)
    pm = make_attack_loss("peak_margin", None, 1, radius=2.0)
    per = pm(heat, truth)
    assert per.shape == (1,) and float(per) == pytest.approx(0.0)  # (−1 + 1) / 2
    assert torch.allclose(pm(heat * 1000, truth), per * 1000)
    one = pm(heat[:, 1:], truth[:, 1:])
    assert float(one) == pytest.approx(1.0)  # the peak is 12.7 px away: positive
    with pytest.raises(ValueError, match="radius"):
        make_attack_loss("peak_margin", None, 1, radius=0)
