"""Progress for the slow parts outside Lightning's own bar: the robustness evaluation (minutes
with a strong suite) and the runs of ``benchmarks/run.py``.

* :func:`progress_bar` — a tqdm bar (the library Lightning's default ``TQDMProgressBar`` uses),
  shown only on global rank 0, only when stderr is a terminal, and not when the trainer's
  progress bar is disabled (``--trainer.enable_progress_bar false``). ``MEDROBUST_PROGRESS=1``
  forces it on (logs of batch jobs), ``=0`` off.
* :class:`EpochLine` — one plain line per training epoch (for logs where no bar is drawn).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from lightning.pytorch.callbacks import Callback

T = TypeVar("T")


def bar_wanted(trainer: Any = None) -> bool:
    """Whether to draw a bar (see the module docstring)."""
    forced = os.environ.get("MEDROBUST_PROGRESS", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if trainer is not None:
        if not getattr(trainer, "is_global_zero", True):
            return False
        if forced not in ("1", "true", "yes", "on") and getattr(trainer, "progress_bar_callback", True) is None:
            return False
    if forced in ("1", "true", "yes", "on"):
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(items: Iterable[T], total: int | None, desc: str, trainer: Any = None,
                 unit: str = "batch") -> Iterator[T]:
    """``items``, with a tqdm bar when :func:`bar_wanted` (else ``items`` untouched)."""
    if not bar_wanted(trainer):
        yield from items
        return
    from tqdm.auto import tqdm

    with tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
              file=sys.stderr) as bar:
        yield from bar


class EpochLine(Callback):
    """Print ``<prefix> epoch 3/10 · train/loss 0.412 · 12 s`` after every training epoch
    (rank 0 only)."""

    def __init__(self, prefix: str = "[medrobust]", metric: str = "train/loss_epoch") -> None:
        self.prefix, self.metric = prefix, metric
        self._start = time.perf_counter()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.metric)
        loss = f" · {self.metric.removesuffix('_epoch')} {float(value):.4g}" if value is not None else ""
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(f"{self.prefix} epoch {trainer.current_epoch + 1}/{total}{loss} · "
              f"{time.perf_counter() - self._start:.0f} s", flush=True)
