"""The suite's worst case is judged by the task metric (issue 22).

For every task, two suite members that *disagree*: member ``a`` has the higher per-sample loss
(and, where the task has one, trips the surrogate violation test) but leaves the task metric
better; member ``b`` has the lower loss but the worse metric. The evaluator must keep ``b`` on
every sample — the old rule ("violation, then the higher loss") kept ``a``. The members are
fixed inputs (no optimisation) fed to a model whose output is readable from its input, so the
premise of each test is checked exactly before the rule is.

Also: the per-sample metric functions on hand-built outputs, and the two new attack losses
(``dice``, ``expected_distance``).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from attacks import parse_attack_specs
from attacks.task_losses import ATTACK_LOSSES, make_attack_loss
from attacks.worst_case import Worst, badness, keep_worst
from callbacks.evaluation_loop import RobustnessEvaluator
from datamodules.info import DataInfo
from lightning_modules import ClassificationModule, SegmentationModule
from lightning_modules.detection_module import DetectionModule
from lightning_modules.landmark_module import LandmarkModule
from lightning_modules.metrics.detection import per_image_ap50
from lightning_modules.tasks import suite_configs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module
EPS = 1.0


class Fixed:
    """A stand-in suite member that returns a given ``x_adv`` (what an attack found)."""

    gradient_free = False
    last_gradients = None

    def __init__(self, x_adv: torch.Tensor) -> None:
        self.x_adv = x_adv

    def __call__(self, model: Any, x: torch.Tensor, target: Any = None, **kw: Any) -> torch.Tensor:
        return self.x_adv.clone()

    def describe(self) -> dict[str, Any]:
        return {"name": "fixed", "steps": 0}


def _run(module: Any, batch: dict[str, Any], xa: torch.Tensor, xb: torch.Tensor) -> Any:
    specs = parse_attack_specs([{"name": "pgd", "steps": 1, "label": "a"},
                                {"name": "pgd", "steps": 1, "label": "b"}], "attacks")
    ev = RobustnessEvaluator(module, specs, [EPS])
    ev.attacks[("a", EPS)], ev.attacks[("b", EPS)] = Fixed(xa), Fixed(xb)
    with torch.inference_mode(False), torch.enable_grad():
        ev.run_batch(0, batch)
    return ev.compute()


def _premise(module: Any, batch: dict[str, Any], xa: torch.Tensor, xb: torch.Tensor) -> None:
    """``a``: higher loss, better metric than ``b`` on every sample."""
    model = module.attack_model()
    with torch.no_grad():
        oa, ob = model(xa), model(xb)
    la, lb = module.per_sample_loss(oa, batch), module.per_sample_loss(ob, batch)
    assert bool((la > lb).all()), (la, lb)
    ma = badness(module.per_sample_metric(oa, batch), module.metric_higher_is_better())
    mb = badness(module.per_sample_metric(ob, batch), module.metric_higher_is_better())
    assert bool((mb > ma).all()), (ma, mb)


def _identity(module: Any) -> Any:
    module.net = nn.Identity()  # the output *is* the input: members pick the output directly
    module.eval()
    return module


# ---------------------------------------------------------------------- the rule
def test_keep_worst_prefers_the_worse_metric_over_the_higher_loss() -> None:
    best = Worst(torch.zeros(3, 1), torch.tensor([5.0, 5.0, 5.0]), badness(torch.tensor([0.8, 0.8, 0.8]), True))
    score = badness(torch.tensor([0.7, 0.8, 0.9]), True)  # worse | tie | better Dice
    worst, took = keep_worst(best, torch.ones(3, 1), torch.tensor([1.0, 9.0, 9.0]), score)
    assert took.tolist() == [True, True, False]  # metric first; the tie goes to the higher loss
    assert worst.loss.tolist() == [1.0, 9.0, 5.0]
    # lower-is-better metrics (radial error) are turned the other way; NaN never wins
    assert badness(torch.tensor([2.0, float("nan")]), False).tolist() == [2.0, -math.inf]


def test_classification_multilabel_keeps_the_member_with_fewer_labels_right() -> None:
    """Both members misclassify (violate); ``a`` has the higher loss with one label wrong,
    ``b`` gets two of three labels wrong: accuracy must fall to ``b``'s."""
    info = DataInfo(task="classification", in_channels=3, num_classes=3, multilabel=True,
                    bounds=(-20.0, 20.0), image_size=(1,))
    module = _identity(ClassificationModule(data_info=info))
    module.net = nn.Flatten()
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    sign = 2 * y - 1
    batch = {"image": 5 * sign[..., None], "label": y}  # clean: every label right
    xa = (sign * torch.tensor([1.0, 1.0, -12.0]))[..., None]   # one label confidently wrong
    xb = (sign * torch.tensor([-0.5, -0.5, 1.0]))[..., None]   # two labels barely wrong
    _premise(module, batch, xa, xb)
    out = _run(module, batch, xa, xb)
    assert out.ensemble[EPS]["accuracy"] == pytest.approx(out.attacks[("b", EPS)]["accuracy"])
    assert out.ensemble[EPS]["accuracy"] == pytest.approx(1 / 3)
    assert out.ensemble_rule == "task_metric_then_loss"


