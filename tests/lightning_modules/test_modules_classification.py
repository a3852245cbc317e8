"""Classification module, the shared TaskModule base, networks and the net builder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from datamodules.info import DataInfo
from lightning_modules import AMAT, SAT, ClassificationModule, Denoise, RobustTask, TaskModule
from lightning_modules.nets import (
    ChannelAdapter,
    DenoisingAutoEncoder,
    Normalize,
    SmallCNN,
    SmallUNet,
    build_net,
)

TINY_CNN = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}}


def info(k: int = 2, multilabel: bool = False, channels: int = 1, dims: int = 2,
         bounds: tuple[float, float] = (0.0, 1.0)) -> DataInfo:
    size = (16,) * dims
    return DataInfo(task="classification", in_channels=channels, spatial_dims=dims,
                    bounds=bounds, image_size=size, num_classes=k, multilabel=multilabel,
                    num_train=8, class_names=[f"c{i}" for i in range(k)])


def batch(k: int = 2, b: int = 6, multilabel: bool = False, dims: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 1, *(16,) * dims, generator=g)
    if multilabel:
        y = (torch.rand(b, k, generator=g) > 0.5).float()
    else:
        y = torch.arange(b) % k
    return {"image": x, "label": y, "index": torch.arange(b)}


# ---------------------------------------------------------------------------- layers / nets
@pytest.mark.parametrize("dims", [2, 3])
def test_normalize_any_spatial_dims(dims: int) -> None:
    norm = Normalize([0.5, 0.2], [0.25, 0.5], channels=2)
    x = torch.rand(3, 2, *(5,) * dims)
    y = norm(x)
    assert torch.allclose(y[:, 0], (x[:, 0] - 0.5) / 0.25)
    assert torch.allclose(y[:, 1], (x[:, 1] - 0.2) / 0.5)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}  # checkpointed
    with pytest.raises(ValueError, match="expects"):
        norm(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(0.0, 0.0, channels=1)


@pytest.mark.parametrize("dims", [2, 3])
def test_default_nets_2d_3d(dims: int) -> None:
    x = torch.rand(2, 1, *(12,) * dims)
    assert SmallCNN(dims, 1, 3, features=(4, 8))(x).shape == (2, 3)
    assert SmallUNet(dims, 1, 3, features=(4, 8))(x).shape == (2, 3, *(12,) * dims)
    dae = DenoisingAutoEncoder(dims, 1, features=(4, 8))
    assert torch.equal(dae(x), x)  # zero-initialised residual: identity before training


def test_unet_odd_sizes() -> None:
    assert SmallUNet(2, 1, 2, features=(4, 8, 8))(torch.rand(1, 1, 13, 9)).shape == (1, 2, 13, 9)


def test_builder_fills_monai_and_torchvision() -> None:
    i = info(k=3)
    dense = build_net({"class_path": "monai.networks.nets.DenseNet121"}, i, 3, "x")
    assert dense(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    resnet = build_net({"class_path": "torchvision.models.resnet18"}, i, 3, "x")
    assert isinstance(resnet, ChannelAdapter)  # 1 channel → the 3 torchvision expects
    assert resnet(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    unet = build_net({"class_path": "monai.networks.nets.BasicUNet",
                      "init_args": {"features": [4, 4, 8, 8, 16, 4]}}, i, 3, "x")
    assert unet.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    # config wins over the data where it says something
    cnn = build_net({"class_path": "lightning_modules.nets.SmallCNN",
                     "init_args": {"num_classes": 5, "features": [4]}}, i, 3, "x")
    assert cnn(torch.rand(1, 1, 8, 8)).shape == (1, 5)


def test_builder_refuses_downloads_and_bad_specs() -> None:
    with pytest.raises(ValueError, match="never downloads"):
        build_net({"class_path": "torchvision.models.resnet18",
                   "init_args": {"weights": "DEFAULT"}}, info(), 2, "x")
    with pytest.raises(ValueError, match="net.class_path"):
        build_net({"class_path": "nowhere.Net"}, info(), 2, "x")
    with pytest.raises(ValueError, match="cannot build"):
        build_net({"class_path": "lightning_modules.nets.SmallCNN", "widths": [4]}, info(), 2, "x")
    # keys beside init_args override it (command-line overrides arrive that way)
    cnn = build_net({"class_path": "lightning_modules.nets.SmallCNN",
                     "init_args": {"features": [4, 8]}, "features": [3]}, info(), 2, "x")
    assert cnn.head[-1].in_features == 3


# ---------------------------------------------------------------------------- the module
def test_protocol_and_pipeline() -> None:
    m = ClassificationModule(net=TINY_CNN, data_info=info())
    assert isinstance(m, RobustTask) and isinstance(m, TaskModule)
    pipe = m.attack_model()
    assert list(pipe.children())[0] is m.normalizer
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(pipe(x), m.net(m.normalizer(x)))
    assert m.method.name == "clean"
    # default normalization: middle of bounds / quarter of the width
    m2 = ClassificationModule(net=TINY_CNN, data_info=info(bounds=(-2.0, 6.0)))
    assert float(m2.normalizer.mean) == 2.0 and float(m2.normalizer.std) == 2.0


def test_denoiser_is_part_of_the_attack_model() -> None:
    m = ClassificationModule(net=TINY_CNN, data_info=info(), method=Denoise(denoiser={
        "class_path": "lightning_modules.nets.DenoisingAutoEncoder", "init_args": {"features": [4, 4]}}))
    pipe = m.attack_model()
    assert pipe.embedded is m.method.denoiser
    assert m.method.denoiser in list(m.modules())
    with torch.no_grad():
        nn.init.normal_(m.method.denoiser.body.out.weight)
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(m(x), m.net(m.method.denoiser(m.normalizer(x))))


@pytest.mark.parametrize("k,multilabel,single", [(2, False, False), (2, False, True),
                                                 (4, False, False), (3, True, False)])
def test_losses_violations_metrics(k: int, multilabel: bool, single: bool) -> None:
    m = ClassificationModule(net=TINY_CNN, data_info=info(k, multilabel), binary_single_logit=single)
    b = batch(k, multilabel=multilabel)
    out = m(b["image"])
    assert out.shape == (6, 1 if single else k)
    loss = m.per_sample_loss(out, b)
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    viol = m.is_violated(out, b)
    assert viol.dtype == torch.bool and viol.shape == (6,)
    assert m.violation_statistic(out, b).shape == (6,)
    # perfect logits are never violated and have small loss
    if multilabel:
        perfect = (b["label"] * 2 - 1) * 20
    elif single:
        perfect = ((b["label"].float() * 2 - 1) * 20)[:, None]
    else:
        perfect = torch.nn.functional.one_hot(b["label"], k).float() * 20
    assert not m.is_violated(perfect, b).any()
    assert m.per_sample_loss(perfect, b).max() < 1e-3
    # divergence: zero for equal outputs, positive otherwise
    assert torch.allclose(m.output_divergence(out, out), torch.zeros(6), atol=1e-6)
    assert (m.output_divergence(out + torch.randn_like(out), out) > 0).all()
    metrics = m.build_metrics()
    m.update_metrics(metrics, perfect, b)
    values = metrics.compute()
    assert set(values) == {"accuracy", "balanced_accuracy", "auroc", "f1"}
    assert float(values["accuracy"]) == 1.0 and float(values["balanced_accuracy"]) == 1.0
    shown = m.predict_for_display(out)
    assert shown["label"].shape[0] == 6 and shown["probs"].shape == (6, k)


def test_bad_configs_name_the_field() -> None:
    seg = DataInfo(task="segmentation", in_channels=1, num_classes=2, num_train=4)
    with pytest.raises(ValueError, match="data_info.task"):
        ClassificationModule(data_info=seg)
    with pytest.raises(ValueError, match="data_info is required"):
        ClassificationModule()
    with pytest.raises(ValueError, match="optimizer"):
        ClassificationModule(data_info=info(), optimizer="lbfgs")
    with pytest.raises(ValueError, match="SAT.beta"):
        SAT(beta=2.0)
    with pytest.raises(ValueError, match="SAT.attack.norm"):
        SAT(attack={"norm": "l1"})
    with pytest.raises(ValueError, match="SAT.stages"):
        SAT(schedule="staged")
    with pytest.raises(ValueError, match="AMAT.delta"):
        AMAT(delta=0.0)
    with pytest.raises(ValueError, match="method.class_path"):
        ClassificationModule(data_info=info(), method={"class_path": "torch.nn.Linear"})
    with pytest.raises(ValueError, match="num_train"):
        ClassificationModule(data_info=DataInfo(task="classification", in_channels=1,
                                                num_classes=2), method=AMAT())


def test_hparams_are_plain_and_rebuild_the_method() -> None:
    m = ClassificationModule(net=TINY_CNN, data_info=info(), method=SAT(eps=0.01, attack={"steps": 3}))
    hp = dict(m.hparams)
    assert hp["method"] == {"class_path": "lightning_modules.methods.sat.SAT",
                            "init_args": SAT(eps=0.01, attack={"steps": 3}).config()["init_args"]}
    assert hp["data_info"]["num_classes"] == 2 and isinstance(hp["data_info"]["bounds"], list)
    clone = ClassificationModule(**{k: v for k, v in hp.items()})
    assert clone.method.attack.steps == 3 and clone.method.current_eps == 0.01
    assert clone.data_info == m.data_info
