"""medrobust from one's own script: a built network, tuple data, and one's own LightningModule.

Run:  python examples/own_script.py [--out DIR]        (about 10 s on a CPU; no download)

1. ``ClassificationModule(net=<an nn.Module>)`` trains with medrobust's methods (here SAT) on a
   ``TensorDataset``: tuple batches are refused at the boundary with the keys a batch needs, and
   ``DictDataset`` gives them names.
2. ``AdversarialEvaluation`` measures a LightningModule of one's own through
   ``RobustTaskAdapter``: the model, a per-sample loss and the metrics. Tuple batches are fine.
Both runs write ``robustness.json`` into their folder under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from medrobust.callbacks import AdversarialEvaluation, RobustnessRecord, RobustTaskAdapter
from medrobust.datamodules.info import DataInfo
from medrobust.lightning_modules import ClassificationModule
from medrobust.lightning_modules.batch import DictDataset
from medrobust.lightning_modules.methods import SAT


def toy_data(n: int, seed: int) -> TensorDataset:
    """Grey 16×16 images in [0, 1]; class 1 has a bright square in the middle."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
    x[y == 1, :, 5:11, 5:11] += 0.6
    return TensorDataset(x.clamp(0, 1), y)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(128, 2))


def trainer(out: Path, name: str, evaluation: AdversarialEvaluation) -> L.Trainer:
    return L.Trainer(max_epochs=2, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(out, name),
                     callbacks=[evaluation], enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)


class OwnModule(L.LightningModule):
    """A LightningModule of one's own: tuple batches, its own loss; the adapter is all the
    evaluation needs."""

    def __init__(self) -> None:
        super().__init__()
        self.model = small_net()
        self.robust_task = RobustTaskAdapter(
            self,
            model=self.model,
            per_sample_loss=lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
            metrics={"accuracy": MulticlassAccuracy(num_classes=2, average="micro")},
            bounds=(0.0, 1.0),
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.cross_entropy(self.model(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=2e-2)


def main(out: Path) -> dict[str, dict]:
    torch.manual_seed(0)
    train, val = toy_data(128, 0), toy_data(64, 1)
    evaluation = dict(attacks=[{"name": "pgd", "norm": "linf", "steps": 3}], eps=[0.02, 0.05], subset=64)

    # 1. a built network in medrobust's ClassificationModule, trained with SAT
    info = DataInfo(task="classification", in_channels=1, image_size=(16, 16), num_classes=2,
                    num_train=len(train))
    # a built network: its input normalisation is stated (a built nn.Module gets no default)
    module = ClassificationModule(net=small_net(), data_info=info, method=SAT(eps=0.02, attack={"steps": 3}),
                                  lr=3e-3, mean=0.5, std=0.25)
    try:
        trainer(out, "tuples", AdversarialEvaluation(**evaluation)).fit(
            module, DataLoader(train, batch_size=32), DataLoader(val, batch_size=32))
    except TypeError as err:  # the clear error at the batch boundary
        print(f"[example] tuple batches refused: {err}")
    t1 = trainer(out, "classification_module", AdversarialEvaluation(**evaluation))
    t1.fit(module, DataLoader(DictDataset(train), batch_size=32, shuffle=True),
           DataLoader(DictDataset(val), batch_size=32))

    # 2. one's own LightningModule through the adapter, tuple batches as they are
    t2 = trainer(out, "own_module", AdversarialEvaluation(**evaluation))
    t2.fit(OwnModule(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=32))

    records = {}
    for name, t in (("classification_module", t1), ("own_module", t2)):
        # the typed reader of robustness.json (validates it, names the file and key if bad)
        rec = RobustnessRecord.load(Path(t.log_dir) / "robustness.json")
        records[name] = rec
        adv = {f"{a.attack} eps={a.eps:g}": round(a.metrics["accuracy"], 3) for a in rec.attacks}
        print(f"[example] {name}: clean accuracy {rec.clean['accuracy']:.3f}, adversarial {adv}")
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples"))
    main(parser.parse_args().out)