def test_classification_single_label_worst_case_is_the_misclassified_member() -> None:
    info = DataInfo(task="classification", in_channels=3, num_classes=3, bounds=(-20.0, 20.0), image_size=(1,))
    module = _identity(ClassificationModule(data_info=info))
    module.net = nn.Flatten()
    batch = {"image": 5 * torch.eye(3)[:2, :, None], "label": torch.tensor([0, 1])}
    xa = torch.tensor([[1.0, 0.9, 0.9], [0.9, 1.0, 0.9]])[..., None]   # right, unsure: CE ~1.0
    xb = torch.tensor([[1.0, 1.5, -9.0], [1.5, 1.0, -9.0]])[..., None]  # wrong by little: CE ~0.97
    _premise(module, batch, xa, xb)
    out = _run(module, batch, xa, xb)
    assert out.ensemble[EPS]["accuracy"] == 0.0


def test_segmentation_keeps_the_lower_dice_not_the_higher_loss() -> None:
    """``a`` flips one pixel of a 4-pixel lesion with a huge logit (high CE, Dice 0.857);
    ``b`` flips two lesion pixels barely (low CE, Dice 0.667). Neither is below the 0.5 Dice
    "violation" threshold, so the old rule kept ``a`` by its loss."""
    info = DataInfo(task="segmentation", in_channels=2, num_classes=2, bounds=(-50.0, 50.0), image_size=(4, 4))
    module = _identity(SegmentationModule(data_info=info))
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, 1:3, 1:3] = 1

    def logits(flips: list[tuple[int, int]], size: float) -> torch.Tensor:
        z = torch.zeros(1, 2, 4, 4)
        z[:, 1] = torch.where(mask.bool(), 3.0, -3.0)
        for i, j in flips:
            z[0, 1, i, j] = -size
        return z

    batch = {"image": logits([], 0.0), "mask": mask}  # clean: the mask itself
    xa, xb = logits([(1, 1)], 40.0), logits([(1, 1), (2, 2)], 0.05)
    _premise(module, batch, xa, xb)
    assert not bool(module.is_violated(module.attack_model()(xa), batch).any())
    out = _run(module, batch, xa, xb)
    assert out.ensemble[EPS]["dice"] == pytest.approx(out.attacks[("b", EPS)]["dice"])
    assert out.ensemble[EPS]["dice"] < out.attacks[("a", EPS)]["dice"] - 0.1


