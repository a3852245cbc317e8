"""``ModelCheckpoint`` whose ``last.ckpt`` is always the latest state, so ``--ckpt_path last``
resumes where the run stopped, and :class:`AtomicCheckpointIO`, a crash-safe checkpoint writer.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only "whenever a
checkpoint file gets saved": with a ``monitor`` and ``save_top_k: 1`` (every medrobust config:
the best robust area) that is only in epochs where the monitored value improved. A run killed
five epochs after its best epoch then resumes five epochs back and trains them again, with no
word. :class:`ModelCheckpoint` here also writes ``last.ckpt`` at every epoch end (and at every
``every_n_train_steps`` step) where no top-k file was written, through Lightning's public
``Trainer.save_checkpoint`` and ``format_checkpoint_name``.

Second, the top-k record survives a resume, also into a new log folder (``train.py fit
--ckpt_path last`` continues in its own run folder, but a checkpoint can be resumed from
anywhere). When the callback's ``dirpath`` differs from the checkpoint's, Lightning drops ``best_model_score``, ``best_k_models`` and
``kth_value``: the first epoch after the resume becomes "best" even when an earlier epoch scored
higher (a denoise run in ``benchmarks/fault_resume.py`` picked a worse epoch this way). Here they
are restored (entries whose files are gone are dropped); Lightning never deletes checkpoint
files outside the current ``dirpath``, so the earlier run's best file stays where it is and
``best_model_path`` keeps pointing at it until a better epoch comes. Top-k selection and file
names are otherwise Lightning's.

Configs name this class (``class_path: callbacks.ModelCheckpoint``); a plain Lightning
``ModelCheckpoint`` keeps Lightning's behaviour (``train.py`` warns about it). The crash-safe
writer goes in through Lightning's ``plugins`` slot: ``Trainer(plugins=[AtomicCheckpointIO()])``,
which ``train.py`` adds where it builds the trainer unless the config names a ``CheckpointIO``.
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from torch import Tensor

from callbacks.atomic import atomic_write_bytes


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint``; with ``save_last=True`` ``last.ckpt`` is refreshed at
    every save opportunity, not only when a top-k checkpoint was written (module doc).

    Whether Lightning itself wrote a file in one of this instance's hooks is seen through public
    state only: the ``on_save_checkpoint`` callback hook while this instance's own hook runs
    (other checkpoint callbacks save in their own hooks), or a change of the top-k record
    (``save_weights_only`` checkpoints do not call callback hooks). One case is not seen — weights
    only, no ``monitor`` and a file name without placeholders — and then ``last.ckpt`` is
    written a second time in the same step, with the same content."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The triggers as given (Lightning keeps them in private attributes).
        given = inspect.signature(_LightningModelCheckpoint.__init__).bind(self, *args, **kwargs)
        given.apply_defaults()
        self.save_on_train_epoch_end: bool | None = given.arguments["save_on_train_epoch_end"]
        self.every_n_train_steps = int(given.arguments["every_n_train_steps"] or 0)
        #: while this instance's own hook runs (its saves are counted, not other callbacks')
        self._own_saving = False
        #: the global step of this instance's latest save
        self._own_save_step: int | None = None
        #: whether :meth:`_refresh_last` wrote a file in this run
        self._refreshed = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._own_saving:
            self._own_save_step = int(trainer.global_step)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last is not True:  # "link" and False keep Lightning's behaviour
            return
        if (trainer.fast_dev_run or trainer.sanity_checking
                or trainer.state.fn != pl.trainer.states.TrainerFn.FITTING):
            return
        if self._own_save_step == trainer.global_step and self.last_model_path:
            return  # a top-k file (and last.ckpt with it) was written at this step
        filepath = self.last_model_path or self._new_last_path(trainer)
        self.last_model_path = filepath  # before saving: it is part of the callback's state
        self._run_own(trainer, lambda: trainer.save_checkpoint(filepath, self.save_weights_only))
        self._refreshed = True

    def _new_last_path(self, trainer: pl.Trainer) -> str:
        """``last.ckpt`` in ``dirpath`` (``last-v1.ckpt``… when another run's file is there)."""
        metrics = monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        version = self.STARTING_VERSION
        while self.file_exists(filepath, trainer):
            filepath = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST, ver=version)
            version += 1
        return filepath

    def _run_own(self, trainer: pl.Trainer, hook: Any) -> None:
        """Run ``hook`` (a save of this instance) and note the step when it wrote a file."""
        record = self._topk_record()
        self._own_saving = True
        try:
            hook()
        finally:
            self._own_saving = False
        if self._topk_record() != record:
            self._own_save_step = int(trainer.global_step)

    def _topk_record(self) -> tuple[Any, ...]:
        return (tuple((k, float(v)) for k, v in self.best_k_models.items()), self.best_model_path,
                self.kth_best_model_path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._run_own(trainer, lambda: super(ModelCheckpoint, self).on_train_batch_end(
            trainer, pl_module, outputs, batch, batch_idx))
        n = self.every_n_train_steps
        if n >= 1 and trainer.global_step % n == 0:
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_own(trainer, lambda: super(ModelCheckpoint, self).on_train_epoch_end(trainer, pl_module))
        if self._saves_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_own(trainer, lambda: super(ModelCheckpoint, self).on_validation_end(trainer, pl_module))
        if not self._saves_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning writes last.ckpt here when it wrote no file itself in the run; a refresh
        # already wrote the latest state (a second write would carry the end-of-fit counters).
        if not self._refreshed:
            super().on_train_end(trainer, pl_module)

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
        n = self.every_n_epochs or 0
        return n >= 1 and (trainer.current_epoch + 1) % n == 0

    def _saves_on_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        """Lightning's documented rule for ``save_on_train_epoch_end=None``: at the end of the
        training epoch when there is no validation loop this epoch, else after validation."""
        if self.save_on_train_epoch_end is not None:
            return bool(self.save_on_train_epoch_end)
        if trainer.check_val_every_n_epoch != 1:
            return False
        if sum(trainer.num_val_batches) == 0:
            return True
        return trainer.val_check_interval == 1.0


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


def monitor_candidates(trainer: pl.Trainer) -> dict[str, Tensor]:
    """The values a checkpoint file name can use: the logged metrics plus ``epoch`` and
    ``step`` as integer tensors (as Lightning fills ``{epoch}`` / ``{step}``)."""
    metrics = dict(trainer.callback_metrics)
    epoch, step = metrics.get("epoch"), metrics.get("step")
    metrics["epoch"] = epoch.int() if isinstance(epoch, Tensor) else torch.tensor(trainer.current_epoch)
    metrics["step"] = step.int() if isinstance(step, Tensor) else torch.tensor(trainer.global_step)
    return metrics
