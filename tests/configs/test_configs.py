"""Every shipped experiment config fits a couple of steps; the config pieces compose."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medrobust.config_pieces import load_config
from tests.conftest import PROJECT_ROOT
from train import cli_main

EXPERIMENTS = sorted((PROJECT_ROOT / "configs" / "experiment").glob("*.yaml"))


def shrink(cfg: dict) -> dict:
    """The shipped config with smaller sizes so a CI step is cheap: fewer synthetic samples,
    a smaller adversarial-evaluation and watchdog subset. Class paths and every other setting stay."""
    cfg = copy.deepcopy(cfg)
    for cb in cfg.get("trainer", {}).get("callbacks", []) or []:
        if cb.get("class_path", "").endswith("AdversarialEvaluation"):
            args = cb.setdefault("init_args", {})
            args.update(subset=4, plot=False, report=False)  # plots cost more than the fit
            for attack in args.get("attacks") or []:
                if "steps" in attack:
                    attack["steps"] = 2
        if cb.get("class_path", "").endswith("CatastrophicOverfittingWatchdog"):
            # its measurement (128 samples under PGD-10, the PNG) cost ~10 s per fast-AT config
            args = cb.setdefault("init_args", {})
            args.update(subset=4, plot=False)
            if isinstance(args.get("multi_step_attack"), dict) and "steps" in args["multi_step_attack"]:
                args["multi_step_attack"]["steps"] = 2
    data = cfg.get("data", {}).get("init_args", {})
    if cfg.get("data", {}).get("class_path", "").endswith("SyntheticDataModule"):
        data.update(num_train=32, num_val=8, num_test=8, batch_size=min(8, data.get("batch_size", 8)))
    elif "batch_size" in data:
        data["batch_size"] = 4
    if "image_size" in data and len(data["image_size"]) == 2 and min(data["image_size"]) > 64:
        data["image_size"] = [64, 64]
    method = cfg.get("model", {}).get("init_args", {}).get("method") or {}
    attack = (method.get("init_args") or {}).get("attack")  # the training method's attack spec
    if isinstance(attack, dict) and "steps" in attack:
        attack["steps"] = 2
    return cfg


def test_experiment_configs_exist() -> None:
    names = {p.stem for p in EXPERIMENTS}
    for task in ("classification", "segmentation"):
        for method in ("clean", "sat", "amat", "denoise", "trades"):
            assert f"{task}_synthetic_{method}" in names
    assert "quickstart" in names
    for p in EXPERIMENTS:  # file names say task_dataset_method
        if p.stem != "quickstart":
            assert p.stem.split("_")[0] in ("classification", "segmentation", "landmarks", "detection")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_fits_two_steps(path: Path, tmp_path: Path, request: pytest.FixtureRequest,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    raw = load_config(path)
    if not raw.get("data", {}).get("class_path", "").endswith("SyntheticDataModule"):
        root = request.getfixturevalue("shared_data")  # real data: skipped when absent
        monkeypatch.setenv("MEDROBUST_DATA", str(root))
    cfg = shrink(raw)
    small = tmp_path / path.name
    small.write_text(yaml.safe_dump(cfg))
    cli = cli_main([
        "fit", "--config", str(small),
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.max_epochs", "1", "--trainer.max_steps", "2",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.accelerator", "cpu",
    ])
    assert cli.trainer.global_step == 2
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.is_relative_to(tmp_path / "runs")
    assert (log_dir / "config.yaml").is_file()
    assert any((log_dir / "checkpoints").glob("last*.ckpt"))


def test_pieces_compose(tmp_path: Path) -> None:
    """trainer + data + model + method pieces make a runnable config."""
    c = PROJECT_ROOT / "configs"
    cli = cli_main([
        "fit",
        "--config", str(c / "trainer" / "default.yaml"),
        "--config", str(c / "trainer" / "cpu.yaml"),
        "--config", str(c / "data" / "synthetic_classification.yaml"),
        "--config", str(c / "model" / "classification_smallcnn.yaml"),
        "--config", str(c / "model" / "method" / "amat.yaml"),
        "--data.init_args.num_train", "16", "--data.init_args.num_val", "8",
        "--data.init_args.batch_size", "8",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
    ])
    assert cli.model.method.name == "amat"
    assert cli.model.method.margins.shape == (16,)


MODEL_PIECES = sorted(p for p in (PROJECT_ROOT / "configs" / "model").glob("*.yaml")
                      if p.stem.split("_")[0] in ("classification", "segmentation"))


@pytest.mark.parametrize("piece", MODEL_PIECES, ids=lambda p: p.stem)
def test_model_pieces_build(piece: Path) -> None:
    """Every network piece instantiates for its task's synthetic data (MONAI / torchvision
    networks from class_path, channels and classes filled from the data)."""
    import torch

    from datamodules.synthetic import SyntheticDataModule
    from lightning_modules.nets.builder import import_object

    cfg = yaml.safe_load(piece.read_text())["model"]
    cls = import_object(cfg["class_path"])
    task = "segmentation" if "Segmentation" in cfg["class_path"] else "classification"
    info = SyntheticDataModule(task=task, num_classes=3, num_train=4, image_size=(32, 32)).info
    module = cls(data_info=info, **{k: v for k, v in cfg["init_args"].items()})
    module.eval()
    with torch.no_grad():
        out = module(torch.rand(2, 1, 32, 32))
    expected = (2, 3) if task == "classification" else (2, 3, 32, 32)
    assert tuple(out.shape) == expected


@pytest.mark.parametrize("piece", sorted((PROJECT_ROOT / "configs" / "data").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_data_pieces_describe_their_data(piece: Path, request: pytest.FixtureRequest,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_modules.nets.builder import import_object

    cfg = yaml.safe_load(piece.read_text())["data"]
    if not cfg["class_path"].endswith("SyntheticDataModule"):
        monkeypatch.setenv("MEDROBUST_DATA", str(request.getfixturevalue("shared_data")))
    dm = import_object(cfg["class_path"])(**cfg.get("init_args", {}))
    info = dm.info
    assert info.num_train > 0 and info.in_channels >= 1
