"""Stopping an evaluation on SIGTERM: the flag the evaluator asks before each member × ε
(:class:`StopSignal`), the ranks' one agreement after the batch loop (:func:`agree_on_stop`),
and what the record says about the part that did not run (:class:`StopInfo`)."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any

from lightning_modules.distributed import all_gather_objects, is_distributed


@dataclass
class StopInfo:
    """An evaluation stopped before its end: this rank stopped before member ``attack`` at
    ``eps`` of its batch ``batches_done`` (0-based) of ``batches``, so its batches ``0 …
    batches_done − 1`` were evaluated by every member × ε and the rest by none;
    ``samples_done`` of the subset's ``samples`` were counted (over every rank)."""

    reason: str
    attack: str
    eps: float | None
    batches_done: int
    batches: int
    samples_done: int
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """The record's ``incomplete`` entry."""
        at = self.attack + ("" if self.eps is None else f" at ε={self.eps:g}")
        return {"reason": self.reason, "samples_evaluated": self.samples_done, "samples_planned": self.samples,
                "batches_evaluated": self.batches_done, "batches_planned": self.batches,
                "not_run": f"samples of batches {self.batches_done + 1}–{self.batches} "
                           f"({self.samples - self.samples_done} samples) under every member × ε; "
                           f"stopped before {at} of batch {self.batches_done + 1}"}


class StopSignal:
    """The stop of a validate / test evaluation on SIGTERM: once installed, SIGTERM only sets a flag
    (and, in the process that launched the DDP workers, forwards the signal to them once); the
    evaluator asks it (``should_stop``) before each member × ε. It stays installed to the end of
    the stage — through the gather that follows the loop, the metrics' sync and the writing, where
    a late or second signal must not reach Lightning's handler either — and Lightning's teardown
    then puts back the handler the process had before the stage.

    Why not Lightning's handler: under DDP it runs ``torch.distributed.broadcast`` *inside the
    signal handler* (lightning 2.6, ``_SignalConnector._sigterm_notifier_fn``). A handler runs
    wherever the rank happens to be, so that broadcast pairs with whatever collective another
    rank is in — or with nothing, when one rank receives the signal twice (a scheduler signals
    every process and the launcher forwards it again): then every rank waits forever
    (``tests/callbacks/test_evaluation_stop_ddp.py`` hung so before this). Here the ranks agree once, after
    the loop, in :func:`agree_on_stop`. Also ``True`` once Lightning's own flag
    (``trainer.received_sigterm``) is set (a signal before the evaluation began). Outside the
    main thread (where no handler can be installed) only Lightning's flag is read."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.received = False

    def __call__(self) -> bool:
        return self.received or bool(getattr(self.trainer, "received_sigterm", False))

    def _handle(self, signum: int, frame: Any) -> None:
        first = not self.received
        self.received = True
        launcher = getattr(getattr(self.trainer, "strategy", None), "launcher", None)
        if first and launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)  # the workers this process launched (none on a worker)

    def install(self) -> None:
        """Handle SIGTERM here (main thread only; elsewhere Lightning's flag alone is read)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)


def agree_on_stop(stopped: StopInfo | None, batches: int, samples: int) -> StopInfo | None:
    """One gather after the batch loop: if any rank stopped, every rank returns the same
    :class:`StopInfo` — the fewest batches any rank finished (a rank that stopped later, or
    finished all of its batches, evaluated more; the record counts the samples evaluated over the
    ranks) and the member × ε of the first rank that stopped. ``None`` when none did."""
    if not is_distributed():
        return stopped
    parts = all_gather_objects(None if stopped is None else (stopped.attack, stopped.eps, stopped.batches_done))
    first = next((p for p in parts if p is not None), None)
    if first is None:
        return None
    done = min(batches if p is None else p[2] for p in parts)
    return StopInfo(reason="SIGTERM", attack=first[0], eps=first[1], batches_done=done, batches=batches,
                    samples_done=samples if stopped is None else stopped.samples_done, samples=samples)
