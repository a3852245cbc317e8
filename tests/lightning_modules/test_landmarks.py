"""Landmark detection: heatmaps, sub-pixel decoding, metrics, the task module and learning.

Fast unit tests first (closed-form values), then one seeded short training run on the synthetic
skull landmarks shared (module scope) by the learning and attack tests.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import yaml
from torchmetrics.utilities.data import dim_zero_sum

from attacks import PGD
from attacks.losses import loss_above
from datamodules.synthetic import SyntheticDataModule
from lightning_modules.landmark_module import LandmarkModule
from lightning_modules.methods import AMAT, SAT, TRADES
from lightning_modules.metrics.landmarks import MeanRadialError, SuccessDetectionRate
from lightning_modules.nets.builder import import_object
from lightning_modules.nets.heatmap import (
    CoordinateRegressionHead,
    decode_heatmaps,
    default_beta,
    default_window,
    gaussian_heatmaps,
    hard_argmax,
    masked_heatmap_loss,
    soft_argmax,
)
from tests.conftest import PROJECT_ROOT
from tests.support.task_checks import (
    assert_method_step_trains,
    checkpoint_round_trip,
    first_val_batch,
    fit_briefly,
    metric_at,
)

SIZE = 32


# ----------------------------------------------------------------------------- heatmaps
def test_gaussian_heatmap_peak_shape_and_invisible() -> None:
    pts = torch.tensor([[[5.0, 7.0], [20.0, 3.0], [float("nan"), 1.0]]])
    vis = torch.tensor([[True, False, True]])
    h = gaussian_heatmaps(pts, (16, 24), sigma=2.0, visible=vis)
    assert h.shape == (1, 3, 16, 24)
    assert h[0, 0, 7, 5] == pytest.approx(1.0)  # (x=5, y=7) is pixel [row 7, col 5]
    assert h[0, 0].max() == pytest.approx(1.0)
    assert h[0, 0, 7, 7] == pytest.approx(math.exp(-4 / 8))  # 2 px away: exp(-d²/2σ²)
    assert torch.count_nonzero(h[0, 1]) == 0  # invisible
    assert torch.count_nonzero(h[0, 2]) == 0  # non-finite coordinates
    assert float(h.min()) >= 0.0


@pytest.mark.parametrize("point", [(10.3, 12.7), (3.4, 25.25), (28.9, 1.1)])
def test_soft_argmax_recovers_subpixel_peak(point: tuple[float, float]) -> None:
    pts = torch.tensor([[point]])
    h = gaussian_heatmaps(pts, (SIZE, SIZE), sigma=2.0)
    local = soft_argmax(h, beta=default_beta(2.0), window=default_window(2.0))
    assert torch.allclose(local, pts, atol=0.03), local
    # Whole-image soft-argmax gets close once the temperature makes the peak outweigh the
    # background (which pulls towards the image centre) without aliasing to pixel centres.
    glob = soft_argmax(h, beta=15.0)
    assert torch.allclose(glob, pts, atol=0.06), glob
    # Hard argmax only gets the nearest pixel (the reason for sub-pixel decoding).
    assert torch.allclose(hard_argmax(h), pts.round(), atol=1e-6)


def test_soft_argmax_low_temperature_is_biased_to_centre_without_window() -> None:
    """Documents why the default decoder is local: background pixels pull a whole-image
    soft-argmax towards the image centre at low beta; the window removes the bias."""
    pts = torch.tensor([[[5.0, 6.0]]])
    h = gaussian_heatmaps(pts, (SIZE, SIZE), sigma=2.0)
    biased = soft_argmax(h, beta=5.0)
    assert (biased - pts).norm() > 3.0
    assert (soft_argmax(h, beta=5.0, window=4) - pts).norm() < 0.05


def test_decode_methods_and_gradient() -> None:
    pts = torch.tensor([[[10.25, 4.5], [3.0, 29.0]]])
    h = gaussian_heatmaps(pts, (SIZE, SIZE), 2.0).requires_grad_(True)
    for method in ("local_soft_argmax", "soft_argmax"):
        out = decode_heatmaps(h, method, beta=12.0, window=3)
        assert torch.allclose(out, pts, atol=0.05)
        (g,) = torch.autograd.grad(out.sum(), h)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.allclose(decode_heatmaps(h, "argmax"), pts.round())
    with pytest.raises(ValueError, match="decode method"):
        decode_heatmaps(h, "median")


def test_masked_heatmap_loss_ignores_invisible_landmarks() -> None:
    pts = torch.tensor([[[8.0, 8.0], [20.0, 20.0]], [[5.0, 5.0], [9.0, 9.0]]])
    target = gaussian_heatmaps(pts, (SIZE, SIZE), 2.0)
    pred = target.clone()
    pred[0, 1] += 1.0  # wrong everywhere, but landmark (0, 1) is invisible
    pred[1, 0] += 0.5
    vis = torch.tensor([[True, False], [True, True]])
    loss = masked_heatmap_loss(pred, target, vis)
    assert loss.shape == (2,)
    assert loss[0] == pytest.approx(0.0)
    assert loss[1] == pytest.approx(0.25 / 2)  # MSE 0.25 on one of two visible channels
    none_visible = masked_heatmap_loss(pred, target, torch.zeros(2, 2, dtype=torch.bool))
    assert torch.equal(none_visible, torch.zeros(2))


def test_regression_head_stays_in_image() -> None:
    head = CoordinateRegressionHead(3)
    out = head(torch.randn(2, 3, 20, 30) * 10)
    assert out.shape == (2, 3, 2)
    assert (out[..., 0] >= 0).all() and (out[..., 0] <= 29).all()
    assert (out[..., 1] >= 0).all() and (out[..., 1] <= 19).all()


# ----------------------------------------------------------------------------- metrics
def _toy_errors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two images, two landmarks; radial errors 3 (3-4-5 triangle: 5), 1, 2 and an invisible
    point with a huge error."""
    target = torch.zeros(2, 2, 2)
    preds = torch.tensor([[[3.0, 4.0], [1.0, 0.0]], [[0.0, 2.0], [100.0, 100.0]]])
    visible = torch.tensor([[True, True], [True, False]])
    return preds, target, visible


