"""Object detection: detector builder, exact per-image losses, state safety under attack, the
task module, mAP and a seeded short training run on synthetic cells."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml
from torch import nn

from attacks import PGD, attack_mode
from attacks.mode import snapshot_modes
from datamodules.synthetic import SyntheticDataModule
from lightning_modules.detection_module import DetectionModule
from lightning_modules.methods import AMAT, SAT, TRADES, Denoise
from lightning_modules.metrics.detection import DetectionMAP
from lightning_modules.nets.builder import import_object
from lightning_modules.nets.detectors import DetectorWrapper, build_detector, label_offset_for
from tests.conftest import PROJECT_ROOT
from tests.support.task_checks import (
    assert_method_step_trains,
    checkpoint_round_trip,
    first_val_batch,
    fit_briefly,
    metric_at,
)

SIZE = 64
TINY_FCOS = "lightning_modules.nets.detectors.tiny_fcos"
TINY_RCNN = "lightning_modules.nets.detectors.tiny_fasterrcnn"
TV = "torchvision.models.detection."


def _targets() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    boxes = [torch.tensor([[5.0, 6.0, 20.0, 25.0], [30.0, 30.0, 50.0, 44.0]]),
             torch.zeros(0, 4),  # an image without objects
             torch.tensor([[10.0, 10.0, 30.0, 30.0]])]
    labels = [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.int64), torch.tensor([2])]
    return boxes, labels


def _batch(channels: int = 3) -> dict:
    torch.manual_seed(5)
    boxes, labels = _targets()
    return {"image": torch.rand(3, channels, SIZE, SIZE), "boxes": boxes, "labels": labels,
            "index": torch.arange(3)}


def _info(channels: int = 3):
    return SyntheticDataModule(task="detection", num_train=8, num_val=4, num_test=4,
                               image_size=(SIZE, SIZE), in_channels=channels).info


def _reference_loss(det: nn.Module, x: torch.Tensor, boxes, labels, offset: int) -> torch.Tensor:
    """torchvision's own training loss of each image alone (batch of one), BN frozen, same
    sampling seed as the wrapper."""
    out = []
    for i in range(x.shape[0]):
        det.train()
        det.transform.eval()  # no random size choice (it would consume random numbers)
        for m in det.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            losses = det([x[i]], [{"boxes": boxes[i], "labels": labels[i] + offset}])
        out.append(sum(losses.values()))
    det.eval()
    return torch.stack(out)


# ----------------------------------------------------------------------------- builder
def test_builder_never_downloads_and_knows_background_classes(monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    cases = {TV + "fasterrcnn_mobilenet_v3_large_fpn": 1, TV + "fcos_resnet50_fpn": 0,
             TV + "retinanet_resnet50_fpn": 0, TINY_FCOS: 0, TINY_RCNN: 1}
    for path, offset in cases.items():
        det, got, _ = build_detector(path, num_classes=3, in_channels=3, image_size=(SIZE, SIZE))
        assert got == offset == label_offset_for(det), path
        # No rescaling to 800 px and no second normalization inside torchvision.
        assert det.transform.min_size == (SIZE,) and det.transform.max_size == SIZE
        assert det.transform.image_mean == [0.0] * 3 and det.transform.image_std == [1.0] * 3
    with pytest.raises(ValueError, match="never downloads"):
        build_detector(TV + "fcos_resnet50_fpn", 3, init_args={"weights_backbone": "DEFAULT"})


@pytest.mark.parametrize("path", [TINY_FCOS, TINY_RCNN, TV + "retinanet_resnet50_fpn"])
def test_per_image_losses_equal_torchvision_single_image_losses(path: str) -> None:
    det, offset, _ = build_detector(path, num_classes=3, in_channels=3, image_size=(SIZE, SIZE))
    wrapper = DetectorWrapper(det, label_offset=offset, sampling_seed=0).eval()
    batch = _batch()
    losses = wrapper.family.loss(wrapper(batch["image"]), batch["boxes"], batch["labels"])
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    if path == TINY_RCNN:
        # The reference reseeds per image; compare image by image from the same seed.
        losses = torch.cat([wrapper.family.loss(wrapper(batch["image"][i:i + 1]), batch["boxes"][i:i + 1],
                                                batch["labels"][i:i + 1])
                            for i in range(3)])
    ref = _reference_loss(det, batch["image"], batch["boxes"], batch["labels"], offset)
    assert torch.allclose(losses, ref, rtol=1e-4, atol=1e-5), (losses, ref)


def test_attack_leaves_detector_state_alone() -> None:
    """Faster R-CNN (BatchNorm backbone, random proposal sampling): a PGD attack through the
    loss wrapper changes no parameter, buffer or mode, leaves the global RNG where it was, and
    the same input gives the same loss twice."""
    module = DetectionModule(data_info=_info(), net={"class_path": TV + "fasterrcnn_mobilenet_v3_large_fpn"})
    assert any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    module.train()
    module.net.detector.rpn.eval()  # a mixed state must come back exactly
    model = module.attack_model()
    batch = _batch()
    params = {k: v.clone() for k, v in module.state_dict().items()}
    modes = snapshot_modes(module)
    rng = torch.get_rng_state()
    x_adv = PGD(eps=0.03, steps=2)(model, batch["image"], batch, loss_fn=module.per_sample_loss,
                                   generator=torch.Generator().manual_seed(0))
    assert (x_adv - batch["image"]).abs().max() <= 0.03 + 1e-6
    assert torch.equal(torch.get_rng_state(), rng)
    assert snapshot_modes(module) == modes
    for k, v in module.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert all(p.grad is None for p in module.parameters())
    with torch.no_grad(), attack_mode(model):
        a = module.per_sample_loss(model(x_adv), batch)
        b = module.per_sample_loss(model(x_adv), batch)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), rng)


def test_sampling_is_random_in_training_and_seeded_in_eval() -> None:
    """Train mode samples proposals from the global RNG (as torchvision; a fixed seed would
    pick the same positions every step); eval mode (attacks, validation) is seeded and leaves
    the global RNG untouched."""
    module = DetectionModule(data_info=_info(), net={"class_path": TINY_RCNN}).train()
    batch = _batch()
    rng = torch.get_rng_state()
    module.per_sample_loss(module(batch["image"]), batch)
    assert not torch.equal(torch.get_rng_state(), rng)
    module.eval()
    rng = torch.get_rng_state()
    a = module.per_sample_loss(module(batch["image"]), batch)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, module.per_sample_loss(module(batch["image"]), batch))


# ----------------------------------------------------------------------------- the module
def test_module_outputs_metrics_and_empty_images() -> None:
    module = DetectionModule(data_info=_info(1)).eval()  # tiny FCOS on grey images
    batch = _batch(channels=1)
    x = batch["image"].requires_grad_(True)
    out = module(x)
    loss = module.per_sample_loss(out, batch)
    assert loss.shape == (3,) and torch.isfinite(loss).all() and loss[1] > 0  # empty: bg loss
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all() and g[1].abs().sum() > 0
    shown = module.predict_for_display(out)
    assert len(shown) == 3 and set(shown[0]) == {"boxes", "labels", "scores"}
    for d in shown:
        assert d["boxes"].shape[-1] == 4 and ((d["labels"] >= 0) & (d["labels"] < 3)).all()
    metrics = module.build_metrics()
    module.update_metrics(metrics, out, batch)
    values = metrics.compute()
    assert set(values) == {"map", "map_50", "map_75"}
    # Joint forward splits the shared features: same losses as separate forwards.
    with torch.no_grad():
        a, b = module.forward_joint([batch["image"], batch["image"].flip(-1)])
        ref_b = module.per_sample_loss(module(batch["image"].flip(-1)), batch)
        assert torch.allclose(module.per_sample_loss(b, batch), ref_b, atol=1e-5)
        assert torch.allclose(module.per_sample_loss(a, batch), loss.detach(), atol=1e-5)


def test_map_wrapper_perfect_and_wrong_predictions() -> None:
    boxes, labels = _targets()
    target = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
    perfect = [{"boxes": b, "labels": lab, "scores": torch.ones(len(lab))} for b, lab in zip(boxes, labels)]
    metric = DetectionMAP()
    metric.update(perfect, target)
    assert metric.compute()["map_50"] == pytest.approx(1.0)
    wrong = [{"boxes": b + 15.0, "labels": lab, "scores": torch.ones(len(lab))} for b, lab in zip(boxes, labels)]
    metric.reset()
    metric.update(wrong, target)
    assert metric.compute()["map_50"] < 0.5


def test_violation_test_uses_the_detection_loss() -> None:
    """AMAT's loss-defined violation on a hand-made batch: with the threshold between two
    images' losses, exactly the image whose loss is above it is violated."""
    module = DetectionModule(data_info=_info()).eval()
    batch = _batch()
    out = module(batch["image"])
    loss = module.per_sample_loss(out, batch).detach()
    lo, hi = sorted([float(loss[0]), float(loss[2])])
    thr = (lo + hi) / 2
    violated = module.is_violated(out, batch, thr)
    assert violated.tolist() == (loss > thr).tolist()
    assert violated[[0, 2]].sum() == 1
    assert torch.equal(module.violation_statistic(out, batch), loss)
    assert module.is_violated(out, batch, threshold=-1.0).all()


