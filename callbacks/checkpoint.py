"""``ModelCheckpoint`` whose ``last.ckpt`` is always the latest state, so ``--ckpt_path last``
resumes where the run stopped.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only "whenever a
checkpoint file gets saved": with a ``monitor`` and ``save_top_k: 1`` (every medrobust config:
the best robust area) that is only in epochs where the monitored value improved. A run killed
five epochs after its best epoch then resumes five epochs back and trains them again, with no
word. :class:`ModelCheckpoint` here also writes ``last.ckpt`` at every epoch end (and at every
``every_n_train_steps`` step) where no top-k file was written.

Second, the top-k record survives a resume, also into a new log folder (``train.py fit
--ckpt_path last`` continues in its own run folder, but a checkpoint can be resumed from
anywhere). When the callback's ``dirpath`` differs from the checkpoint's, Lightning drops ``best_model_score``, ``best_k_models`` and
``kth_value``: the first epoch after the resume becomes "best" even when an earlier epoch scored
higher (a denoise run in ``benchmarks/fault_resume.py`` picked a worse epoch this way). Here they
are restored (entries whose files are gone are dropped); Lightning never deletes checkpoint
files outside the current ``dirpath``, so the earlier run's best file stays where it is and
``best_model_path`` keeps pointing at it until a better epoch comes. Top-k selection and file
names are otherwise Lightning's.

:func:`upgrade_checkpoint_callbacks` turns the plain Lightning callbacks of a trainer into this
class (same attributes, no new state), so existing configs naming
``lightning.pytorch.callbacks.ModelCheckpoint`` get the fix; the task modules call it in
``setup``, and :func:`install_atomic_checkpoint_io` (the crash-safe writer of
:mod:`callbacks.atomic` as the trainer's ``CheckpointIO``).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint

from callbacks.atomic import atomic_write_bytes


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint``; with ``save_last=True`` ``last.ckpt`` is refreshed at
    every save opportunity, not only when a top-k checkpoint was written (module doc)."""

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last is not True:  # "link" and False keep Lightning's behaviour
            return
        if (trainer.fast_dev_run or trainer.sanity_checking
                or trainer.state.fn != pl.trainer.states.TrainerFn.FITTING):
            return
        if self._last_global_step_saved == trainer.global_step and self.last_model_path:
            return  # a top-k file (and last.ckpt with it) was written at this step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self._every_n_train_steps
        if n >= 1 and trainer.global_step % n == 0:
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._refresh_last(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath", self.dirpath)
        with warnings.catch_warnings():  # "dirpath has changed ... won't be reloaded": it is, below
            if saved_dir != self.dirpath:
                warnings.filterwarnings("ignore", message="The dirpath has changed")
            super().load_state_dict(state_dict)
        if state_dict.get("monitor") != self.monitor:
            return  # other monitor: nothing to keep
        if saved_dir == self.dirpath:
            # Same folder: Lightning restored the top-k record but not the score of the last
            # save, which the next epoch's checkpoint then carries; keep it too.
            self.current_score = state_dict.get("current_score", self.current_score)
            return
        kept = {path: score for path, score in (state_dict.get("best_k_models") or {}).items()
                if Path(path).exists()}
        self.best_k_models = kept
        if kept:
            self.best_model_score = state_dict.get("best_model_score")
            self.current_score = state_dict.get("current_score")
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            if self.kth_best_model_path not in kept:  # its file is gone: the worst of the rest
                worst = (max if self.mode == "min" else min)(kept, key=lambda p: float(kept[p]))
                self.kth_best_model_path, self.kth_value = worst, kept[worst]
            if self.best_model_path not in kept:
                best = (min if self.mode == "min" else max)(kept, key=lambda p: float(kept[p]))
                self.best_model_path, self.best_model_score = best, kept[best]

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        n = self._every_n_epochs
        return n >= 1 and (trainer.current_epoch + 1) % n == 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with a crash-safe local write (see the module doc).

    Same file format (``torch.save`` of Lightning's checkpoint dict) and same loading; remote
    paths (``s3://`` …) keep Lightning's fsspec writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`. Please implement your custom"
                " `CheckpointIO` to define how you'd like to use `storage_options`."
            )
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def install_atomic_checkpoint_io(trainer: Any) -> bool:
    """Make ``trainer``'s strategy write checkpoints with :class:`AtomicCheckpointIO` when it
    uses Lightning's plain ``TorchCheckpointIO`` (single device, DDP). Strategies with their
    own writer (FSDP, DeepSpeed, XLA) and user-given plugins are left alone. Returns whether it
    replaced the writer."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return False
    current = strategy.checkpoint_io
    if type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False


def upgrade_checkpoint_callbacks(trainer: Any) -> int:
    """Make every plain ``lightning.pytorch.callbacks.ModelCheckpoint`` of ``trainer`` a
    :class:`ModelCheckpoint` (a subclass adding only methods, so the swap keeps its state).
    Returns how many were upgraded."""
    count = 0
    for cb in getattr(trainer, "callbacks", []):
        if type(cb) is _LightningModelCheckpoint:
            cb.__class__ = ModelCheckpoint
            count += 1
    return count
