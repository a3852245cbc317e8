"""A small synthetic manifest of any task, for the README example, the tests and
``benchmarks/data_speed.py``."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from attacks.options import check_choice
from datamodules.manifest.tasks import MANIFEST_TASKS

__all__ = ["write_example_manifest"]


@dataclass(frozen=True)
class _Shape:
    """One synthetic sample's canvas: the image ``[H, W]`` (drawn on in place), its number, a
    bright square's side and top-left corner, the output folder and the RNG."""

    img: np.ndarray
    i: int
    side: int
    y0: int
    x0: int
    root: Path
    rng: np.random.Generator


def _classification(c: _Shape, row: dict[str, Any]) -> None:
    label = c.i % 2
    if label:
        c.img[c.y0:c.y0 + c.side, c.x0:c.x0 + c.side] = 0.9
    row["label"] = "blob" if label else "plain"


def _segmentation(c: _Shape, row: dict[str, Any]) -> None:
    mask = np.zeros(c.img.shape, np.uint8)
    mask[c.y0:c.y0 + c.side, c.x0:c.x0 + c.side] = 255
    c.img[mask > 0] = 0.9
    (c.root / "masks").mkdir(exist_ok=True)
    Image.fromarray(mask).save(c.root / "masks" / f"{c.i:03d}.png")
    row["mask"] = f"masks/{c.i:03d}.png"


def _landmarks(c: _Shape, row: dict[str, Any]) -> None:
    h, w = c.img.shape
    for name in ("nose", "left_eye", "right_eye"):
        x, y = int(c.rng.integers(1, w - 1)), int(c.rng.integers(1, h - 1))
        c.img[y - 1:y + 2, x - 1:x + 2] = 1.0
        row[f"{name}_x"], row[f"{name}_y"] = x, y
    row["spacing"] = 0.1


def _detection(c: _Shape, row: dict[str, Any]) -> None:
    h, w = c.img.shape
    boxes, labels = [], []
    for k in range(1 + c.i % 2):
        s = c.side if k == 0 else max(2, c.side // 2)
        by, bx = int(c.rng.integers(0, h - s)), int(c.rng.integers(0, w - s))
        c.img[by:by + s, bx:bx + s] = 0.9
        boxes.append([bx, by, bx + s, by + s])
        labels.append("large" if k == 0 else "small")
    row["boxes"], row["labels"] = boxes, labels


def _one_row_per_box(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image": r["image"], "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "label": lab}
            for r in rows for b, lab in zip(r["boxes"], r["labels"])]


#: task -> (draw the targets into the image and the row, RGB image, CSV form of the rows)
_EXAMPLES: dict[str, tuple[Callable[[_Shape, dict[str, Any]], None], bool,
                           Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None]] = {
    "classification": (_classification, False, None),
    "segmentation": (_segmentation, False, None),
    "landmarks": (_landmarks, False, None),
    "detection": (_detection, True, _one_row_per_box),
}


def write_example_manifest(folder: str | Path, task: str, n: int = 12,
                           image_size: tuple[int, int] = (32, 32), seed: int = 0,
                           fmt: Literal["csv", "json"] = "csv") -> Path:
    """Write ``n`` synthetic samples of ``task`` and their manifest into ``folder``; returns the
    manifest's path. For the README example, the tests and ``benchmarks/data_speed.py``.

    Images are grey PNGs (RGB for detection) with bright shapes the targets describe:
    classification 2 classes (``blob`` when a bright square is present, else ``plain``),
    segmentation the square's mask (0/255 PNG), landmarks 3 bright dots (``<name>_x/_y``
    columns), detection 1–2 boxes of classes ``small`` / ``large`` (CSV: one row per box).
    Paths are written relative to the manifest; no ``split`` column (the module makes a
    seeded split).
    """
    check_choice("task", task, MANIFEST_TASKS)
    draw, rgb, csv_rows = _EXAMPLES[task]
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = image_size
    rows: list[dict[str, Any]] = []
    for i in range(n):
        img = rng.uniform(0, 0.3, (h, w)).astype(np.float32)
        row: dict[str, Any] = {"image": f"images/{i:03d}.png"}
        side = max(2, min(h, w) // 4)
        y0, x0 = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        draw(_Shape(img, i, side, y0, x0, root, rng), row)
        pixels = (img * 255).astype(np.uint8)
        Image.fromarray(np.stack([pixels] * 3, -1) if rgb else pixels).save(root / row["image"])
        rows.append(row)
    path = root / f"manifest.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
        return path
    if csv_rows is not None:
        rows = csv_rows(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