def test_landmarks_keep_the_larger_radial_error_not_the_higher_heatmap_loss() -> None:
    """``a`` raises the heatmaps everywhere (a large heatmap error that "violates", points
    unmoved); ``b`` moves each sharp peak 5 px (smaller heatmap error, MRE 5 px): the issue's
    landmark failure, where the suite reported its weakest member."""
    from lightning_modules.nets.heatmap import gaussian_heatmaps

    info = DataInfo(task="landmarks", in_channels=2, num_landmarks=2, bounds=(-5.0, 5.0), image_size=(24, 24))
    module = _identity(LandmarkModule(data_info=info, sigma=2.0))
    pts = torch.tensor([[[8.0, 8.0], [15.0, 12.0]]])
    vis = torch.ones(1, 2, dtype=torch.bool)
    batch = {"image": gaussian_heatmaps(pts, (24, 24), 2.0, vis), "landmarks": pts, "visible": vis,
             "spacing": torch.full((1,), float("nan"))}  # clean: the target heatmaps
    xa = gaussian_heatmaps(pts, (24, 24), 2.0, vis) + 0.5          # raised everywhere, peaks in place
    xb = gaussian_heatmaps(pts + torch.tensor([5.0, 0.0]), (24, 24), 2.0, vis)
    _premise(module, batch, xa, xb)
    model = module.attack_model()
    assert bool(module.is_violated(model(xa), batch).all())
    out = _run(module, batch, xa, xb)
    assert out.ensemble[EPS]["mre"] == pytest.approx(5.0, abs=0.05)
    assert out.attacks[("a", EPS)]["mre"] < 0.1


class _StubDetections:
    """A detector output read from the input ``x`` ``[B, 1, 1, 3]``: one box of class 0 at the
    ground truth shifted by ``x[..., 0]`` pixels with score ``x[..., 1]``; the loss is
    ``x[..., 2]``."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.family = _StubFamily()


class _StubFamily:
    """What the stub output's detector family reads from it (as a ``DetectorFamily``)."""

    def detached_detections(self, out: _StubDetections) -> list[dict[str, torch.Tensor]]:
        dets = []
        for v in out.x.detach().reshape(-1, 3):
            box = torch.tensor([[10.0, 10.0, 20.0, 20.0]]) + torch.tensor([v[0], 0.0, v[0], 0.0])
            dets.append({"boxes": box, "scores": v[1:2].clone(), "labels": torch.zeros(1, dtype=torch.long)})
        return dets

    def loss(self, out: _StubDetections, boxes: Any, labels: Any) -> torch.Tensor:
        return out.x.reshape(-1, 3)[:, 2]


class _StubModule(DetectionModule):
    def attack_model(self) -> nn.Module:
        class Net(nn.Module):
            def forward(self, x: torch.Tensor) -> _StubDetections:
                return _StubDetections(x)

        return Net()

    @staticmethod
    def _output(output: Any) -> Any:
        return output


def test_detection_keeps_the_lower_image_ap_not_the_higher_loss() -> None:
    """``a`` leaves the box on its object with a loss above the violation threshold (1.5);
    ``b`` moves the box off its object (IoU 1/3, AP@0.5 0) with a low loss."""
    info = DataInfo(task="detection", in_channels=1, num_classes=1, bounds=(-100.0, 100.0), image_size=(32, 32))
    module = _StubModule(data_info=info)
    module.eval()
    batch = {"image": torch.zeros(2, 1, 1, 3), "boxes": [torch.tensor([[10.0, 10.0, 20.0, 20.0]])] * 2,
             "labels": [torch.zeros(1, dtype=torch.long)] * 2}
    xa = torch.tensor([[0.0, 0.9, 3.0], [1.0, 0.8, 4.0]]).reshape(2, 1, 1, 3)
    xb = torch.tensor([[5.0, 0.9, 0.5], [6.0, 0.9, 0.2]]).reshape(2, 1, 1, 3)
    _premise(module, batch, xa, xb)
    assert bool(module.is_violated(_StubDetections(xa), batch).all())
    out = _run(module, batch, xa, xb)
    assert out.attacks[("a", EPS)]["map_50"] == pytest.approx(1.0)
    assert out.ensemble[EPS]["map_50"] == pytest.approx(0.0)