def test_mre_and_sdr_closed_form_pixels() -> None:
    preds, target, visible = _toy_errors()
    mre = MeanRadialError(2, "px", per_landmark=True)
    mre.update(preds, target, visible)
    out = mre.compute()
    assert out["mre"] == pytest.approx((5 + 1 + 2) / 3)
    assert out["mre_l1"] == pytest.approx((5 + 2) / 2)
    assert out["mre_l2"] == pytest.approx(1.0)
    sdr = SuccessDetectionRate(2, radii=[2.0, 2.5, 5.0], unit="px", per_landmark=True)
    sdr.update(preds, target, visible)
    s = sdr.compute()
    assert s["sdr_2px"] == pytest.approx(2 / 3)  # errors 1 and 2 are within 2 px (inclusive)
    assert s["sdr_2_5px"] == pytest.approx(2 / 3)
    assert s["sdr_5px"] == pytest.approx(1.0)
    assert s["sdr_2px_l1"] == pytest.approx(0.5)
    assert torch.allclose(sdr.per_landmark_values()[0], torch.tensor([0.5, 1.0]))


def test_mm_metrics_use_spacing_and_nan_spacing_is_excluded() -> None:
    preds, target, visible = _toy_errors()
    spacing = torch.tensor([0.5, float("nan")])
    mre_mm = MeanRadialError(2, "mm")
    mre_mm.update(preds, target, visible, spacing)
    assert mre_mm.compute()["mre_mm"] == pytest.approx((5 + 1) * 0.5 / 2)
    sdr_mm = SuccessDetectionRate(2, radii=[2.0, 2.5], unit="mm")
    sdr_mm.update(preds, target, visible, spacing)
    s = sdr_mm.compute()
    assert s["sdr_2mm"] == pytest.approx(0.5) and s["sdr_2_5mm"] == pytest.approx(1.0)
    # No spacing at all: mm metrics are undefined (NaN), pixel metrics unaffected.
    unknown = MeanRadialError(2, "mm")
    unknown.update(preds, target, visible, torch.full((2,), float("nan")))
    assert math.isnan(float(unknown.compute()["mre_mm"]))
    with pytest.raises(ValueError, match="spacing"):
        MeanRadialError(2, "mm").update(preds, target, visible)


def test_metric_states_merge_like_ddp() -> None:
    """States are sums (dist_reduce_fx="sum"): two ranks merged equal one process."""
    torch.manual_seed(1)
    preds, target = torch.rand(10, 3, 2) * 20, torch.rand(10, 3, 2) * 20
    visible = torch.rand(10, 3) > 0.2
    for make in (lambda: MeanRadialError(3), lambda: SuccessDetectionRate(3, unit="px")):
        whole, a, b = make(), make(), make()
        whole.update(preds, target, visible)
        a.update(preds[:4], target[:4], visible[:4])
        b.update(preds[4:], target[4:], visible[4:])
        assert all(fx is dim_zero_sum for fx in whole._reductions.values())
        a.merge_state(b)
        for key, value in whole.compute().items():
            assert torch.allclose(a.compute()[key], value), key


