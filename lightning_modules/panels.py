"""How each task draws its prediction and ground truth on an image panel.

A task module names its :class:`Panel` (``panel = BoxesPanel()``); the figure code in
``callbacks/plotting.py`` only calls the panel's methods, so a new task draws itself by giving
its module a panel (one of these or a subclass in its own file) — nothing in ``callbacks/``
changes. Coordinates are image pixels, ``(x, y)`` with the origin at the top-left pixel centre
(matplotlib's ``imshow`` convention).

matplotlib is imported when something is drawn, never at import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["BoxesPanel", "LabelPanel", "MaskPanel", "Panel", "PointsPanel", "panel_for"]


def _as_np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _outline() -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2.2, foreground="black")]


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


class Panel:
    """The drawing face of a task. Subclass and override what the task draws.

    ``pred`` is one sample of :meth:`~lightning_modules.protocol.RobustTask.predict_for_display`
    (already indexed); ``batch`` is the whole batch dict with the sample's index ``i``.
    """

    def prediction(self, ax: Any, pred: Any, class_names: Sequence[str], shape: tuple[int, int],
                   min_score: float = 0.3, max_boxes: int = 20) -> str:
        """Draw one sample's prediction on ``ax`` (over the image ``[H, W]`` = ``shape``);
        return the caption under the panel title."""
        return ""

    def truth(self, ax: Any, batch: Mapping[str, Any], i: int, class_names: Sequence[str] = ()) -> None:
        """Draw the ground truth of sample ``i`` (dashed / hollow, outlined in black)."""

    def truth_caption(self, batch: Mapping[str, Any], i: int, class_names: Sequence[str] = ()) -> str | None:
        """Ground truth written in the title instead of drawn (classification), else ``None``."""
        return None

    def legend(self) -> list[Any]:
        """Legend handles telling ground truth from prediction (empty: nothing to tell apart)."""
        return []


class LabelPanel(Panel):
    """Classification: the predicted class and confidence as caption, the true class in the title."""

    def prediction(self, ax: Any, pred: Any, class_names: Sequence[str], shape: tuple[int, int],
                   min_score: float = 0.3, max_boxes: int = 20) -> str:
        return class_text(pred, class_names)

    def truth_caption(self, batch: Mapping[str, Any], i: int, class_names: Sequence[str] = ()) -> str | None:
        labels = batch.get("label")
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
            return None  # multi-label targets have no single class to write
        return _name(list(class_names), int(labels[i]))


def class_text(pred: Any, class_names: Sequence[str]) -> str:
    """Text for one classification prediction: ``"name (0.93)"``.

    Accepts ``{"label"/"class", "confidence"/"prob"/"score"}``, a probability vector ``[K]``, or
    a ``(label, confidence)`` pair.
    """
    label, conf = None, None
    if isinstance(pred, Mapping):
        for k in ("label", "class", "pred", "labels"):
            if k in pred:
                label = pred[k]
                break
        for k in ("confidence", "prob", "score", "probability"):
            if k in pred:
                conf = pred[k]
                break
    elif isinstance(pred, (tuple, list)) and len(pred) == 2:
        label, conf = pred
    elif isinstance(pred, torch.Tensor) and pred.ndim == 1 and pred.numel() > 1:
        conf, label = pred.max(dim=0)
    elif isinstance(pred, torch.Tensor):
        label = pred
    if isinstance(label, torch.Tensor):
        if label.numel() > 1:  # multi-label: the positive labels
            idx = torch.nonzero(label > 0.5).flatten().tolist()
            return ",".join(_name(class_names, j) for j in idx) or "none"
        label = int(label.item())
    if isinstance(conf, torch.Tensor):
        conf = float(conf.max().item()) if conf.numel() > 1 else float(conf.item())
    name = _name(class_names, label) if isinstance(label, int) else str(label)
    return f"{name} ({conf:.2f})" if conf is not None else name


class MaskPanel(Panel):
    """Segmentation: a contour per predicted class; the true mask as a white dashed contour.
    3-D masks show their middle slice (as the image does)."""

    def prediction(self, ax: Any, pred: Any, class_names: Sequence[str], shape: tuple[int, int],
                   min_score: float = 0.3, max_boxes: int = 20) -> str:
        import matplotlib.pyplot as plt

        mask = pred.get("mask", pred) if isinstance(pred, Mapping) else pred
        m = _as_np(mask)
        if m.ndim == 3 and m.shape[0] > 1 and m.shape[1:] == shape:  # [K, H, W] scores
            m = m.argmax(0)
        elif m.ndim == 3:  # [D, H, W] volume or [1, H, W]
            m = m[m.shape[0] // 2]
        labels = [v for v in np.unique(m).astype(int).tolist() if v != 0]
        colors = plt.cm.tab10.colors
        for v in labels:
            ax.contour((m == v).astype(float), levels=[0.5], colors=[colors[v % 10]], linewidths=1.2)
        names = [_name(class_names, v) for v in labels]
        fg = float((m != 0).mean())
        return f"pred: {', '.join(names)} ({fg:.0%} fg)" if names else "pred: background only"

    def truth(self, ax: Any, batch: Mapping[str, Any], i: int, class_names: Sequence[str] = ()) -> None:
        if not isinstance(batch.get("mask"), torch.Tensor):
            return
        m = _as_np(batch["mask"][i])
        if m.ndim == 3:
            m = m[m.shape[0] // 2]
        if (m > 0).any():
            cs = ax.contour((m > 0).astype(float), levels=[0.5], colors=["white"], linewidths=0.9,
                            linestyles="dashed")
            cs.set(path_effects=_outline())

    def legend(self) -> list[Any]:
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D

        return [Line2D([], [], color="white", ls="--", lw=1.2, path_effects=_outline(), label="ground truth"),
                Line2D([], [], color=plt.cm.tab10.colors[1], lw=1.4, label="prediction (per class)")]


class PointsPanel(Panel):
    """Landmarks: predicted points as red crosses, visible true points as hollow cyan circles."""

    def prediction(self, ax: Any, pred: Any, class_names: Sequence[str], shape: tuple[int, int],
                   min_score: float = 0.3, max_boxes: int = 20) -> str:
        pts = pred.get("landmarks", pred.get("points")) if isinstance(pred, Mapping) else pred
        p = _as_np(pts).reshape(-1, 2)
        ax.scatter(p[:, 0], p[:, 1], s=18, c="red", marker="+", linewidths=1.2)
        return f"pred: {len(p)} points"

    def truth(self, ax: Any, batch: Mapping[str, Any], i: int, class_names: Sequence[str] = ()) -> None:
        if not isinstance(batch.get("landmarks"), torch.Tensor):
            return
        p = _as_np(batch["landmarks"][i]).reshape(-1, 2)
        vis = batch.get("visible")
        if isinstance(vis, torch.Tensor):
            p = p[_as_np(vis[i]).astype(bool).reshape(-1)]
        ax.scatter(p[:, 0], p[:, 1], s=22, facecolors="none", edgecolors="cyan", linewidths=1.0,
                   path_effects=_outline())

    def legend(self) -> list[Any]:
        from matplotlib.lines import Line2D

        return [Line2D([], [], ls="", marker="o", mfc="none", mec="cyan", path_effects=_outline(),
                       label="ground truth"),
                Line2D([], [], ls="", marker="+", color="red", label="prediction")]


class BoxesPanel(Panel):
    """Detection: confident predicted boxes (lime, class and score), true boxes white dashed."""

    def prediction(self, ax: Any, pred: Any, class_names: Sequence[str], shape: tuple[int, int],
                   min_score: float = 0.3, max_boxes: int = 20) -> str:
        import matplotlib.pyplot as plt

        boxes = _as_np(pred.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
        labels = _as_np(pred.get("labels", np.zeros(len(boxes)))).astype(int).reshape(-1)
        scores = _as_np(pred.get("scores", np.ones(len(boxes)))).reshape(-1)
        # only confident boxes, best first (an untrained detector proposes dozens)
        keep = [i for i in np.argsort(-scores) if scores[i] >= min_score][:max_boxes]
        for (x1, y1, x2, y2), lab, sc in zip(boxes[keep], labels[keep], scores[keep]):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.2))
            ax.text(x1, y1, f"{_name(class_names, int(lab))} {sc:.2f}", color="black", fontsize=6.5,
                    va="bottom", ha="left", clip_on=True,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "lime", "edgecolor": "none", "alpha": 0.85})
        return f"pred: {len(keep)} box(es) ≥ {min_score:g}"

    def truth(self, ax: Any, batch: Mapping[str, Any], i: int, class_names: Sequence[str] = ()) -> None:
        import matplotlib.pyplot as plt

        if not isinstance(batch.get("boxes"), list):
            return
        labels = batch.get("labels")
        labs = _as_np(labels[i]).astype(int).reshape(-1) if isinstance(labels, list) else None
        outline = _outline()
        for j, (x1, y1, x2, y2) in enumerate(_as_np(batch["boxes"][i]).reshape(-1, 4)):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white",
                                       lw=0.9, ls="--", path_effects=outline))
            if labs is not None and j < len(labs):
                ax.text(x1, y2, _name(class_names, int(labs[j])), color="white", fontsize=6.5,
                        va="top", ha="left", clip_on=True, path_effects=outline)

    def legend(self) -> list[Any]:
        from matplotlib.patches import Patch

        return [Patch(fill=False, edgecolor="white", ls="--", path_effects=_outline(),
                      label="ground truth (class)"),
                Patch(fill=False, edgecolor="lime", lw=1.4, label="prediction (class score)")]


def panel_for(task: Any) -> Panel:
    """The :class:`Panel` of ``task``: a panel itself, an object with a ``panel`` attribute (a
    task module, a :class:`callbacks.RobustTaskAdapter`, a task object) or a task name (the
    registry's task object draws it, :mod:`lightning_modules.tasks`)."""
    if isinstance(task, Panel):
        return task
    own = getattr(task, "panel", None)
    if isinstance(own, Panel):
        return own
    from lightning_modules.tasks import model_task, task_names

    name = task if isinstance(task, str) else getattr(task, "task", task)
    if isinstance(name, str) and name in task_names():
        return model_task(name).panel
    raise ValueError(
        f"no panel for {task!r}: give the task module a `panel = lightning_modules.panels.Panel()` "
        f"(or a subclass); tasks with a panel: {list(task_names())}"
    )