# ---------------------------------------------------------------------- per-sample metrics
def test_per_sample_metrics_on_hand_built_outputs() -> None:
    info = DataInfo(task="classification", in_channels=1, num_classes=3, image_size=(1,))
    cls = ClassificationModule(data_info=info)
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    assert cls.per_sample_metric(z, {"label": torch.tensor([0, 1])}).tolist() == [1.0, 0.0]
    assert cls.metric_higher_is_better()

    seg = SegmentationModule(data_info=DataInfo(task="segmentation", in_channels=1, num_classes=2,
                                                image_size=(2, 2)))
    logits = torch.zeros(2, 2, 2, 2)
    logits[:, 1] = torch.tensor([[5.0, 5.0], [-5.0, -5.0]])  # predicts the top row
    mask = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    # image 0: 1 pixel right of 2 predicted + 1 true → Dice 2/3; image 1: no lesion, 2 predicted → 0
    assert seg.per_sample_metric(logits, {"mask": mask}).tolist() == pytest.approx([2 / 3, 0.0])

    lmk = LandmarkModule(data_info=DataInfo(task="landmarks", in_channels=1, num_landmarks=2,
                                            image_size=(16, 16)), decode="argmax")
    heat = torch.zeros(1, 2, 16, 16)
    heat[0, 0, 4, 3] = 1.0   # (x, y) = (3, 4): 5 px from (0, 0)
    heat[0, 1, 9, 9] = 1.0   # on its truth
    batch = {"landmarks": torch.tensor([[[0.0, 0.0], [9.0, 9.0]]]), "visible": torch.tensor([[True, True]])}
    assert lmk.per_sample_metric(heat, batch).tolist() == pytest.approx([2.5])
    batch["visible"] = torch.tensor([[True, False]])
    assert lmk.per_sample_metric(heat, batch).tolist() == pytest.approx([5.0])
    assert not lmk.metric_higher_is_better()


def test_per_image_ap50_by_hand() -> None:
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([0, 0])}
    hit1, hit2 = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]
    miss = [50.0, 50.0, 60.0, 60.0]

    def pred(boxes: list[list[float]], scores: list[float], labels: list[int] | None = None) -> dict:
        return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores),
                "labels": torch.tensor(labels if labels is not None else [0] * len(scores))}

    ap = per_image_ap50(
        [pred([hit1, hit2], [0.9, 0.8]),            # both found, ranked first: 1
         pred([miss, hit1], [0.9, 0.8]),            # FP first, then one of two: P=1/2 at R=1/2 → 0.25
         pred([hit1, miss, hit2], [0.9, 0.8, 0.7]),  # 1·½ + (2/3)·½ = 5/6
         pred([], []),                              # nothing: 0
         pred([hit1, hit2], [0.9, 0.8], [1, 1])],   # right boxes, wrong class: 0
        [gt] * 5)
    assert ap.tolist() == pytest.approx([1.0, 0.25, 5 / 6, 0.0, 0.0])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    assert math.isnan(float(per_image_ap50([pred([hit1], [0.9])], [empty])[0]))


# ---------------------------------------------------------------------- new attack losses
def test_expected_distance_closed_forms() -> None:
    fn = make_attack_loss("expected_distance", None, 1)
    assert ATTACK_LOSSES["expected_distance"].task == "landmarks"
    h = w = 15
    truth = torch.tensor([[[7.0, 7.0, 1.0]]])
    delta = torch.full((1, 1, h, w), -10.0)
    delta[0, 0, 7, 7] = 10.0      # a sharp peak on the truth
    assert float(fn(delta, truth)) < 1e-6
    prev = 0.0
    for dx in (1, 3, 5):          # the peak moved dx pixels: the loss is dx, growing
        moved = torch.full((1, 1, h, w), -10.0)
        moved[0, 0, 7 + dx, 7] = 10.0  # y = 7 + dx
        d = float(fn(moved, truth))
        assert d == pytest.approx(dx, abs=1e-4) and d > prev
        prev = d
    # a flat heatmap: the mean distance of the grid from the truth (closed form on the grid)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    mean_d = ((xs - 7) ** 2 + (ys - 7) ** 2).sqrt().mean()
    assert float(fn(torch.zeros(1, 1, h, w), truth)) == pytest.approx(float(mean_d), rel=1e-5)
    # invisible landmarks do not count; the gradient flows to the heatmap
    two = torch.cat([delta, torch.zeros(1, 1, h, w)], dim=1).requires_grad_(True)
    labels = torch.tensor([[[7.0, 7.0, 1.0], [0.0, 0.0, 0.0]]])
    loss = fn(two, labels)
    assert float(loss) < 1e-6
    flat = torch.zeros(1, 1, h, w, requires_grad=True)
    (g,) = torch.autograd.grad(fn(flat, truth).sum(), flat)
    assert float(g[0, 0, 0, 0]) > 0 > float(g[0, 0, 7, 7])  # raise mass far away, lower it on the truth
    with pytest.raises(ValueError, match="beta must be > 0"):
        make_attack_loss("expected_distance", None, 1, beta=0.0)