# ----------------------------------------------------------------------------- the module
def _info(num_landmarks: int = 3, spacing: float | None = None):
    dm = SyntheticDataModule(task="landmarks", num_train=8, num_val=4, num_test=4,
                             image_size=(SIZE, SIZE), num_landmarks=num_landmarks)
    info = dm.info
    info.pixel_spacing_mm = spacing
    return info


def _batch(b: int = 2, k: int = 3) -> dict:
    torch.manual_seed(3)
    return {
        "image": torch.rand(b, 1, SIZE, SIZE),
        "landmarks": torch.rand(b, k, 2) * (SIZE - 1),
        "visible": torch.ones(b, k, dtype=torch.bool),
        "spacing": torch.full((b,), float("nan")),
        "index": torch.arange(b),
    }


def test_module_loss_violation_and_divergence_on_handmade_batch() -> None:
    module = LandmarkModule(data_info=_info(), sigma=2.0)
    batch = _batch()
    perfect = gaussian_heatmaps(batch["landmarks"], (SIZE, SIZE), 2.0, batch["visible"])
    moved = gaussian_heatmaps(batch["landmarks"] + torch.tensor([6.0, 0.0]), (SIZE, SIZE), 2.0)
    mixed = torch.stack([perfect[0], moved[1]])
    loss = module.per_sample_loss(mixed, batch)
    assert loss.shape == (2,)
    assert loss[0] == pytest.approx(0.0, abs=1e-7) and loss[1] > 0
    assert torch.equal(module.violation_statistic(mixed, batch), loss)
    # AMAT's loss-defined test: a threshold between the two losses flags only sample 1.
    thr = float(loss[1]) / 2
    assert module.is_violated(mixed, batch, thr).tolist() == [False, True]
    assert loss_above(module.per_sample_loss, thr)(mixed, batch).tolist() == [False, True]
    # Default threshold = loss of a peak moved by violation_radius (4 px) < 6 px error.
    assert module.is_violated(mixed, batch).tolist() == [False, True]
    # TRADES divergence: zero for identical outputs, positive otherwise, per sample.
    div = module.output_divergence(mixed, perfect)
    assert div[0] == pytest.approx(0.0) and div[1] > 0
    # Decoding the perfect heatmaps returns the landmarks (sub-pixel).
    assert torch.allclose(module.decode_points(perfect), batch["landmarks"], atol=0.05)
    shown = module.predict_for_display(perfect)
    assert shown["points"].shape == (2, 3, 2) and shown["confidence"].shape == (2, 3)


def test_module_metrics_in_mm_when_spacing_known() -> None:
    module = LandmarkModule(data_info=_info(spacing=0.1))
    metrics = module.build_metrics()
    batch = _batch()
    batch["spacing"] = torch.tensor([0.1, 0.2])
    batch["landmarks"] = batch["landmarks"] * 0.6 + 4  # keep the shifted peaks inside
    heat = gaussian_heatmaps(batch["landmarks"] + torch.tensor([3.0, 4.0]), (SIZE, SIZE), 2.0)
    module.update_metrics(metrics, heat, batch)
    values = metrics.compute()
    assert values["mre"] == pytest.approx(5.0, abs=0.05)
    assert values["mre_mm"] == pytest.approx(5.0 * 0.15, abs=0.01)
    assert values["sdr_2mm"] == pytest.approx(1.0) and "sdr_2px" not in values


def test_regression_head_variant_and_joint_forward() -> None:
    module = LandmarkModule(data_info=_info(), regression_head=True, coord_loss_weight=0.1,
                            net={"class_path": "lightning_modules.nets.SmallUNet",
                                 "init_args": {"features": [8, 16]}})
    batch = _batch()
    x = batch["image"]
    clean, shifted = module.forward_joint([x, x.flip(-1)])
    assert set(clean) == {"heatmaps", "coords"} and clean["coords"].shape == (2, 3, 2)
    loss = module.per_sample_loss(clean, batch)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    (g,) = torch.autograd.grad(module.per_sample_loss(module(x.requires_grad_()), batch).sum(), x)
    assert g.abs().sum() > 0
    assert module.output_divergence(shifted, clean).shape == (2,)


@pytest.mark.parametrize("method", ["sat", "amat", "trades"])
def test_methods_step_without_knowing_the_task(method: str) -> None:
    """One training step of each adversarial method through the task-agnostic protocol."""
    m = {"sat": SAT(eps=0.02, attack={"steps": 2}), "amat": AMAT(attack={"steps": 2}, initial_threshold=1e-3),
         "trades": TRADES(eps=0.02, attack={"steps": 2})}[method]
    module = LandmarkModule(data_info=_info(), method=m,
                            net={"class_path": "lightning_modules.nets.SmallUNet",
                                 "init_args": {"features": [8, 16]}})
    assert_method_step_trains(module, _batch())


