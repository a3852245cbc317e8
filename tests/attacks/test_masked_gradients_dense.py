"""The landmark and detection ``standard`` suites behind masked gradients (issue 22).

Tiny models, trained here in a few seconds, wrapped in a gradient masking:

* ``quantised``: ``round(x·16)/16`` before the net, no straight-through estimator: the input
  gradient is exactly 0 almost everywhere;
* ``x1000``: the output saturated — heatmaps × 1000 (landmarks: the soft-argmax and
  expected-distance losses see a one-hot softmax), the class logits × 1000 (detection: the
  sigmoid focal loss of confidently classified locations is exactly 0 in float32, with a zero
  gradient);
* ``both``.

Each test shows (a) that the gradient attacks are fooled — PGD-10 on the task loss moves the task
metric far less than the suite's gradient-free member (Square 5000 on the task's scale-free loss);
(b) that the suite's worst case, through :class:`callbacks.evaluation_loop.RobustnessEvaluator`,
is at least as bad for the model, by the task metric (mean radial error; mAP@0.5), as an
independent Square with 5000 queries on the task's scale-free loss alone (``peak_margin``; the
plain DAG margin), seeded differently from the suite's member; and (c) that the record marks the
worst case as an unreliable upper bound, naming the fired sanity flags.

Cost (the reason for the sizes): a Square query is one forward, and 5000 of them are the bulk
of every test. The landmark net has four convolutions on 16 × 16 images (~10 s CPU per masking:
the suite, PGD-10 and the reference). The detector is the tiny FCOS on 32 × 32 images, whose
forward plus DAG inputs cost ~4 ms (torchvision's transform and per-image loops), ~20 s per
Square 5000 run: detection runs the ``both`` masking at the full budget (marked slow), and skips
the reference run when the suite already sits at the metric's floor (mAP@0.5 = 0: no attack can
break more); class logits × 1000 alone turned out not to mask the detection loss (its test).
Measured numbers: docs/attacks.md, "Masked gradients on landmarks and detection".
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attacks import Square, parse_attack_specs
from attacks.seeding import seeded_generator
from attacks.task_losses import ATTACK_LOSSES, make_attack_loss
from benchmarks.masked_models import (
    EPS,
    detector,
    landmark_model,
    pgd10,
    saturated,
    square_alone,
    standard_suite,
    task_metric,
)
from benchmarks.masking import Masked, Quantised, Scaled
from callbacks.attack_loss import task_loss_tensors
from callbacks.evaluation_loop import RobustnessEvaluator
from lightning_modules.tasks import suite_specs

pytestmark = pytest.mark.usefixtures("one_thread")

LANDMARK_MASKINGS = {
    "quantised": lambda m: Quantised(m),
    "x1000": lambda m: Scaled(m),
    "both": lambda m: Scaled(Quantised(m)),
}


def _assert_marked(record: Any) -> None:
    """(c): a flag fired and the worst case and every gradient member are marked with it."""
    fired = record.unreliable_flags()
    assert fired and set(fired) <= {k for k, v in record.sanity.items() if v["flag"]}, record.sanity
    ens = record.entries("ensemble")[0]
    assert ens.unreliable and set(ens.unreliable) <= set(fired)
    assert all(e.unreliable for e in record.attacks if not e.extra.get("gradient_free"))
    data = record.to_dict()
    assert data["ensemble"][0]["unreliable"] and all(u["next"] for u in data["unreliable"])


# Only "both" (quantised input and heatmaps × 1000) in the suite's time budget: each masking
# costs ~9 s (Square 5000 twice). Classification and segmentation run all three maskings;
# "quantised" and "x1000" here passed the same asserts until 2026-12-07 (parametrize over
# sorted(LANDMARK_MASKINGS) to rerun them).
@pytest.mark.parametrize("masking", ["both"])
def test_landmark_standard_suite_breaks_what_square_5000_breaks_and_is_marked(masking: str) -> None:
    module, batch = landmark_model()
    task = Masked(module, LANDMARK_MASKINGS[masking])
    model, x = task.attack_model(), batch["image"]
    clean = task_metric(module, model, batch, x, "mre")
    assert clean < 1.0, clean  # the masked model still finds the landmarks (sub-pixel)

    record, specs = standard_suite(task, batch, "landmarks", "mre", True)
    suite = record.value("mre", "ensemble", EPS)
    square_member = record.value("mre", "square", EPS)
    pgd = task_metric(module, model, batch, pgd10(task, model, batch), "mre")
    reference = task_metric(module, model, batch, square_alone(task, model, batch, "peak_margin"), "mre")
    # (a) the gradient attacks are fooled: PGD-10 and the best gradient member of the suite
    # stay within a pixel of the clean error; Square moves the points by several pixels
    best_gradient = max(record.value("mre", s.label, EPS) for s in specs if s.label != "square")
    assert pgd < clean + 1.0 and best_gradient < clean + 1.0, (masking, clean, pgd, best_gradient)
    assert square_member > pgd + 3.0 and reference > pgd + 3.0, (masking, pgd, square_member, reference)
    # (b) the suite (worst case by radial error) is at least the independent Square 5000, up
    # to the spread of one random search on 6 images: on ``x1000``, Square 5000 alone with
    # seeds 1–4, 12345 and the suite's own gave 5.65–6.53 px (the suite's member: 5.89 px,
    # exactly Square alone with the member's seed)
    assert suite >= square_member - 1e-6
    assert suite >= reference - 1.0, (masking, suite, reference)
    assert "metric" in record.ensemble_rule  # kept by the task metric, not a loss
    # (c)
    _assert_marked(record)


@pytest.mark.slow
def test_detection_standard_suite_breaks_what_square_5000_breaks_and_is_marked() -> None:
    """Quantised input and class logits × 1000 ("both"; the full 5000-query budget costs ~20 s
    per Square run on the tiny FCOS, so this is the one masking at the claim's budget; the
    quantisation alone zeroes the same gradients)."""
    base, batch = detector()
    module = saturated(base)
    task = Masked(module, lambda m: Quantised(m))
    model, x = task.attack_model(), batch["image"]
    clean = task_metric(module, model, batch, x, "map_50")
    assert clean > 0.5, clean  # the masked detector still finds the cells

    record, specs = standard_suite(task, batch, "detection", "map_50", False)
    suite = record.value("map_50", "ensemble", EPS)
    square_member = record.value("map_50", "square", EPS)
    pgd = task_metric(module, model, batch, pgd10(task, model, batch), "map_50")
    # (a) PGD-10 leaves mAP@0.5 near where it was, and every gradient member stays far above
    # Square (two random starts of a member move it by noise alone: measured 0.50 from 0.75)
    worst_gradient = min(record.value("map_50", s.label, EPS) for s in specs if s.label != "square")
    assert pgd > clean - 0.2, (clean, pgd)
    assert square_member < pgd - 0.3 and square_member < worst_gradient - 0.3, (pgd, worst_gradient, square_member)
    # (b) the suite's worst case (per-image AP@0.5) is at least the independent Square 5000.
    # At mAP@0.5 = 0 (measured: clean 0.75, PGD-10 0.71, best gradient member 0.63, the suite
    # 0.00) no attack can break more, and the ~20 s reference run is skipped; above that floor
    # the reference decides. (The worst case is kept per image by AP@0.5; mAP@0.5 pools the
    # images' detections in one ranking, so it follows the per-image values only up to that
    # pooling: hence the tolerance against the suite's own member too.)
    assert suite <= square_member + 0.05, (suite, square_member)
    if suite > 0:
        ref_x = square_alone(task, model, batch, "dag", target_shift=None, kappa=None, box_weight=0.0)
        reference = task_metric(module, model, batch, ref_x, "map_50")
        assert suite <= reference + 0.05, (suite, reference)
    assert "metric" in record.ensemble_rule
    # (c)
    _assert_marked(record)


def test_saturated_class_logits_do_not_mask_the_detection_loss() -> None:
    """A finding, not a masking: class logits × 1000 leave the detector's training loss a
    useful gradient (the focal loss of *misclassified* locations grows linearly in the logit,
    and the GIoU box and centre-ness terms are not scaled), so PGD-10 on the task loss still
    breaks the saturated tiny FCOS; only the quantised input fools the gradient attacks there."""
    base, batch = detector()
    module = saturated(base)
    model, x = module.attack_model(), batch["image"]
    clean = task_metric(module, model, batch, x, "map_50")
    pgd = task_metric(module, model, batch, pgd10(module, model, batch), "map_50")
    assert clean > 0.5 and pgd < clean - 0.3, (clean, pgd)
    quantised = Quantised(model)
    pgd_q = task_metric(module, quantised, batch, pgd10(module, quantised, batch), "map_50")
    assert pgd_q > clean - 0.2, (clean, pgd_q)


#: per task: a model output (what the task's attack losses take) and its labels, and the part of
#: the output that a saturation scales (detection: the class logits, not the boxes)
def _outputs(task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if task == "classification":
        z = torch.randn(4, 3, generator=g)
        return z, torch.tensor([0, 1, 2, 0]), torch.ones_like(z)
    if task == "segmentation":
        z = torch.randn(2, 3, 5, 5, generator=g)
        return z, torch.randint(0, 3, (2, 5, 5), generator=g), torch.ones_like(z)
    if task == "landmarks":
        heat = torch.randn(2, 3, 12, 12, generator=g)
        pts = torch.rand(2, 3, 2, generator=g) * 11
        return heat, torch.cat([pts, torch.ones(2, 3, 1)], dim=-1), torch.ones_like(heat)
    pred = torch.cat([torch.randn(2, 6, 3, generator=g), torch.rand(2, 6, 4, generator=g) * 10], dim=-1)
    cls = torch.tensor([[0.0, 2.0, -1.0, 1.0, 0.0, -1.0], [1.0, -1.0, -1.0, 2.0, 2.0, 0.0]])
    target = torch.cat([cls[..., None], torch.rand(2, 6, 4, generator=g) * 10], dim=-1)
    scale = torch.cat([torch.ones(2, 6, 3), torch.zeros(2, 6, 4)], dim=-1)
    return pred, target, scale


@pytest.mark.parametrize("task", ["classification", "segmentation", "landmarks", "detection"])
def test_every_standard_suite_has_a_gradient_free_member_on_a_scale_free_loss(task: str) -> None:
    """Each task's ``standard`` suite holds Square with 5000 queries on a loss that is
    positively homogeneous in the saturating part of the output (``f(c·z) = c·f(z)``), so a
    saturation (× 1000) changes none of its comparisons, while cross-entropy-type losses
    flatten to exactly 0."""
    specs = suite_specs("standard", "test_attacks", task, 3)
    free = [s for s in specs if s.build(0.01, (0.0, 1.0)).describe().get("gradient_free")]
    assert [s.name for s in free] == ["square"] and free[0].steps == 5000, free
    spec = free[0]
    assert spec.loss is not None and ATTACK_LOSSES[spec.loss].task == task, spec
    fn = make_attack_loss(spec.loss, None, 5000, **spec.loss_args)
    out, labels, part = _outputs(task)
    base = fn(out, labels)
    assert base.abs().sum() > 0, base
    for c in (10.0, 1000.0):
        scaled = out * (1 + (c - 1) * part)
        assert torch.allclose(fn(scaled, labels), c * base, rtol=1e-4, atol=1e-3), (task, c)


@pytest.mark.parametrize("task_name", ["landmarks", "detection"])
def test_the_suites_square_member_is_square_alone_with_its_seed_and_loss(task_name: str) -> None:
    """The evaluator runs its Square member exactly as a standalone Square on the task's
    scale-free loss, seeded as the evaluator seeds that member: the same inputs, so the member's
    number *is* "Square alone" (the 5000-query comparisons above differ only by the seed).
    50 queries here: the claim is about the wiring, not the budget."""
    from lightning_modules.tasks import model_task

    if task_name == "landmarks":
        module, batch = landmark_model()
        task: Any = Masked(module, LANDMARK_MASKINGS["both"])
        loss, args, metric = "peak_margin", {}, "mre"
    else:
        module = saturated(detector()[0])
        batch = detector()[1]
        task = Masked(module, lambda m: Quantised(m))
        loss, args, metric = "dag", {"target_shift": None, "kappa": None, "box_weight": 0.0}, "map_50"
    assert model_task(task_name).suite.square_loss in (loss, {"name": loss, **args})  # the suite's own loss
    specs = parse_attack_specs([{"name": "square", "steps": 50, "label": "square",
                                 "loss": model_task(task_name).suite.square_loss}], "test_attacks")
    ev = RobustnessEvaluator(task, specs, [EPS], ensemble=False)
    ev.run_batch(0, batch)
    member = ev.compute().attacks[("square", EPS)][metric]
    model = task.attack_model()
    fn = make_attack_loss(loss, None, 50, **args)
    inputs = ATTACK_LOSSES[loss].inputs
    x = Square(eps=EPS, steps=50, bounds=tuple(task.data_info.bounds))(
        model, batch["image"], batch, loss_fn=lambda o, b: fn(*task_loss_tensors(task, o, b, inputs)),
        generator=seeded_generator(0, 0, 0, 0))
    alone = task_metric(module, model, batch, x, metric)
    assert member == pytest.approx(alone, abs=1e-6), (member, alone)
    clean = task_metric(module, model, batch, batch["image"], metric)
    assert alone != pytest.approx(clean, abs=1e-3)  # the 50 queries did move the metric
