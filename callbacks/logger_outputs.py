"""Send figures and tables to whichever loggers the trainer has (call on rank 0 only).

Scalars go through ``pl_module.log`` (every logger gets them, CSV included); images and tables
are logger-specific: W&B gets ``wandb.Image`` / ``wandb.Table``, TensorBoard gets images, the
CSV logger only scalars (the PNGs sit in the log directory beside ``metrics.csv``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def _is_tensorboard(logger: Any) -> bool:
    return type(logger).__name__ == "TensorBoardLogger"


def log_image(trainer: Any, key: str, path: str | Path, caption: str = "") -> None:
    """Log the PNG at ``path`` under ``key`` to every image-capable logger."""
    step = int(trainer.global_step)
    for logger in getattr(trainer, "loggers", []):
        try:
            if _is_wandb(logger):
                logger.log_image(key=key, images=[str(path)], caption=[caption] if caption else None, step=step)
            elif _is_tensorboard(logger):
                import matplotlib.image as mpimg

                img = mpimg.imread(str(path))[..., :3]
                logger.experiment.add_image(key, img, global_step=step, dataformats="HWC")
        except Exception as err:  # a figure must never kill a training run
            warnings.warn(f"could not log image {key!r} to {type(logger).__name__}: {err}", stacklevel=2)


def log_table(trainer: Any, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Log a table to W&B (``wandb.Table``); other loggers have the JSON file instead."""
    step = int(trainer.global_step)
    for logger in getattr(trainer, "loggers", []):
        if not _is_wandb(logger):
            continue
        try:
            logger.log_table(key=key, columns=list(columns), data=[list(r) for r in rows], step=step)
        except Exception as err:
            warnings.warn(f"could not log table {key!r} to W&B: {err}", stacklevel=2)
