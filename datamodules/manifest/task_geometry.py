"""Row handlers of the tasks whose targets are geometry: landmarks (points) and detection
(boxes), each with several column forms. See :mod:`datamodules.manifest.handler`."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.detection.boxes import sanitize_box
from datamodules.detection.dataset import DetectionDataset, DetectionRecord
from datamodules.landmarks.dataset import delivered_spacing
from datamodules.manifest.handler import TaskRows
from datamodules.manifest.labels import Flag, resolve_labels
from datamodules.manifest.rows import empty, json_cell, number
from datamodules.manifest.sample import Sample
from datamodules.samples import BadSampleError, format_listing
from datamodules.transforms import AugmentConfig, JointTransform

__all__ = ["DetectionRows", "LandmarkRows"]

_BOX_KEYS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"))


class LandmarkRows(TaskRows):
    """Points as ``<name>_x`` / ``<name>_y`` column pairs, as ``x1, y1, x2, y2…``, or one
    ``points`` (or ``landmarks``) cell holding ``[[x, y], …]`` (pixel-index coordinates on
    disk, empty = missing); optional ``spacing`` (mm per pixel). Items: ``landmarks`` float32
    ``[K, 2]``, ``visible`` bool ``[K]``, ``spacing`` float32 ``[]`` (NaN: unknown)."""

    name = "landmarks"
    columns = "image, <name>_x/<name>_y pairs (or x1, y1, … or points)[, spacing]"
    has_keypoints = True

    def start(self) -> None:
        #: landmark names read from the first row's column names (nose_x -> nose)
        self.point_names: list[str] | None = None

    def parse(self, s: Sample, cells: dict[str, Any], resolve: Callable[[Any], Path],
              decode: bool) -> None:
        s.points = self._points(cells)
        if not empty(cells.get("spacing")):
            s.spacing = number(cells["spacing"], "spacing")
            if not s.spacing > 0:
                raise BadSampleError(f"spacing {s.spacing} must be > 0 (mm per pixel)")
        else:
            s.spacing = self.options.pixel_spacing_mm
        h, w = s.hw
        x, y = s.points[:, 0], s.points[:, 1]
        with np.errstate(invalid="ignore"):
            out = np.isfinite(x) & ~((x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5))
        if out.any():
            raise BadSampleError(f"point(s) {np.flatnonzero(out).tolist()} "
                                 f"{s.points[out].tolist()} lie outside the {w}x{h} image "
                                 f"{s.image}")

    def _points(self, cells: dict[str, Any]) -> np.ndarray:
        """The row's points, float64 ``[K, 2]`` (x, y), NaN = missing."""
        for key in ("points", "landmarks"):
            if key in cells:
                pts = json_cell(cells[key], key)
                try:
                    arr = np.asarray([[np.nan if empty(v) else float(v) for v in p] for p in pts],
                                     dtype=np.float64)
                except (TypeError, ValueError) as err:
                    raise BadSampleError(f"{key} must be a list of [x, y], got {pts!r}") from err
                if arr.ndim != 2 or arr.shape[1] != 2:
                    raise BadSampleError(f"{key} must be a list of [x, y], got {pts!r}")
                return arr
        names = landmark_columns(cells)
        if not names:
            raise BadSampleError("no landmark columns ('points', '<name>_x'/'<name>_y' or "
                                 "x1, y1, x2, y2, …)")
        if self.point_names is None:  # landmark names from the columns: nose_x -> nose
            self.point_names = [x[:-2] if x.endswith("_x") else f"l{x[1:]}" for x, _ in names]
        return np.asarray([[np.nan if empty(cells[c]) else number(cells[c], c) for c in pair]
                           for pair in names], dtype=np.float64)

    def classes(self, samples: list[Sample], flag: Flag, multilabel: bool, what: str) -> list[str]:
        if not samples:
            return []
        first = samples[0]
        for s in samples:
            if len(s.points) != len(first.points):  # type: ignore[arg-type]
                flag(s.rows[0], s.id, f"{len(s.points)} points but row "  # type: ignore[arg-type]
                     f"{first.rows[0]} has {len(first.points)}")  # type: ignore[arg-type]
        k = len(first.points)  # type: ignore[arg-type]
        names = self.options.class_names or (
            self.point_names if self.point_names is not None and len(self.point_names) == k
            else [f"l{i + 1}" for i in range(k)])
        if len(names) != k:
            raise ValueError(f"{what}: class_names has {len(names)} landmark names but "
                             f"the rows have {k} points")
        return names

    def info(self, names: list[str], samples: list[Sample], out: tuple[int, ...]) -> dict[str, Any]:
        spacing = None
        pairs = {(s.spacing, s.hw) for s in samples}
        if len(pairs) == 1 and (only := next(iter(pairs)))[0] is not None:
            spacing = delivered_spacing(only[0], only[1], out)  # type: ignore[arg-type]
        return {"num_classes": 0, "num_landmarks": len(names), "pixel_spacing_mm": spacing}

    def load_targets(self, s: Sample, image: np.ndarray, num_classes: int) -> dict[str, Any]:
        return {"keypoints": s.points}

    def item(self, s: Sample, out: dict[str, Any], num_classes: int,
             multilabel: bool) -> dict[str, torch.Tensor]:
        h, w = out["image"].shape[-2:]
        spacing = delivered_spacing(s.spacing, s.hw, (h, w))  # type: ignore[arg-type]
        return {"landmarks": out["keypoints"], "visible": out["visible"],
                "spacing": torch.tensor(math.nan if spacing is None else spacing,
                                        dtype=torch.float32)}


