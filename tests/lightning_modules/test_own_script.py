"""Use from one's own script: a built nn.Module as `net`, the clear error for tuple batches,
RobustTaskAdapter for one's own LightningModule, the example script, local weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from callbacks import AdversarialEvaluation, RobustTaskAdapter
from datamodules.info import DataInfo
from lightning_modules import ClassificationModule
from lightning_modules.batch import DictDataset, check_batch
from lightning_modules.nets.builder import build_net

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INFO = DataInfo(task="classification", in_channels=1, image_size=(8, 8), num_classes=2, num_train=16)


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


def data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = (0.2 * torch.rand(n, 1, 8, 8, generator=g) + 0.6 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    return TensorDataset(x, y)


def quiet_trainer(tmp_path: Path, callbacks: list) -> L.Trainer:
    return L.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                     callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False)


def test_module_instance_as_net_and_tuple_batches_error(tmp_path: Path) -> None:
    net = tiny_net()
    with pytest.raises(ValueError, match=r"state the input normalisation.*mean=0.0, std=1.0"):
        ClassificationModule(net=net, data_info=INFO)  # no silent Normalize(0.5, 0.25) in front
    module = ClassificationModule(net=net, data_info=INFO, mean=0.5, std=0.25)
    assert module.net is net
    assert str(module.hparams["net"]).startswith("nn.Module instance")  # plain, weights_only-safe
    with pytest.raises(TypeError, match=r"dict with keys \['image', 'label'\].*DictDataset"):
        quiet_trainer(tmp_path, []).fit(module, DataLoader(data(), batch_size=8))
    quiet_trainer(tmp_path, []).fit(module, DataLoader(DictDataset(data()), batch_size=8))
    assert module.trainer.global_step == 2
    # the checkpoint holds plain values only; the network is passed again to load it
    path = tmp_path / "m.ckpt"
    module.trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match="pass it again"):
        ClassificationModule.load_from_checkpoint(path)
    loaded = ClassificationModule.load_from_checkpoint(path, net=tiny_net())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.net.state_dict().values()))
    with pytest.raises(KeyError, match=r"lacks \['label'\]"):
        check_batch({"image": torch.zeros(1)}, "classification", "ClassificationModule")


class OwnModule(L.LightningModule):
    def __init__(self, with_adapter: bool) -> None:
        super().__init__()
        self.model = tiny_net()
        if with_adapter:
            self.robust_task = RobustTaskAdapter(
                self, model=self.model,
                per_sample_loss=lambda out, y: F.cross_entropy(out, y, reduction="none"),
                metrics={"accuracy": MulticlassAccuracy(num_classes=2, average="micro")})

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.log("val/loss", F.cross_entropy(self.model(batch[0]), batch[1]))

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.0)  # frozen: numbers checkable below


def test_adapter_evaluates_ones_own_module(tmp_path: Path) -> None:
    loader = DataLoader(data(), batch_size=8)
    with pytest.raises(TypeError, match="RobustTaskAdapter"):  # without the adapter: named
        quiet_trainer(tmp_path, [AdversarialEvaluation(subset=None)]).fit(OwnModule(False), loader, loader)
    module = OwnModule(True)
    cb = AdversarialEvaluation(attacks=[{"name": "pgd", "norm": "linf", "steps": 5}], eps=[0.5],
                               subset=None, plot=False)
    quiet_trainer(tmp_path, [cb]).fit(module, loader, loader)
    rec = cb.last_record["val"].to_dict()
    assert rec["method"] == "user" and rec["task"] == "classification"
    # the clean number is the model's own accuracy on the 16 samples
    x, y = data().tensors
    expected = (module.model(x).argmax(1) == y).float().mean().item()
    assert rec["clean"]["accuracy"] == pytest.approx(expected)
    # a linear model under an L∞ ball of 0.5 on [0, 1] inputs of 64 pixels is violated everywhere
    assert rec["attacks"][0]["metrics"]["accuracy"] < rec["clean"]["accuracy"] or expected == 0
    assert rec["attacks"][0]["metrics"]["accuracy"] == 0.0


@pytest.mark.slow
def test_example_script_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "examples/own_script.py", "--out", str(tmp_path)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tuple batches refused" in proc.stdout and "DictDataset" in proc.stdout
    for name, method in (("classification_module", "sat"), ("own_module", "user")):
        rec = json.loads(next((tmp_path / name).glob("version_*/robustness.json")).read_text())
        assert rec["method"] == method
        assert rec["clean"]["accuracy"] >= 0.9  # the toy task is learnt in 2 epochs
        assert all(a["metrics"]["accuracy"] <= rec["clean"]["accuracy"] for a in rec["attacks"])


# --- local pretrained weights ----------------------------------------------------------------
def test_local_weights_load_and_mismatch_names_layers(tmp_path: Path) -> None:
    spec = {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}}
    source = build_net(spec, INFO, 2, "")
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    loaded = build_net({**spec, "weights_path": str(path)}, INFO, 2, "")
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    # a Lightning checkpoint of a task module works too (keys under "net.")
    module = ClassificationModule(net=spec, data_info=INFO)
    torch.save({"state_dict": module.state_dict()}, tmp_path / "m.ckpt")
    from_ckpt = build_net({**spec, "init_args": {**spec["init_args"], "weights_path": str(tmp_path / "m.ckpt")}},
                          INFO, 2, "")
    assert all(torch.equal(a, b) for a, b in zip(module.net.state_dict().values(),
                                                 from_ckpt.state_dict().values()))
    # other width: the error names the layers and both shapes
    wide = {"class_path": spec["class_path"], "init_args": {"features": [4, 16]}, "weights_path": str(path)}
    with pytest.raises(ValueError, match=r"shape mismatch.*file \[8, 4, 3, 3\] vs net \[16, 4, 3, 3\]"):
        build_net(wide, INFO, 2, "")
    # another number of classes: a new head is possible with weights_skip
    with pytest.raises(ValueError, match="weights_skip"):
        build_net({**spec, "weights_path": str(path)}, INFO, 3, "")
    head = [k.split(".")[0] for k in source.state_dict()][-1]
    three = build_net({**spec, "weights_path": str(path), "weights_skip": [f"{head}."]}, INFO, 3, "")
    first = next(iter(source.state_dict()))
    assert torch.equal(three.state_dict()[first], source.state_dict()[first])
    with pytest.raises(FileNotFoundError, match="weights_path"):
        build_net({**spec, "weights_path": str(tmp_path / "absent.pth")}, INFO, 2, "")


def test_torchvision_resnet_with_local_weights(tmp_path: Path) -> None:
    """The ImageNet-ResNet baseline without a download: a local file, head skipped."""
    import torchvision

    ref = torchvision.models.resnet18(weights=None)  # stands in for ImageNet weights
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    net = build_net({"class_path": "torchvision.models.resnet18",
                     "weights_path": str(tmp_path / "resnet18.pth"), "weights_skip": ["fc."]},
                    INFO, 2, "")
    inner = net.net  # ChannelAdapter (grey → RGB) around the resnet
    assert torch.equal(inner.conv1.weight, ref.conv1.weight) and inner.fc.out_features == 2
