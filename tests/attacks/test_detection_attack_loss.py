"""Detection attack losses on torchvision detectors: TOG-vanishing (Chow et al. 2020) and DAG
(Xie et al. 2017) — shapes, gradients, registry / suite entries, and DAG's claim: it lowers
mAP@0.5 (the detection main metric) more than PGD on the training loss at the same budget.

Vanishing's claim is its own: it silences the detector (fewer confident detections than PGD on
the training loss); on a trained tiny FCOS it lowers mAP, mAP@0.5 and recall less than PGD, so
it is not a member of the worst-case suites (docs/attacks.md).

The trained detector of the comparison is trained inside its fixture by a plain loop under its
own RNG state (``torch.random.fork_rng`` + ``manual_seed``, deterministic algorithms, data in a
fixed order), so it is the same model whatever ran before it (the Lightning-trained fixture of
``test_detection.py`` depended on test order).
"""

from __future__ import annotations

import pytest
import torch

from attacks import APGD, PGD
from attacks.spec import parse_attack_specs
from attacks.task_losses import ATTACK_LOSSES, make_attack_loss
from benchmarks.common import fit_plain
from callbacks.attack_loss import task_loss_tensors
from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules.detection_module import DetectionModule
from lightning_modules.tasks import suite_configs
from tests.lightning_modules.test_detection import TINY_FCOS, TINY_RCNN, _batch, _info


def _vanishing_fn(module: DetectionModule, steps: int):
    fn = make_attack_loss("vanishing", None, steps)
    return lambda out, batch: fn(*task_loss_tensors(module, out, batch))


def test_vanishing_is_registered_but_not_in_the_worst_case_suites() -> None:
    """A named loss for object-vanishing studies; out of the suites, since it raises no task
    error more than PGD on the training loss (see the comparison test below)."""
    assert ATTACK_LOSSES["vanishing"].task == "detection"
    for suite in ("standard", "quick"):
        assert all(c.get("loss") != "vanishing" for c in suite_configs(suite, "detection"))
    specs = parse_attack_specs([{"name": "apgd", "steps": 5, "loss": "vanishing"}], "x")
    assert specs[0].loss == "vanishing"
    with pytest.raises(ValueError, match="score_thresh"):
        make_attack_loss("vanishing", None, 5, score_thresh=1.5)


def test_vanishing_loss_values() -> None:
    """``Σ log(1 − s)`` over scores ``>= score_thresh``; 0 for an image with no detection."""
    fn = make_attack_loss("vanishing", None, 1, score_thresh=0.1)
    scores = torch.tensor([[0.5, 0.05, 0.0], [0.0, 0.0, 0.0]])
    out = fn(scores, torch.full((2, 3), -1))
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(torch.log(torch.tensor(0.5)).item())
    assert out[1].item() == 0.0


@pytest.mark.parametrize("path", [TINY_FCOS, TINY_RCNN])
def test_vanishing_loss_shape_and_gradient(path: str) -> None:
    """On torchvision FCOS and Faster R-CNN: ``[B]``, finite, gradient finite w.r.t. the image;
    on FCOS the score threshold lets the untrained detector output something, so the gradient is
    also nonzero there."""
    init = {"score_thresh": 0.0} if path == TINY_FCOS else {"box_score_thresh": 0.0}
    module = DetectionModule(data_info=_info(), net={"class_path": path, "init_args": init}).eval()
    batch = _batch()
    x = batch["image"].clone().requires_grad_(True)
    loss = make_attack_loss("vanishing", None, 1, score_thresh=0.0)(*task_loss_tensors(module, module(x), batch))
    assert loss.shape == (x.shape[0],) and torch.isfinite(loss).all()
    assert (loss <= 0).all()
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_evaluator_runs_a_vanishing_spec_with_live_gradients() -> None:
    """A ``loss: vanishing`` spec reaches the attack through the evaluator's task tensors, and
    every attacked image gets a finite, nonzero input gradient."""
    from callbacks.evaluation_loop import RobustnessEvaluator

    module = DetectionModule(data_info=_info(), net={"class_path": TINY_FCOS,
                                                     "init_args": {"score_thresh": 0.0}}).eval()
    specs = parse_attack_specs([{"name": "apgd", "steps": 2, "loss": "vanishing"}], "t")
    ev = RobustnessEvaluator(module, specs, [0.01])
    ev.run_batch(0, _batch())
    grads = ev.compute().gradients[("apgd-vanishing", 0.01)]
    assert grads == {"attacked": 3, "nonfinite": 0, "zero": 0}


