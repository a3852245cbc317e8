"""The step at which Lightning's loggers receive what ``LightningModule.log`` collects in ``fit``,
counted by the callback itself from public hook arguments.

In ``fit``, Lightning hands logged scalars to each logger at the number of training batches
that closed an accumulation window so far (an optimizer step, or the epoch's last batch;
never more than one per batch, whatever the number of optimizers). A validation run that
follows a batch sees that batch not yet counted. Lightning keeps this number on its fit loop
without a public accessor (``fit_loop.epoch_loop._batches_that_stepped``, lightning 2.6), so
:class:`CountsLoggerStep` counts it with the same rule from what every callback is told:

* ``on_train_batch_end(…, batch_idx)``: the batch closes a window when ``(batch_idx + 1)`` is a
  multiple of ``trainer.accumulate_grad_batches`` or the batch is the epoch's last
  (``trainer.num_training_batches``; unless the strategy accumulates on its own); it is counted
  when the next batch starts or the epoch ends (:meth:`CountsLoggerStep.on_train_epoch_end`
  also counts the last batch of an epoch of unknown length);
* the count goes into the checkpoint (``on_save_checkpoint``: under :data:`CHECKPOINT_KEY`, one
  entry per callback ``prefix``), so a resumed run goes on from it (a batch that had ended but
  not yet been counted when the checkpoint was written is counted on loading, as Lightning
  does); a run resumed from a checkpoint written without it starts from ``trainer.global_step``
  (the same number for one optimizer without skipped steps). Not through ``state_dict``:
  Lightning refuses two callbacks of one class with state before they are set up, and two
  evaluations with the same prefix must reach the callback's own error, which names the prefix.

``tests/callbacks/test_direct_logging.py`` checks the count against the step of the rows
Lightning writes itself (``val/*``), with and without gradient accumulation and after a resume.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.callbacks import Callback

#: the checkpoint's entry of the counts: ``{prefix: {"logger_step": int, "ended": 0 | 1}}``
CHECKPOINT_KEY = "medrobust_logger_step"


class CountsLoggerStep(Callback):
    """A callback that knows :attr:`logger_step`, the step Lightning's loggers get ``fit``'s
    logged scalars at (module docstring), for the scalars it hands to the loggers itself."""

    def __init__(self) -> None:
        super().__init__()
        #: windows closed by the batches counted so far (the step of the next logger row)
        self.logger_step = 0
        self._ended = 0  # 1 when the last batch that ended closed a window not yet counted
        self._loaded = False
        self._last_closed = True  # whether the last batch of the epoch so far closed a window

    def _count(self) -> None:
        self.logger_step += self._ended
        self._ended = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._loaded:  # a new run, or a checkpoint written without this count
            self.logger_step, self._ended = int(trainer.global_step), 0
        self._loaded = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._count()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        done = (batch_idx + 1) % max(1, int(trainer.accumulate_grad_batches)) == 0
        last = batch_idx + 1 == trainer.num_training_batches
        own = bool(getattr(trainer.strategy, "handles_gradient_accumulation", False))
        self._last_closed = done or (last and not own)
        self._ended = int(self._last_closed)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        own = bool(getattr(trainer.strategy, "handles_gradient_accumulation", False))
        if not self._last_closed and not own and math.isinf(trainer.num_training_batches):
            self._ended = 1  # an epoch of unknown length: its last batch closed a window
        self._last_closed = True
        self._count()

    def _step_key(self) -> str:
        return str(getattr(self, "prefix", type(self).__name__))

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault(CHECKPOINT_KEY, {})[self._step_key()] = {"logger_step": self.logger_step,
                                                                       "ended": self._ended}

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        state = (checkpoint.get(CHECKPOINT_KEY) or {}).get(self._step_key())
        if state is not None:
            self.logger_step = int(state["logger_step"]) + int(state.get("ended", 0))
            self._ended, self._loaded = 0, True
