"""Segmentation module: 2-D and 3-D, Dice/IoU metrics, violation test, divergence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.info import DataInfo
from lightning_modules import AMAT, SegmentationModule
from lightning_modules.segmentation_module import DiceIoU, hard_overlap

TINY_UNET = {"class_path": "lightning_modules.nets.SmallUNet", "init_args": {"features": [4, 8]}}


def info(dims: int = 2, k: int = 3) -> DataInfo:
    return DataInfo(task="segmentation", in_channels=1, spatial_dims=dims, image_size=(8,) * dims,
                    num_classes=k, num_train=4, class_names=["background", "lesion", "core"][:k])


def test_hard_overlap_known_values() -> None:
    target = torch.tensor([[[0, 1, 1, 0], [0, 0, 2, 2]]])  # [1, 2, 4]
    pred = torch.tensor([[[0, 1, 0, 0], [0, 0, 2, 2]]])
    dice, iou = hard_overlap(pred, target, 3)
    assert dice.shape == (1, 3)
    assert math.isclose(float(dice[0, 1]), 2 * 1 / (1 + 2), rel_tol=1e-6)
    assert math.isclose(float(iou[0, 1]), 1 / 2, rel_tol=1e-6)
    assert float(dice[0, 2]) == 1.0 and float(iou[0, 2]) == 1.0
    # a class absent from both prediction and target is undefined, not 0 or 1
    dice, _ = hard_overlap(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), 3)
    assert torch.isnan(dice[0, 1:]).all()


def test_hard_overlap_equals_one_hot_counts_and_rejects_bad_indices() -> None:
    """The confusion-count Dice/IoU equals the one-hot definition on random 2-D and 3-D maps,
    and a class index outside [0, K) is an error (a scatter would silently miscount it)."""
    g = torch.Generator().manual_seed(0)
    for shape, k in (((4, 9, 7), 3), ((2, 5, 6, 4), 4)):
        pred, target = torch.randint(0, k, shape, generator=g), torch.randint(0, k, shape, generator=g)
        target[0] = 0  # a sample where foreground classes are absent from the target
        p = F.one_hot(pred.reshape(shape[0], -1), k).bool()
        t = F.one_hot(target.reshape(shape[0], -1), k).bool()
        inter, ps, ts = (p & t).sum(1).float(), p.sum(1).float(), t.sum(1).float()
        want_dice = torch.where(ps + ts > 0, 2 * inter / (ps + ts).clamp_min(1), torch.nan)
        dice, iou = hard_overlap(pred, target, k)
        torch.testing.assert_close(dice, want_dice, equal_nan=True)
        torch.testing.assert_close(iou, torch.where(ps + ts - inter > 0, inter / (ps + ts - inter), torch.nan),
                                   equal_nan=True)
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 2\]"):
        hard_overlap(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]), 3)


def test_class_argmax_equals_argmax() -> None:
    """The CPU fast path gives argmax's answer: first maximum on ties, NaN maps, 3-D maps."""
    from attacks.losses import class_argmax

    g = torch.Generator().manual_seed(1)
    for shape in ((3, 2, 8, 8), (2, 5, 4, 3, 6), (4, 3, 5, 5)):
        z = torch.randn(*shape, generator=g)
        z[0, 1] = z[0, 0]  # exact ties: the lower class wins
        assert torch.equal(class_argmax(z), z.argmax(dim=1))
        z.view(-1)[::7] = float("nan")
        assert torch.equal(class_argmax(z), z.argmax(dim=1))
    ints = torch.randint(0, 3, (4, 3, 6, 6), generator=g).float()  # many ties
    assert torch.equal(class_argmax(ints), ints.argmax(dim=1))


def test_dice_iou_metric_means_over_images_and_foreground() -> None:
    metric = DiceIoU(3, ["background", "lesion", "core"])
    t = torch.tensor([[0, 1, 1, 2], [0, 1, 1, 0]])
    p = torch.tensor([[0, 1, 1, 2], [0, 1, 0, 0]])
    metric.update(p, t)
    out = metric.compute()
    lesion = (1.0 + 2 * 1 / 3) / 2
    assert math.isclose(float(out["dice_lesion"]), lesion, rel_tol=1e-6)
    assert math.isclose(float(out["dice_core"]), 1.0)  # only the first image has a core
    assert math.isclose(float(out["dice"]), (lesion + 1.0) / 2, rel_tol=1e-6)
    assert "iou" in out and "dice_background" in out


