"""A small CNN classifier, 2-D or 3-D, fast enough for CPU tests and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_modules.nets.layers import Norm, conv_block, max_pool_nd


class SmallCNN(nn.Module):
    """``features`` stages of (conv → norm → ReLU) × ``convs_per_stage`` → max-pool, then global
    average pooling, dropout and a linear head.

    Args:
        spatial_dims: 2 (``[B, C, H, W]``) or 3 (``[B, C, D, H, W]``).
        in_channels: input channels.
        num_classes: output logits ``K`` (``1`` for a single binary logit).
        features: channels per stage; each stage halves the spatial size.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        convs_per_stage: convolutions per stage.
        dropout: dropout probability before the head.

    Submodules: ``features`` (the convolutional trunk, output ``[B, features[-1], *spatial/2^n]``)
    and ``head``; ``features`` is a natural feature layer for the denoising method's invariance
    loss.
    Output: logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (16, 32, 64),
        norm: Norm = "batch",
        convs_per_stage: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not features:
            raise ValueError("features must list at least one stage width")
        layers: list[nn.Module] = []
        ch = in_channels
        for width in features:
            layers += [conv_block(spatial_dims, ch, int(width), norm, convs_per_stage),
                       max_pool_nd(spatial_dims)(2, ceil_mode=True)]
            ch = int(width)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(ch, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        # Global average pooling over any number of spatial dims.
        return self.head(self.features(x).flatten(2).mean(dim=2))
