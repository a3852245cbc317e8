"""Progress for the slow parts outside Lightning's own bar: the robustness evaluation (minutes
with a strong suite) and the runs of ``benchmarks/run.py``.

* :class:`MemberProgress` — the robustness evaluation's bar, one step per batch × suite member
  × ε, naming the member and ε that run now;
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


class MemberProgress:
    """A tqdm bar over an evaluation's batches × suite members × ε, whose text names the batch,
    member and ε running now (``adv test · batch 2/5 · apgd-ce ε=0.004``); drawn only when
    :func:`bar_wanted` (a terminal on rank 0, or ``MEDROBUST_PROGRESS=1``), else silent: no
    log lines. :meth:`member` is :attr:`callbacks.evaluation_loop.RobustnessEvaluator.on_member`.
    """

    def __init__(self, total: int, desc: str, trainer: Any = None) -> None:
        self.desc, self.batch, self.batches = desc, 0, 0
        self._bar: Any = None
        self._started = False
        if total > 0 and bar_wanted(trainer):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True,
                             file=sys.stderr)

    def at_batch(self, i: int, n: int) -> None:
        """Batch ``i`` (0-based) of ``n`` starts."""
        self.batch, self.batches = i, n

    def member(self, label: str, eps: float | None) -> None:
        """``label`` at ``eps`` starts (the one before it is done)."""
        if self._bar is None:
            return
        if label == "sanity":
            self._bar.set_postfix_str(f"batch {self.batch + 1}/{self.batches} · sanity check", refresh=True)
            return
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(f"batch {self.batch + 1}/{self.batches} · {label} ε={eps:g}", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            if self._started:
                self._bar.update(1)
                self._bar.refresh()  # the last step drawn even within tqdm's redraw interval
            self._bar.close()
            self._bar = None


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
