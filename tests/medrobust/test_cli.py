"""train.py: --print_config, saved configs, validate/test with --ckpt_path, resume, W&B offline."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules import ClassificationModule
from medrobust.cli_runs import free_config_name
from medrobust.cli_summary import summarise_record
from medrobust.config_pieces import load_config
from train import cli_main

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = PROJECT_ROOT / "configs" / "experiment" / "classification_synthetic_amat.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"]


def small_config(tmp_path: Path) -> Path:
    """The shipped AMAT experiment with tiny sizes (same file name, so the same run name)."""
    cfg = load_config(EXPERIMENT)
    cfg["data"]["init_args"].update(num_train=16, num_val=8, num_test=8, image_size=[16, 16],
                                    batch_size=8)
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("AdversarialEvaluation"):
            cb["init_args"]["subset"] = 8
    cfg["model"]["init_args"]["net"]["init_args"]["features"] = [4, 8]
    cfg["model"]["init_args"]["method"]["init_args"]["attack"]["steps"] = 2
    path = tmp_path / EXPERIMENT.name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--config", str(EXPERIMENT), "--print_config"])
    assert exc.value.code in (0, None)
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["model"]["init_args"]["method"]["class_path"] == "lightning_modules.methods.AMAT"
    assert out["data"]["class_path"] == "datamodules.synthetic.SyntheticDataModule"


@pytest.mark.parametrize("config", ["detection_synthetic_clean", "classification_synthetic_clean"])
def test_model_overrides_with_function_nets(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model.init_args.*`` flags work when the net's class_path is a function (detectors'
    builders, torchvision ``resnet18``): jsonargparse alone fails on them (see train.py)."""
    path = PROJECT_ROOT / "configs" / "experiment" / f"{config}.yaml"
    net = {"class_path": "torchvision.models.resnet18", "init_args": {"weights": None}}
    args = ["fit", "--config", str(path), "--model.init_args.lr", "0.0123"]
    if config.startswith("classification"):
        args += ["--model.init_args.net", yaml.safe_dump(net, default_flow_style=True).strip()]
    with pytest.raises(SystemExit) as exc:
        cli_main([*args, "--print_config"])
    assert exc.value.code in (0, None)
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["model"]["init_args"]["lr"] == pytest.approx(0.0123)
    net_path = out["model"]["init_args"]["net"]["class_path"]
    assert net_path.endswith("tiny_fcos" if config.startswith("detection") else "resnet18")


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as exc:
        cli_main(["fit", "--config", str(small_config(tmp_path)),
                  "--model.init_args.method.init_args.delta", "-1",
                  "--trainer.default_root_dir", str(tmp_path)])
    assert "AMAT.delta must be" in str(exc.value)


def test_fit_validate_test_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(small_config(tmp_path))
    root = str(tmp_path / "runs")
    common = ["--config", cfg, "--trainer.default_root_dir", root, *QUIET]
    fit = cli_main(["fit", *common, "--trainer.max_epochs", "1"])
    log_dir = Path(fit.trainer.log_dir)
    assert log_dir == Path(root) / EXPERIMENT.stem / "version_0"
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["method"]["init_args"]["attack"]["steps"] == 2  # resolved config
    assert (log_dir / "metrics.csv").is_file()
    ckpt = log_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    steps_per_epoch = fit.trainer.global_step
    margins = fit.model.method.margins.clone()
    assert "[medrobust] val:" in capsys.readouterr().out  # clean + adversarial summary

    # checkpoints load with weights_only (plain hyperparameters) and outside the CLI
    raw = torch.load(ckpt, weights_only=True)
    assert torch.equal(raw["state_dict"]["method.margins"], margins)
    loaded = ClassificationModule.load_from_checkpoint(ckpt)
    assert torch.equal(loaded.method.margins, margins) and loaded.method.name == "amat"

    val = cli_main(["validate", *common, "--ckpt_path", str(ckpt)])
    assert "val/accuracy" in val.trainer.callback_metrics
    test = cli_main(["test", *common, "--ckpt_path", str(ckpt)])
    assert "test/accuracy" in test.trainer.callback_metrics
    assert torch.equal(test.model.method.margins, margins)

    resumed = cli_main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == 2 * steps_per_epoch  # continued, not restarted
    # every run kept its own resolved config; none was overwritten
    configs = sorted((Path(root) / EXPERIMENT.stem).glob("version_*/config*.yaml"))
    assert len(configs) == 4


def test_config_names_never_clobber(tmp_path: Path) -> None:
    assert free_config_name(tmp_path, "config.yaml") == "config.yaml"
    (tmp_path / "config.yaml").write_text("x")
    (tmp_path / "config-1.yaml").write_text("x")
    assert free_config_name(tmp_path, "config.yaml") == "config-2.yaml"


def test_summary_line() -> None:
    rec = {"task": "classification", "method": "sat", "split": "val", "epoch": 3, "clean": {"accuracy": 0.9},
           "attacks": [{"attack": "pgd", "norm": "linf", "eps": 0.01, "steps": 10,
                        "metrics": {"accuracy": 0.5}}]}
    line = summarise_record(rec, "accuracy")
    assert "clean accuracy 0.900" in line and "pgd linf eps=0.01 (10 steps) accuracy 0.500" in line


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_offline_run(tmp_path: Path) -> None:
    """The W&B logger piece works with no account and no network (offline run folder)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path), "WANDB_DISABLE_GIT": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [sys.executable, "train.py", "fit", "--config", str(small_config(tmp_path)),
           "--config", "configs/logger/wandb.yaml", "--trainer.default_root_dir", str(tmp_path),
           "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", *QUIET]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, f"no offline W&B run under {tmp_path}"
