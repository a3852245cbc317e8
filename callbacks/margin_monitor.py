"""Distribution of AMAT's per-sample margins over training, and how they moved.

AMAT keeps one margin ``E[i]`` per training sample in a ``margins`` buffer and updates it at
the end of every training epoch. This callback reads the buffer once the epoch's update is done
and logs its quantiles (``amat/margin_q10``, ``…_q50``, ``…_q90``), mean, min and max; the
method's per-epoch diagnostics when it has them (``amat/margin_grown`` / ``margin_shrunk`` /
``margin_held`` / ``clean_violated``: fractions of the updated samples, see
:class:`lightning_modules.methods.AMAT`); and, for each budget of ``budgets`` (e.g. the SAT ε
of the same suite), the fraction of margins at or above it (``amat/margin_ge<ε>``). It writes a
histogram PNG per epoch with the budgets drawn in (``margins/epoch=NNN.png``, also to W&B /
TensorBoard) and appends every epoch's numbers to ``margins/diagnostics.jsonl`` (the benchmark
report reads the final margin distribution from there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def find_margins(pl_module: Any, attribute: str = "margins") -> torch.Tensor | None:
    """The margins tensor ``[N]`` of the module's method (or of the module), if any."""
    for owner in (getattr(pl_module, "method", None), pl_module):
        value = getattr(owner, attribute, None) if owner is not None else None
        if isinstance(value, torch.Tensor):
            return value
    return None


def budget_key(eps: float) -> str:
    """``margin_ge<ε>`` with ``ε`` written without trailing zeros (``0.25`` → ``ge0.25``)."""
    return f"margin_ge{eps:g}"


def plot_margins(values: Sequence[float], path: str | Path, title: str,
                 quantiles: Mapping[str, float], budgets: Sequence[float], bins: int = 30) -> Path:
    """Histogram of ``values`` with dashed lines at the quantiles and red lines at the budgets."""
    from callbacks.plotting import plt  # Agg backend set there

    fig, ax = plt.subplots(figsize=(5, 3.2))
    hi = max([*values, *budgets, 1e-6])
    ax.hist(list(values), bins=bins, range=(0.0, hi * 1.02), color="steelblue", alpha=0.85)
    top = ax.get_ylim()[1]
    for name, q in quantiles.items():
        ax.axvline(q, color="black", ls="--", lw=1)
        ax.text(q, top * 0.95, name, rotation=90, va="top", ha="right", fontsize=7)
    for eps in budgets:
        ax.axvline(eps, color="crimson", lw=1.5)
        ax.text(eps, top * 0.6, f"SAT ε={eps:g}", rotation=90, va="top", ha="left", fontsize=7,
                color="crimson")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("margin (L2, input units)")
    ax.set_ylabel("samples")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


class MarginMonitor(Callback):
    """Histogram, quantiles and movement of per-sample margins, once per training epoch.

    Args:
        every_n_epochs: log after epochs with ``(epoch + 1) % n == 0``.
        quantiles: quantiles to log, in (0, 1); logged as ``amat/margin_q<100·q>``.
        plot: write (and log) the histogram PNG.
        attribute: name of the buffer on ``pl_module.method`` (or ``pl_module``).
        prefix: scalar prefix.
        budgets: L2 budgets to compare the margins with (the SAT ε of the suite), ``>= 0``.

    The values are read at the start of the next epoch (and at the end of training), i.e. after
    the module's own ``on_train_epoch_end`` — Lightning calls callbacks' epoch-end hooks before
    the module's, so reading there would show the margins *before* the epoch's update. They are
    logged with the finished epoch's number and its final ``global_step``.
    """

    def __init__(self, every_n_epochs: int = 1, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
                 plot: bool = True, attribute: str = "margins", prefix: str = "amat",
                 budgets: Sequence[float] = ()) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"MarginMonitor.every_n_epochs must be >= 1, got {every_n_epochs}")
        for q in quantiles:
            if not 0.0 < q < 1.0:
                raise ValueError(f"MarginMonitor.quantiles must lie in (0, 1), got {q}")
        for eps in budgets:
            if not float(eps) >= 0.0:
                raise ValueError(f"MarginMonitor.budgets must be >= 0, got {eps}")
        self.every_n_epochs = every_n_epochs
        self.quantiles = tuple(quantiles)
        self.plot = plot
        self.attribute = attribute
        self.prefix = prefix
        self.budgets = tuple(float(e) for e in budgets)
        self._pending_epoch: int | None = None
        #: the last logged statistics (for tests and notebooks)
        self.last_stats: dict[str, float] = {}
        #: every logged epoch's statistics, in order
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._pending_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def statistics(self, margins: torch.Tensor) -> dict[str, float]:
        """``{q10, q50, q90, mean, min, max, ge<ε>…}`` of ``margins`` ``[N]``."""
        m = margins.detach().float().flatten().cpu()
        qs = torch.quantile(m, torch.tensor(self.quantiles, dtype=torch.float32))
        stats = {f"margin_q{round(q * 100):02d}": float(v) for q, v in zip(self.quantiles, qs)}
        stats.update(margin_mean=float(m.mean()), margin_min=float(m.min()), margin_max=float(m.max()))
        for eps in self.budgets:
            stats[budget_key(eps)] = float((m >= eps).float().mean())
        return stats

    def _flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, self._pending_epoch = self._pending_epoch, None
        if epoch is None:
            return
        margins = find_margins(pl_module, self.attribute)
        if margins is None or margins.numel() == 0:
            return
        log_dir = Path(str(trainer.log_dir or trainer.default_root_dir))  # collective
        if not trainer.is_global_zero:
            return
        stats = self.statistics(margins)
        diag = getattr(getattr(pl_module, "method", None), "last_diagnostics", None) or {}
        stats.update({k: float(v) for k, v in diag.items()})
        self.last_stats = stats
        self.history.append({"epoch": float(epoch), **stats})
        metrics = {f"{self.prefix}/{k}": v for k, v in stats.items()}
        metrics["epoch"] = float(epoch)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        out = log_dir / "margins"
        out.mkdir(parents=True, exist_ok=True)
        with (out / "diagnostics.jsonl").open("a") as fh:
            fh.write(json.dumps({"epoch": epoch, "budgets": list(self.budgets), **stats}) + "\n")
        if self.plot:
            from callbacks.logger_outputs import log_image

            marks = {k.replace("margin_", ""): v for k, v in stats.items() if k.startswith("margin_q")}
            moved = (f"; grown {diag['margin_grown']:.0%}, shrunk {diag['margin_shrunk']:.0%}, "
                     f"clean-violated {diag['clean_violated']:.0%}") if "margin_grown" in diag else ""
            path = plot_margins(margins.detach().float().cpu().tolist(), out / f"epoch={epoch:03d}.png",
                                f"AMAT margins after epoch {epoch} (n={margins.numel()}){moved}",
                                marks, self.budgets)
            log_image(trainer, f"{self.prefix}/margin_histogram", path, caption=f"epoch {epoch}")
