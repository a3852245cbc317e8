"""Stopping an evaluation on SIGTERM: the flag the evaluator asks before each member × ε
(:class:`StopSignal`), the exception it raises then (:class:`EvaluationStopped`) and the one the
callback ends the process with (:class:`EvaluationInterrupted`), the metric
states it puts back so that only whole batches count (:func:`metric_states`,
:func:`restore_metric_states`), the ranks' one agreement after the batch loop
(:func:`agree_on_stop`), and what the record says about the part that did not run
(:class:`StopInfo`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

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


class EvaluationStopped(Exception):
    """The evaluation was asked to stop (:attr:`RobustnessEvaluator.should_stop`) before
    ``attack`` at ``eps`` of the current batch; that batch's updates were undone."""

    def __init__(self, attack: str, eps: float | None) -> None:
        super().__init__(f"stopped before {attack}" + ("" if eps is None else f" at ε={eps:g}"))
        self.attack, self.eps = attack, eps



def _metric_members(collection: Any) -> list[Any]:
    """Every torchmetrics ``Metric`` in a collection (a ``MetricCollection``, a dict of metrics,
    or one metric), metrics nested inside metrics included (a metric built from others keeps
    its state in them), without copying compute-group states."""
    from torchmetrics import Metric

    if isinstance(collection, nn.Module):
        return [m for m in collection.modules() if isinstance(m, Metric)]
    if isinstance(collection, dict):
        return [m for v in collection.values() for m in _metric_members(v)]
    return []


def _copy_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return list(value)
    return value


def metric_states(collections: list[Any]) -> list[tuple[Any, dict[str, Any], int]]:
    """Every torchmetrics state of ``collections``, copied (tensor states cloned, list states
    shallow-copied: their tensors are never written in place), with each metric's update count."""
    out = []
    for collection in collections:
        for metric in _metric_members(collection):
            state = {k: _copy_state(v) for k, v in metric.metric_state.items()}
            out.append((metric, state, metric._update_count))
    return out


def restore_metric_states(states: list[tuple[Any, dict[str, Any], int]]) -> None:
    """Put back what :func:`metric_states` copied (and drop each metric's cached result)."""
    for metric, state, count in states:
        for k, v in state.items():
            setattr(metric, k, v)
        metric._update_count = count
        metric._computed = None


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


class EvaluationInterrupted(SIGTERMException):
    """A SIGTERM stopped the evaluation: after the member × ε that was running, with the record of
    the whole batches evaluated so far written (``incomplete`` set) when there was one. Exits
    the process with status 143 (128 + SIGTERM), the shell's status of a process it ended."""

    def __init__(self, message: str) -> None:
        super().__init__(143)
        self.message = message
        if os.environ.get("LOCAL_RANK", "0") in ("", "0"):
            print(f"[medrobust] {message}", file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return self.message
