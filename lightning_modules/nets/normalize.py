"""Input normalization as the first layer of every model.

Images reach the model in their natural intensity range (``DataInfo.bounds``), so attack budgets
are in pixel units; the z-scoring that a network wants happens here, inside the differentiable
pipeline the attacker faces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for ``[B, C, *spatial]`` of any number of spatial dims.

    Args:
        mean: one value for every channel or one per channel.
        std: same; must be ``> 0``.
        channels: number of channels ``C`` of the input (a single value is broadcast to it).

    The statistics are persistent buffers, so they travel with checkpoints.
    """

    def __init__(
        self, mean: float | Sequence[float], std: float | Sequence[float], channels: int
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        m = _per_channel("mean", mean, channels)
        s = _per_channel("std", std, channels)
        if bool((s <= 0).any()):
            raise ValueError(f"std must be > 0 for every channel, got {s.tolist()}")
        self.channels = channels
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"Normalize expects [B, {self.channels}, *spatial], got shape {tuple(x.shape)}"
            )
        shape = (1, self.channels) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


def _per_channel(name: str, value: float | Sequence[float], channels: int) -> Tensor:
    if isinstance(value, int | float):
        return torch.full((channels,), float(value))
    values = [float(v) for v in value]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"{name} must have one value or one per channel ({channels}), got {len(values)}"
        )
    return torch.tensor(values, dtype=torch.float32)