@pytest.mark.parametrize("dims", [2, 3])
def test_segmentation_module_2d_3d(dims: int) -> None:
    m = SegmentationModule(net=TINY_UNET, data_info=info(dims))
    x = torch.rand(2, 1, *(8,) * dims)
    mask = torch.randint(0, 3, (2, *(8,) * dims))
    b = {"image": x, "mask": mask, "index": torch.arange(2)}
    out = m(x)
    assert out.shape == (2, 3, *(8,) * dims)
    loss = m.per_sample_loss(out, b)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    perfect = F.one_hot(mask, 3).movedim(-1, 1).float() * 30
    assert torch.allclose(m.violation_statistic(perfect, b), torch.ones(2))
    assert not m.is_violated(perfect, b).any()
    assert m.is_violated(-perfect, b).all()  # every pixel wrong: Dice 0 < default 0.5
    assert m.is_violated(perfect, b, threshold=1.01).all()  # explicit threshold wins
    div = m.output_divergence(out, out)
    assert div.shape == (2,) and torch.allclose(div, torch.zeros(2), atol=1e-6)
    metrics = m.build_metrics()
    m.update_metrics(metrics, perfect, b)
    values = metrics.compute()
    assert float(values["dice"]) == 1.0 and float(values["iou"]) == 1.0
    assert m.predict_for_display(out)["mask"].shape == mask.shape


def test_segmentation_amat_step_with_threshold() -> None:
    """AMAT on segmentation: warm-up step (no threshold yet), then a threshold from the clean
    Dice statistics, then an adversarial step."""
    m = SegmentationModule(net=TINY_UNET, data_info=info(), method=AMAT(attack={"steps": 2}, delta=0.1))
    b = {"image": torch.rand(4, 1, 8, 8), "mask": torch.randint(0, 3, (4, 8, 8)),
         "index": torch.arange(4)}
    m.method.on_train_epoch_start(m)
    loss, logs = m.method.training_loss(m, b)
    assert logs.get("warmup") == 1.0 and torch.isfinite(loss)
    logs = m.method.on_train_epoch_end(m)
    assert "threshold" in logs and 0.0 <= logs["threshold"] <= 1.0
    assert torch.equal(m.method.margins, torch.full((4,), 0.1))  # no update in warm-up
    m.method.on_train_epoch_start(m)
    loss, logs = m.method.training_loss(m, b)
    assert "violated" in logs and torch.isfinite(loss)
    loss.backward()


def test_dice_iou_from_torchmetrics_match_the_per_image_definition() -> None:
    """DiceIoU (torchmetrics DiceScore / MeanIoU) equals the per-image mean of hard_overlap,
    skipping absent classes; a class never seen reads NaN, not MeanIoU's -1."""
    from lightning_modules.segmentation_module import DiceIoU, hard_overlap

    g = torch.Generator().manual_seed(0)
    for shape in [(3, 8, 8), (2, 4, 6, 6)]:  # 2-D and 3-D
        pred = torch.randint(0, 3, shape, generator=g)
        target = torch.randint(0, 3, shape, generator=g)
        target[0][target[0] == 2] = 1
        pred[0][pred[0] == 2] = 0  # class 2 absent from sample 0; class 3 never present
        metric = DiceIoU(4, ["bg", "a", "b", "never"])
        metric.update(pred[:1], target[:1])
        metric.update(pred[1:], target[1:])
        out = metric.compute()
        dice, iou = hard_overlap(pred, target, 4)
        for k, name in enumerate(["bg", "a", "b"]):
            assert out[f"dice_{name}"].item() == pytest.approx(dice[:, k].nanmean().item(), abs=1e-6)
            assert out[f"iou_{name}"].item() == pytest.approx(iou[:, k].nanmean().item(), abs=1e-6)
        assert torch.isnan(out["dice_never"]) and torch.isnan(out["iou_never"])
        assert out["iou"].item() == pytest.approx(iou[:, 1:3].nanmean(dim=0).mean().item(), abs=1e-6)
