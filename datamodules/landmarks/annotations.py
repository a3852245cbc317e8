"""Reading landmark annotations: LabelMe JSON points, ISBI 2015 text files, choosing annotator
folders and averaging their points. Points are ``(x, y)`` pixels of the image on disk; a
missing or unusable point is NaN."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.samples import BadSampleError


def parse_labelme_points(path: Path, names: Sequence[str]) -> tuple[np.ndarray, list[str],
                                                                    dict[str, Any]]:
    """Read the landmarks of one LabelMe JSON file, ordered like ``names``.

    Returns:
        ``(points, problems, meta)``: float64 ``[K, 2]`` points with NaN where a landmark is
        missing, duplicated or malformed; one human-readable problem per such landmark; and the
        file's ``imagePath`` / ``imageHeight`` / ``imageWidth``.

    Raises:
        BadSampleError: the file is not LabelMe JSON or has a label not in ``names``.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BadSampleError(f"cannot read LabelMe JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise BadSampleError("not a LabelMe file (expected a JSON object with a 'shapes' list)")
    position = {name: k for k, name in enumerate(names)}
    found: dict[int, list[Any]] = {}
    for shape in data["shapes"]:
        label = str(shape.get("label", "")).strip() if isinstance(shape, dict) else ""
        if label not in position:
            raise BadSampleError(f"unknown landmark label {label!r} (expected one of "
                                 f"{names[0]}..{names[-1]})")
        found.setdefault(position[label], []).append(shape)
    points = np.full((len(names), 2), np.nan)
    problems: list[str] = []
    for k, name in enumerate(names):
        shapes = found.get(k, [])
        if not shapes:
            problems.append(f"{name} missing")
            continue
        if len(shapes) > 1:
            problems.append(f"{name} given {len(shapes)} times at "
                            + ", ".join(_short_points(s.get("points")) for s in shapes))
            continue
        pts = shapes[0].get("points")
        kind = shapes[0].get("shape_type", "point")
        try:
            xy = np.asarray(pts, dtype=np.float64)
        except (TypeError, ValueError):
            xy = np.zeros((0,))
        if kind != "point" or xy.shape != (1, 2) or not np.isfinite(xy).all():
            problems.append(f"{name} is not a single point (shape_type={kind!r}, points={pts})")
            continue
        points[k] = xy[0]
    meta = {key: data.get(key) for key in ("imagePath", "imageHeight", "imageWidth")}
    return points, problems, meta


def _short_points(points: Any) -> str:
    """``[[x, y]]`` as ``(x, y)`` with one decimal, for messages."""
    try:
        return ", ".join(f"({float(x):.1f}, {float(y):.1f})" for x, y in points)
    except (TypeError, ValueError):
        return repr(points)


def parse_isbi_points(path: Path, num_landmarks: int) -> np.ndarray:
    """Read the first ``num_landmarks`` ``x,y`` lines of an ISBI 2015 annotation file.

    Returns:
        float64 ``[K, 2]`` ``(x, y)`` pixels.

    Raises:
        BadSampleError: the file is unreadable or does not start with exactly K coordinate lines.
    """
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise BadSampleError(f"cannot read ISBI annotation: {err}") from err
    coords: list[tuple[float, float]] = []
    for ln in lines:
        # Coordinate lines are "x,y"; the class lines that follow hold a single integer.
        if "," not in ln:
            break
        parts = ln.split(",")
        try:
            x, y = (float(p) for p in parts)
        except ValueError as err:
            raise BadSampleError(f"line {len(coords) + 1} {ln!r} is not 'x,y'") from err
        coords.append((x, y))
    if len(coords) != num_landmarks:
        raise BadSampleError(f"expected {num_landmarks} 'x,y' landmark lines, found {len(coords)}")
    return np.asarray(coords, dtype=np.float64)


def match_annotators(folders: Sequence[Path], annotator: str) -> list[Path]:
    """The annotator folders selected by ``annotator``.

    ``"average"`` selects all; otherwise an exact folder name, or a unique folder whose name ends
    with it (``"mollabashi"`` -> ``annotated by Dr.mollabashi``, ``"senior"`` -> ``400_senior``).
    """
    if not folders:
        raise FileNotFoundError("no annotator folders found")
    if annotator == "average":
        return list(folders)
    exact = [f for f in folders if f.name == annotator]
    if exact:
        return exact
    suffix = [f for f in folders if f.name.lower().endswith(annotator.lower())]
    if len(suffix) == 1:
        return suffix
    names = [f.name for f in folders]
    raise ValueError(f"annotator {annotator!r} matches {len(suffix)} of the annotator folders "
                     f"{names}; use 'average' or one folder name (or its unique ending)")


def average_points(per_annotator: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over annotators of ``[K, 2]`` points, ignoring NaN; NaN where all are NaN."""
    stack = np.stack(per_annotator)
    valid = np.isfinite(stack).all(axis=2, keepdims=True)
    count = valid.sum(axis=0)
    total = np.where(valid, stack, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def points_outside(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``[K]`` True for finite points outside the ``[0, W] x [0, H]`` image area."""
    h, w = hw
    x, y = points[:, 0], points[:, 1]
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & ~((x >= 0) & (x <= w) & (y >= 0) & (y <= h))
