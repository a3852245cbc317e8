"""How the medrobust CLI builds its trainer: crash-safe checkpoint writes through Lightning's
``plugins`` slot, a word about Lightning's own ``ModelCheckpoint``, and the ``--batch_scaling`` /
``--speed.*`` options (:mod:`callbacks.scaling`, docs/scaling.md)."""

from __future__ import annotations

import warnings
from typing import Any

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from attacks.options import check_choice
from callbacks.checkpoint import AtomicCheckpointIO, ModelCheckpoint
from callbacks.scaling import BATCH_SCALING_MODES, BatchScaling, SpeedOptions

__all__ = ["add_scaling_arguments", "scaling_callbacks", "warn_plain_model_checkpoint",
           "with_atomic_checkpoint_io"]


#: strategies whose checkpoints are Lightning's plain ``torch.save`` of one dict (the ones
#: :class:`~callbacks.checkpoint.AtomicCheckpointIO` can write); FSDP, DeepSpeed and XLA have
#: their own writers
_PLAIN_CHECKPOINT_STRATEGIES = ("auto", "ddp", "single_device")


def with_atomic_checkpoint_io(plugins: Any, strategy: Any, accelerator: Any = None) -> Any:
    """``plugins`` plus :class:`~callbacks.checkpoint.AtomicCheckpointIO` (crash-safe checkpoint
    writes, through Lightning's ``Trainer(plugins=[...])`` slot), unless they already name a
    ``CheckpointIO`` or the strategy writes its own checkpoints (FSDP, DeepSpeed, XLA/TPU)."""
    given = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in given):
        return plugins
    if isinstance(strategy, DDPStrategy | SingleDeviceStrategy):
        plain = "XLA" not in type(strategy).__name__
    else:
        plain = isinstance(strategy, str | None) and (strategy or "auto").startswith(
            _PLAIN_CHECKPOINT_STRATEGIES)
    if not plain or accelerator == "tpu":
        return plugins
    return [*given, AtomicCheckpointIO()]


def warn_plain_model_checkpoint(callbacks: list[Callback]) -> None:
    """Lightning's own ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when a
    top-k file is written; say so once and name the class that keeps it current."""
    for cb in callbacks:
        if (isinstance(cb, LightningModelCheckpoint) and not isinstance(cb, ModelCheckpoint)
                and cb.save_last is True and cb.monitor is not None):
            warnings.warn(
                "trainer.callbacks has lightning.pytorch.callbacks.ModelCheckpoint with save_last "
                "and a monitor: its last.ckpt is refreshed only in epochs where the monitored value "
                "improves, so --ckpt_path last may resume epochs back; use "
                "class_path: callbacks.ModelCheckpoint (same arguments) for a last.ckpt that is "
                "always the latest state", UserWarning, stacklevel=2)
            return


def add_scaling_arguments(parser: LightningArgumentParser) -> None:
    """``--batch_scaling`` and ``--speed.*`` (see :mod:`callbacks.scaling` and docs/scaling.md);
    top-level keys, so a ``configs/trainer/*.yaml`` can set them without replacing an
    experiment's callback list."""
    parser.add_argument(
        "--batch_scaling", type=str, default="global",
        help="how data.batch_size and model.lr scale with num_nodes × devices: 'global' "
             "(batch_size is the global batch, split over processes), 'linear' (per-process "
             "batch, lr × world size) or 'per_device' (Lightning's default)")
    parser.add_argument("--speed.channels_last", type=bool, default=False,
                        help="channels-last weights and images (NHWC; faster on GPUs)")
    parser.add_argument("--speed.compile", type=bool, default=False,
                        help="torch.compile the task's network (attacks run it too)")
    parser.add_argument("--speed.compile_mode", type=str | None, default=None,
                        help="torch.compile mode: default, reduce-overhead, max-autotune")


def scaling_callbacks(cfg: Any) -> list[Callback]:
    """The callbacks that ``--batch_scaling`` and ``--speed.*`` ask for."""
    mode = cfg.get("batch_scaling", "global")
    check_choice("--batch_scaling", mode, BATCH_SCALING_MODES)
    out: list[Callback] = [BatchScaling(mode)]
    speed = cfg.get("speed") or {}
    opts = SpeedOptions(channels_last=bool(speed.get("channels_last", False)),
                        compile=bool(speed.get("compile", False)),
                        compile_mode=speed.get("compile_mode"))
    if opts.enabled:
        out.append(opts)
    return out