def test_dice_attack_loss_is_one_minus_soft_dice() -> None:
    fn = make_attack_loss("dice", None, 1)
    assert ATTACK_LOSSES["dice"].task == "segmentation"
    mask = torch.tensor([[[1, 1], [0, 0]]])
    perfect = torch.zeros(1, 2, 2, 2)
    perfect[:, 1] = torch.tensor([[30.0, 30.0], [-30.0, -30.0]])
    assert float(fn(perfect, mask)) == pytest.approx(0.0, abs=1e-4)
    assert float(fn(-perfect, mask)) == pytest.approx(1.0, abs=1e-4)
    half = torch.zeros(1, 2, 2, 2)  # p(lesion) = 0.5 everywhere: Dice = 2·1 / (2 + 2) = 0.5
    assert float(fn(half, mask)) == pytest.approx(0.5, abs=1e-4)


def test_standard_suites_gain_the_metric_type_members() -> None:
    seg = [c["label"] for c in suite_configs("standard", "segmentation")]
    lmk = [c["label"] for c in suite_configs("quick", "landmarks")]
    assert "apgd-dice" in seg and "apgd-expected_distance" in lmk
    assert all(c["steps"] == 100 for c in suite_configs("standard", "landmarks") if c["name"] == "apgd")


def test_adapter_per_sample_metric_default_custom_and_missing() -> None:
    from torchmetrics.classification import MulticlassAccuracy

    from callbacks import RobustTaskAdapter

    owner = nn.Module()
    net = nn.Flatten()
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    y = torch.tensor([0, 1])
    cls = RobustTaskAdapter(owner, model=net, per_sample_loss=lambda o, t: o.sum(dim=1),
                            metrics={"accuracy": MulticlassAccuracy(num_classes=3)})
    assert cls.per_sample_metric(z, {"image": z, "label": y}).tolist() == [1.0, 0.0]
    custom = RobustTaskAdapter(owner, model=net, per_sample_loss=lambda o, t: o.sum(dim=1),
                               metrics={"accuracy": MulticlassAccuracy(num_classes=3)},
                               per_sample_metric=lambda o, t: o[:, 0])
    assert custom.per_sample_metric(z, {"image": z, "label": y}).tolist() == [2.0, 0.0]
    bad = RobustTaskAdapter(owner, model=net, per_sample_loss=lambda o, t: o.sum(dim=1),
                            metrics={"accuracy": MulticlassAccuracy(num_classes=3)},
                            per_sample_metric=lambda o, t: o)
    with pytest.raises(ValueError, match="per_sample_metric must return a Tensor"):
        bad.per_sample_metric(z, {"image": z, "label": y})
    seg = RobustTaskAdapter(owner, model=net, per_sample_loss=lambda o, t: o.sum(dim=1),
                            metrics={"accuracy": MulticlassAccuracy(num_classes=3)}, task="segmentation")
    with pytest.raises(ValueError, match="pass per_sample_metric"):
        seg.per_sample_metric(z, {"image": z, "label": y})
