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
from matplotlib.figure import Figure  # noqa: E402

from callbacks.record import RobustnessRecord  # noqa: E402
from lightning_modules.panels import panel_for  # noqa: E402

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
def eps_axis_label(record: RobustnessRecord | Mapping[str, Any], bounds: Sequence[float] | None = None) -> str:
    """``"ε (L∞, pixels on [0, 1])"``: the norm(s) of the record's attacks and the units."""
    record = RobustnessRecord.coerce(record)
    names = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}
    norms = list(dict.fromkeys(str(e.norm) for e in record.attacks if e.norm))
    norm = " / ".join(names.get(n.lower(), n) for n in norms) or "budget"
    if bounds is None:
        bounds = record.settings.get("bounds")
    units = f"pixels on [{bounds[0]:g}, {bounds[1]:g}]" if bounds is not None else "pixel units"
    return f"ε ({norm}, {units})"


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


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


def plot_robustness_curves(record: RobustnessRecord | Mapping[str, Any], path: str | Path,
                           monitor: str | None = None, bounds: Sequence[float] | None = None,
                           directions: Mapping[str, bool] | None = None) -> Path:
    """Metric vs ε (ε = 0 is the clean metric) from a robustness record (or its JSON dict).

    One panel per metric (the monitored one first, at most four), one line per attack, the
    ensemble (per-sample worst case) as a thick dashed black line; a legend in every panel; the
    x axis names the norm and the units (``bounds``: the data's value range). Panel titles say
    which way is better where it is known: ``directions`` (metric → higher is better, from the
    task's metric objects) or, for the robust area's metric, the record itself.
    """
    record = RobustnessRecord.coerce(record)
    clean = record.clean
    metrics = record.metric_names()
    if monitor in metrics:
        metrics.remove(monitor)
        metrics.insert(0, monitor)
    metrics = metrics[:MAX_CURVE_METRICS] or ["(none)"]
    labels = record.attack_labels()
    steps = {label: record.entries(label)[0].steps for label in labels}
    xlabel = eps_axis_label(record, bounds)

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False,
                             layout="constrained")  # room for the suptitle above the panel titles
    for ax, metric in zip(axes[0], metrics):
        for label in [*labels, "ensemble"] if record.ensemble else labels:
            entries = record.entries(label)
            eps = [0.0, *(e.eps for e in entries)]
            vals = [_nan(clean.get(metric)), *(_nan(e.metrics.get(metric)) for e in entries)]
            if label == "ensemble":
                ax.plot(eps, vals, color="black", lw=2.2, ls="--", label="ensemble (worst case)")
                # its confidence band, where the record has intervals of this metric
                cis = [record.interval("clean", metric=metric)] + \
                    [record.interval("worst", e.eps, metric=metric) for e in entries]
                if record.intervals and all(c is not None for c in cis):
                    level = record.intervals.get("level", 0.95)
                    ax.fill_between(eps, [c.low for c in cis], [c.high for c in cis], color="black",
                                    alpha=0.12, lw=0, label=f"{level:.0%} CI (worst case)")
                continue
            n = steps.get(label)
            ax.plot(eps, vals, marker="o", ms=3, lw=1.2,
                    label=f"{label} ({n} steps)" if n and n > 1 else label)
        higher = (directions or {}).get(metric)
        if higher is None and record.lower_is_better(metric) is not None:
            higher = not record.lower_is_better(metric)
        arrow = "" if higher is None else (" (↑ better)" if higher else " (↓ better)")
        ax.set_title(f"{metric}{arrow}", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
        _plain_ticks(ax)
        ax.legend(fontsize=7)
    fig.suptitle(f"{record.task} · {record.method} · {record.split} · epoch {record.epoch}", fontsize=10)
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


def plot_adversarial_panel(
    images: torch.Tensor,
    adversarial: torch.Tensor,
    clean_pred: Any,
    adv_pred: Any,
    task: Any,
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
        task: the task module (or its panel, or a built-in task name): its
            :class:`~lightning_modules.panels.Panel` draws predictions and ground truth.
        truths: optional ground-truth caption per sample.
        batch: the batch dict; its targets (mask, landmarks, boxes) are drawn dashed/hollow.
        min_score: detection boxes below this score are not drawn.
    """
    panel = panel_for(task)
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
            panel.truth(ax, batch, i, class_names)
        cap = panel.prediction(ax, _pick(clean_pred, i), class_names, shape, min_score)
        truth = f"truth {truths[i]}\n" if truths else ""
        ax.set_title(f"clean\n{truth}{cap}", fontsize=8)
        ax = axes[i][1]
        ax.imshow(delta_img, cmap=cmap, vmin=0, vmax=1)
        linf = float((adversarial[i] - images[i]).abs().max())
        ax.set_title(f"perturbation ×{factor:.3g}\n‖δ‖∞={linf:.4g}", fontsize=8)
        ax = axes[i][2]
        ax.imshow(adv_img, cmap=cmap, vmin=0, vmax=1)
        if batch is not None:
            panel.truth(ax, batch, i, class_names)
        cap = panel.prediction(ax, _pick(adv_pred, i), class_names, shape, min_score)
        ax.set_title(f"adversarial\n{cap}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, shape[1] - 0.5)
            ax.set_ylim(shape[0] - 0.5, -0.5)
    key = panel.legend() if batch is not None else []
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


# --- certified vs empirical -------------------------------------------------------------------
def plot_certified_curves(record: RobustnessRecord | Mapping[str, Any], path: str | Path) -> Path:
    """The certified curve(s) of a record (randomized smoothing, one line per σ: the certified
    metric vs L2 radius, with its confidence band) beside the empirical curve of the same model on
    the same samples (the attack suite's per-sample worst case vs ε, L2 attacks only, with its
    band); a second panel draws the abstain rate per σ. A certified value is a lower bound (an
    upper bound for lower-is-better metrics such as radial error), the empirical one an upper
    bound: the truth lies between the two."""
    record = RobustnessRecord.coerce(record)
    entries = record.certified or []
    if not entries:
        raise ValueError("plot_certified_curves: the record has no 'certified' entries")
    metric = str(entries[0]["metric"])
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), squeeze=False, layout="constrained")
    ax, ax_ab = axes[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, entry in enumerate(entries):
        rows = entry["curve"]
        r = [float(row["radius"]) for row in rows]
        v = [_nan(row.get(metric)) for row in rows]
        c = colours[j % len(colours)]
        ax.plot(r, v, marker="o", ms=3, color=c, label=f"certified σ={entry['sigma']:g}")
        cis = [row.get(f"{metric}_interval") for row in rows]
        if all(ci is not None for ci in cis):
            ax.fill_between(r, [ci["low"] for ci in cis], [ci["high"] for ci in cis], color=c, alpha=0.15, lw=0)
        ax_ab.plot(r, [_nan(row.get("abstain")) for row in rows], marker="o", ms=3, color=c,
                   label=f"σ={entry['sigma']:g}")
    l2 = sorted((e for e in record.ensemble if e.eps > 0 and
                 all(a.norm == "l2" for a in record.attacks if math.isclose(a.eps, e.eps))), key=lambda e: e.eps)
    if l2 and record.clean.get(metric) is not None:
        eps = [0.0, *(e.eps for e in l2)]
        vals = [_nan(record.clean.get(metric)), *(_nan(e.metrics.get(metric)) for e in l2)]
        ax.plot(eps, vals, color="black", lw=2.0, ls="--", label=f"empirical L2 ({record.suite_name or record.suite or 'suite'}, base model)")
        cis = [record.interval("clean")] + [record.interval("worst", e.eps) for e in l2]
        if (record.intervals or {}).get("metric") == metric and all(ci is not None for ci in cis):
            ax.fill_between(eps, [ci.low for ci in cis], [ci.high for ci in cis], color="black", alpha=0.1, lw=0)
    bounds = record.settings.get("bounds")
    units = f"pixels on [{bounds[0]:g}, {bounds[1]:g}]" if bounds is not None else "input units"
    lower = bool(entries[0].get("lower_is_better"))
    ax.set_title(f"{metric} ({'↓' if lower else '↑'} better; certified = {'upper' if lower else 'lower'} bound)",
                 fontsize=9)
    ax_ab.set_title("abstain rate", fontsize=9)
    for a in (ax, ax_ab):
        a.set_xlabel(f"L2 radius ({units})", fontsize=9)
        a.grid(alpha=0.3)
        _plain_ticks(a)
        a.legend(fontsize=7)
    first = entries[0]
    fig.suptitle(f"{record.task} · {record.method} · randomized smoothing n0={first.get('n0')}, n={first.get('n')}, "
                 f"α={first.get('alpha')}, {first.get('samples')} samples", fontsize=9)
    return _save(fig, path)
