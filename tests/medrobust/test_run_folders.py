"""One folder per run for every logger (CSV, W&B offline), resume in the run's folder, no empty
folders from failed parses (medrobust/run_folders.py, train.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medrobust.run_folders import next_version, version_of
from tests.support.tiny_configs import tiny_experiment, write_config
from train import cli_main

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"]


def tiny(tmp_path: Path, experiment: str) -> Path:
    """A shipped synthetic classification experiment with tiny sizes, same file name."""
    cfg = tiny_experiment(experiment, features=[4, 8], data=dict(num_train=16, num_val=8, num_test=8,
                                                                  image_size=[16, 16], batch_size=8))
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("AdversarialEvaluation"):
            cb["init_args"].update(subset=8, attacks=[{"name": "pgd", "norm": "linf", "steps": 1}])
    return write_config(cfg, tmp_path / "cfg" / f"{experiment}.yaml")


def test_versions() -> None:
    assert version_of(Path("/r/x/version_3/checkpoints/last.ckpt"), Path("/r/x")) == 3
    assert version_of(Path("/r/y/version_3/last.ckpt"), Path("/r/x")) is None


def test_csv_resume_continues_in_its_run_folder(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    common = ["--config", str(tiny(tmp_path, "classification_synthetic_sat")),
              "--trainer.default_root_dir", str(root), *QUIET]
    first = cli_main(["fit", *common, "--trainer.max_epochs", "1"])
    folder = Path(first.trainer.log_dir)
    assert folder == root / "classification_synthetic_sat" / "version_0"
    other = cli_main(["fit", *common, "--trainer.max_epochs", "1"])  # a new run: a new folder
    assert Path(other.trainer.log_dir) == folder.parent / "version_1"
    # resume version_0 by path (the newest last.ckpt is version_1's): it continues there
    resumed = cli_main(["fit", *common, "--trainer.max_epochs", "2",
                        "--ckpt_path", str(folder / "checkpoints" / "last.ckpt")])
    assert resumed.trainer.current_epoch == 2
    assert Path(resumed.trainer.log_dir) == folder
    # `last` finds the newest last.ckpt (now version_0's) and continues in place as well
    again = cli_main(["fit", *common, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert Path(again.trainer.log_dir) == folder
    assert again.trainer.current_epoch == 3
    assert not (folder.parent / "version_2").exists()
    with open(folder / "metrics.csv", newline="") as fh:
        epochs = {int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch")}
    assert epochs == {0, 1, 2}  # the earlier epochs of the run were kept, not deleted
    history = (folder / "robustness_history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [0, 1, 2]
    assert sorted(p.name for p in folder.glob("config*.yaml")) == [
        "config-1.yaml", "config-2.yaml", "config.yaml"]  # every segment's config kept


def test_failed_parse_leaves_no_folder(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with pytest.raises(ValueError, match="lr must be"):
        cli_main(["fit", "--config", str(tiny(tmp_path, "classification_synthetic_sat")),
                  "--trainer.default_root_dir", str(root), "--model.init_args.lr", "-1", *QUIET])
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))


def test_failed_test_leaves_no_folder(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        cli_main(["test", "--config", str(tiny(tmp_path, "classification_synthetic_sat")),
                  "--trainer.default_root_dir", str(root), *QUIET, "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))


def test_a_folder_with_more_than_its_config_is_kept(tmp_path: Path) -> None:
    from medrobust.run_folders import remove_unused_run_folder

    run = tmp_path / "x" / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    (run / "robustness.json").write_text("{}")  # e.g. a record written before a failure
    assert not remove_unused_run_folder(run) and (run / "config.yaml").is_file()
    (run / "robustness.json").unlink()
    assert remove_unused_run_folder(run) and not (tmp_path / "x").exists()


def test_test_writes_beside_the_training_run(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    common = ["--config", str(tiny(tmp_path, "classification_synthetic_sat")),
              "--trainer.default_root_dir", str(root), *QUIET]
    folder = Path(cli_main(["fit", *common, "--trainer.max_epochs", "1"]).trainer.log_dir)
    assert folder.name == "version_0"
    other = Path(cli_main(["fit", *common, "--trainer.max_epochs", "1"]).trainer.log_dir)
    assert other.name == "version_1"
    # `last`: the newest run's checkpoint (version_1), evaluated in version_1
    last = cli_main(["test", *common, "--ckpt_path", "last"])
    assert Path(last.trainer.log_dir) == other
    # a path to version_0's checkpoint: evaluated in version_0, not in a new version_2
    test = cli_main(["test", *common, "--ckpt_path", str(folder / "checkpoints" / "last.ckpt")])
    assert Path(test.trainer.log_dir) == folder
    assert not (folder.parent / "version_2").exists()
    assert json.loads((folder / "robustness.json").read_text())["split"] == "test"
    history = [json.loads(x) for x in (folder / "robustness_history.jsonl").read_text().splitlines()]
    assert [r["split"] for r in history] == ["val", "test"]  # the training's record is kept
    with open(folder / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert any(r.get("train/loss_epoch") for r in rows)  # the training's rows are kept
    assert any(r.get("test/accuracy") for r in rows), rows[-1].keys()
    assert sorted(p.name for p in folder.glob("config*.yaml")) == ["config-1.yaml", "config.yaml"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_two_wandb_runs_keep_separate_folders_and_resume_in_place(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DISABLE_GIT": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("WANDB_DIR", None)
    # An in-process W&B run of an earlier test leaves WANDB_SERVICE pointing at this pytest
    # process's wandb-core; sharing it, the resumed run's id would still be "in use" there.
    for key in [k for k in env if k.startswith("WANDB_SERVICE")]:
        env.pop(key)

    def fit(experiment: str, *extra: str) -> None:
        cmd = [sys.executable, "train.py", "fit", "--config", str(tiny(tmp_path, experiment)),
               "--config", "configs/logger/wandb.yaml", "--trainer.default_root_dir", str(root),
               "--trainer.limit_train_batches", "1", *QUIET, *extra]
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    fit("classification_synthetic_amat", "--trainer.max_epochs", "1")
    fit("classification_synthetic_sat", "--trainer.max_epochs", "1")
    amat, sat = (root / n / "version_0" for n in ("classification_synthetic_amat",
                                                    "classification_synthetic_sat"))
    for folder, method in ((amat, "amat"), (sat, "sat")):
        records = [json.loads(x) for x in (folder / "robustness_history.jsonl").read_text().splitlines()]
        assert [r["method"] for r in records] == [method]
        assert json.loads((folder / "robustness.json").read_text())["method"] == method
        assert (folder / "config.yaml").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
        assert list((folder / "wandb").glob("offline-run-*")), f"no W&B run in {folder}"
    # nothing of a run lands directly in the root
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["classification_synthetic_amat", "classification_synthetic_sat"])

    fit("classification_synthetic_sat", "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert not (root / "classification_synthetic_sat" / "version_1").exists()
    records = [json.loads(x) for x in (sat / "robustness_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    runs = sorted((sat / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # same W&B id


def test_next_version(tmp_path: Path) -> None:
    assert next_version(tmp_path / "absent") == 0
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_4").mkdir()
    (tmp_path / "version_x").mkdir()
    assert next_version(tmp_path) == 5


def test_configure_loggers_gives_every_logger_the_run_folder(tmp_path: Path) -> None:
    """TensorBoard (not installed here, so checked on the parsed config), CSV and W&B."""
    from jsonargparse import Namespace

    from medrobust.run_folders import configure_loggers

    (tmp_path / "exp" / "version_0").mkdir(parents=True)
    tb = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                   init_args=Namespace(save_dir=str(tmp_path), name="lightning_logs", version=None))
    wb = Namespace(class_path="lightning.pytorch.loggers.WandbLogger",
                   init_args=Namespace(save_dir=".", name=None, id=None))
    first = configure_loggers([tb, wb], tmp_path, "exp", None)
    assert first == tmp_path / "exp" / "version_1"
    assert tb.init_args.name == "exp" and tb.init_args.version == 1
    assert wb.init_args.save_dir == str(tmp_path / "exp" / "version_1")
    assert wb.init_args.name == "exp/version_1"
    # resuming a checkpoint of version_0 keeps version_0, and the W&B run id found there
    (tmp_path / "exp" / "version_0" / "wandb" / "offline-run-20260101_000000-abc123").mkdir(parents=True)
    tb.init_args.version = None
    wb.init_args["save_dir"], wb.init_args["name"] = ".", None
    ckpt = tmp_path / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    assert configure_loggers([tb, wb], tmp_path, "exp", ckpt) == tmp_path / "exp" / "version_0"
    assert tb.init_args.version == 0 and wb.init_args.id == "abc123"
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing written
