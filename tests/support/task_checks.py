"""Checks every task's module tests share: a brief seeded fit, a validation batch, a metric on
given inputs, one method step reaching the net, and a checkpoint round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch


def fit_briefly(module: L.LightningModule, dm: L.LightningDataModule, max_steps: int) -> L.LightningModule:
    """``max_steps`` optimizer steps of one epoch on CPU with nothing else (no logger,
    checkpoints, validation); returns ``module`` in eval mode."""
    trainer = L.Trainer(max_epochs=1, max_steps=max_steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, dm)
    return module.eval()


def first_val_batch(dm: Any) -> dict[str, Any]:
    """The first validation batch, unshuffled."""
    dm.setup("validate")
    return next(iter(dm._loader("val", shuffle=False)))


def metric_at(module: Any, batch: dict[str, Any], x: torch.Tensor, name: str) -> float:
    """The module's metric ``name`` on ``batch`` with its images replaced by ``x``."""
    metrics = module.build_metrics()
    with torch.no_grad():
        module.update_metrics(metrics, module(x), batch)
    return float(metrics.compute()[name])


def assert_method_step_trains(module: Any, batch: dict[str, Any]) -> None:
    """One ``training_loss`` of the module's method in train mode: a finite scalar whose
    gradient reaches the net."""
    module.train()
    loss, _ = module.method.training_loss(module, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.net.parameters())


def checkpoint_round_trip(module: L.LightningModule, tmp_path: Path) -> L.LightningModule:
    """Save ``module`` through a trainer and load it back with ``weights_only=True``; eval mode."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    path = tmp_path / "module.ckpt"
    trainer.save_checkpoint(path)
    return type(module).load_from_checkpoint(path, weights_only=True).eval()
