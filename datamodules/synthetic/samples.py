"""One generator per task for the synthetic data: ``(rng, index, params) -> raw sample`` (numpy,
channels-first ``image`` and the targets the joint transform moves). The task objects
(:mod:`datamodules.tasks`) name theirs in ``synthetic_sample``.

* classification: one lesion per image; the class is a malignancy level ``t = k / (K - 1)``
  carried by the whole lesion (border irregularity, edge blur, internal texture).
* segmentation: the same lesions with a mask: 1 lesion, 2 a darker core, 3… satellites.
* landmarks: a skull-like outline (bone ring, orbit, jaw) with anatomically fixed points.
* detection: blood-smear-like cells (red, white, platelets, then size variants) with boxes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from datamodules.synthetic.draw import (
    CORE_RGB,
    SATELLITE_RGB,
    background,
    blob,
    finish,
    grid,
    lesion,
    sigmoid,
    smooth_noise,
    tint,
)

RBC_RGB = (0.15, 0.62, 0.50)
WBC_CYTO_RGB = (0.15, 0.22, 0.08)
WBC_NUCLEUS_RGB = (0.45, 0.62, 0.18)  # purple
PLATELET_RGB = (0.35, 0.50, 0.20)
SKULL_BONE = 0.8
SKULL_BRAIN = 0.3


def make_classification(rng: np.random.Generator, index: int, p: dict[str, Any]) -> dict[str, Any]:
    k = p["num_classes"]
    label = index % k  # balanced classes
    # Malignancy varies within a class too, so classes differ in degree, not in one feature.
    t = float(np.clip((label + rng.uniform(-0.3, 0.3)) / (k - 1), 0.0, 1.0))
    image, _, _, _ = lesion(rng, p["shape"], p["channels"], t)
    return {"image": finish(rng, image), "label": label}


def make_segmentation(rng: np.random.Generator, index: int, p: dict[str, Any]) -> dict[str, Any]:
    shape, channels, k = p["shape"], p["channels"], p["num_classes"]
    bshape = (-1, *[1] * len(shape))
    image, member, center, radius = lesion(rng, shape, channels, rng.uniform(0.0, 1.0))
    mask = (member > 0.5).astype(np.int64)
    if k >= 3:  # class 2: darker core inside the lesion
        offset = rng.uniform(-0.25, 0.25, size=len(shape)) * radius
        core = blob(rng, shape, center + offset, radius * rng.uniform(0.3, 0.45),
                    irregularity=0.3, edge=0.5) * (member > 0.5)
        image = image - (core * rng.uniform(0.3, 0.5))[None] * tint(channels, CORE_RGB).reshape(bshape)
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
        image = image - (sat * rng.uniform(0.5, 0.8))[None] * tint(channels, SATELLITE_RGB).reshape(bshape)
        mask[sat > 0.5] = cls
    return {"image": finish(rng, image), "mask": mask}


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
    yy, xx = grid(shape)
    ca, sa = math.cos(angle), math.sin(angle)
    # Image -> skull frame (rotate back), in semi-axis units.
    u = ((xx - cx) * ca + (yy - cy) * sa) / a_ax
    v = (-(xx - cx) * sa + (yy - cy) * ca) / b_ax
    thick = rng.uniform(0.07, 0.11)
    sharp = a_ax / 0.8  # semi-axis units -> pixels: edges about 1 px wide
    rho = np.sqrt(u * u + v * v)
    bone = sigmoid((thick - np.abs(rho - 1.0 + thick)) * sharp)
    brain = sigmoid((1.0 - 2 * thick - rho) * sharp)
    orbit_r = np.sqrt((u - 0.72) ** 2 + ((v - 0.12) * b_ax / a_ax) ** 2)
    orbit = sigmoid((0.04 - np.abs(orbit_r - 0.14)) * sharp)
    # Mandible: the lower front arc of an ellipse hanging below the face.
    jaw_r = np.sqrt(((u - 0.3) / 0.45) ** 2 + ((v - 0.45) / 0.6) ** 2)
    jaw = sigmoid((0.05 - np.abs(jaw_r - 1.0)) * sharp) * sigmoid((v - 0.5) * sharp) \
        * sigmoid((u + 0.05) * sharp)
    texture = 0.06 * smooth_noise(rng, shape, cell=max(2.0, size / 10))
    intensity = (rng.uniform(0.03, 0.1) + brain * (SKULL_BRAIN + texture)
                 + np.maximum(np.maximum(bone, orbit), jaw) * rng.uniform(0.65, SKULL_BONE + 0.1))
    image = np.repeat(intensity[None].astype(np.float32), channels, axis=0)
    pts = np.array(skull_landmarks(p["num_landmarks"]), dtype=np.float64)
    pu, pv = pts[:, 0] * a_ax, pts[:, 1] * b_ax
    keypoints = np.stack([cx + pu * ca - pv * sa, cy + pu * sa + pv * ca], axis=1)
    return {"image": finish(rng, image), "keypoints": keypoints}


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
    yy, xx = (g[window] for g in grid(shape))
    rho = np.sqrt((yy - center[0]) ** 2 + (xx - center[1]) ** 2)
    disk = sigmoid((radius - rho) / 0.6)
    if kind == 0:  # biconcave red cell: darker rim, pale centre
        dens = disk * (0.45 + 0.55 * np.clip(rho / radius, 0, 1) ** 2) * rng.uniform(0.7, 1.0)
        return window, dens[None] * tint(channels, RBC_RGB)[:, None, None]
    if kind == 1:  # white cell: faint cytoplasm + dark lobed nucleus
        nucleus = np.zeros(yy.shape, dtype=np.float32)
        for _ in range(int(rng.integers(2, 4))):
            off = rng.uniform(-0.3, 0.3, size=2) * radius
            r = radius * rng.uniform(0.3, 0.45)
            nucleus = np.maximum(nucleus, sigmoid((r - np.sqrt((yy - center[0] - off[0]) ** 2
                                                                + (xx - center[1] - off[1]) ** 2))
                                                   / 0.6))
        nucleus *= disk
        return window, (disk[None] * 0.6 * tint(channels, WBC_CYTO_RGB)[:, None, None]
                        + nucleus[None] * tint(channels, WBC_NUCLEUS_RGB)[:, None, None])
    dens = disk * rng.uniform(0.8, 1.0)  # platelet: small dense dot
    return window, dens[None] * tint(channels, PLATELET_RGB)[:, None, None]


CELL_RADIUS = {0: (0.075, 0.1), 1: (0.1, 0.135), 2: (0.025, 0.04)}


def make_detection(rng: np.random.Generator, index: int, p: dict[str, Any]) -> dict[str, Any]:
    shape, channels, k = p["shape"], p["channels"], p["num_classes"]
    h, w = shape
    size = min(h, w)
    image = background(rng, shape, channels)
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
    return {"image": finish(rng, image),
            "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            "box_labels": np.asarray(labels, dtype=np.int64)}