def test_trades_divergences() -> None:
    module = DetectionModule(data_info=_info()).eval()
    x = _batch()["image"]
    out = module(x)
    noisy = module((x + 0.2 * torch.randn_like(x)).clamp(0, 1))
    assert torch.allclose(module.output_divergence(out, out), torch.zeros(3), atol=1e-6)
    assert (module.output_divergence(noisy, out) > 0).all()
    rcnn = DetectionModule(data_info=_info(), net={"class_path": TINY_RCNN},
                           pseudo_label_score=0.0).eval()
    d = rcnn.output_divergence(rcnn(x), rcnn(x))  # pseudo-labels from the clean detections
    assert d.shape == (3,) and torch.isfinite(d).all()


@pytest.mark.parametrize("method", ["sat", "amat", "trades", "denoise"])
def test_methods_step_without_knowing_the_task(method: str) -> None:
    m = {"sat": SAT(eps=0.02, attack={"steps": 2}), "amat": AMAT(attack={"steps": 2}, initial_threshold=2.0),
         "trades": TRADES(eps=0.02, attack={"steps": 2}),
         "denoise": Denoise(adversarial_fraction=0.5, attack={"steps": 1},
                            feature_layer="detector.backbone")}[method]
    assert_method_step_trains(DetectionModule(data_info=_info(), method=m), _batch())