# ----------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def trained() -> tuple[LandmarkModule, SyntheticDataModule]:
    """Clean training on 32x32 synthetic skulls (5 landmarks), 50 steps, seeded."""
    L.seed_everything(0)
    dm = SyntheticDataModule(task="landmarks", num_train=800, num_val=48, num_test=16,
                             image_size=(SIZE, SIZE), num_landmarks=5, batch_size=16, seed=0)
    module = LandmarkModule(data_info=dm.info, sigma=1.5, lr=3e-3,
                            net={"class_path": "lightning_modules.nets.SmallUNet",
                                 "init_args": {"features": [16, 32, 32]}})
    return fit_briefly(module, dm, max_steps=50), dm


def _mre(module: LandmarkModule, batch: dict, x: torch.Tensor) -> float:
    return metric_at(module, batch, x, "mre")


def test_short_training_beats_centre_and_random_baselines(trained) -> None:
    module, dm = trained
    batch = first_val_batch(dm)
    mre = _mre(module, batch, batch["image"])
    centre = (batch["landmarks"] - (SIZE - 1) / 2).norm(dim=-1).mean().item()
    gen = torch.Generator().manual_seed(0)
    random = (batch["landmarks"] - torch.rand(batch["landmarks"].shape, generator=gen) * (SIZE - 1)
              ).norm(dim=-1).mean().item()
    assert mre < 0.5 * centre, (mre, centre)
    assert mre < 0.3 * random, (mre, random)


def test_pgd_large_eps_degrades_and_zero_eps_keeps_mre(trained) -> None:
    module, dm = trained
    batch = first_val_batch(dm)
    x = batch["image"]
    clean = _mre(module, batch, x)
    model = module.attack_model()
    gen = torch.Generator().manual_seed(0)
    same = PGD(eps=0.0, steps=3)(model, x, batch, loss_fn=module.per_sample_loss, generator=gen)
    assert torch.equal(same, x)
    assert _mre(module, batch, same) == pytest.approx(clean)
    x_adv = PGD(eps=0.1, steps=10)(model, x, batch, loss_fn=module.per_sample_loss, generator=gen)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    attacked = _mre(module, batch, x_adv)
    assert attacked > clean + 2.0, (clean, attacked)
    assert not module.training  # the attack restored the mode it found


@pytest.mark.parametrize("piece", sorted((PROJECT_ROOT / "configs" / "model").glob("landmarks*.yaml")),
                         ids=lambda p: p.stem)
def test_model_pieces_build(piece) -> None:
    """Every landmark model piece builds for synthetic data and gives a finite loss."""
    cfg = yaml.safe_load(piece.read_text())["model"]
    module = import_object(cfg["class_path"])(data_info=_info(), **cfg["init_args"]).eval()
    batch = _batch()
    with torch.no_grad():
        out = module(batch["image"])
        loss = module.per_sample_loss(out, batch)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    assert module.decode_points(out).shape == (2, 3, 2)


def test_checkpoint_round_trip(trained, tmp_path) -> None:
    module, dm = trained
    loaded = checkpoint_round_trip(module, tmp_path)
    x = first_val_batch(dm)["image"][:4]
    with torch.no_grad():
        assert torch.allclose(loaded(x), module(x))


@pytest.mark.realdata
def test_cephalometric_batch_through_the_module(shared_data, monkeypatch) -> None:
    """The shipped cephalometric config's data + model on one real batch (19 landmarks)."""
    monkeypatch.setenv("MEDROBUST_DATA", str(shared_data))
    cfg = yaml.safe_load((PROJECT_ROOT / "configs" / "experiment"
                          / "landmarks_cephalometric_clean.yaml").read_text())
    data_args = {**cfg["data"]["init_args"], "batch_size": 2, "augment": None}
    dm = import_object(cfg["data"]["class_path"])(**data_args)
    margs = {k: v for k, v in cfg["model"]["init_args"].items() if k != "method"}
    module = import_object(cfg["model"]["class_path"])(data_info=dm.info, **margs).eval()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["landmarks"].shape == (2, 19, 2)
    metrics = module.build_metrics()
    with torch.no_grad():
        out = module(batch["image"])
        assert torch.isfinite(module.per_sample_loss(out, batch)).all()
        module.update_metrics(metrics, out, batch)
    values = metrics.compute()
    assert torch.isfinite(values["mre"]) and "sdr_2px" in values  # spacing unknown: pixels
