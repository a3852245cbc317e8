"""A small U-Net, 2-D or 3-D, and the denoising auto-encoder built from the same parts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.layers import Norm, conv_block, conv_nd, max_pool_nd


class SmallUNet(nn.Module):
    """Encoder of ``len(features)`` levels (two convs each, max-pool between), decoder with
    nearest upsampling, skip concatenation and two convs, and a 1×1 output conv.

    Any input size works: each upsampled map is resized to its skip's size, so odd sizes are
    fine.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (segmentation logits ``K``).
        features: channels per level, shallow to deep.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.

    Output: ``[B, out_channels, *spatial]`` at the input's resolution.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64),
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError("features must list at least two levels")
        feats = [int(f) for f in features]
        self.spatial_dims = spatial_dims
        self.pool = max_pool_nd(spatial_dims)(2, ceil_mode=True)
        self.encoder = nn.ModuleList()
        ch = in_channels
        for width in feats:
            self.encoder.append(conv_block(spatial_dims, ch, width, norm, convs=2))
            ch = width
        self.decoder = nn.ModuleList()
        for width in reversed(feats[:-1]):
            self.decoder.append(conv_block(spatial_dims, ch + width, width, norm, convs=2))
            ch = width
        self.out = conv_nd(spatial_dims)(ch, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for block in self.decoder:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return self.out(h)


class DenoisingAutoEncoder(nn.Module):
    """Residual convolutional denoising auto-encoder (Xue et al. 2019 embed one in front of the
    classifier): a small U-Net predicts a correction that is added to its input.

    The last convolution starts at zero, so an untrained denoiser is the identity: embedding it
    into a trained or training pipeline never starts by destroying the input. Works on the
    normalized image (inside the model, after :class:`Normalize`), so its scale is the same for
    any data bounds.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: must equal ``in_channels`` (it outputs an image); accepted so the net
            builder can fill it.
        features: channels per level of the inner U-Net.
        norm: normalization inside the U-Net (``"group"`` by default: no batch statistics, so
            the denoiser behaves the same in train and eval mode and for any batch).

    Input/output: ``[B, C, *spatial]`` → ``[B, C, *spatial]``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        features: Sequence[int] = (16, 32),
        norm: Norm = "group",
    ) -> None:
        super().__init__()
        if out_channels is not None and out_channels != in_channels:
            raise ValueError(
                f"DenoisingAutoEncoder outputs an image: out_channels ({out_channels}) must equal "
                f"in_channels ({in_channels})"
            )
        self.body = SmallUNet(spatial_dims, in_channels, in_channels, features, norm)
        nn.init.zeros_(self.body.out.weight)
        nn.init.zeros_(self.body.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)
