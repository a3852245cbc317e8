"""Figures of the evaluation callbacks (matplotlib, Agg backend: no display needed).

* :func:`plot_robustness_curves` — metric vs ε per attack and for the ensemble.
* :func:`plot_adversarial_panel` — clean / perturbation / adversarial images per sample, with
  the task's prediction drawn on the clean and adversarial images.
* :func:`plot_histogram` — a histogram with quantile markers (margins, minimal ε).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from callbacks.common import lower_is_better  # noqa: E402

MAX_CURVE_METRICS = 4


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    import io

    from callbacks.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())  # crash-safe (creates the folder)
    return path


# --- robustness curves ------------------------------------------------------------------------
def eps_axis_label(record: Mapping[str, Any], bounds: Sequence[float] | None = None) -> str:
    """``"ε (L∞, pixels on [0, 1])"``: the norm(s) of the record's attacks and the units."""
    names = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}
    norms = list(dict.fromkeys(str(e.get("norm")) for e in record.get("attacks", []) if e.get("norm")))
    norm = " / ".join(names.get(n.lower(), n) for n in norms) or "budget"
    if bounds is None:
        bounds = record.get("bounds") or (record.get("settings") or {}).get("bounds")
    units = f"pixels on [{bounds[0]:g}, {bounds[1]:g}]" if bounds is not None else "pixel units"
    return f"ε ({norm}, {units})"


def _plain_ticks(ax: Any) -> None:
    """No offset / scientific notation: a flat curve at 0.91312 reads 0.91312, not 1e-7+9.13e-1."""
    for axis in (ax.xaxis, ax.yaxis):
        fmt = axis.get_major_formatter()
        if isinstance(fmt, matplotlib.ticker.ScalarFormatter):
            fmt.set_useOffset(False)
            fmt.set_scientific(False)
    lo, hi = ax.get_ylim()
    if hi - lo < 1e-3:  # flat: widen so the ticks say something readable
        mid = (hi + lo) / 2
        ax.set_ylim(mid - 0.01, mid + 0.01)


def plot_robustness_curves(record: Mapping[str, Any], path: str | Path, monitor: str | None = None,
                           bounds: Sequence[float] | None = None) -> Path:
    """Metric vs ε (ε = 0 is the clean metric) from a ``robustness.json`` record.

    One panel per metric (the monitored one first, at most four), one line per attack, the
    ensemble (per-sample worst case) as a thick dashed black line; a legend in every panel; the
    x axis names the norm and the units (``bounds``: the data's value range).
    """
    clean: dict[str, float] = dict(record.get("clean", {}))
    metrics = list(clean)
    if monitor in metrics:
        metrics.remove(monitor)
        metrics.insert(0, monitor)
    metrics = metrics[:MAX_CURVE_METRICS] or ["(none)"]
    curves: dict[str, dict[float, dict[str, float]]] = {}
    steps: dict[str, Any] = {}
    for entry in record.get("attacks", []):
        curves.setdefault(entry["attack"], {})[float(entry["eps"])] = entry["metrics"]
        steps.setdefault(entry["attack"], entry.get("steps"))
    ensemble = {float(e["eps"]): e["metrics"] for e in record.get("ensemble", [])}
    xlabel = eps_axis_label(record, bounds)

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False,
                             layout="constrained")  # room for the suptitle above the panel titles
    for ax, metric in zip(axes[0], metrics):
        for label, by_eps in curves.items():
            eps = [0.0, *sorted(by_eps)]
            vals = [clean.get(metric, math.nan), *(by_eps[e].get(metric, math.nan) for e in eps[1:])]
            n = steps.get(label)
            ax.plot(eps, vals, marker="o", ms=3, lw=1.2,
                    label=f"{label} ({n} steps)" if n and n > 1 else label)
        if ensemble:
            eps = [0.0, *sorted(ensemble)]
            vals = [clean.get(metric, math.nan), *(ensemble[e].get(metric, math.nan) for e in eps[1:])]
            ax.plot(eps, vals, color="black", lw=2.2, ls="--", label="ensemble (worst case)")
        arrow = "↓ better" if lower_is_better(metric) else "↑ better"
        ax.set_title(f"{metric} ({arrow})", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
        _plain_ticks(ax)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{record.get('task', '?')} · {record.get('method', '?')} · {record.get('split', '?')} "
        f"· epoch {record.get('epoch', '?')}",
        fontsize=10,
    )
    return _save(fig, path)


