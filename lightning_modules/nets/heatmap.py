"""Heatmap landmark detection: targets, sub-pixel decoding, losses and an optional regression head.

Conventions (the batch contract in :mod:`datamodules.info`): landmarks are ``(x, y)`` in
pixel-index coordinates of the delivered image, so the centre of pixel ``image[..., r, c]`` is
``(x=c, y=r)``. Heatmaps are ``[B, K, H, W]`` with one channel per landmark; a target heatmap
has a Gaussian of peak 1 centred on the (sub-pixel) landmark and is all zero for a landmark that
is not visible. Decoding maps ``[B, K, H, W]`` back to ``[B, K, 2]`` ``(x, y)`` with sub-pixel
precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attacks.losses import heatmap_mse

__all__ = [
    "CoordinateRegressionHead",
    "coordinate_loss",
    "decode_heatmaps",
    "default_beta",
    "default_window",
    "gaussian_heatmaps",
    "hard_argmax",
    "masked_heatmap_loss",
    "pixel_grid",
    "soft_argmax",
]


def pixel_grid(size: Sequence[int], device: torch.device | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates of an ``(H, W)`` image: ``xs`` ``[W]`` = 0..W-1, ``ys`` ``[H]``."""
    h, w = int(size[0]), int(size[1])
    return (torch.arange(w, device=device, dtype=dtype), torch.arange(h, device=device, dtype=dtype))


