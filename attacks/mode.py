"""Train/eval policy for the model while it is being attacked.

An attack runs extra forwards through the model. Whether BatchNorm uses batch statistics and
whether Dropout is active during those forwards is the caller's choice (eval for both is the
usual threat model and the default), but the attack must never leave the model in a different
mode than it found it, and must never move BatchNorm running statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from .options import check_choice

Mode = Literal["eval", "train", "keep"]
_MODES = ("eval", "train", "keep")


def find_module(model: Any) -> nn.Module | None:
    """Return the ``nn.Module`` behind ``model`` if one can be found, else ``None``.

    Handles a module, a bound method of a module (``module.forward``, ``lit_module.model``) and a
    ``functools.partial`` around either. A lambda or an arbitrary function hides its module: wrap
    the call in :func:`attack_mode` yourself in that case.
    """
    if isinstance(model, nn.Module):
        return model
    owner = getattr(model, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    if isinstance(model, functools.partial):
        return find_module(model.func)
    return None


def is_norm_with_stats(module: nn.Module) -> bool:
    """BatchNorm of any kind (incl. SyncBatchNorm, lazy variants) or InstanceNorm that tracks
    running statistics: the modules whose train/eval mode changes what they compute *and* whose
    buffers a train-mode forward would update."""
    if isinstance(module, _BatchNorm):
        return True
    return isinstance(module, _InstanceNorm) and bool(module.track_running_stats)


def check_mode(value: str, name: str) -> str:
    """Validate a mode name (``"eval"``, ``"train"`` or ``"keep"``)."""
    check_choice(name, value, _MODES)
    return value


def _resolve(flag_now: bool, mode: Mode) -> bool:
    if mode == "keep":
        return flag_now
    return mode == "train"


@contextmanager
def attack_mode(
    model: Any,
    bn: Mode = "eval",
    dropout: Mode = "eval",
    other: Mode = "eval",
) -> Iterator[nn.Module | None]:
    """Put ``model`` into the mode an attack should see, and restore it exactly afterwards.

    Args:
        model: an ``nn.Module`` (or a bound method / partial of one, see :func:`find_module`).
            Anything else is accepted and left alone (the context is then a no-op).
        bn: mode of BatchNorm layers (every ``_BatchNorm``, so SyncBatchNorm too) and of
            InstanceNorm layers with ``track_running_stats=True``.
            ``"train"`` uses batch statistics; the running statistics are saved on entry and
            copied back on exit, so attack forwards never move them.
        dropout: mode of every Dropout layer (``_DropoutNd``: Dropout, Dropout1d/2d/3d,
            AlphaDropout, FeatureAlphaDropout).
        other: mode of every other module (custom layers that branch on ``self.training``).
        Each mode is ``"eval"``, ``"train"`` or ``"keep"`` (leave as the caller set it).

    The ``.training`` flag of each submodule is set and restored individually (not through the
    recursive ``Module.train()``), so a model whose submodules were in mixed modes comes back
    exactly as it was, even if the body raises.
    """
    bn, dropout, other = (
        check_mode(bn, "bn"),
        check_mode(dropout, "dropout"),
        check_mode(other, "other"),
    )
    module = find_module(model)
    if module is None:
        yield None
        return

    saved_flags: list[tuple[nn.Module, bool]] = []
    saved_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for m in module.modules():
        saved_flags.append((m, m.training))
        if is_norm_with_stats(m):
            wanted = _resolve(m.training, bn)
            if wanted:
                # Batch statistics requested: keep a copy of the running statistics (and the
                # batch counter, which momentum=None uses) to write back on exit.
                for buf in m.buffers(recurse=False):
                    if buf is not None:
                        saved_buffers.append((buf, buf.detach().clone()))
        elif isinstance(m, _DropoutNd):
            wanted = _resolve(m.training, dropout)
        else:
            wanted = _resolve(m.training, other)
        if m.training != wanted:  # (Module.__setattr__ is slow; most flags are already right)
            m.training = wanted
    try:
        yield module
    finally:
        with torch.no_grad():
            for buf, copy in saved_buffers:
                buf.copy_(copy)
        for m, flag in saved_flags:
            if m.training != flag:
                m.training = flag


def snapshot_modes(model: nn.Module) -> dict[str, bool]:
    """``{qualified name: training flag}`` of every submodule (for tests and debugging)."""
    return {name: m.training for name, m in model.named_modules()}

