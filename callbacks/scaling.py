"""Scale a run without changing what it means: batch scaling under DDP and GPU speed options.

* :class:`BatchScaling` keeps the optimisation the same when ``trainer.devices`` /
  ``trainer.num_nodes`` change. Under DDP every process loads ``datamodule.batch_size`` samples
  per step and the distributed sampler gives each process ``1 / world_size`` of the data, so with
  a per-device batch 2 processes double the effective batch and halve the steps per epoch (the
  quickstart then drops from 0.914 to 0.656 accuracy). ``mode="global"`` (the CLI default) reads
  ``batch_size`` as the *global* batch and gives each process ``batch_size / world_size``:
  steps per epoch, effective batch and learning rate stay those of one process, and DDP's
  gradient averaging over ranks makes each step the mean over the same global batch.
  ``mode="linear"`` keeps the per-device batch and multiplies the learning rate by
  ``world_size`` (the linear scaling rule of Goyal et al. 2017, "Accurate, Large Minibatch SGD").
  ``mode="per_device"`` is Lightning's own behaviour.
* :class:`SpeedOptions` applies ``channels_last`` memory format (NHWC convolutions, faster on
  tensor cores) and ``torch.compile`` of the task's network. Both are off by default: on the CPU
  they rarely help, and compilation costs tens of seconds per new input shape. The network is
  compiled in place (``nn.Module.compile``), so the attack model (``Normalize → … → net``) runs
  the compiled net, and checkpoints keep their keys.

Both run in the ``setup`` hook: after the datamodule and the trainer know the world size, before
dataloaders and optimizers are built and before the model moves to its device. ``train.py``
adds them from ``--batch_scaling`` and ``--speed.*``; in Python, pass them in
``Trainer(callbacks=[...])``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from attacks.options import check_choice

#: how the batch size and learning rate follow the number of processes (see :class:`BatchScaling`)
BatchScalingMode = Literal["global", "linear", "per_device"]
BATCH_SCALING_MODES: tuple[str, ...] = get_args(BatchScalingMode)

#: where the unscaled values are kept, so a second ``setup`` (fit then test) does not rescale
_ORIGINAL_BATCH = "_medrobust_unscaled_batch_size"
_ORIGINAL_LR = "_medrobust_unscaled_lr"


def per_device_batch(global_batch: int, world_size: int) -> int:
    """``global_batch / world_size``; a clear error when it does not divide evenly, since any
    rounding would silently change the effective batch (and the meaning of the lr)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        raise ValueError(
            f"batch_scaling='global': data.batch_size={global_batch} (the global batch) is not "
            f"divisible by world_size={world_size} (num_nodes × devices); use a multiple of "
            f"{world_size} (e.g. {max(lower, world_size)} or {lower + world_size}) or "
            "--batch_scaling per_device"
        )
    return global_batch // world_size


class BatchScaling(Callback):
    """Make ``data.batch_size`` and ``model.lr`` mean the same on any number of processes.

    Args:
        mode: ``"global"`` — ``batch_size`` is the global batch, each process loads
            ``batch_size / world_size`` (must divide); ``"linear"`` — ``batch_size`` stays per
            process and ``lr`` is multiplied by ``world_size``; ``"per_device"`` — no change.

    Needs a datamodule with a ``batch_size`` attribute (every medrobust datamodule) and, for
    ``"linear"``, a task module whose optimizer is built from its ``lr`` attribute (not
    LightningCLI's ``--optimizer``). A no-op with one process.
    """

    def __init__(self, mode: BatchScalingMode = "global") -> None:
        check_choice("batch_scaling", mode, BATCH_SCALING_MODES)
        self.mode = mode
        self.applied: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        world = int(trainer.world_size)
        if self.mode == "per_device":
            return
        if self.mode == "global":
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "batch_size"):
                if world > 1:
                    raise ValueError(
                        "batch_scaling='global' needs a datamodule with a batch_size attribute "
                        "(trainer.fit(model, datamodule=...)); got plain dataloaders — build them "
                        "with batch_size / world_size yourself or use batch_scaling='per_device'"
                    )
                return
            if not hasattr(dm, _ORIGINAL_BATCH):
                setattr(dm, _ORIGINAL_BATCH, int(dm.batch_size))
            global_batch = getattr(dm, _ORIGINAL_BATCH)
            dm.batch_size = per_device_batch(global_batch, world)
            self.applied = {"mode": "global", "world_size": world, "global_batch_size": global_batch,
                            "per_device_batch_size": dm.batch_size}
            if world > 1:
                rank_zero_info(f"[medrobust] batch_scaling=global: global batch {global_batch} = "
                               f"{world} processes × {dm.batch_size}")
            return
        # linear: lr × world_size
        if "configure_optimizers" in vars(pl_module):
            raise ValueError(
                "batch_scaling='linear' scales model.lr, but the optimizer comes from "
                "LightningCLI's --optimizer; set its lr yourself or use batch_scaling='global'"
            )
        if not hasattr(pl_module, "lr"):
            raise ValueError(f"batch_scaling='linear' needs {type(pl_module).__name__}.lr")
        if not hasattr(pl_module, _ORIGINAL_LR):
            setattr(pl_module, _ORIGINAL_LR, float(pl_module.lr))
        base_lr = getattr(pl_module, _ORIGINAL_LR)
        pl_module.lr = base_lr * world
        self.applied = {"mode": "linear", "world_size": world, "base_lr": base_lr,
                        "lr": pl_module.lr}
        if world > 1:
            rank_zero_info(f"[medrobust] batch_scaling=linear: lr {base_lr:g} × {world} = {pl_module.lr:g}")


