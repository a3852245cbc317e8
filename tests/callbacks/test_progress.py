"""Progress on the robustness evaluation (tqdm on a terminal, silent otherwise) and per epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from callbacks import AdversarialEvaluation, RobustTaskAdapter
from callbacks.progress import EpochLine, bar_wanted


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        self.robust_task = RobustTaskAdapter(
            self, self.model, lambda o, y: F.cross_entropy(o, y, reduction="none"),
            {"accuracy": MulticlassAccuracy(num_classes=2, average="micro")})

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        loss = F.cross_entropy(self.model(batch[0]), batch[1])
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        pass

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, callbacks: list, progress_bar: bool = True) -> None:
    data = TensorDataset(torch.rand(12, 1, 4, 4), torch.arange(12) % 2)
    L.Trainer(max_epochs=2, accelerator="cpu", logger=False, default_root_dir=tmp_path,
              enable_checkpointing=False, enable_model_summary=False,
              enable_progress_bar=progress_bar, callbacks=callbacks).fit(
        Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))


def evaluation() -> AdversarialEvaluation:
    return AdversarialEvaluation(attacks=[{"name": "fgsm"}], eps=[0.1], subset=None, plot=False,
                                 write_json=False, batch_size=4)


def test_bar_on_request_and_silent_otherwise(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDROBUST_PROGRESS", "1")
    fit(tmp_path, [evaluation()], progress_bar=False)
    err = capfd.readouterr().err
    assert "adv val: 1 attack(s) × 1 ε" in err and "0/3" in err  # 3 batches of 4 samples
    monkeypatch.delenv("MEDROBUST_PROGRESS")
    assert not bar_wanted()  # pytest's stderr is not a terminal
    fit(tmp_path, [evaluation()], progress_bar=False)
    assert "attack(s)" not in capfd.readouterr().err
    monkeypatch.setenv("MEDROBUST_PROGRESS", "0")
    assert not bar_wanted()


def test_epoch_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fit(tmp_path, [EpochLine(prefix="[run.py] 1/3 x")], progress_bar=False)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[run.py] 1/3 x")]
    assert [x.split(" · ")[0] for x in lines] == ["[run.py] 1/3 x epoch 1/2", "[run.py] 1/3 x epoch 2/2"]
    assert all("train/loss" in x for x in lines)


def test_bar_names_batch_member_and_eps(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One step per batch × member × ε, and the text names the one running."""
    monkeypatch.setenv("MEDROBUST_PROGRESS", "1")
    cb = AdversarialEvaluation(attacks=[{"name": "fgsm"}, {"name": "pgd", "steps": 1}], eps=[0.1, 0.2],
                               subset=None, plot=False, write_json=False, batch_size=4, sanity="never")
    fit(tmp_path, [cb], progress_bar=False)
    err = capfd.readouterr().err
    for b in (1, 2, 3):  # 12 samples in batches of 4
        for member in ("fgsm ε=0.1", "pgd ε=0.1", "fgsm ε=0.2", "pgd ε=0.2"):
            assert f"batch {b}/3 · {member}" in err, err[-1500:]
    assert "adv val: 2 attack(s) × 2 ε" in err and "12/12" in err  # 3 batches × 2 members × 2 ε
    monkeypatch.delenv("MEDROBUST_PROGRESS")
    fit(tmp_path, [cb], progress_bar=False)
    assert "batch 1/3" not in capfd.readouterr().err  # not a terminal: no bar, no log lines
