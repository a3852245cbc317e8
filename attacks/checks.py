"""Argument checks shared by every attack: the valid range, iteration counts, budgets (a float
or a per-sample ``[B]`` tensor), and what a loss function and a violation test return. Each
error names the argument and says what it got.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_bounds", "check_count", "check_loss", "check_restarts", "check_scalar", "check_violated"]


def check_bounds(bounds: Any) -> tuple[float, float]:
    """``(lo, hi)`` as floats with ``lo < hi``; ``±inf`` means unbounded on that side."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bounds must be a pair (lo, hi) of floats, got {bounds!r}") from err
    if not lo < hi:  # also rejects NaN; ±inf is allowed (no clamp on that side)
        raise ValueError(f"bounds must satisfy lo < hi, got bounds=({lo}, {hi})")
    return lo, hi


def check_count(name: str, value: Any) -> int:
    """An iteration or restart count: an ``int >= 1`` (``bool`` is refused, though it is an int)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_restarts(restarts: Any, random_start: bool = True) -> int:
    """A restart count (:func:`check_count`); more than one needs a random start, since restarts
    from the same point would be identical."""
    check_count("restarts", restarts)
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (restarts would be identical)")
    return restarts


def check_scalar(
    name: str,
    value: Any,
    batch: int | None = None,
    like: Tensor | None = None,
    allow_none: bool = False,
) -> Any:
    """Check a budget-like argument: a non-negative finite float, or a ``[B]`` tensor of them.

    With ``batch``/``like`` (at call time) a tensor is checked against the batch size and moved
    to ``like``'s device and dtype; a 0-d tensor becomes a float.
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a float or a tensor of shape [B], got None")
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return check_scalar(name, float(value), batch, like, allow_none)
        if value.ndim != 1 or (batch is not None and value.shape[0] != batch):
            want = f"[B]=[{batch}]" if batch is not None else "[B]"
            raise ValueError(
                f"{name} must be a float or a per-sample tensor of shape {want}, "
                f"got shape {tuple(value.shape)}"
            )
        v = value.detach() if value.is_floating_point() else value.detach().float()
        if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0 per sample, got {v.tolist()}")
        if like is not None:
            v = v.to(device=like.device, dtype=like.dtype)
        return v
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float or a tensor of shape [B], got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def check_loss(loss: Any, batch: int) -> Tensor:
    """What ``loss_fn`` returned: a per-sample ``[B]`` tensor (never reduced over the batch)."""
    if not isinstance(loss, Tensor) or loss.shape != (batch,):
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a per-sample loss of shape [B]=[{batch}], got {got}; "
            "do not reduce over the batch (see attacks.losses)"
        )
    return loss


def check_violated(violated: Any, batch: int, device: torch.device) -> Tensor:
    """What ``is_violated`` returned: a ``[B]`` tensor, as ``Bool[B]`` on ``device``."""
    if not isinstance(violated, Tensor) or violated.shape != (batch,):
        got = tuple(violated.shape) if isinstance(violated, Tensor) else type(violated).__name__
        raise ValueError(f"is_violated must return a bool tensor of shape [B]=[{batch}], got {got}")
    return violated.to(device=device, dtype=torch.bool)
