"""A watchdog for catastrophic overfitting (CO) of single-step adversarial training.

Single-step training (FGSM, FGSM-RS, sometimes N-FGSM at large ε) can lose all multi-step
robustness within an epoch while its accuracy under the single-step attack climbs towards 100 %
(Wong et al. 2020; Kim, Lee & Lee, AAAI 2021, "Understanding catastrophic overfitting in
single-step adversarial training"). Wong et al. guard with early stopping on the PGD accuracy
of a training batch. :class:`CatastrophicOverfittingWatchdog` is that guard as a callback, for
every task: every ``every_n_epochs`` epochs (or ``every_n_train_steps`` steps) it measures, on
a fixed subset of the *training* split, the task's main metric

* ``single_step``: under the training attack (the method's own ``attack`` at its ε, or
  ``attack``) — what single-step training optimises;
* ``multi_step``: under a multi-step attack (default PGD-10, the default step of
  :class:`attacks.PGD`) — what the model is meant to resist;
* ``clean``: without attack,

logs the three (``co/single_step``, ``co/multi_step``, ``co/clean``, ``co/collapsed``), keeps
them in :attr:`history` and draws them (``co_watchdog.png`` in the run's log directory).

Rule: CO is flagged when the multi-step metric has fallen at least ``min_drop`` (in the
metric's own units, in its worse direction) below its best value so far *while* the
single-step metric is better than it was at that best point. A drop of both (a bad
learning-rate step, a growing ε) is not CO. Then ``action``:

* ``"warn"``: a warning (once per collapse), training goes on;
* ``"stop"``: also stops training (``trainer.should_stop``);
* ``"restore"``: also loads the weights of the best measurement before the collapse (kept in
  host memory) back into the module, then stops — Wong et al.'s early stopping. Checkpoints
  written afterwards hold the restored weights.

DDP: the subset is cut into the same batches for any number of processes and whole batches
are dealt to ranks (:func:`callbacks.common.shard_batches`, padding copies never counted);
the task's torchmetrics synchronise, so every rank sees the same numbers and takes the same
decision. Attack randomness is seeded by (``seed``, global batch number). The subset's
collated batches are cached on the first measurement (a random training-time augmentation is
frozen to one draw, so the subset really is the same every time).

State (``state_dict``): the history, the best point and whether CO fired; the weight snapshot
of ``"restore"`` is *not* checkpointed (it would double a checkpoint's size) — after a resume
it is retaken at the next best measurement.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from attacks.options import check_choice
from attacks.seeding import seeded_generator
from attacks.spec import AttackSpec
from callbacks.common import (
    check_robust_task,
    compute_metrics,
    gradients_enabled,
    guarded_model,
    preserved_rng,
    select_subset,
    set_eval_mode,
    shard_batches,
    subset_loader,
    to_autograd_safe,
    world,
)

ACTIONS = ("warn", "stop", "restore")
Action = Literal["warn", "stop", "restore"]
#: the multi-step attack of the watchdog: PGD-10 L∞ (default step ε/4, random start)
DEFAULT_MULTI_STEP: dict[str, Any] = {"name": "pgd", "norm": "linf", "steps": 10}


class CatastrophicOverfittingWatchdog(Callback):
    """Detect catastrophic overfitting on a fixed training subset (see the module docstring).

    Args:
        subset: training samples measured (a count, or a fraction in ``(0, 1]``), chosen once
            from ``seed``.
        every_n_epochs: measure after epochs with ``(epoch + 1) % n == 0`` (``0``: never by
            epoch).
        every_n_train_steps: also measure every ``n`` optimiser steps (``None``: not by step) —
            CO happens within an epoch on large data sets.
        eps: the budget of both attacks; ``None``: the method's largest scheduled ε
            (``method.schedule.max_eps``) or its current ``eps`` signal.
        attack: the single-step attack (an :class:`attacks.AttackSpec` mapping); ``None``: the
            training method's own ``attack``.
        multi_step_attack: the multi-step attack; default PGD-10 L∞.
        min_drop: how far (metric units, > 0) the multi-step metric must fall below its best
            to count as a collapse.
        action: ``"warn"``, ``"stop"`` or ``"restore"``.
        batch_size: batch size of the measurement.
        seed: seed of the subset and of the attacks' random starts.
        plot: write ``co_watchdog.png`` (the three curves) into the log directory.
        prefix: prefix of the logged scalars.
    """

    def __init__(
        self,
        subset: int | float = 128,
        every_n_epochs: int = 1,
        every_n_train_steps: int | None = None,
        eps: float | None = None,
        attack: Mapping[str, Any] | None = None,
        multi_step_attack: Mapping[str, Any] | None = None,
        min_drop: float = 0.2,
        action: Action = "warn",
        batch_size: int = 64,
        seed: int = 0,
        plot: bool = True,
        prefix: str = "co",
    ) -> None:
        super().__init__()
        who = type(self).__name__
        check_choice(f"{who}.action", action, ACTIONS)
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"{who}.every_n_epochs must be an int >= 0, got {every_n_epochs!r}")
        if every_n_train_steps is not None and (not isinstance(every_n_train_steps, int)
                                                or every_n_train_steps < 1):
            raise ValueError(f"{who}.every_n_train_steps must be an int >= 1 or null, "
                             f"got {every_n_train_steps!r}")
        if every_n_epochs == 0 and every_n_train_steps is None:
            raise ValueError(f"{who}: give every_n_epochs >= 1 or every_n_train_steps")
        if eps is not None and not (isinstance(eps, int | float) and eps > 0):
            raise ValueError(f"{who}.eps must be a number > 0 or null, got {eps!r}")
        if not (isinstance(min_drop, int | float) and min_drop > 0):
            raise ValueError(f"{who}.min_drop must be a number > 0, got {min_drop!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{who}.batch_size must be an int >= 1, got {batch_size!r}")
        select_subset(1, subset, seed)  # checks the count / fraction
        self.attack = None if attack is None else AttackSpec.parse(attack, f"{who}.attack")
        self.multi_step_attack = AttackSpec.parse(multi_step_attack or DEFAULT_MULTI_STEP,
                                                  f"{who}.multi_step_attack")
        for field, spec in (("attack", self.attack), ("multi_step_attack", self.multi_step_attack)):
            if spec is not None and not spec.budgeted:
                raise ValueError(f"{who}.{field}: {spec.name!r} takes no budget eps")
        self.subset, self.every_n_epochs, self.every_n_train_steps = subset, every_n_epochs, every_n_train_steps
        self.eps, self.min_drop, self.action = eps, float(min_drop), action
        self.batch_size, self.seed, self.plot, self.prefix = batch_size, seed, plot, prefix
        #: every measurement: ``{epoch, step, eps, clean, single_step, multi_step, collapsed}``
        self.history: list[dict[str, float]] = []
        #: the best multi-step measurement so far (an entry of :attr:`history`)
        self.best: dict[str, float] | None = None
        #: the measurement at which CO was first flagged (``None``: never)
        self.fired: dict[str, float] | None = None
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._batches: list[tuple[int, dict[str, Any], bool]] | None = None
        self._last_step = -1

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        if n is not None and trainer.global_step > 0 and trainer.global_step % n == 0:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0:
            self._check(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plot and self.history:
            self._plot(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "best": self.best, "fired": self.fired}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.best = state_dict.get("best")
        self.fired = state_dict.get("fired")

    # ------------------------------------------------------------------ measuring
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """``{clean, single_step, multi_step, eps}``: the task's main metric on the subset
        (synchronised across ranks)."""
        task = check_robust_task(pl_module, type(self).__name__)
        eps = self._eps(task)
        bounds = tuple(task.data_info.bounds)
        single_spec = self.attack or getattr(getattr(task, "method", None), "attack", None)
        if not isinstance(single_spec, AttackSpec):
            raise ValueError(f"{type(self).__name__}: the training method has no `attack`; give "
                             "the single-step attack as `attack` (e.g. {name: fgsm})")
        attacks = {"single_step": single_spec.build(eps, bounds, ("eval", "eval")),
                   "multi_step": self.multi_step_attack.build(eps, bounds, ("eval", "eval"))}
        device = pl_module.device
        metrics = {k: task.build_metrics().to(device) for k in ("clean", *attacks)}
        model = task.attack_model()
        with guarded_model(pl_module), preserved_rng(device), gradients_enabled():
            set_eval_mode(pl_module)
            for batch_no, cpu_batch, counted in self._subset_batches(trainer):
                batch = to_autograd_safe(cpu_batch, device)
                x = batch["image"]
                with torch.no_grad():
                    out = model(x)
                if counted:
                    task.update_metrics(metrics["clean"], out, batch)
                for a_i, (name, atk) in enumerate(attacks.items()):
                    gen = seeded_generator(self.seed, batch_no, a_i, device=device)
                    x_adv = atk(model, x, batch, loss_fn=task.per_sample_loss, generator=gen)
                    with torch.no_grad():
                        out = model(x_adv)
                    if counted:
                        task.update_metrics(metrics[name], out, batch)
        main = task.main_metric
        values = {k: compute_metrics(m)[main] for k, m in metrics.items()}
        return {**values, "eps": float(eps)}

    def _eps(self, task: Any) -> float:
        if self.eps is not None:
            return float(self.eps)
        method = getattr(task, "method", None)
        schedule = getattr(method, "schedule", None)
        if schedule is not None and getattr(schedule, "max_eps", 0) > 0:
            return float(schedule.max_eps)
        signals = method.signals() if hasattr(method, "signals") else {}
        if signals.get("eps", 0) > 0:
            return float(signals["eps"])
        raise ValueError(f"{type(self).__name__}: the training method states no eps; give `eps`")

    def _subset_batches(self, trainer: pl.Trainer) -> list[tuple[int, dict[str, Any], bool]]:
        if self._batches is None:
            from callbacks.evaluation_runner import batch_size_for_world

            dataset, collate = _train_dataset(trainer)
            indices = select_subset(len(dataset), self.subset, self.seed)
            rank, size = world(trainer)
            bs = batch_size_for_world(len(indices), self.batch_size, size, rank, "train",
                                      type(self).__name__)
            mine = shard_batches(indices, bs, rank, size)
            loader = subset_loader(dataset, [b for _, b, _ in mine], collate)
            self._batches = [(no, batch, counted)
                             for (no, _, counted), batch in zip(mine, loader, strict=True)]
        return self._batches

    # ------------------------------------------------------------------ deciding
    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == self._last_step or trainer.sanity_checking:
            return  # (epoch end right after a step-triggered check: measured already)
        self._last_step = trainer.global_step
        values = self.measure(trainer, pl_module)
        higher = bool(check_robust_task(pl_module, "").metric_higher_is_better())
        sign = 1.0 if higher else -1.0
        entry = {"epoch": float(trainer.current_epoch), "step": float(trainer.global_step), **values}
        collapsed = False
        if self.best is not None:
            drop = sign * (self.best["multi_step"] - values["multi_step"])
            single_rose = sign * (values["single_step"] - self.best["single_step"]) > 0
            collapsed = drop >= self.min_drop and single_rose
        entry["collapsed"] = float(collapsed)
        self.history.append(entry)
        if not collapsed and (self.best is None
                              or sign * (values["multi_step"] - self.best["multi_step"]) > 0):
            self.best = dict(entry)
            if self.action == "restore":
                self._snapshot = {k: v.detach().to("cpu", copy=True)
                                  for k, v in pl_module.state_dict().items()}
        self._log(trainer, entry)
        if collapsed:
            self._on_collapse(trainer, pl_module, entry)

    def _on_collapse(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     entry: dict[str, float]) -> None:
        first = self.fired is None
        if first:
            self.fired = dict(entry)
        assert self.best is not None
        what = (f"catastrophic overfitting at epoch {int(entry['epoch'])} (step "
                f"{int(entry['step'])}): multi-step {entry['multi_step']:.3f} (best "
                f"{self.best['multi_step']:.3f} at epoch {int(self.best['epoch'])}), single-step "
                f"{entry['single_step']:.3f} (then {self.best['single_step']:.3f})")
        if self.action == "restore" and self._snapshot is not None:
            pl_module.load_state_dict(self._snapshot)
            what += f"; restored the weights of epoch {int(self.best['epoch'])} and stopped"
        elif self.action != "warn":
            what += "; stopped"
        if self.action != "warn":
            trainer.should_stop = True
        if first and trainer.is_global_zero:
            warnings.warn(f"{type(self).__name__}: {what}", stacklevel=2)
        if self.plot:
            self._plot(trainer)

    # ------------------------------------------------------------------ outputs
    def _log(self, trainer: pl.Trainer, entry: dict[str, float]) -> None:
        log_dir = _log_dir(trainer)  # (collective under DDP: every rank asks)
        if not trainer.is_global_zero:
            return
        scalars = {f"{self.prefix}/{k}": entry[k]
                   for k in ("clean", "single_step", "multi_step", "collapsed")}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            with (log_dir / "co_watchdog.jsonl").open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def _plot(self, trainer: pl.Trainer) -> None:
        log_dir = _log_dir(trainer)
        if not trainer.is_global_zero or log_dir is None:
            return
        plot_history(self.history, log_dir / "co_watchdog.png",
                     title=f"{self.multi_step_attack.label}-{self.multi_step_attack.setting('steps')} vs "
                           "training attack", fired=self.fired)


def plot_history(history: list[dict[str, float]], path: str | Path, title: str = "",
                 fired: Mapping[str, float] | None = None, ax: Any = None) -> Path | None:
    """The clean / single-step / multi-step curves of a watchdog history over training steps
    (a vertical line where CO was flagged). Draws into ``ax`` when given (no file then)."""
    from callbacks.plotting import plt  # Agg backend set there

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
    steps = [h["step"] for h in history]
    for key, style in (("clean", "k:"), ("single_step", "b-o"), ("multi_step", "r-s")):
        ax.plot(steps, [h[key] for h in history], style, ms=3, label=key.replace("_", "-"))
    if fired is not None:
        ax.axvline(fired["step"], color="crimson", ls="--", lw=1)
        ax.text(fired["step"], ax.get_ylim()[1], " CO", color="crimson", va="top", fontsize=8)
    ax.set_xlabel("training step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    if not own:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _log_dir(trainer: pl.Trainer) -> Path | None:
    """The run's log directory: the first logger's, else ``Trainer(default_root_dir=…)``
    (Lightning's own fallback: the working directory when that is not given either).
    Collective under DDP (every rank must ask)."""
    value = trainer.log_dir or trainer.default_root_dir
    return Path(str(value)) if value else None


def _train_dataset(trainer: pl.Trainer) -> tuple[Any, Any]:
    """``(dataset, collate_fn)`` of the training split."""
    dm = getattr(trainer, "datamodule", None)
    if dm is not None and hasattr(dm, "dataset"):
        from datamodules.base import collate_batch

        return dm.dataset("train"), collate_batch
    loader = trainer.train_dataloader
    if isinstance(loader, torch.utils.data.DataLoader):
        return loader.dataset, loader.collate_fn
    raise RuntimeError("CatastrophicOverfittingWatchdog: cannot find the training dataset; use a "
                       "medrobust datamodule (with .dataset(split)) or a DataLoader")