# ----------------------------------------------------------------------------- DAG
def test_dag_is_registered_and_in_the_detection_suite() -> None:
    assert ATTACK_LOSSES["dag"].task == "detection" and ATTACK_LOSSES["dag"].inputs == "matched"
    assert any(c.get("loss") == "dag" for c in suite_configs("standard", "detection"))
    assert parse_attack_specs([{"name": "apgd", "steps": 5, "loss": "dag"}], "x")[0].loss == "dag"
    with pytest.raises(ValueError, match="target_shift"):
        make_attack_loss("dag", None, 5, target_shift=0)
    with pytest.raises(ValueError, match="box_weight"):
        make_attack_loss("dag", None, 5, box_weight=-1)
    with pytest.raises(ValueError, match=r"\[B, L, K \+ 4\]"):
        make_attack_loss("dag", None, 5)(torch.zeros(2, 3), torch.zeros(2, 3))


def test_dag_loss_values() -> None:
    """Per image: mean over matched locations of ``min(z_t − z_y, κ) + w·(1 − IoU)``, target
    ``t = (y + shift) mod K``; unmatched locations (class -1) are ignored; no match → 0."""
    box = [0.0, 0.0, 10.0, 10.0]
    half = [0.0, 0.0, 10.0, 5.0]  # IoU 0.5 with `box`
    pred = torch.tensor([[[3.0, 1.0, 0.0, *box], [0.0, 9.0, 0.0, *half], [5.0, 5.0, 5.0, *box]],
                         [[1.0, 2.0, 3.0, *box], [0.0, 0.0, 0.0, *box], [0.0, 0.0, 0.0, *box]]])
    target = torch.tensor([[[0.0, *box], [0.0, *box], [-1.0, 0, 0, 0, 0]],
                           [[-1.0, 0, 0, 0, 0]] * 3])
    fn = make_attack_loss("dag", None, 1, kappa=5.0, box_weight=2.0)
    out = fn(pred, target)
    # location 0: z_1 − z_0 = −2, IoU 1; location 1: z_1 − z_0 = 9 → clipped at 5, IoU 0.5
    assert out[0].item() == pytest.approx(((-2 + 0) + (5 + 2 * 0.5)) / 2)
    assert out[1].item() == 0.0
    # shift None: the highest other class; κ = 0: DAG's active set (flipped locations give 0)
    fn = make_attack_loss("dag", None, 1, target_shift=None, kappa=0.0, box_weight=0.0)
    assert fn(pred, target)[0].item() == pytest.approx((-2 + 0) / 2)
    # one sigmoid class: the target logit is 0
    one = make_attack_loss("dag", None, 1, box_weight=0.0)
    assert one(pred[:1, :1, [0, 3, 4, 5, 6]], target[:1, :1]).item() == pytest.approx(-3.0)


