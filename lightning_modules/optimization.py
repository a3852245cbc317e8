"""The task modules' optimizer and learning-rate schedule, from their flat arguments
(``optimizer``, ``lr``, ``weight_decay``, ``momentum``, ``scheduler``): what
``TaskModule.configure_optimizers`` returns to Lightning."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, get_args

import torch
from torch import nn

OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "cosine", "onecycle"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)


def make_optimizer(params: Iterable[nn.Parameter], name: OptimizerName, lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    """SGD (with ``momentum``), Adam or AdamW over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def with_schedule(opt: torch.optim.Optimizer, name: SchedulerName, lr: float, trainer: Any,
                  owner: str) -> Any:
    """``opt`` with the schedule ``name`` in Lightning's ``configure_optimizers`` form.

    ``"cosine"``: cosine annealing over ``trainer.max_epochs``, stepped per epoch;
    ``"onecycle"``: the cyclic schedule of fast adversarial training (Wong et al. 2020), per
    step, linear from ~0 up to ``lr`` over the first 40 % of all training steps, then linearly
    down to ~0; ``"none"``: ``opt`` alone. ``trainer`` may be ``None`` (no schedule then needs
    it)."""
    if name == "cosine":
        epochs = trainer.max_epochs if trainer is not None else None
        if epochs is None or epochs < 1:
            raise ValueError(f"{owner}.scheduler='cosine' needs trainer.max_epochs >= 1, got {epochs}")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    if name == "onecycle":
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 0
        if total < 2:
            raise ValueError(f"{owner}.scheduler='onecycle' needs a trainer with a known number of "
                             f"training steps (>= 2), got {total}")
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total, pct_start=0.4, anneal_strategy="linear",
            cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    return opt