def landmark_columns(cells: dict[str, Any]) -> list[tuple[str, str]]:
    """``(x column, y column)`` pairs in column order."""
    pairs = []
    for c in cells:
        m = re.fullmatch(r"(.+)_x", c) or re.fullmatch(r"x(\d+)", c)
        if m is None:
            continue
        y = f"{m.group(1)}_y" if c.endswith("_x") else f"y{m.group(1)}"
        if y in cells:
            pairs.append((c, y))
    return pairs


class DetectionRows(TaskRows):
    """Either ``boxes`` (JSON list of ``[x1, y1, x2, y2]``) with ``labels``, or one row per box
    with ``x1, y1, x2, y2, label`` (``xmin…`` too; empty box cells = an image without boxes).
    Boxes use continuous pixel edges; degenerate ones follow ``degenerate_boxes``. Items: see
    :class:`datamodules.detection.DetectionDataset`."""

    name = "detection"
    columns = "image, boxes + labels (or x1, y1, x2, y2, label per row)"
    rows_per_image = True

    def start(self) -> None:
        #: "row N (id)" -> what was wrong with its boxes (dropped or fixed, warned once)
        self.box_problems: dict[str, str] = {}

    def parse(self, s: Sample, cells: dict[str, Any], resolve: Callable[[Any], Path],
              decode: bool) -> None:
        """Append this row's boxes (valid ones, per ``degenerate_boxes``) to the sample."""
        raw: list[Any] = []
        labels: list[Any] = []
        if "boxes" in cells:
            raw = json_cell(cells["boxes"], "boxes") if not empty(cells["boxes"]) else []
            labels = json_cell(cells.get("labels", "[]"), "labels") if not empty(
                cells.get("labels")) else []
            if not isinstance(raw, list) or not isinstance(labels, list) or len(raw) != len(labels):
                raise BadSampleError(f"'boxes' and 'labels' must be lists of the same length, got "
                                     f"{cells['boxes']!r} and {cells.get('labels')!r}")
        else:
            keys = next((k for k in _BOX_KEYS if all(c in cells for c in k)), None)
            if keys is None:
                raise BadSampleError("no boxes: give 'boxes' + 'labels' (JSON lists) or the "
                                     "columns x1, y1, x2, y2, label")
            values = [cells[k] for k in keys]
            if all(empty(v) for v in values):
                pass  # an image without boxes
            elif any(empty(v) for v in values) or empty(cells.get("label")):
                raise BadSampleError(f"incomplete box {values} / label {cells.get('label')!r}")
            else:
                raw, labels = [values], [cells["label"]]
        mode = self.options.degenerate_boxes
        boxes = []
        for box, label in zip(raw, labels):
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise BadSampleError(f"box {box!r} is not [x1, y1, x2, y2]")
            coords = [number(v, "box coordinate") for v in box]
            fixed, problem = sanitize_box(coords, s.hw, mode, one_based=False)  # type: ignore[arg-type]
            if problem and mode == "error":
                raise BadSampleError(f"{problem} of {s.image} (degenerate_boxes='error'; 'drop' "
                                     "or 'fix' handle such boxes)")
            if problem:
                key = f"row {s.rows[-1]} ({s.id})"
                self.box_problems[key] = "; ".join(filter(None, (self.box_problems.get(key),
                                                                 problem)))
            if fixed is not None:
                boxes.append(fixed)
                s.raw_labels.append(label)
                s.label_rows.append(s.rows[-1])
        old = s.boxes if s.boxes is not None else np.zeros((0, 4), np.float32)
        s.boxes = np.concatenate([old, np.asarray(boxes, np.float32).reshape(-1, 4)])

    def classes(self, samples: list[Sample], flag: Flag, multilabel: bool, what: str) -> list[str]:
        def assign(s: Sample, idx: list[int]) -> str | None:
            s.box_labels = np.asarray(idx, dtype=np.int64)
            return None

        return resolve_labels(samples, self.options.class_names, self.options.num_classes, what,
                              flag, assign)

    def finish(self, what: str) -> None:
        if self.box_problems:
            warnings.warn(f"{what}: {len(self.box_problems)} row(s) with degenerate or "
                          f"out-of-image boxes, degenerate_boxes={self.options.degenerate_boxes!r}:\n"
                          + format_listing(self.box_problems), stacklevel=3)

    def dataset(self, samples: list[Sample], out: tuple[int, ...], augment: AugmentConfig | None,
                train: bool, channels: int, num_classes: int, multilabel: bool, name: str,
                source: Path) -> Dataset:
        records = [DetectionRecord(s.id, s.image, s.hw, s.boxes, s.box_labels,  # type: ignore[arg-type]
                                   source) for s in samples]
        transform = JointTransform(out, augment, train=train, has_boxes=True)  # type: ignore[arg-type]
        return DetectionDataset(records, transform, channels, name=name)