def gaussian_heatmaps(
    landmarks: Tensor,
    size: Sequence[int],
    sigma: float,
    visible: Tensor | None = None,
) -> Tensor:
    """Target heatmaps: one isotropic Gaussian of peak 1 per landmark.

    Args:
        landmarks: ``[B, K, 2]`` ``(x, y)`` pixel coordinates (sub-pixel allowed, may lie
            outside the image; non-finite values count as invisible).
        size: ``(H, W)`` of the heatmaps.
        sigma: standard deviation in pixels (> 0).
        visible: optional Bool ``[B, K]``; invisible landmarks get an all-zero channel.

    Returns:
        ``[B, K, H, W]`` float in ``[0, 1]`` (dtype of ``landmarks`` if floating, else float32).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be [B, K, 2], got {tuple(landmarks.shape)}")
    dtype = landmarks.dtype if landmarks.is_floating_point() else torch.float32
    pts = landmarks.to(dtype)
    valid = torch.isfinite(pts).all(dim=-1)
    if visible is not None:
        valid = valid & visible.to(torch.bool)
    pts = torch.where(valid[..., None], pts, torch.zeros_like(pts))
    xs, ys = pixel_grid(size, device=pts.device, dtype=dtype)
    # Separable Gaussian: exp(-dx²/2σ²) ⊗ exp(-dy²/2σ²) is cheaper than a full distance map.
    gx = torch.exp(-((xs[None, None, :] - pts[..., 0:1]) ** 2) / (2.0 * sigma**2))  # [B, K, W]
    gy = torch.exp(-((ys[None, None, :] - pts[..., 1:2]) ** 2) / (2.0 * sigma**2))  # [B, K, H]
    heat = gy[..., :, None] * gx[..., None, :]
    return heat * valid[..., None, None].to(dtype)


def hard_argmax(heatmaps: Tensor) -> Tensor:
    """Integer-pixel peak of each channel: ``[B, K, H, W] -> [B, K, 2]`` ``(x, y)`` float."""
    b, k, h, w = heatmaps.shape
    idx = heatmaps.reshape(b, k, h * w).argmax(dim=-1)
    return torch.stack([(idx % w), torch.div(idx, w, rounding_mode="floor")], dim=-1).to(
        heatmaps.dtype if heatmaps.is_floating_point() else torch.float32
    )


def soft_argmax(heatmaps: Tensor, beta: float = 10.0, window: int | None = None) -> Tensor:
    """Sub-pixel decoding: the expectation of pixel coordinates under ``softmax(beta · heatmap)``.

    Args:
        heatmaps: ``[B, K, H, W]`` (any real values; a Gaussian of peak 1 is what the targets
            look like).
        beta: inverse temperature. The softmax of a peak-1 Gaussian of width σ is close to a
            Gaussian of width ``σ / sqrt(beta)`` around the peak, and every background pixel
            weighs ``exp(0)``: a large ``beta`` makes the peak dominate the background (which
            otherwise biases the estimate towards the image centre).
        window: if given, only pixels within this Chebyshev radius of the hard argmax take part
            ("local soft-argmax"): no background bias whatever ``beta`` and the output peak
            height; still sub-pixel and differentiable w.r.t. the heatmap values in the window.

    Returns:
        ``[B, K, 2]`` ``(x, y)`` in pixel-index coordinates.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be [B, K, H, W], got {tuple(heatmaps.shape)}")
    b, k, h, w = heatmaps.shape
    logits = beta * heatmaps.float()
    xs, ys = pixel_grid((h, w), device=heatmaps.device)
    if window is not None:
        peak = hard_argmax(heatmaps.detach()).float()  # [B, K, 2]
        near_x = (xs[None, None, :] - peak[..., 0:1]).abs() <= window  # [B, K, W]
        near_y = (ys[None, None, :] - peak[..., 1:2]).abs() <= window  # [B, K, H]
        inside = near_y[..., :, None] & near_x[..., None, :]
        logits = logits.masked_fill(~inside, float("-inf"))
    prob = logits.reshape(b, k, h * w).softmax(dim=-1).reshape(b, k, h, w)
    x = (prob.sum(dim=2) * xs).sum(dim=-1)  # marginal over rows, then E[x]
    y = (prob.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def decode_heatmaps(
    heatmaps: Tensor, method: str = "local_soft_argmax", beta: float = 10.0, window: int = 3
) -> Tensor:
    """``[B, K, H, W] -> [B, K, 2]`` ``(x, y)`` by ``method``:

    * ``"local_soft_argmax"`` (default): :func:`soft_argmax` restricted to ``window``;
    * ``"soft_argmax"``: :func:`soft_argmax` over the whole image;
    * ``"argmax"``: integer peak (:func:`hard_argmax`), for comparison.
    """
    if method == "local_soft_argmax":
        return soft_argmax(heatmaps, beta=beta, window=window)
    if method == "soft_argmax":
        return soft_argmax(heatmaps, beta=beta)
    if method == "argmax":
        return hard_argmax(heatmaps)
    raise ValueError(
        f"decode method must be 'local_soft_argmax', 'soft_argmax' or 'argmax', got {method!r}"
    )


def masked_heatmap_loss(output: Tensor, target: Tensor, visible: Tensor | None = None) -> Tensor:
    """Per-sample heatmap MSE over visible landmarks only, ``-> [B]``.

    Each landmark channel's MSE (mean over pixels, :func:`attacks.losses.heatmap_mse`) is
    averaged over the visible landmarks of the sample; a sample with none scores 0 (it carries
    no supervision, and its gradient is then exactly zero).

    Args:
        output: predicted heatmaps ``[B, K, *spatial]``.
        target: target heatmaps of the same shape.
        visible: Bool ``[B, K]`` (``None``: all visible).
    """
    if output.shape != target.shape:
        raise ValueError(
            f"heatmap loss: output {tuple(output.shape)} and target {tuple(target.shape)} differ"
        )
    b, k = output.shape[:2]
    per_channel = heatmap_mse(output.reshape(b * k, 1, -1), target.reshape(b * k, 1, -1))
    per_channel = per_channel.reshape(b, k)
    if visible is None:
        return per_channel.mean(dim=1)
    weight = visible.to(per_channel.dtype)
    return (per_channel * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)


def coordinate_loss(
    pred: Tensor, target: Tensor, visible: Tensor | None = None, scale: float = 1.0
) -> Tensor:
    """Per-sample mean Euclidean distance ``‖pred − target‖ / scale`` over visible landmarks.

    Args:
        pred, target: ``[B, K, 2]`` ``(x, y)`` pixels.
        visible: Bool ``[B, K]`` (``None``: all visible). Invisible targets may be NaN.
        scale: divides the distance (e.g. the image side) so the loss does not grow with size.

    Returns:
        ``[B]``; 0 for a sample with no visible landmark.
    """
    if visible is None:
        visible = torch.isfinite(target).all(dim=-1)
    weight = visible.to(pred.dtype)
    safe_target = torch.where(visible[..., None], target.to(pred.dtype), pred.detach())
    # sqrt(d² + tiny) keeps the gradient finite when a prediction hits its target exactly.
    dist = torch.sqrt(((pred - safe_target) ** 2).sum(dim=-1) + 1e-8) / scale
    return (dist * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)


class CoordinateRegressionHead(nn.Module):
    """Optional direct coordinate regression from the heatmap logits.

    A few strided convolutions, global average pooling and a linear layer map ``[B, K, H, W]``
    to ``[B, K, 2]`` coordinates, parameterised as ``sigmoid(·) · (size − 1)`` so they stay in
    the image. It complements, never replaces, heatmap decoding: heatmaps are translation
    equivariant and precise, a global regressor is robust to spurious secondary peaks.

    Args:
        num_landmarks: ``K``.
        hidden: channels of the convolutional trunk.
        depth: number of stride-2 convolutions before pooling.
    """

    def __init__(self, num_landmarks: int, hidden: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = num_landmarks
        for _ in range(depth):
            layers += [nn.Conv2d(ch, hidden, 3, stride=2, padding=1), nn.GroupNorm(1, hidden),
                       nn.ReLU(inplace=True)]
            ch = hidden
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(hidden * 16, 2 * num_landmarks)
        self.num_landmarks = num_landmarks

    def forward(self, heatmaps: Tensor) -> Tensor:
        """``[B, K, H, W]`` heatmap logits ``->`` ``[B, K, 2]`` ``(x, y)`` pixels."""
        b, _, h, w = heatmaps.shape
        z = self.fc(self.pool(self.trunk(heatmaps)).flatten(1)).reshape(b, self.num_landmarks, 2)
        extent = heatmaps.new_tensor([w - 1, h - 1]).clamp(min=1.0)
        return torch.sigmoid(z) * extent


def default_beta(sigma: float) -> float:
    """Soft-argmax inverse temperature for targets of width ``sigma``: ``max(8, 2.5·σ²)``.

    ``softmax(β·g)`` of a peak-1 Gaussian ``g`` of width σ is close to a Gaussian of width
    ``σ/√β`` around the peak: ``β = 2.5·σ²`` makes that about 0.6 px — wide enough to avoid the
    pull towards pixel centres of a narrower one, narrow enough (with ``β >= 8``) for the peak to
    outweigh the background. Sub-pixel error on exact targets: < 0.025 px for σ >= 1.5.
    """
    return max(8.0, 2.5 * sigma * sigma)


def default_window(sigma: float) -> int:
    """Local soft-argmax radius for targets of width ``sigma``: ``max(3, ceil(1.5·σ))`` pixels."""
    return max(3, math.ceil(1.5 * sigma))
