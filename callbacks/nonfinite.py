"""The ``skip_nonfinite`` policy: train on past batches with NaN / Inf images or losses.

Without this callback a non-finite training step is an error naming the batch's sample
``index`` values (see :func:`lightning_modules.fault_tolerance.guarded_training_loss`). With it, such
a batch is skipped (no backward, no optimizer step), a warning names the samples, and the
running count is logged as ``train/nonfinite_skipped``; the count is part of the callback's
checkpointed state, so it survives a resume. ``max_skipped`` turns a flood of skips (a diverged
run, not a few bad files) back into an error.

YAML::

    trainer:
      callbacks:
        - class_path: callbacks.SkipNonFinite
          init_args: {max_skipped: 10}
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_modules.fault_tolerance import NonFiniteError

log = logging.getLogger(__name__)


class SkipNonFinite(Callback):
    """Skip (count, warn, log) training batches with a non-finite image or loss.

    Args:
        max_skipped: raise once more than this many batches were skipped in the whole run
            (``None``: never).
    """

    def __init__(self, max_skipped: int | None = None) -> None:
        if max_skipped is not None and (isinstance(max_skipped, bool) or int(max_skipped) < 0):
            raise ValueError(f"SkipNonFinite.max_skipped must be None or an int >= 0, got {max_skipped!r}")
        self.max_skipped = None if max_skipped is None else int(max_skipped)
        self.skipped = 0
        self.skipped_indices: list[int] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.nonfinite_policy = self  # read by the task module's training step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(pl_module, "nonfinite_policy", None) is self:
            pl_module.nonfinite_policy = None

    def skip(self, task: Any, reason: str, indices: list[int]) -> None:
        """Called by the guard for each non-finite batch (on every rank)."""
        self.skipped += 1
        self.skipped_indices.extend(indices)
        if self.max_skipped is not None and self.skipped > self.max_skipped:
            raise NonFiniteError(
                f"SkipNonFinite: {self.skipped} non-finite training batches skipped, more than "
                f"max_skipped={self.max_skipped}; the last: {reason}"
            )
        log.warning("skipping a training batch (%d skipped so far): %s", self.skipped, reason)
        task.log("train/nonfinite_skipped", float(self.skipped), on_step=False, on_epoch=True,
                 reduce_fx="max", sync_dist=True, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skipped_indices": list(self.skipped_indices)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.skipped_indices = [int(i) for i in state_dict.get("skipped_indices", [])]
