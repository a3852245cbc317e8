"""``Speedups.direct_logging``: fit's per-epoch scalars reach the loggers, ``callback_metrics`` and
``logged_metrics`` as ``LightningModule.log`` would put them there (keys, float32 values, step,
epoch), a monitor still works, and ``validate`` / ``test`` keep ``self.log``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from callbacks import AdversarialEvaluation
from callbacks.evaluation_writers import publish_scalars, scalar_values
from callbacks.speedups import Speedups
from tests.support.callback_models import make_datamodule, make_module

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module

SETTINGS = {"attacks": [{"name": "fgsm"}], "eps": [0.01, 0.03], "subset": 6, "batch_size": 3,
            "plot": False, "write_json": False, "report": False}


def _fit(tmp_path: Path, direct: bool, epochs: int = 2) -> tuple[L.Trainer, AdversarialEvaluation, Any, list]:
    """A tiny fit with a CSV logger, a checkpoint and early stopping on ``adv/robust_area``;
    returns the trainer, the callback, the checkpoint callback and each epoch's record."""
    L.seed_everything(0)
    ev = AdversarialEvaluation(**SETTINGS)
    ev.runner.speedups = Speedups(direct_logging=direct)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="adv/robust_area", mode="max", save_top_k=1)
    stop = EarlyStopping(monitor="adv/robust_area", mode="max", patience=10)
    records: list[Any] = []

    class Keep(L.Callback):
        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                records.append(ev.last_record["val"])

    dm = make_datamodule(num_val=8, num_train=16)
    tr = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=CSVLogger(tmp_path, name="csv"),
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                   limit_train_batches=1, num_sanity_val_steps=0, callbacks=[ev, Keep(), ckpt, stop])
    tr.fit(make_module(dm), dm)
    return tr, ev, ckpt, records


