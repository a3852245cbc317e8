"""Small spatial-dims-agnostic building blocks shared by the default networks."""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

#: the normalisation layer of the default networks
Norm = Literal["batch", "instance", "group", "none"]
NORMS: tuple[str, ...] = get_args(Norm)


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[_check_dims(spatial_dims)]


def max_pool_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[_check_dims(spatial_dims)]


def norm_nd(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalization layer for ``channels`` feature maps.

    ``"batch"`` BatchNorm, ``"instance"`` InstanceNorm (affine, no running stats), ``"group"``
    GroupNorm with up to 8 groups, ``"none"`` identity (handy when a test needs per-sample
    independence of the forward pass).
    """
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_check_dims(spatial_dims)](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[_check_dims(spatial_dims)](
            channels, affine=True
        )
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def conv_block(
    spatial_dims: int, in_ch: int, out_ch: int, norm: str, convs: int = 1
) -> nn.Sequential:
    """``convs`` × (3^d conv → norm → ReLU), keeping the spatial size."""
    conv = conv_nd(spatial_dims)
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            conv(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=norm == "none"),
            norm_nd(norm, spatial_dims, out_ch),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims
