"""Procedurally generated medical-looking data for every task: the no-download default.

Every sample is drawn from its own generator seeded by ``(seed, split, index)``, so a sample is
the same whichever worker or DDP rank makes it, and whether or not other samples were made.
Images lie in [0, 1] and are composed like stained / pigmented tissue: a bright background
minus per-structure "absorption" (one value per channel, so 1 and 3 channels both look right).

* classification: one lesion per image. The class is a malignancy level ``t = k / (K - 1)``
  carried by the whole lesion — border irregularity (high-frequency harmonics and spicules),
  edge blur and internal texture — never by a single pixel; position, size, elongation,
  contrast, background and noise are random for every class.
* segmentation: the same lesions (random ``t``) with a mask: 1 lesion, 2 a darker core inside
  it, 3… small satellite structures elsewhere, each class with its own look.
* landmarks: a skull-like outline (bone ring, orbit, jaw) under random rotation, scale and shift,
  with ``K`` anatomically fixed points (vertex, nasion, occiput, orbit, menton, then points on the
  outline).
* detection: blood-smear-like cells — red cells with a pale centre, white cells with a dark lobed
  nucleus, tiny platelets, then size variants — 0 to ``max_objects`` per image (some images
  have none) with their boxes.

3-D (``spatial_dims=3``) volumes of ``D = H = W = image_size[0]`` exist for classification and
segmentation; the same shape functions work in any number of dimensions.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from datamodules.tasks import DataTask, task_named
from datamodules.transforms import (
    AugmentConfig,
    JointTransform,
    as_augment_config,
    flip_volume,
    volume_augment_warning,
)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
BORDER_GRID = 64  # most points per axis at which a lesion border is evaluated (see blob)

# Per-channel absorption (R, G, B) of each structure: how much it darkens each channel.
LESION_RGB = (0.30, 0.48, 0.58)     # brown pigment
CORE_RGB = (0.45, 0.55, 0.55)       # darker, greyer centre
SATELLITE_RGB = (-0.25, -0.1, 0.05)  # negative = brighter than background (whitish structure)
RBC_RGB = (0.15, 0.62, 0.50)
WBC_CYTO_RGB = (0.15, 0.22, 0.08)
WBC_NUCLEUS_RGB = (0.45, 0.62, 0.18)  # purple
PLATELET_RGB = (0.35, 0.50, 0.20)
SKULL_BONE = 0.8
SKULL_BRAIN = 0.3


def _tint(channels: int, rgb: tuple[float, float, float]) -> np.ndarray:
    """Per-channel weights ``[C]`` of an RGB value: grey mean for 1 channel, cycled beyond 3."""
    if channels == 1:
        return np.array([float(np.mean(rgb))], dtype=np.float32)
    return np.resize(np.asarray(rgb, dtype=np.float32), channels)


@functools.lru_cache(maxsize=8)
def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
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


def _sigmoid(x: np.ndarray) -> np.ndarray:
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

    delta = offsets(_grid(shape))
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
    return _sigmoid((radius * rel - rho) / max(edge, 1e-3)).astype(np.float32)


def _background(rng: np.random.Generator, shape: tuple[int, ...], channels: int) -> np.ndarray:
    """Bright, slowly varying skin-/plasma-like background ``[C, *shape]``."""
    level = rng.uniform(0.65, 0.9)
    shade = 0.05 * smooth_noise(rng, shape, cell=max(shape) / 3)
    tint = 1.0 - rng.uniform(0.0, 0.12, size=channels).astype(np.float32)
    return (level + shade)[None] * tint.reshape(-1, *[1] * len(shape))


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Add sensor noise and clip to [0, 1]."""
    sigma = rng.uniform(0.01, 0.035)
    noisy = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _lesion(
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
    image = _background(rng, shape, channels)
    image = image - density[None] * _tint(channels, LESION_RGB).reshape(-1, *[1] * len(shape)) * 1.6
    return image, member, center, radius


# ---------------------------------------------------------------------------------------------
# One generator per task: (rng, index, params) -> raw sample (numpy, channels-first image)
# ---------------------------------------------------------------------------------------------
def make_classification(rng: np.random.Generator, index: int, p: dict[str, Any]) -> dict[str, Any]:
    k = p["num_classes"]
    label = index % k  # balanced classes
    # Malignancy varies within a class too, so classes differ in degree, not in one feature.
    t = float(np.clip((label + rng.uniform(-0.3, 0.3)) / (k - 1), 0.0, 1.0))
    image, _, _, _ = _lesion(rng, p["shape"], p["channels"], t)
    return {"image": _finish(rng, image), "label": label}


def make_segmentation(rng: np.random.Generator, index: int, p: dict[str, Any]) -> dict[str, Any]:
    shape, channels, k = p["shape"], p["channels"], p["num_classes"]
    bshape = (-1, *[1] * len(shape))
    image, member, center, radius = _lesion(rng, shape, channels, rng.uniform(0.0, 1.0))
    mask = (member > 0.5).astype(np.int64)
    if k >= 3:  # class 2: darker core inside the lesion
        offset = rng.uniform(-0.25, 0.25, size=len(shape)) * radius
        core = blob(rng, shape, center + offset, radius * rng.uniform(0.3, 0.45),
                    irregularity=0.3, edge=0.5) * (member > 0.5)
        image = image - (core * rng.uniform(0.3, 0.5))[None] * _tint(channels, CORE_RGB).reshape(bshape)
        mask[core > 0.5] = 2
    for cls in range(3, k):  # satellites: small whitish structures away from the lesion
        if rng.uniform() < 0.3:
            continue
        r = min(shape) * rng.uniform(0.05, 0.09) * (1 + 0.15 * (cls - 3))
        for _ in range(20):
            c = np.array([rng.uniform(r + 1, s - 2 - r) for s in shape])
            if np.linalg.norm(c - center) > radius * 1.4 + r:
                break
        else:
            continue
        sat = blob(rng, shape, c, r, irregularity=0.0, edge=0.4)
        image = image - (sat * rng.uniform(0.5, 0.8))[None] * _tint(channels, SATELLITE_RGB).reshape(bshape)
        mask[sat > 0.5] = cls
    return {"image": _finish(rng, image), "mask": mask}


# Canonical landmarks in the skull frame, (u, v) in units of the skull's semi-axes (A, B),
# u towards the face, v downwards.
SKULL_POINTS = [
    (0.0, -1.0),                               # vertex (top of the skull)
    (math.cos(-0.35), math.sin(-0.35)),        # nasion-like frontal point
    (-1.0, 0.0),                               # occiput
    (0.72, 0.12),                              # orbit centre
    (0.3, 1.05),                               # menton (lowest point of the jaw)
]


def skull_landmarks(num: int) -> list[tuple[float, float]]:
    """``num`` landmark positions in the skull frame (the first five are named, then outline)."""
    points = list(SKULL_POINTS[:num])
    extra = num - len(points)
    for j in range(extra):
        angle = math.pi * (0.15 + 0.7 * (j + 0.5) / extra)  # lower-back outline arc
        points.append((-math.sin(angle) * 0.2 - math.cos(angle), math.sin(angle)))
    return points


def make_landmarks(rng: np.random.Generator, index: int, p: dict[str, Any]) -> dict[str, Any]:
    shape, channels = p["shape"], p["channels"]
    h, w = shape
    size = min(h, w)
    scale = rng.uniform(0.8, 1.08)
    a_ax, b_ax = 0.36 * size * scale, 0.3 * size * scale
    angle = math.radians(rng.uniform(-15.0, 15.0))
    cy = (h - 1) / 2 + rng.uniform(-0.05, 0.05) * size
    cx = (w - 1) / 2 + rng.uniform(-0.05, 0.05) * size
    yy, xx = _grid(shape)
    ca, sa = math.cos(angle), math.sin(angle)
    # Image -> skull frame (rotate back), in semi-axis units.
    u = ((xx - cx) * ca + (yy - cy) * sa) / a_ax
    v = (-(xx - cx) * sa + (yy - cy) * ca) / b_ax
    thick = rng.uniform(0.07, 0.11)
    sharp = a_ax / 0.8  # semi-axis units -> pixels: edges about 1 px wide
    rho = np.sqrt(u * u + v * v)
    bone = _sigmoid((thick - np.abs(rho - 1.0 + thick)) * sharp)
    brain = _sigmoid((1.0 - 2 * thick - rho) * sharp)
    orbit_r = np.sqrt((u - 0.72) ** 2 + ((v - 0.12) * b_ax / a_ax) ** 2)
    orbit = _sigmoid((0.04 - np.abs(orbit_r - 0.14)) * sharp)
    # Mandible: the lower front arc of an ellipse hanging below the face.
    jaw_r = np.sqrt(((u - 0.3) / 0.45) ** 2 + ((v - 0.45) / 0.6) ** 2)
    jaw = _sigmoid((0.05 - np.abs(jaw_r - 1.0)) * sharp) * _sigmoid((v - 0.5) * sharp) \
        * _sigmoid((u + 0.05) * sharp)
    texture = 0.06 * smooth_noise(rng, shape, cell=max(2.0, size / 10))
    intensity = (rng.uniform(0.03, 0.1) + brain * (SKULL_BRAIN + texture)
                 + np.maximum(np.maximum(bone, orbit), jaw) * rng.uniform(0.65, SKULL_BONE + 0.1))
    image = np.repeat(intensity[None].astype(np.float32), channels, axis=0)
    pts = np.array(skull_landmarks(p["num_landmarks"]), dtype=np.float64)
    pu, pv = pts[:, 0] * a_ax, pts[:, 1] * b_ax
    keypoints = np.stack([cx + pu * ca - pv * sa, cy + pu * sa + pv * ca], axis=1)
    return {"image": _finish(rng, image), "keypoints": keypoints}


def _cell(shape: tuple[int, int], center: np.ndarray, radius: float, kind: int,
          rng: np.random.Generator, channels: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Absorption of one cell of template ``kind`` (0 RBC, 1 WBC, 2 platelet).

    Returns ``(window, absorption [C, h, w])``: only the window around the cell is computed.
    """
    reach = radius + 3.0  # the soft edge fades within ~2 px
    y0, x0 = max(0, int(center[0] - reach)), max(0, int(center[1] - reach))
    y1 = min(shape[0], int(math.ceil(center[0] + reach)) + 1)
    x1 = min(shape[1], int(math.ceil(center[1] + reach)) + 1)
    window = (slice(y0, y1), slice(x0, x1))
    yy, xx = (g[window] for g in _grid(shape))
    rho = np.sqrt((yy - center[0]) ** 2 + (xx - center[1]) ** 2)
    disk = _sigmoid((radius - rho) / 0.6)
    if kind == 0:  # biconcave red cell: darker rim, pale centre
        dens = disk * (0.45 + 0.55 * np.clip(rho / radius, 0, 1) ** 2) * rng.uniform(0.7, 1.0)
        return window, dens[None] * _tint(channels, RBC_RGB)[:, None, None]
    if kind == 1:  # white cell: faint cytoplasm + dark lobed nucleus
        nucleus = np.zeros(yy.shape, dtype=np.float32)
        for _ in range(int(rng.integers(2, 4))):
            off = rng.uniform(-0.3, 0.3, size=2) * radius
            r = radius * rng.uniform(0.3, 0.45)
            nucleus = np.maximum(nucleus, _sigmoid((r - np.sqrt((yy - center[0] - off[0]) ** 2
                                                                + (xx - center[1] - off[1]) ** 2))
                                                   / 0.6))
        nucleus *= disk
        return window, (disk[None] * 0.6 * _tint(channels, WBC_CYTO_RGB)[:, None, None]
                        + nucleus[None] * _tint(channels, WBC_NUCLEUS_RGB)[:, None, None])
    dens = disk * rng.uniform(0.8, 1.0)  # platelet: small dense dot
    return window, dens[None] * _tint(channels, PLATELET_RGB)[:, None, None]


CELL_RADIUS = {0: (0.075, 0.1), 1: (0.1, 0.135), 2: (0.025, 0.04)}


def make_detection(rng: np.random.Generator, index: int, p: dict[str, Any]) -> dict[str, Any]:
    shape, channels, k = p["shape"], p["channels"], p["num_classes"]
    h, w = shape
    size = min(h, w)
    image = _background(rng, shape, channels)
    count = 0 if rng.uniform() < 0.1 else int(rng.integers(1, p["max_objects"] + 1))
    placed: list[tuple[float, float, float]] = []
    boxes, labels = [], []
    for _ in range(count):
        cls = int(rng.integers(0, k))
        kind = cls % 3
        lo, hi = CELL_RADIUS[kind]
        radius = max(1.0, rng.uniform(lo, hi) * size * (1 + 0.35 * (cls // 3)))
        for _ in range(15):  # a few tries to avoid heavy overlap
            cy, cx = rng.uniform(radius, h - 1 - radius), rng.uniform(radius, w - 1 - radius)
            if all((cy - y) ** 2 + (cx - x) ** 2 > (0.85 * (radius + r)) ** 2
                   for y, x, r in placed):
                break
        else:
            continue
        placed.append((cy, cx, radius))
        window, absorption = _cell(shape, np.array([cy, cx]), radius, kind, rng, channels)
        image[(slice(None), *window)] -= absorption
        # Continuous edges: pixel-index centre c covers [c - r + 0.5, c + r + 0.5].
        boxes.append([max(0.0, cx - radius + 0.5), max(0.0, cy - radius + 0.5),
                      min(float(w), cx + radius + 0.5), min(float(h), cy + radius + 0.5)])
        labels.append(cls)
    return {"image": _finish(rng, image),
            "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            "box_labels": np.asarray(labels, dtype=np.int64)}


class SyntheticDataset(Dataset):
    """Map-style dataset whose item ``i`` is generated from ``(seed, split, i)`` on demand.

    Items follow the batch contract of :mod:`datamodules.info` (``image`` float32
    ``[C, H, W]`` / ``[C, D, H, W]`` in [0, 1], ``index`` int64 scalar, task target).
    """

    def __init__(self, task: str | DataTask, split: str, length: int, seed: int, params: dict[str, Any],
                 transform: JointTransform | None, augment: AugmentConfig | None = None) -> None:
        self.kind = task_named(task, "SyntheticDataset.task")
        self.task, self.split, self.length, self.seed = self.kind.name, split, length, seed
        self.params = params
        self.transform = transform
        self.augment3d = augment if (transform is None and split == "train") else None

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> dict[str, Any]:
        """The generated sample before any transform (numpy, channels-first image)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.split} split of {self.length}")
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        return self.kind.synthetic_sample(rng, index, self.params)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.raw(index)
        out: dict[str, Any]
        if self.transform is not None:
            res = self.transform(
                sample["image"].transpose(1, 2, 0),
                mask=sample.get("mask"),
                keypoints=sample.get("keypoints"),
                boxes=sample.get("boxes"),
                box_labels=sample.get("box_labels"),
            )
            out = {"image": res["image"]}
            if "mask" in res:
                out["mask"] = res["mask"]
            if "keypoints" in res:
                out["landmarks"] = res["keypoints"]
                out["visible"] = res["visible"]
                out["spacing"] = torch.tensor(float("nan"), dtype=torch.float32)
            if "boxes" in res:
                out["boxes"] = res["boxes"]
                out["labels"] = res["box_labels"]
        else:  # 3-D: only flips, done in torch on the channels-first volume
            image = torch.from_numpy(sample["image"])
            mask = torch.from_numpy(sample["mask"]) if "mask" in sample else None
            image, mask = flip_volume(image, mask, self.augment3d)
            out = {"image": image.contiguous()}
            if mask is not None:
                out["mask"] = mask.contiguous()
        out = self.kind.finish_item(sample, out)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out


class SyntheticDataModule(BaseDataModule):
    """Synthetic medical-looking data for any task, deterministic by ``seed``.

    Args:
        task: ``classification`` | ``segmentation`` | ``landmarks`` | ``detection``.
        num_train / num_val / num_test: samples per split.
        image_size: ``(H, W)``; for ``spatial_dims=3`` volumes are ``D = H = W = image_size[0]``
            (or pass ``(D, H, W)``).
        spatial_dims: 2 or 3 (3-D: classification and segmentation).
        in_channels: image channels (1 grey, 3 RGB-like; more cycle the RGB tints).
        num_classes: classification classes (default 2); segmentation classes incl. background
            (default 2: 0 background, 1 lesion; 2 lesion core; 3+ satellites); detection object
            classes without background (default 3: rbc, wbc, platelet). ``None`` = default.
        num_landmarks: landmarks per image (landmark task).
        max_objects: most cells per image (detection task).
        seed: base seed; every sample is generated from ``(seed, split, index)``.
        augment: training augmentations (2-D: any; 3-D: flips only).
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        task: str = "classification",
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        image_size: tuple[int, ...] = (32, 32),
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int | None = None,
        num_landmarks: int = 5,
        max_objects: int = 6,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        kind = task_named(task, "SyntheticDataModule.task")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if spatial_dims not in kind.spatial_dims:
            raise ValueError(f"synthetic {task} data is {'/'.join(map(str, kind.spatial_dims))}-D only; "
                             f"use spatial_dims={kind.spatial_dims[0]}")
        size = tuple(int(s) for s in image_size)
        if spatial_dims == 2:
            if len(size) != 2:
                raise ValueError(f"image_size must be (H, W) for 2-D data, got {image_size}")
        else:
            size = size if len(size) == 3 else (size[0],) * 3
        if min(size) < 8:
            raise ValueError(f"image_size must be at least 8 pixels per axis, got {image_size}")
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if n < 1:
                raise ValueError(f"{name} must be >= 1, got {n}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        k = kind.default_num_classes if num_classes is None else int(num_classes)
        if k < kind.min_classes:
            raise ValueError(f"num_classes for {task} must be >= {kind.min_classes}, got {k}")
        kind.check_synthetic(num_landmarks, max_objects)
        message = volume_augment_warning(augment) if spatial_dims == 3 else None
        if message:
            warnings.warn(f"SyntheticDataModule: {message}", stacklevel=2)
        self.task = kind.name
        self.kind = kind
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = size
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = k
        self.num_landmarks = kind.synthetic_num_landmarks(num_landmarks)
        self.max_objects = max_objects
        self.seed = seed
        self.augment = as_augment_config(augment) if augment is not None else None

    def build_info(self) -> DataInfo:
        return DataInfo(
            task=self.task,
            in_channels=self.in_channels,
            spatial_dims=self.spatial_dims,
            bounds=(0.0, 1.0),
            image_size=self.image_size,
            num_classes=self.num_classes,
            class_names=self.class_names(),
            num_landmarks=self.num_landmarks,
            num_train=self.sizes["train"],
        )

    def class_names(self) -> list[str]:
        return self.kind.synthetic_class_names(self.num_classes)

    def build_split(self, split: str) -> SyntheticDataset:
        params = {
            "shape": self.image_size,
            "channels": self.in_channels,
            "num_classes": self.num_classes,
            "num_landmarks": self.num_landmarks,
            "max_objects": self.max_objects,
        }
        transform = None
        if self.spatial_dims == 2:
            transform = JointTransform(
                self.image_size, self.augment, train=split == "train",
                has_mask=self.kind.has_mask, has_keypoints=self.kind.has_keypoints,
                has_boxes=self.kind.has_boxes,
            )
        return SyntheticDataset(self.kind, split, self.sizes[split], self.seed, params,
                                transform, self.augment)
