"""Run folders and names for the medrobust CLI: the experiment's name, a CSV logger by default,
a resolved config that is never overwritten.

Runs log under ``<trainer.default_root_dir>/<experiment name>/version_<n>/`` (CSV by default;
W&B or TensorBoard alike): one folder per run for every logger (:mod:`medrobust.run_folders`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import SaveConfigCallback

__all__ = ["DEFAULT_RUN_NAME", "NoClobberSaveConfigCallback", "csv_logger_config", "experiment_name",
           "free_config_name"]

DEFAULT_RUN_NAME = "medrobust"


def experiment_name(config_paths: list[str]) -> str:
    """The experiment's name: the stem of its config file (the last one under ``experiment/``
    if several are given, never a ``logger/``, ``trainer/`` or ``callbacks/`` piece), else
    ``medrobust``."""
    paths = [str(p) for p in config_paths if p is not None]
    if not paths:
        return DEFAULT_RUN_NAME
    experiments = [p for p in paths if "experiment" in Path(p).parts]
    # pieces that add a logger / trainer / callbacks do not name the experiment
    named = [p for p in paths if not {"logger", "trainer", "callbacks"} & set(Path(p).parts[-2:-1])]
    return Path((experiments or named or paths)[-1]).stem


def csv_logger_config(root: Path, name: str) -> Any:
    """medrobust's default logger (Lightning's is TensorBoard when installed): CSV under
    ``<root>/<name>/version_<n>``, as a ``{class_path, init_args}`` namespace."""
    from jsonargparse import Namespace

    return Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                     init_args=Namespace(save_dir=str(root), name=name))


def free_config_name(log_dir: str | os.PathLike[str], name: str) -> str:
    """``name`` if ``log_dir/name`` does not exist, else ``stem-1.yaml``, ``stem-2.yaml`` …"""
    path = Path(log_dir) / name
    if not path.exists():
        return name
    stem, suffix = path.stem, path.suffix
    i = 1
    while (Path(log_dir) / f"{stem}-{i}{suffix}").exists():
        i += 1
    return f"{stem}-{i}{suffix}"


class NoClobberSaveConfigCallback(SaveConfigCallback):
    """Saves the resolved config in ``trainer.log_dir`` and never overwrites one: a second
    run into the same directory writes ``config-1.yaml`` instead of failing or clobbering.
    With a W&B logger the resolved config also goes to the run's config."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir
            name = free_config_name(log_dir, self.config_filename) if (
                trainer.is_global_zero and log_dir is not None) else self.config_filename
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover - wandb is a declared dependency
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                cfg = self.parser.dump(self.config, skip_none=False, format="json")
                import json

                logger.experiment.config.update({"cli": json.loads(cfg)}, allow_val_change=True)
