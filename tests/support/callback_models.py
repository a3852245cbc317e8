"""Support for the callback tests: model/datamodule factories and a DDP entry point.

Not a test module (it defines no tests); it is a file of its own so that the 2-process run can
execute it as a script: Lightning's ``ddp`` launcher re-runs ``sys.argv`` for rank 1, which must
not be pytest.

``make_module`` builds the real ``lightning_modules`` task module when it exists and otherwise
a tiny CNN implementing ``RobustTask`` (:class:`ToyClassifier`).
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from datamodules.synthetic import SyntheticDataModule
from lightning_modules.protocol import RobustTask
from tests.support.ddp_runs import close_process_group


class FeatureDataset(Dataset):
    """Two classes carried by a robust and a non-robust feature (Ilyas et al. 2019 in miniature).

    ``x = 0.5 + noise + a·s·checkerboard + (0.15·s + N(0, 0.1))·central disc`` with
    ``s = ±1`` the class. The faint checkerboard (amplitude ``a``) separates the classes
    perfectly but flips under an L∞ perturbation of ``ε > a``; the bright disc is noisier but
    survives it. Standard training leans on the checkerboard, adversarial training on the disc,
    so SAT's robust accuracy is higher — a fast, deterministic stand-in for the real thing.
    """

    def __init__(self, n: int, seed: int, size: int = 8, amplitude: float = 0.05) -> None:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=g)
        s = (2 * y - 1).float()
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        checker = ((yy + xx) % 2 * 2 - 1).float()
        c = size / 2 - 0.5
        disc = (((yy - c) ** 2 + (xx - c) ** 2) < (size / 4) ** 2).float()
        x = 0.5 + 0.02 * torch.randn(n, 1, size, size, generator=g)
        x = x + amplitude * s[:, None, None, None] * checker
        x = x + (0.15 * s + 0.1 * torch.randn(n, generator=g))[:, None, None, None] * disc
        self.x, self.y = x.clamp(0, 1), y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i], "index": torch.tensor(i)}


class FeatureDataModule(BaseDataModule):
    """:class:`FeatureDataset` splits (train 192, val/test 64) as a medrobust datamodule."""

    sizes = {"train": 192, "val": 64, "test": 64}

    def __init__(self, batch_size: int = 32, size: int = 8) -> None:
        super().__init__(batch_size=batch_size)
        self.size = size

    def build_info(self) -> DataInfo:
        return DataInfo(task="classification", in_channels=1, image_size=(self.size, self.size),
                        num_classes=2, class_names=["neg", "pos"], num_train=self.sizes["train"])

    def build_split(self, split: str) -> FeatureDataset:
        seed = {"train": 0, "val": 1, "test": 2}[split]
        return FeatureDataset(self.sizes[split], seed, self.size)


class ToyClassifier(L.LightningModule):
    """Tiny CNN implementing ``RobustTask`` for classification; ``method`` clean or sat (PGD)."""

    task = "classification"
    main_metric = "accuracy"
    #: the protocol's one implementation (the direction read from the metric objects)
    metric_higher_is_better = RobustTask.metric_higher_is_better

    def __init__(self, data_info: DataInfo, method: str = "clean", eps: float = 0.03,
                 steps: int = 3, lr: float = 0.01, dropout: float = 0.1) -> None:
        super().__init__()
        self.data_info = data_info
        c, k = data_info.in_channels, data_info.num_classes
        self.net = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, k),
        )
        self.method = SimpleNamespace(name=method)
        self.eps, self.steps, self.lr = eps, steps, lr

    # RobustTask ---------------------------------------------------------------------------
    def attack_model(self) -> nn.Module:
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def per_sample_loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(output, batch["label"], reduction="none")

    def is_violated(self, output: torch.Tensor, batch: dict[str, Any], threshold: float | None = None) -> torch.Tensor:
        return output.argmax(1) != batch["label"]

    def violation_statistic(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return self.per_sample_loss(output, batch)

    def build_metrics(self) -> MetricCollection:
        k = self.data_info.num_classes
        return MetricCollection({"accuracy": MulticlassAccuracy(k, average="micro"),
                                 "auroc": MulticlassAUROC(k)})

    def update_metrics(self, metrics: MetricCollection, output: torch.Tensor, batch: dict[str, Any]) -> None:
        metrics.update(output.softmax(1), batch["label"])

    def predict_for_display(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        conf, label = output.softmax(1).max(1)
        return {"label": label, "confidence": conf}

    # Lightning ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["label"]
        if self.method.name == "sat":
            from attacks import PGD

            atk = PGD(eps=self.eps, steps=self.steps, random_start=True, bounds=self.data_info.bounds)
            x = atk(self.net, x, y)
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        acc = (self.net(batch["image"]).argmax(1) == batch["label"]).float().mean()
        self.log("val/acc", acc, batch_size=len(acc.reshape(-1)))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def real_module_class(task: str) -> type | None:
    """The real task module class from ``lightning_modules`` if it has landed, else ``None``."""
    names = {"classification": "ClassificationModule", "segmentation": "SegmentationModule",
             "landmarks": "LandmarkModule", "detection": "DetectionModule"}
    files = {"classification": "classification_module", "segmentation": "segmentation_module",
             "landmarks": "landmark_module", "detection": "detection_module"}
    import importlib

    for module in ("lightning_modules", f"lightning_modules.{files[task]}"):
        try:
            cls = getattr(importlib.import_module(module), names[task], None)
        except ImportError:
            cls = None
        if cls is not None:
            return cls
    return None


def make_datamodule(task: str = "classification", num_val: int = 24, num_train: int = 64,
                    image_size: int = 16, batch_size: int = 8, seed: int = 0) -> SyntheticDataModule:
    return SyntheticDataModule(task=task, num_train=num_train, num_val=num_val, num_test=num_val,
                               image_size=(image_size, image_size), batch_size=batch_size, seed=seed)


def make_module(dm: SyntheticDataModule, method: str = "clean", use_real: bool = True, **kw: Any) -> L.LightningModule:
    """The real module for ``dm.task`` (with ``method``) when available, else the toy one."""
    cls = real_module_class(dm.info.task) if use_real else None
    if cls is None:
        if dm.info.task != "classification":
            raise RuntimeError(f"no module for task {dm.info.task!r} yet")
        return ToyClassifier(dm.info, method=method, **kw)
    return build_real_module(cls, dm, method, **kw)


#: small networks so CPU tests stay fast
SMALL_NETS: dict[str, dict[str, Any]] = {
    "classification": {"class_path": "lightning_modules.nets.SmallCNN",
                       "init_args": {"features": [8, 16]}},
    "segmentation": {"class_path": "lightning_modules.nets.SmallUNet",
                     "init_args": {"features": [8, 16]}},
    "landmarks": {"class_path": "lightning_modules.nets.SmallUNet",
                  "init_args": {"features": [8, 16]}},
}


def build_real_module(cls: type, dm: SyntheticDataModule, method: str, eps: float = 0.03,
                      steps: int = 3, lr: float = 3e-3, **kw: Any) -> L.LightningModule:
    """A real task module with a small network; ``method`` ``"clean"`` or ``"sat"`` (PGD)."""
    from lightning_modules import SAT

    m = SAT(eps=eps, attack={"steps": steps, "random_start": True}) if method == "sat" else None
    return cls(net=SMALL_NETS.get(dm.info.task), data_info=dm.info, method=m, lr=lr, **kw)


def main(argv: list[str] | None = None) -> None:
    """``validate`` a checkpoint with AdversarialEvaluation on N CPU processes (DDP)."""
    from lightning.pytorch.loggers import CSVLogger

    from callbacks import AdversarialEvaluation

    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--callback", required=True, help="JSON kwargs of AdversarialEvaluation")
    p.add_argument("--data", required=True, help="JSON kwargs of make_datamodule")
    p.add_argument("--toy", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    dm = make_datamodule(**json.loads(args.data))
    model = make_module(dm, use_real=not args.toy)
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        logger=CSVLogger(args.out, name="", version=""), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        callbacks=[AdversarialEvaluation(**json.loads(args.callback))],
    )
    trainer.validate(model, datamodule=dm, ckpt_path=args.ckpt, verbose=False)
    close_process_group()


if __name__ == "__main__":
    main()
