"""Distribution of AMAT's per-sample margins over training.

AMAT keeps one margin ``E[i]`` per training sample in a ``margins`` buffer and updates it at
the end of every training epoch. This callback reads the buffer once the epoch's update is done
and logs its quantiles (``amat/margin_q10``, ``…_q50``, ``…_q90``), mean, min and max, and
writes a histogram PNG per epoch (``margins/epoch=NNN.png``, also to W&B / TensorBoard).
"""

from __future__ import annotations

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


class MarginMonitor(Callback):
    """Histogram and quantiles of per-sample margins, once per training epoch.

    Args:
        every_n_epochs: log after epochs with ``(epoch + 1) % n == 0``.
        quantiles: quantiles to log, in (0, 1); logged as ``amat/margin_q<100·q>``.
        plot: write (and log) the histogram PNG.
        attribute: name of the buffer on ``pl_module.method`` (or ``pl_module``).
        prefix: scalar prefix.

    The values are read at the start of the next epoch (and at the end of training), i.e. after
    the module's own ``on_train_epoch_end`` — Lightning calls callbacks' epoch-end hooks before
    the module's, so reading there would show the margins *before* the epoch's update. They are
    logged with the finished epoch's number and its final ``global_step``.
    """

    def __init__(self, every_n_epochs: int = 1, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
                 plot: bool = True, attribute: str = "margins", prefix: str = "amat") -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"MarginMonitor.every_n_epochs must be >= 1, got {every_n_epochs}")
        for q in quantiles:
            if not 0.0 < q < 1.0:
                raise ValueError(f"MarginMonitor.quantiles must lie in (0, 1), got {q}")
        self.every_n_epochs = every_n_epochs
        self.quantiles = tuple(quantiles)
        self.plot = plot
        self.attribute = attribute
        self.prefix = prefix
        self._pending_epoch: int | None = None
        #: the last logged statistics (for tests and notebooks)
        self.last_stats: dict[str, float] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._pending_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def statistics(self, margins: torch.Tensor) -> dict[str, float]:
        """``{q10, q50, q90, mean, min, max}`` of ``margins`` ``[N]``."""
        m = margins.detach().float().flatten().cpu()
        qs = torch.quantile(m, torch.tensor(self.quantiles, dtype=torch.float32))
        stats = {f"margin_q{round(q * 100):02d}": float(v) for q, v in zip(self.quantiles, qs)}
        stats.update(margin_mean=float(m.mean()), margin_min=float(m.min()), margin_max=float(m.max()))
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
        self.last_stats = stats
        metrics = {f"{self.prefix}/{k}": v for k, v in stats.items()}
        metrics["epoch"] = float(epoch)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.plot:
            from callbacks.logger_outputs import log_image
            from callbacks.plotting import plot_histogram

            marks = {k.replace("margin_", ""): v for k, v in stats.items() if k.startswith("margin_q")}
            path = plot_histogram(margins.detach().float().cpu().tolist(),
                                  log_dir / "margins" / f"epoch={epoch:03d}.png",
                                  f"AMAT margins after epoch {epoch} (n={margins.numel()})",
                                  "margin (L2, input units)", marks)
            log_image(trainer, f"{self.prefix}/margin_histogram", path, caption=f"epoch {epoch}")
