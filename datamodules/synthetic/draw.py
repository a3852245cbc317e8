"""Drawing primitives of the synthetic data: soft star-shaped blobs in any number of dimensions,
smooth noise, a bright tissue-like background, sensor noise, and one pigmented lesion.

Images are composed like stained / pigmented tissue: a bright background minus per-structure
"absorption" (one value per channel, so 1 and 3 channels both look right). Every function draws
from the ``numpy.random.Generator`` it is given and from nothing else.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

BORDER_GRID = 64  # most points per axis at which a lesion border is evaluated (see blob)

# Per-channel absorption (R, G, B) of each structure: how much it darkens each channel.
LESION_RGB = (0.30, 0.48, 0.58)     # brown pigment
CORE_RGB = (0.45, 0.55, 0.55)       # darker, greyer centre
SATELLITE_RGB = (-0.25, -0.1, 0.05)  # negative = brighter than background (whitish structure)


def tint(channels: int, rgb: tuple[float, float, float]) -> np.ndarray:
    """Per-channel weights ``[C]`` of an RGB value: grey mean for 1 channel, cycled beyond 3."""
    if channels == 1:
        return np.array([float(np.mean(rgb))], dtype=np.float32)
    return np.resize(np.asarray(rgb, dtype=np.float32), channels)


@functools.lru_cache(maxsize=8)
def grid(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Pixel-index coordinates per axis (``ij`` order: z, y, x or y, x), float32, cached."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    for g in grids:
        g.setflags(write=False)
    return tuple(grids)


def resize_linear(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear (bi/tri) resize of a float32 array to ``shape`` (half-pixel-centre convention)."""
    if arr.shape == tuple(shape):
        return arr
    if arr.ndim == 2:  # cv2 is much faster than torch for small 2-D images
        return cv2.resize(arr, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()


@functools.lru_cache(maxsize=8)
def _coarse_grid(shape: tuple[int, ...], coarse: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Full-resolution pixel coordinates of the centres of a coarse ``coarse`` grid."""
    axes = [(np.arange(n, dtype=np.float32) + 0.5) * (s / n) - 0.5 for s, n in zip(shape, coarse)]
    grids = np.meshgrid(*axes, indexing="ij")
    for g in grids:
        g.setflags(write=False)
    return tuple(grids)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Zero-mean, roughly unit-std noise smooth on the scale of ``cell`` pixels, shape ``shape``."""
    small = tuple(max(2, math.ceil(s / max(cell, 1.0)) + 1) for s in shape)
    fine = resize_linear(rng.standard_normal(small).astype(np.float32), shape)
    return fine / (fine.std() + 1e-6)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _unit_vectors(rng: np.random.Generator, n: int, ndim: int) -> np.ndarray:
    v = rng.standard_normal((n, ndim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def blob(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    center: np.ndarray,
    radius: float,
    irregularity: float,
    edge: float,
    elongation: float = 0.0,
) -> np.ndarray:
    """Soft membership ``[*shape]`` in [0, 1] of a star-shaped blob (any number of dims).

    The radius along unit direction ``u`` is ``radius · (1 + low-order harmonics + irregularity ·
    (high-order harmonics + spicules))``; a harmonic of order ``k`` about a random axis ``d`` is
    the Chebyshev polynomial ``T_k(u·d)`` (``cos kθ`` in 2-D). ``edge`` is the border width in
    pixels.
    """
    ndim = len(shape)
    # The border radius depends only on direction, so it is evaluated on a coarse grid (at most
    # BORDER_GRID points per axis) and upsampled: large images cost little more than small ones.
    coarse = tuple(min(s, BORDER_GRID) for s in shape)
    axis = _unit_vectors(rng, 1, ndim)[0].astype(np.float32) if elongation else None

    def offsets(grids: tuple[np.ndarray, ...]) -> np.ndarray:
        """Offsets from the centre as one ``[ndim, N]`` array (elongation applied)."""
        delta = np.stack([g.ravel() - c for g, c in zip(grids, center)]).astype(np.float32)
        if axis is not None:  # squeeze distances along a random axis
            delta = delta - (elongation / (1 + elongation)) * axis[:, None] * (axis @ delta)[None]
        return delta

    delta = offsets(grid(shape))
    rho = np.sqrt((delta * delta).sum(0)).reshape(shape)
    small = delta if coarse == shape else offsets(_coarse_grid(shape, coarse))
    u = small / (np.sqrt((small * small).sum(0)) + 1e-6)
    # Low orders (2, 3) give gentle ovals to every class; orders 5-11 and spicules (narrow
    # cones around random directions) make the border irregular in proportion to irregularity.
    n_spikes = int(rng.integers(5, 11)) if irregularity > 0 else 0
    orders = np.array([2, 3] + (list(rng.integers(5, 12, size=3)) if irregularity > 0 else []))
    amps = np.concatenate([rng.uniform(0.0, 0.08, size=2),
                           irregularity * rng.uniform(0.03, 0.07, size=len(orders) - 2)])
    dirs = _unit_vectors(rng, len(orders) + n_spikes, ndim).astype(np.float32)
    cos = np.clip(dirs @ u, -1.0, 1.0)
    harm = np.cos(orders[:, None] * np.arccos(cos[: len(orders)]))
    rel = 1.0 + amps.astype(np.float32) @ harm
    if n_spikes:
        spike_amps = irregularity * rng.uniform(0.12, 0.3, size=n_spikes).astype(np.float32)
        rel = rel + spike_amps @ np.clip(cos[len(orders):], 0.0, 1.0) ** 60
    rel = resize_linear(rel.reshape(coarse).astype(np.float32), shape)
    return sigmoid((radius * rel - rho) / max(edge, 1e-3)).astype(np.float32)


def background(rng: np.random.Generator, shape: tuple[int, ...], channels: int) -> np.ndarray:
    """Bright, slowly varying skin-/plasma-like background ``[C, *shape]``."""
    level = rng.uniform(0.65, 0.9)
    shade = 0.05 * smooth_noise(rng, shape, cell=max(shape) / 3)
    tint = 1.0 - rng.uniform(0.0, 0.12, size=channels).astype(np.float32)
    return (level + shade)[None] * tint.reshape(-1, *[1] * len(shape))


def finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Add sensor noise and clip to [0, 1]."""
    sigma = rng.uniform(0.01, 0.035)
    noisy = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def lesion(
    rng: np.random.Generator, shape: tuple[int, ...], channels: int, t: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Background + one lesion of malignancy ``t`` in [0, 1].

    Returns ``(image [C, *shape], membership [*shape], center, radius)``.
    """
    size = min(shape)
    radius = rng.uniform(0.18, 0.3) * size
    margin = radius * 1.1
    center = np.array([rng.uniform(margin, s - 1 - margin) for s in shape])
    edge = radius * (0.03 + 0.12 * t) + 0.3
    member = blob(rng, shape, center, radius, irregularity=t, edge=edge,
                  elongation=rng.uniform(0.0, 0.4))
    # Texture: homogeneous for benign, mottled multi-tone for malignant lesions.
    fine = smooth_noise(rng, shape, cell=max(1.5, size / 14))
    texture = (0.04 + 0.45 * t) * fine
    contrast = rng.uniform(0.3, 0.6)
    density = member * contrast * np.clip(1.0 + texture, 0.2, 2.0)
    image = background(rng, shape, channels)
    image = image - density[None] * tint(channels, LESION_RGB).reshape(-1, *[1] * len(shape)) * 1.6
    return image, member, center, radius