# --- images -----------------------------------------------------------------------------------
def to_display(image: torch.Tensor, bounds: tuple[float, float]) -> np.ndarray:
    """``[C, H, W]`` or ``[C, D, H, W]`` in ``bounds`` -> ``[H, W]`` or ``[H, W, 3]`` in [0, 1].

    3-D volumes show their middle slice; 3-channel images are shown as RGB, anything else as
    the first channel in grey.
    """
    img = image.detach().float().cpu()
    if img.ndim == 4:  # [C, D, H, W]
        img = img[:, img.shape[1] // 2]
    lo, hi = bounds
    img = ((img - lo) / (hi - lo)).clamp(0, 1)
    if img.shape[0] == 3:
        return img.permute(1, 2, 0).numpy()
    return img[0].numpy()


def perturbation_display(delta: torch.Tensor) -> tuple[np.ndarray, float]:
    """A perturbation ``[C, *spatial]`` scaled to be visible: grey = 0, ``±max|δ|`` -> black/white.

    Returns the ``[H, W(, 3)]`` image in [0, 1] and the magnification factor used.
    """
    d = delta.detach().float().cpu()
    if d.ndim == 4:
        d = d[:, d.shape[1] // 2]
    amax = float(d.abs().max())
    factor = 0.5 / amax if amax > 0 else 1.0
    shown = (d * factor + 0.5).clamp(0, 1)
    return (shown.permute(1, 2, 0).numpy() if shown.shape[0] == 3 else shown[0].numpy()), factor


def _pick(pred: Any, i: int) -> Any:
    """The ``i``-th sample's prediction from a batched structure."""
    if isinstance(pred, torch.Tensor):
        return pred[i]
    if isinstance(pred, Mapping):
        return {k: _pick(v, i) for k, v in pred.items()}
    if isinstance(pred, (list, tuple)):
        return pred[i]
    return pred


def _as_np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _class_text(pred: Any, class_names: Sequence[str]) -> str:
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
            names = [class_names[j] if j < len(class_names) else str(j) for j in idx]
            return ",".join(names) or "none"
        label = int(label.item())
    if isinstance(conf, torch.Tensor):
        conf = float(conf.max().item()) if conf.numel() > 1 else float(conf.item())
    name = class_names[label] if isinstance(label, int) and 0 <= label < len(class_names) else str(label)
    return f"{name} ({conf:.2f})" if conf is not None else name


def draw_prediction(ax: Any, task: str, pred: Any, class_names: Sequence[str], shape: tuple[int, int],
                    min_score: float = 0.3, max_boxes: int = 20) -> str:
    """Draw one sample's prediction on ``ax`` (over the image); return a caption.

    classification: caption only (class and confidence); segmentation: contour of each
    predicted class; landmarks: points; detection: boxes with class and score.
    """
    if task == "classification":
        return _class_text(pred, class_names)
    if task == "segmentation":
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
        names = [class_names[v] if v < len(class_names) else str(v) for v in labels]
        fg = float((m != 0).mean())
        return f"pred: {', '.join(names)} ({fg:.0%} fg)" if names else "pred: background only"
    if task == "landmarks":
        pts = pred.get("landmarks", pred.get("points")) if isinstance(pred, Mapping) else pred
        p = _as_np(pts).reshape(-1, 2)
        ax.scatter(p[:, 0], p[:, 1], s=18, c="red", marker="+", linewidths=1.2)
        return f"pred: {len(p)} points"
    if task == "detection":
        boxes = _as_np(pred.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
        labels = _as_np(pred.get("labels", np.zeros(len(boxes)))).astype(int).reshape(-1)
        scores = _as_np(pred.get("scores", np.ones(len(boxes)))).reshape(-1)
        # only confident boxes, best first (an untrained detector proposes dozens)
        keep = [i for i in np.argsort(-scores) if scores[i] >= min_score][:max_boxes]
        for (x1, y1, x2, y2), lab, sc in zip(boxes[keep], labels[keep], scores[keep]):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.2))
            name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
            _box_label(ax, x1, y1, f"{name} {sc:.2f}", "lime")
        return f"pred: {len(keep)} box(es) ≥ {min_score:g}"
    return ""


_OUTLINE = [patheffects.withStroke(linewidth=2.2, foreground="black")]


def _box_label(ax: Any, x: float, y: float, text: str, color: str) -> None:
    ax.text(x, y, text, color="black", fontsize=6.5, va="bottom", ha="left", clip_on=True,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": color, "edgecolor": "none", "alpha": 0.85})


def draw_truth(ax: Any, task: str, batch: Mapping[str, Any], i: int,
               class_names: Sequence[str] = ()) -> None:
    """Ground truth of sample ``i``, dashed / hollow and outlined in black so it shows on any
    image (white dashed contour, cyan circles, white dashed boxes with class names);
    classification truth goes into the title instead."""
    if task == "segmentation" and isinstance(batch.get("mask"), torch.Tensor):
        m = _as_np(batch["mask"][i])
        if m.ndim == 3:
            m = m[m.shape[0] // 2]
        if (m > 0).any():
            cs = ax.contour((m > 0).astype(float), levels=[0.5], colors=["white"], linewidths=0.9,
                            linestyles="dashed")
            cs.set(path_effects=_OUTLINE)
    elif task == "landmarks" and isinstance(batch.get("landmarks"), torch.Tensor):
        p = _as_np(batch["landmarks"][i]).reshape(-1, 2)
        vis = batch.get("visible")
        if isinstance(vis, torch.Tensor):
            p = p[_as_np(vis[i]).astype(bool).reshape(-1)]
        ax.scatter(p[:, 0], p[:, 1], s=22, facecolors="none", edgecolors="cyan", linewidths=1.0,
                   path_effects=_OUTLINE)
    elif task == "detection" and isinstance(batch.get("boxes"), list):
        labels = batch.get("labels")
        labs = _as_np(labels[i]).astype(int).reshape(-1) if isinstance(labels, list) else None
        for j, (x1, y1, x2, y2) in enumerate(_as_np(batch["boxes"][i]).reshape(-1, 4)):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white",
                                       lw=0.9, ls="--", path_effects=_OUTLINE))
            if labs is not None and j < len(labs):
                lab = int(labs[j])
                name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
                ax.text(x1, y2, name, color="white", fontsize=6.5, va="top", ha="left",
                        clip_on=True, path_effects=_OUTLINE)


def truth_prediction_key(task: str) -> list[Any]:
    """Legend handles telling ground truth from prediction for ``task`` (empty for
    classification, whose truth and prediction are written in the titles)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if task == "segmentation":
        return [Line2D([], [], color="white", ls="--", lw=1.2, path_effects=_OUTLINE, label="ground truth"),
                Line2D([], [], color=plt.cm.tab10.colors[1], lw=1.4, label="prediction (per class)")]
    if task == "landmarks":
        return [Line2D([], [], ls="", marker="o", mfc="none", mec="cyan", path_effects=_OUTLINE,
                       label="ground truth"),
                Line2D([], [], ls="", marker="+", color="red", label="prediction")]
    if task == "detection":
        return [Patch(fill=False, edgecolor="white", ls="--", path_effects=_OUTLINE,
                      label="ground truth (class)"),
                Patch(fill=False, edgecolor="lime", lw=1.4, label="prediction (class score)")]
    return []


def plot_adversarial_panel(
    images: torch.Tensor,
    adversarial: torch.Tensor,
    clean_pred: Any,
    adv_pred: Any,
    task: str,
    bounds: tuple[float, float],
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
    truths: Sequence[str] | None = None,
    batch: Mapping[str, Any] | None = None,
    min_score: float = 0.3,
) -> Path:
    """One row per sample: clean (with prediction), perturbation (magnified), adversarial.

    Args:
        images, adversarial: ``[N, C, *spatial]`` in ``bounds``.
        clean_pred, adv_pred: ``predict_for_display`` outputs for the clean / adversarial batch.
        truths: optional ground-truth caption per sample.
        batch: the batch dict; its targets (mask, landmarks, boxes) are drawn dashed/hollow.
        min_score: detection boxes below this score are not drawn.
    """
    n = images.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n + 0.5), squeeze=False, layout="constrained")
    for i in range(n):
        clean_img = to_display(images[i], bounds)
        adv_img = to_display(adversarial[i], bounds)
        delta_img, factor = perturbation_display(adversarial[i] - images[i])
        shape = clean_img.shape[:2]
        cmap = "gray" if clean_img.ndim == 2 else None
        ax = axes[i][0]
        ax.imshow(clean_img, cmap=cmap, vmin=0, vmax=1)
        if batch is not None:
            draw_truth(ax, task, batch, i, class_names)
        cap = draw_prediction(ax, task, _pick(clean_pred, i), class_names, shape, min_score)
        truth = f"truth {truths[i]}\n" if truths else ""
        ax.set_title(f"clean\n{truth}{cap}", fontsize=8)
        ax = axes[i][1]
        ax.imshow(delta_img, cmap=cmap, vmin=0, vmax=1)
        linf = float((adversarial[i] - images[i]).abs().max())
        ax.set_title(f"perturbation ×{factor:.3g}\n‖δ‖∞={linf:.4g}", fontsize=8)
        ax = axes[i][2]
        ax.imshow(adv_img, cmap=cmap, vmin=0, vmax=1)
        if batch is not None:
            draw_truth(ax, task, batch, i, class_names)
        cap = draw_prediction(ax, task, _pick(adv_pred, i), class_names, shape, min_score)
        ax.set_title(f"adversarial\n{cap}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, shape[1] - 0.5)
            ax.set_ylim(shape[0] - 0.5, -0.5)
    key = truth_prediction_key(task) if batch is not None else []
    if key:  # which drawing is the ground truth and which the prediction
        fig.legend(handles=key, loc="outside lower center", ncol=len(key), fontsize=7,
                   facecolor="0.6", framealpha=1.0)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_histogram(values: Sequence[float], path: str | Path, title: str, xlabel: str,
                   quantiles: Mapping[str, float] | None = None, bins: int = 30) -> Path:
    """Histogram of ``values`` with vertical lines at the given quantiles."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(list(values), bins=bins, color="steelblue", alpha=0.85)
    for name, q in (quantiles or {}).items():
        ax.axvline(q, color="black", ls="--", lw=1)
        ax.text(q, ax.get_ylim()[1] * 0.95, name, rotation=90, va="top", ha="right", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    return _save(fig, path)