def _rows(tr: L.Trainer) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(tr.logger.log_dir) / "metrics.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _by_epoch(rows: list[dict[str, str]], prefix: str) -> dict[int, dict[str, tuple[float, int]]]:
    """``{epoch: {key: (value, step)}}`` of the non-empty cells whose key starts with ``prefix``."""
    out: dict[int, dict[str, tuple[float, int]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(prefix) and value != "":
                out.setdefault(int(row["epoch"]), {})[key] = (float(value), int(row["step"]))
    return out


def test_direct_logging_writes_what_self_log_wrote(tmp_path: Path) -> None:
    """The same CSV columns, the same adv/* values per epoch at the step of that epoch's val/*
    row, the same callback_metrics / logged_metrics, and the monitored checkpoint picks the
    same epoch with the same score."""
    runs = {direct: _fit(tmp_path / f"direct_{direct}", direct) for direct in (True, False)}
    (fast, _, ckpt_fast, records), (slow, _, ckpt_slow, records_slow) = runs[True], runs[False]
    # the evaluation itself did not change (the runner's speedups are all on in both)
    assert [r.to_dict()["attacks"] for r in records] == [r.to_dict()["attacks"] for r in records_slow]

    cols_fast, rows_fast = _rows(fast)
    cols_slow, rows_slow = _rows(slow)
    assert sorted(cols_fast) == sorted(cols_slow)
    assert any(c.startswith("adv/ensemble/eps=0.03/") for c in cols_fast)
    adv_fast, adv_slow = _by_epoch(rows_fast, "adv/"), _by_epoch(rows_slow, "adv/")
    assert set(adv_fast) == set(adv_slow) == {0, 1}
    for epoch in (0, 1):
        drop = "adv/eval_seconds"  # a wall time: differs between the two runs
        assert {k: v for k, v in adv_fast[epoch].items() if k != drop} == \
            {k: v for k, v in adv_slow[epoch].items() if k != drop}
        assert set(adv_fast[epoch]) == set(scalar_values(records[epoch], "adv"))
        # each value is the record's, rounded to float32 as self.log stores it
        for key, value in scalar_values(records[epoch], "adv").items():
            if key != drop:
                got = adv_fast[epoch][key][0]
                want = float(torch.tensor(value, dtype=torch.float32))
                assert got == want or (math.isnan(got) and math.isnan(want)), key
        # at the step Lightning logs the epoch's own val/* scalars
        val_steps = {step for _, step in _by_epoch(rows_fast, "val/")[epoch].values()}
        assert {step for _, step in adv_fast[epoch].values()} == val_steps

    for attr in ("callback_metrics", "logged_metrics"):
        got = {k: v for k, v in getattr(fast, attr).items() if k.startswith("adv/") and k != "adv/eval_seconds"}
        want = {k: v for k, v in getattr(slow, attr).items() if k.startswith("adv/") and k != "adv/eval_seconds"}
        assert set(got) == set(want) and len(got) == len(scalar_values(records[-1], "adv")) - 1
        for key in want:
            assert got[key].dtype == want[key].dtype == torch.float32 and got[key].ndim == 0
            assert torch.equal(got[key], want[key]) or (got[key].isnan() and want[key].isnan()), key

    # the monitor: the same best score and epoch, and its file exists
    assert ckpt_fast.best_model_score is not None
    assert float(ckpt_fast.best_model_score) == float(ckpt_slow.best_model_score)
    assert Path(ckpt_fast.best_model_path).name == Path(ckpt_slow.best_model_path).name
    assert Path(ckpt_fast.best_model_path).is_file()
    assert float(ckpt_fast.best_model_score) == float(torch.tensor(
        max(r.robust_area.value for r in records), dtype=torch.float32))


def test_validate_and_test_still_log_through_lightning(tmp_path: Path) -> None:
    """``trainer.validate`` / ``trainer.test`` return the adv scalars (they go through
    ``self.log`` there, whatever ``direct_logging`` says)."""
    ev = AdversarialEvaluation(**SETTINGS, sanity="never", intervals="never")
    assert ev.runner.speedups.direct_logging
    dm = make_datamodule(num_val=8, num_train=16)
    model = make_module(dm)
    tr = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[ev])
    (val,) = tr.validate(model, dm, verbose=False)
    (test,) = tr.test(model, dm, verbose=False)
    assert val["adv/robust_area"] == float(torch.tensor(ev.last_record["val"].robust_area.value))
    assert test["adv/robust_area"] == float(torch.tensor(ev.last_record["test"].robust_area.value))
    assert set(scalar_values(ev.last_record["test"], "adv")) <= set(test)


def test_publish_scalars_takes_the_max_over_ranks() -> None:
    """Under DDP the values are max-reduced in one collective (``reduce_fx="max"``)."""
    seen: list[tuple[torch.Tensor, str]] = []

    class Strategy:
        def reduce(self, t: torch.Tensor, reduce_op: str) -> torch.Tensor:
            seen.append((t.clone(), reduce_op))
            return t + torch.tensor([0.0, 1.0])  # "another rank was slower"

    class Trainer:
        world_size, strategy, loggers, is_global_zero = 2, Strategy(), [], False
        callback_metrics: dict[str, Any] = {}
        logged_metrics: dict[str, Any] = {}

    trainer = Trainer()
    publish_scalars(trainer, {"adv/robust_area": 0.5, "adv/eval_seconds": 2.0})
    assert len(seen) == 1 and seen[0][1] == "max"
    assert float(trainer.callback_metrics["adv/robust_area"]) == 0.5
    assert float(trainer.callback_metrics["adv/eval_seconds"]) == 3.0
    assert trainer.logged_metrics.keys() == trainer.callback_metrics.keys()


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
def test_publish_scalars_stores_lightnings_dtype(default: torch.dtype) -> None:
    """float32, or float64 when that is the default dtype (as ``self.log`` stores them)."""
    class Trainer:
        world_size, loggers, is_global_zero = 1, [], True
        callback_metrics: dict[str, Any] = {}
        logged_metrics: dict[str, Any] = {}

    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        trainer = Trainer()
        publish_scalars(trainer, {"adv/robust_area": 0.1})
    finally:
        torch.set_default_dtype(previous)
    assert trainer.callback_metrics["adv/robust_area"].dtype == default
    assert float(trainer.callback_metrics["adv/robust_area"]) == float(torch.tensor(0.1, dtype=default))


def _steps(rows: list[dict[str, str]], prefix: str) -> list[tuple[int, int]]:
    """``(epoch, step)`` of each CSV row with a non-empty cell whose key starts with ``prefix``."""
    return [(int(r["epoch"]), int(r["step"])) for r in rows
            if any(k.startswith(prefix) and v != "" for k, v in r.items())]


def test_logger_step_is_lightnings_with_accumulation_mid_epoch_validation_and_resume(tmp_path: Path) -> None:
    """The step the callback counts itself (:class:`callbacks.logger_step.CountsLoggerStep`, no
    private Lightning attribute) is the step of Lightning's own ``val/*`` row at every validation:
    with gradient accumulation over 2 of 3 batches and a validation after every batch — where
    neither ``global_step`` nor ``global_step − 1`` is that step — and in a run resumed from the
    last checkpoint (the count is the callback's state)."""
    def fit(root: Path, epochs: int, ckpt_path: str | None = None) -> tuple[L.Trainer, list[dict[str, str]]]:
        L.seed_everything(0)
        ev = AdversarialEvaluation(**SETTINGS)
        assert ev.runner.speedups.direct_logging
        dm = make_datamodule(num_val=8, num_train=48)
        tr = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=CSVLogger(root, name="csv", version=0),
                       enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                       limit_train_batches=3, accumulate_grad_batches=2, val_check_interval=1,
                       num_sanity_val_steps=0,
                       callbacks=[ev, ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)])
        tr.fit(make_module(dm), dm, ckpt_path=ckpt_path)
        return tr, _rows(tr)[1]

    tr, rows = fit(tmp_path / "a", 2)
    val, adv = _steps(rows, "val/"), _steps(rows, "adv/")
    assert len(val) == 6 and adv == val  # 3 validations per epoch, each at Lightning's own step
    assert [s for _, s in val] == [0, 0, 1, 2, 2, 3]  # a window of 2 batches, the last batch steps alone
    assert tr.global_step == 4
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)["medrobust_logger_step"]["adv"]  # the callback's count
    assert saved["logger_step"] + saved["ended"] == 4
    _, resumed = fit(tmp_path / "b", 3, ckpt_path=str(ckpt))
    val, adv = _steps(resumed, "val/"), _steps(resumed, "adv/")
    assert len(val) == 3 and adv == val
    assert [s for _, s in val] == [4, 4, 5]