@pytest.mark.parametrize("path", [TINY_FCOS, TINY_RCNN])
def test_dag_inputs_shape_and_gradient(path: str) -> None:
    """The matched inputs on FCOS and Faster R-CNN: ``[B, L, K + 4]`` / ``[B, L, 5]``, the
    image without objects has no match, matched classes are GT classes in the head's index
    space; the DAG loss is finite with a finite, nonzero input gradient. (The untrained RPN's
    proposals rarely reach IoU 0.5 with a GT box, so Faster R-CNN matches at IoU 0.05 here.)"""
    module = DetectionModule(data_info=_info(), net={"class_path": path}).eval()
    batch = _batch()
    x = batch["image"].clone().requires_grad_(True)
    if path == TINY_FCOS:
        pred, target = task_loss_tensors(module, module(x), batch, "matched")
    else:
        out = module(x)
        pred, target = out.family.matched_predictions(out, batch["boxes"], batch["labels"], iou_thresh=0.05)
    offset = module.net.label_offset
    k = module.num_classes + offset
    assert pred.shape[0] == 3 and pred.shape[2] == k + 4 and target.shape == (*pred.shape[:2], 5)
    cls = target[..., 0]
    assert (cls[1] == -1).all()  # image 1 has no objects
    for i in (0, 2):
        assert (cls[i] >= 0).any()
        assert set(cls[i][cls[i] >= 0].long().tolist()) <= {int(v) + offset for v in batch["labels"][i]}
    loss = make_attack_loss("dag", None, 1)(pred, target)
    assert loss.shape == (3,) and torch.isfinite(loss).all() and loss[1] == 0
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    with pytest.raises(ValueError, match="inputs"):
        task_loss_tensors(module, module(x), batch, "dense")


def test_dag_inputs_on_retinanet() -> None:
    """RetinaNet (anchors matched at IoU >= the threshold, boxes decoded with its coder): the
    matched inputs have the documented shapes and the DAG loss reaches the image."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from lightning_modules.nets.detectors import DetectorWrapper, TinyBackbone

    torch.manual_seed(0)
    det = RetinaNet(TinyBackbone(3, (16, 32), 64), num_classes=3, min_size=64, max_size=64,
                    anchor_generator=AnchorGenerator(sizes=((8, 16),), aspect_ratios=((0.5, 1.0, 2.0),)),
                    image_mean=[0.0] * 3, image_std=[1.0] * 3)
    wrapper = DetectorWrapper(det).eval()
    batch = _batch()
    x = batch["image"].clone().requires_grad_(True)
    out = wrapper(x)
    pred, target = out.family.matched_predictions(out, batch["boxes"], batch["labels"], iou_thresh=0.3)
    assert pred.shape == (3, 64 // 4 * 64 // 4 * 6, 3 + 4) and target.shape == (*pred.shape[:2], 5)
    matched = target[..., 0] >= 0
    assert matched[0].any() and matched[2].any() and not matched[1].any()
    loss = make_attack_loss("dag", None, 1)(pred, target)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_evaluator_runs_a_dag_spec() -> None:
    from callbacks.evaluation_loop import RobustnessEvaluator

    module = DetectionModule(data_info=_info(), net={"class_path": TINY_FCOS}).eval()
    specs = parse_attack_specs([{"name": "apgd", "steps": 2, "loss": "dag"}], "t")
    ev = RobustnessEvaluator(module, specs, [0.01])
    ev.run_batch(0, _batch())
    grads = ev.compute().gradients[("apgd-dag", 0.01)]
    assert grads["attacked"] == 3 and grads["nonfinite"] == 0


def _train_tiny_fcos(steps: int = 300, seed: int = 0) -> tuple[DetectionModule, dict]:
    """A tiny FCOS trained by a plain AdamW loop, under its own seeded RNG state, with
    deterministic algorithms and one CPU thread (the thread count changes the float reduction
    order, and over 300 steps that gives a different model), on synthetic cells in a fixed
    order; and a 32-image val batch."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            dm = SyntheticDataModule(task="detection", num_train=480, num_val=32, num_test=8,
                                     image_size=(64, 64), in_channels=3, batch_size=8, seed=0)
            dm.setup("fit")
            module = DetectionModule(data_info=dm.info, net={
                "class_path": TINY_FCOS, "init_args": {"widths": [16, 32], "out_channels": 32}})
            train = dm.dataset("train")
            fit_plain(module, (collate_batch([train[(step * 8 + i) % len(train)] for i in range(8)])
                               for step in range(steps)),
                      torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=1e-4))
            val = dm.dataset("val")
            batch = collate_batch([val[i] for i in range(len(val))])
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)
    return module, batch