# ----------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def trained() -> tuple[DetectionModule, SyntheticDataModule]:
    """Clean training of the tiny FCOS on 64x64 synthetic cells, 60 steps, seeded."""
    L.seed_everything(0)
    dm = SyntheticDataModule(task="detection", num_train=480, num_val=32, num_test=8,
                             image_size=(SIZE, SIZE), in_channels=3, batch_size=8, seed=0)
    module = DetectionModule(data_info=dm.info, lr=3e-3,
                             net={"class_path": TINY_FCOS,
                                  "init_args": {"widths": [16, 32], "out_channels": 32}})
    return fit_briefly(module, dm, max_steps=60), dm


def _map50(module: DetectionModule, batch: dict, x: torch.Tensor) -> float:
    return metric_at(module, batch, x, "map_50")


def test_short_training_detects(trained) -> None:
    module, dm = trained
    batch = first_val_batch(dm)
    assert _map50(module, batch, batch["image"]) > 0.1


def test_pgd_large_eps_degrades_and_zero_eps_keeps_map(trained) -> None:
    module, dm = trained
    batch = first_val_batch(dm)
    x = batch["image"]
    clean = _map50(module, batch, x)
    model = module.attack_model()
    gen = torch.Generator().manual_seed(0)
    same = PGD(eps=0.0, steps=2)(model, x, batch, loss_fn=module.per_sample_loss, generator=gen)
    assert torch.equal(same, x) and _map50(module, batch, same) == pytest.approx(clean)
    x_adv = PGD(eps=0.05, steps=5)(model, x, batch, loss_fn=module.per_sample_loss, generator=gen)
    attacked = _map50(module, batch, x_adv)
    assert attacked < 0.5 * clean, (clean, attacked)


