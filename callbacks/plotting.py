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
import numpy as np  # noqa: E402
import torch  # noqa: E402
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
def plot_robustness_curves(record: Mapping[str, Any], path: str | Path, monitor: str | None = None) -> Path:
    """Metric vs ε (ε = 0 is the clean metric) from a ``robustness.json`` record.

    One panel per metric (the monitored one first, at most four), one line per attack, the
    ensemble (per-sample worst case) as a thick black line.
    """
    clean: dict[str, float] = dict(record.get("clean", {}))
    metrics = list(clean)
    if monitor in metrics:
        metrics.remove(monitor)
        metrics.insert(0, monitor)
    metrics = metrics[:MAX_CURVE_METRICS] or ["(none)"]
    curves: dict[str, dict[float, dict[str, float]]] = {}
    for entry in record.get("attacks", []):
        curves.setdefault(entry["attack"], {})[float(entry["eps"])] = entry["metrics"]
    ensemble = {float(e["eps"]): e["metrics"] for e in record.get("ensemble", [])}

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, by_eps in curves.items():
            eps = [0.0, *sorted(by_eps)]
            vals = [clean.get(metric, math.nan), *(by_eps[e].get(metric, math.nan) for e in eps[1:])]
            ax.plot(eps, vals, marker="o", ms=3, lw=1.2, label=label)
        if ensemble:
            eps = [0.0, *sorted(ensemble)]
            vals = [clean.get(metric, math.nan), *(ensemble[e].get(metric, math.nan) for e in eps[1:])]
            ax.plot(eps, vals, color="black", lw=2.2, ls="--", label="ensemble (worst case)")
        arrow = "↓ better" if lower_is_better(metric) else "↑ better"
        ax.set_title(f"{metric} ({arrow})", fontsize=10)
        ax.set_xlabel("ε")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
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
        ax.scatter(p[:, 0], p[:, 1], s=14, c="red", marker="+", linewidths=1.0)
        return f"pred: {len(p)} points (+), truth (o)"
    if task == "detection":
        boxes = _as_np(pred.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
        labels = _as_np(pred.get("labels", np.zeros(len(boxes)))).astype(int).reshape(-1)
        scores = _as_np(pred.get("scores", np.ones(len(boxes)))).reshape(-1)
        # only confident boxes, best first (an untrained detector proposes dozens)
        keep = [i for i in np.argsort(-scores) if scores[i] >= min_score][:max_boxes]
        for (x1, y1, x2, y2), lab, sc in zip(boxes[keep], labels[keep], scores[keep]):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.0))
            name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
            ax.text(x1, y1, f"{name} {sc:.2f}", color="lime", fontsize=6, va="bottom")
        return f"pred: {len(keep)} box(es) ≥ {min_score:g}"
    return ""


def draw_truth(ax: Any, task: str, batch: Mapping[str, Any], i: int) -> None:
    """Ground truth of sample ``i`` in a muted style (dashed white contour, hollow circles,
    dashed boxes); classification truth goes into the title instead."""
    if task == "segmentation" and isinstance(batch.get("mask"), torch.Tensor):
        m = _as_np(batch["mask"][i])
        if m.ndim == 3:
            m = m[m.shape[0] // 2]
        if (m > 0).any():
            ax.contour((m > 0).astype(float), levels=[0.5], colors=["white"], linewidths=0.8,
                       linestyles="dashed")
    elif task == "landmarks" and isinstance(batch.get("landmarks"), torch.Tensor):
        p = _as_np(batch["landmarks"][i]).reshape(-1, 2)
        vis = batch.get("visible")
        if isinstance(vis, torch.Tensor):
            p = p[_as_np(vis[i]).astype(bool).reshape(-1)]
        ax.scatter(p[:, 0], p[:, 1], s=18, facecolors="none", edgecolors="cyan", linewidths=0.8)
    elif task == "detection" and isinstance(batch.get("boxes"), list):
        for x1, y1, x2, y2 in _as_np(batch["boxes"][i]).reshape(-1, 4):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white",
                                       lw=0.7, ls="--"))


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
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for i in range(n):
        clean_img = to_display(images[i], bounds)
        adv_img = to_display(adversarial[i], bounds)
        delta_img, factor = perturbation_display(adversarial[i] - images[i])
        shape = clean_img.shape[:2]
        cmap = "gray" if clean_img.ndim == 2 else None
        ax = axes[i][0]
        ax.imshow(clean_img, cmap=cmap, vmin=0, vmax=1)
        if batch is not None:
            draw_truth(ax, task, batch, i)
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
            draw_truth(ax, task, batch, i)
        cap = draw_prediction(ax, task, _pick(adv_pred, i), class_names, shape, min_score)
        ax.set_title(f"adversarial\n{cap}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, shape[1] - 0.5)
            ax.set_ylim(shape[0] - 0.5, -0.5)
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