# ---------------------------------------------------------------------- speed options
def memory_format_for(t: Tensor) -> torch.memory_format | None:
    """``channels_last`` for 4-D, ``channels_last_3d`` for 5-D tensors, else ``None``."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.ndim)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-D / 5-D parameter and buffer of ``module`` channels-last (NHWC / NDHWC), in
    place; other tensors are untouched. Values are unchanged, only their memory layout."""

    def convert(t: Tensor) -> Tensor:
        fmt = memory_format_for(t)
        return t.contiguous(memory_format=fmt) if fmt is not None else t

    return module._apply(convert)


def channels_last_input(x: Tensor) -> Tensor:
    """``x`` (``[B, C, H, W]`` or ``[B, C, D, H, W]``) in channels-last layout; other ranks as is."""
    fmt = memory_format_for(x)
    return x.contiguous(memory_format=fmt) if fmt is not None else x


def compile_network(pl_module: nn.Module, mode: str | None = None, dynamic: bool | None = None,
                    attribute: str = "net") -> nn.Module:
    """``torch.compile`` the task's network in place (``nn.Module.compile``): its parameters,
    ``state_dict`` keys and every reference to it (the attack pipeline) stay the same, and calls
    go through the compiled graph. Idempotent."""
    net = getattr(pl_module, attribute, None)
    if not isinstance(net, nn.Module):
        raise ValueError(f"compile: {type(pl_module).__name__} has no network at .{attribute}")
    if getattr(net, "_compiled_call_impl", None) is None:
        net.compile(mode=mode, dynamic=dynamic)
    return net


class SpeedOptions(Callback):
    """GPU speed options, off by default.

    Args:
        channels_last: store convolution weights channels-last and hand the model
            channels-last images (training and validation batches). Values and results are
            unchanged up to floating-point reassociation.
        compile: ``torch.compile`` the task's network (``pl_module.net``) in place; attacks,
            training and evaluation then all run the compiled net. Needs a C++ compiler on the
            CPU (Inductor); the first call per input shape and train/eval mode compiles.
        compile_mode: ``torch.compile``'s ``mode`` (``None``, ``"reduce-overhead"``,
            ``"max-autotune"``).
        compile_dynamic: ``torch.compile``'s ``dynamic`` (``None``: decide after a recompile).
    """

    def __init__(self, channels_last: bool = False, compile: bool = False,
                 compile_mode: str | None = None, compile_dynamic: bool | None = None) -> None:
        self.channels_last = bool(channels_last)
        self.compile = bool(compile)
        self.compile_mode = compile_mode
        self.compile_dynamic = compile_dynamic

    @property
    def enabled(self) -> bool:
        return self.channels_last or self.compile

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.channels_last:
            to_channels_last(pl_module)
        if self.compile:
            compile_network(pl_module, self.compile_mode, self.compile_dynamic)

    def _batch(self, batch: Any) -> None:
        if self.channels_last and isinstance(batch, dict) and isinstance(batch.get("image"), Tensor):
            batch["image"] = channels_last_input(batch["image"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch(batch)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch(batch)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                            batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch(batch)
