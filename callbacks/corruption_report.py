"""How corruption results are shown: logged scalars (:func:`scalar_values`), the section of
``report.md`` (:func:`report_section`), the metric-vs-severity curve
(:func:`plot_corruption_curves`), an example panel (:func:`plot_corruption_panel`), and the
evaluation callback's rank-0 outputs (:func:`write_corruption_outputs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from callbacks.corruption_eval import _seed
from callbacks.corruption_section import CorruptionSection, _mean
from corruptions import CorruptionSuite, corruption_suite

__all__ = ["plot_corruption_curves", "plot_corruption_panel", "report_section", "scalar_values",
           "write_corruption_outputs"]


def scalar_values(section: CorruptionSection, prefix: str) -> dict[str, float]:
    data = section.to_dict()
    out: dict[str, float] = {}
    for e in section.entries:
        for m, v in e["metrics"].items():
            out[f"{prefix}/corruption/{e['corruption']}/sev={e['severity']}/{m}"] = _num(v)
    for row in data["per_corruption"]:
        for m, v in row["mean"].items():
            out[f"{prefix}/corruption/{row['corruption']}/mean/{m}"] = _num(v)
    for m, v in data["mean"].items():
        out[f"{prefix}/corruption/mean/{m}"] = _num(v)
    out[f"{prefix}/corruption/mean_error"] = _num(data["mean_error"])
    if data["mce"] is not None:
        out[f"{prefix}/corruption/mce"] = _num(data["mce"])
        out[f"{prefix}/corruption/relative_mce"] = _num(data["relative_mce"])
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.4f}"


def report_section(section: CorruptionSection, metric: str, intervals: Mapping[str, Any] | None = None,
                   plot_name: str | None = None) -> list[str]:
    """``report.md``'s corruption section: ``metric`` per corruption × severity (with its
    interval when known), the mean, the error, CE and relative CE, and mCE."""
    data = section.to_dict()
    sev = section.severities
    cell_ci = {(r["corruption"], int(r["severity"])): r for r in (intervals or {}).get("cells", [])}
    lines = [f"## Corruptions — suite `{section.suite}`", "",
             f"Source: {section.source}. Metric: `{metric}` per severity; error for CE: "
             f"`{data['error']}` (clean error {_fmt(section.clean_error)}).", "",
             "| corruption | " + " | ".join(f"sev {s}" for s in sev) + " | mean | error | CE | rel. CE |",
             "|---|" + "---|" * (len(sev) + 4)]
    for row in data["per_corruption"]:
        name = row["corruption"]
        cells = []
        for s in sev:
            v = section.value(name, s, metric)
            ci = cell_ci.get((name, s))
            cells.append(_fmt(v) + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(row['mean'].get(metric))} | "
                     f"{_fmt(row['error'])} | {_fmt(row['ce'])} | {_fmt(row['relative_ce'])} |")
    lines += ["", f"Mean `{metric}` over corruptions and severities: **{_fmt(data['mean'].get(metric))}**; "
              f"mean error {_fmt(data['mean_error'])}."]
    if data["mce"] is not None:
        ref = data["reference"] or {}
        lines.append(f"mCE **{_fmt(data['mce'])}**, relative mCE **{_fmt(data['relative_mce'])}** against "
                     f"`{ref.get('source', '')}` (ImageNet-C's definitions; < 1: more robust than the reference).")
    if section.samples:
        lines.append(f"Cost: {section.forwards} forward passes, {_fmt(section.seconds)} s "
                     f"({_fmt(data['seconds_per_sample'])} s per evaluated sample).")
    if plot_name:
        lines += ["", f"![metric vs severity]({plot_name})"]
    return [*lines, ""]


def plot_corruption_curves(section: CorruptionSection, clean: Mapping[str, Any], metric: str,
                           path: str | Path) -> Path:
    """``metric`` vs severity (0 = clean) per corruption and the mean over corruptions."""
    from callbacks.plotting import _save, plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0, *section.severities]
    c0 = clean.get(metric)
    for name in section.names():
        ys = [c0, *(section.value(name, s, metric) for s in section.severities)]
        ax.plot(xs, [_num(y) for y in ys], marker="o", lw=1, alpha=0.7, label=name)
    mean = [c0, *(_mean([section.value(n, s, metric) for n in section.names()]) for s in section.severities)]
    ax.plot(xs, [_num(y) for y in mean], color="black", lw=2.5, marker="s", label="mean")
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(metric)
    ax.set_title(f"corruption suite {section.suite}")
    ax.set_xticks(xs)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return _save(fig, path)


def plot_corruption_panel(task: Any, batch: Mapping[str, Any], suite: CorruptionSuite | str, path: str | Path,
                          index: int = 0, seed: int = 0) -> Path:
    """Example panel: sample ``index`` of ``batch`` at severities 0–5 (columns) of every
    corruption of ``suite`` (rows), each titled with the model's prediction — the predicted class
    and its probability for a ``[B, K]`` logit output — and the task's per-sample metric (red
    where it is worse than on the clean image). Corrupted with the evaluation's per-sample seed."""
    from callbacks.per_sample import metric_name
    from callbacks.plotting import _save, plt

    suite = corruption_suite(suite)
    one = {k: (v[index:index + 1] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch["image"].shape[0]
               else v) for k, v in batch.items()}
    x = one["image"]
    sid = int(torch.as_tensor(one.get("index", [index])).reshape(-1)[0])
    bounds = tuple(float(b) for b in task.data_info.bounds)
    model = task.attack_model()
    name = metric_name(task)
    higher = bool(task.metric_higher_is_better())
    fig, axes = plt.subplots(len(suite), 6, figsize=(12, 1.9 * len(suite)), squeeze=False)
    for r, c in enumerate(suite):
        base = None
        for s in range(6):
            xc = c(x, s, seeds=[_seed(seed, sid, r, s)], bounds=bounds)
            with torch.no_grad():
                out = model(xc)
            value = float(task.per_sample_metric(out, one).reshape(-1)[0])
            base = value if s == 0 else base
            text = f"{name}={value:.2f}"
            if isinstance(out, torch.Tensor) and out.ndim == 2:
                p = torch.softmax(out.float(), 1)[0]
                text = f"class {int(p.argmax())} ({float(p.max()):.2f}) · " + text
            worse = s > 0 and math.isfinite(value) and base is not None and (value < base if higher else value > base)
            ax = axes[r, s]
            img = xc[0].detach().float().cpu()
            img = img[:, img.shape[1] // 2] if img.ndim == 4 else img  # a volume: its middle slice
            img = img.permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] != 3 else img.clip(*bounds), cmap="gray",
                      vmin=bounds[0], vmax=bounds[1])
            ax.set_title(f"{'clean' if s == 0 else f'sev {s}'}: {text}", fontsize=6,
                         color="red" if worse else "black")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(c.name, fontsize=7)
    fig.suptitle(f"corruption suite {suite.name}, sample {sid}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return _save(fig, path)


def write_corruption_outputs(trainer: Any, record: Any, log_dir: Path, file_name: Any, prefix: str,
                             plot: bool = True) -> None:
    """Rank 0: the corruption curve ``corruptions.png`` (named by ``file_name``) of ``record``'s
    main metric, logged as an image, and the logger table of every corruption × severity."""
    from callbacks.logger_outputs import log_image, log_table

    section = record.corruptions
    main = record.robust_area.metric if record.robust_area else record.metric_names()[0]
    if plot:
        path = plot_corruption_curves(section, record.clean, main, log_dir / file_name("corruptions.png"))
        log_image(trainer, f"{prefix}/corruption_curve_{record.split}", path, caption=f"epoch {record.epoch}")
    names = record.metric_names()
    rows = [[e["corruption"], e["severity"], *(e["metrics"].get(m) for m in names)] for e in section.entries]
    log_table(trainer, f"{prefix}/corruption_table_{record.split}", ["corruption", "severity", *names], rows)