@pytest.mark.parametrize("piece", sorted((PROJECT_ROOT / "configs" / "model").glob("detection*.yaml")),
                         ids=lambda p: p.stem)
def test_model_pieces_build(piece) -> None:
    """Every detection model piece builds (no download) and gives per-image losses and
    detections on grey synthetic images (torchvision backbones get the channel repeated)."""
    cfg = yaml.safe_load(piece.read_text())["model"]
    module = import_object(cfg["class_path"])(data_info=_info(1), **cfg["init_args"]).eval()
    batch = _batch(channels=1)
    with torch.no_grad():
        out = module(batch["image"])
        loss = module.per_sample_loss(out, batch)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    assert len(module.predict_for_display(out)) == 3


def test_checkpoint_round_trip(trained, tmp_path) -> None:
    module, dm = trained
    loaded = checkpoint_round_trip(module, tmp_path)
    batch = first_val_batch(dm)
    with torch.no_grad():
        a = loaded.per_sample_loss(loaded(batch["image"]), batch)
        b = module.per_sample_loss(module(batch["image"]), batch)
    assert torch.allclose(a, b)


@pytest.mark.realdata
def test_bccd_batch_through_the_module(shared_data, monkeypatch) -> None:
    """The shipped BCCD config's data + model on one real batch (RBC, WBC, Platelets)."""
    monkeypatch.setenv("MEDROBUST_DATA", str(shared_data))
    cfg = yaml.safe_load((PROJECT_ROOT / "configs" / "experiment" / "detection_bccd_clean.yaml").read_text())
    data_args = {**cfg["data"]["init_args"], "batch_size": 2, "augment": None}
    dm = import_object(cfg["data"]["class_path"])(**data_args)
    assert dm.info.num_classes == 3
    margs = {k: v for k, v in cfg["model"]["init_args"].items() if k != "method"}
    module = import_object(cfg["model"]["class_path"])(data_info=dm.info, **margs).eval()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    metrics = module.build_metrics()
    with torch.no_grad():
        out = module(batch["image"])
        assert torch.isfinite(module.per_sample_loss(out, batch)).all()
        module.update_metrics(metrics, out, batch)
    assert set(metrics.compute()) == {"map", "map_50", "map_75"}


def test_evidence_of_an_evaluation_recomputes_the_records_map(trained) -> None:
    """A small real evaluation (the trained tiny FCOS, 16 validation images, FGSM at one ε): the
    mAP, mAP@0.5 and mAP@0.75 recomputed from the kept matches equal torchmetrics' numbers of
    the record, clean, per attack and for the worst case, and their intervals hold them."""
    from attacks import parse_attack_specs
    from callbacks.dataset_metrics import dataset_intervals
    from callbacks.evaluation_loop import RobustnessEvaluator

    module, dm = trained
    dm.setup("validate")
    loader = iter(dm._loader("val", shuffle=False))
    ev = RobustnessEvaluator(module, parse_attack_specs([{"name": "fgsm"}], "t"), [0.02], keep_per_sample=True)
    for i in range(2):
        ev.run_batch(i, next(loader))
    out = ev.compute()
    assert out.evidence is not None and out.evidence.kind == "matches" and out.evidence.n == 16
    iv = dataset_intervals(out.evidence, [0.02], [("fgsm", 0.02)], n_resamples=200)
    assert out.clean["map_50"] > 0.1
    for m in ("map", "map_50", "map_75"):
        assert iv[m]["clean"]["estimate"] == pytest.approx(out.clean[m], abs=1e-6), m
        assert iv[m]["worst"][0]["estimate"] == pytest.approx(out.ensemble[0.02][m], abs=1e-6), m
        assert iv[m]["attacks"][0]["estimate"] == pytest.approx(out.attacks[("fgsm", 0.02)][m], abs=1e-6), m
        assert iv[m]["clean"]["low"] <= iv[m]["clean"]["estimate"] <= iv[m]["clean"]["high"]