@pytest.fixture(scope="module")
def trained_fcos() -> tuple[DetectionModule, dict]:
    return _train_tiny_fcos()


def test_dag_lowers_map_more_than_pgd_on_the_training_loss(trained_fcos, one_thread) -> None:
    """At ε = 0.02 (L∞), 10 steps, same step rule: PGD on DAG lowers mAP@0.5 of a trained tiny
    FCOS far more than PGD on the detector's training loss (measured 0.68 clean → 0.43 PGD →
    0.25 DAG), and APGD on DAG is at least as strong as PGD on DAG.

    Not claimed for every trained model: over five tiny FCOS (seeds 0–3 and seed 0 trained with
    two threads) DAG lowered mAP@0.5 more than PGD on four, by 0.015–0.18, and less on one (0.28
    vs 0.25); see docs/attacks.md. This test pins one model (seed 0, one thread)."""
    module, batch = trained_fcos
    model, x, eps = module.attack_model(), batch["image"], 0.02
    maps: dict[str, float] = {}

    def map50(x_adv: torch.Tensor) -> float:
        metrics = module.build_metrics()
        with torch.no_grad():
            module.update_metrics(metrics, model(x_adv), batch)
        values = metrics.compute()
        maps[len(maps)] = float(values[module.main_metric])  # mAP 0.5:0.95, the main metric
        return float(values["map_50"])

    def attacked(attack, name: str | None) -> float:
        loss = module.per_sample_loss
        if name is not None:
            fn = make_attack_loss(name, None, 10)
            inputs = ATTACK_LOSSES[name].inputs
            loss = lambda o, b: fn(*task_loss_tensors(module, o, b, inputs))  # noqa: E731
        return map50(attack(model, x, batch, loss_fn=loss, generator=torch.Generator().manual_seed(0)))

    clean = map50(x)
    pgd = attacked(PGD(eps=eps, steps=10), None)
    dag = attacked(PGD(eps=eps, steps=10), "dag")
    apgd_dag = attacked(APGD(eps=eps, steps=10), "dag")
    assert clean > 0.5, clean  # the fixture did learn
    assert pgd < clean, (clean, pgd)
    assert dag < pgd - 0.1, (clean, pgd, dag)
    assert apgd_dag <= dag + 0.02, (dag, apgd_dag)
    # the main metric (mAP 0.5:0.95) too: measured 0.43 clean, 0.12 PGD, 0.08 DAG
    assert module.main_metric == "map" and maps[2] < maps[1] - 0.02, maps


def test_vanishing_silences_the_detector_more_than_pgd(trained_fcos, one_thread) -> None:
    """TOG-vanishing's own claim at ε = 0.02, PGD-10: fewer detections of score >= 0.5 than
    clean and than PGD on the training loss (measured 51 clean, 128 PGD — it adds confident
    false boxes — and 35 vanishing)."""
    module, batch = trained_fcos
    model, x = module.attack_model(), batch["image"]

    def confident(x_adv: torch.Tensor) -> int:
        with torch.no_grad():
            out = module._output(model(x_adv))
            dets = out.family.detections(out)
        return sum(int((d["scores"] >= 0.5).sum()) for d in dets)

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pgd = PGD(eps=0.02, steps=10)(model, x, batch, loss_fn=module.per_sample_loss, generator=gen())
    van = PGD(eps=0.02, steps=10)(model, x, batch, loss_fn=_vanishing_fn(module, 10), generator=gen())
    clean_n, pgd_n, van_n = confident(x), confident(pgd), confident(van)
    assert van_n < 0.8 * clean_n and van_n < 0.5 * pgd_n, (clean_n, pgd_n, van_n)
