"""Bad boxes: which boxes of an annotation file are usable (a box is degenerate or crosses the
image border, as :mod:`datamodules.detection` defines them; ``degenerate_boxes`` drops, fixes or
rejects it), and the one warning that counts and names the rest."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from datamodules.samples import format_listing

BoxPolicy = Literal["drop", "fix", "error"]
BOX_POLICIES: tuple[BoxPolicy, ...] = ("drop", "fix", "error")
# Coordinates this close outside the image are rounding (e.g. COCO x + w = 640.0000001), not a
# box problem: they are clipped without a warning.
BORDER_TOLERANCE = 1e-3


def sanitize_box(raw: Sequence[float], hw: tuple[int, int], policy: BoxPolicy,
                 one_based: bool) -> tuple[list[float] | None, str | None]:
    """Validate one box given as raw ``(xmin, ymin, xmax, ymax)`` from its file.

    Args:
        raw: corners as written (VOC values, or COCO ``x, y, x + w, y + h``).
        hw: ``(H, W)`` of the image.
        policy: ``"drop"`` / ``"error"`` (reject a bad box) or ``"fix"`` (swap, clip).
        one_based: VOC inclusive 1-based indices (``x1 = xmin - 1``).

    Returns:
        ``(box, problem)``: the 0-based continuous ``[x1, y1, x2, y2]`` or ``None`` when the
        box is rejected, and a description of what was wrong (``None`` for a clean box).
    """
    h, w = hw
    x1, y1, x2, y2 = (float(v) for v in raw)
    shown = f"[{', '.join(f'{v:g}' for v in raw)}]"
    if not np.isfinite([x1, y1, x2, y2]).all():
        return None, f"box {shown} has non-finite coordinates"
    problems: list[str] = []
    if x2 <= x1 or y2 <= y1:
        problems.append(f"box {shown} is degenerate (xmax <= xmin or ymax <= ymin)")
        if policy != "fix" or x2 == x1 or y2 == y1:
            return None, problems[0] + (" and cannot be fixed" if policy == "fix" else "")
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
    if one_based:
        x1, y1 = x1 - 1.0, y1 - 1.0
    tol = BORDER_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
        problems.append(f"box {shown} crosses the {w}x{h} image border")
        if policy != "fix":
            return None, problems[-1]
    x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    if x2 <= x1 or y2 <= y1:
        return None, "; ".join(problems) + " and is empty inside the image"
    return [x1, y1, x2, y2], ("; ".join(problems) + " (fixed)") if problems else None


def sanitize_boxes(raw_boxes: Sequence[Sequence[float]], hw: tuple[int, int], policy: BoxPolicy,
                   one_based: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """:func:`sanitize_box` on every box of one file.

    Returns:
        ``(boxes float32 [N', 4], kept int64 [N'], problems)``: the usable boxes, the positions
        of their raw boxes, and one ``"object i: …"`` line per box that had a problem.
    """
    kept: list[list[float]] = []
    kept_idx: list[int] = []
    problems: list[str] = []
    for i, raw in enumerate(raw_boxes):
        box, problem = sanitize_box(raw, hw, policy, one_based)
        if problem:
            problems.append(f"object {i}: {problem}")
        if box is not None:
            kept.append(box)
            kept_idx.append(i)
    return (np.asarray(kept, dtype=np.float32).reshape(-1, 4),
            np.asarray(kept_idx, dtype=np.int64), problems)


def warn_box_problems(what: str, box_problems: Mapping[str, list[str]], policy: BoxPolicy) -> None:
    """One warning counting the dropped and fixed boxes of ``box_problems`` (``{file:
    [problem]}``) and naming their files; none under ``"error"`` (those files are bad samples)."""
    if not box_problems or policy == "error":
        return
    n = sum(len(v) for v in box_problems.values())
    n_dropped = sum(1 for v in box_problems.values() for p in v if not p.endswith("(fixed)"))
    listing = format_listing({k: "; ".join(v) for k, v in box_problems.items()})
    warnings.warn(f"{what}: {n} degenerate or out-of-image box(es) in {len(box_problems)} "
                  f"file(s): {n_dropped} dropped, {n - n_dropped} fixed "
                  f"(degenerate_boxes={policy!r}):\n{listing}", stacklevel=3)
