"""Robustness of the model under a suite of attacks × ε, every N epochs and at validate/test.

The callback runs its own loop over a fixed subset of the validation (or test) split, with
gradients enabled inside Lightning's loops, and reports the task's own metrics — clean, per
attack and ε, and the per-sample worst case over attacks ("ensemble") — as logged scalars,
``robustness.json`` (+ ``robustness_history.jsonl``), a curve PNG and, after ``test``,
``report.md``.

Scalars (all ranks log the same, already synchronised values; ``adv`` is the default
``prefix``)::

    adv/clean/<metric>
    adv/<attack>/eps=<ε>/<metric>
    adv/ensemble/eps=<ε>/<metric>
    adv/robust_area            normalised area under the ensemble curve (higher = more robust)
    adv/eval_seconds           wall time of the evaluation on this rank
    adv/minimal_eps_median     only with ``minimal_eps`` enabled

Robust area: trapezoid rule over ``[0, ε_1, …, ε_max]`` of the ensemble's monitored metric
(ε = 0 is the clean metric), divided by ``ε_max``, i.e. the metric's mean over the ε range. For
error metrics where lower is better (``mre``) it is the *negative* of that mean, so larger is
always more robust and ``ModelCheckpoint(monitor="adv/robust_area", mode="max")`` works for
every task.

In a LightningCLI config (``configs/callbacks/adversarial_eval*.yaml``)::

    trainer:
      callbacks:
        - class_path: callbacks.AdversarialEvaluation
          init_args:
            attacks: [{name: pgd, norm: linf, steps: 3, random_start: false}]
            eps: [0.002, 0.004]
            subset: 64
            test_attacks:
              - {name: fgsm}
              - {name: pgd, norm: linf, steps: 50, random_start: true, restarts: 3}
            test_eps: [0.001, 0.002, 0.004, 0.008]
            test_subset: null
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args: {monitor: adv/robust_area, mode: max}

Determinism and DDP: the subset is cut into the same batches whatever the number of processes
and whole batches are dealt to ranks (padding copies are computed but never counted); every
attack's random stream is seeded by (seed, global batch number, attack, ε). So 1 and N
processes give identical numbers on the same checkpoint — also with random starts.

With ``every_n_epochs > 1`` the scalars exist only on evaluated epochs (those with
``(epoch + 1) % every_n_epochs == 0``); give a ``ModelCheckpoint`` / ``EarlyStopping`` that
monitors them the same ``every_n_epochs`` (ModelCheckpoint uses the same convention).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from callbacks.adapter import batch_for, robust_task_of
from callbacks.common import (
    DEFAULT_MONITOR,
    check_robust_task,
    format_eps,
    gradients_enabled,
    guarded_model,
    lower_is_better,
    method_name,
    preserved_rng,
    resolve_dataset,
    select_subset,
    set_eval_mode,
    shard_batches,
    subset_loader,
    to_autograd_safe,
    world,
)
from callbacks.evaluation_loop import (
    EvalOutcome,
    RobustnessEvaluator,
    check_eps_grid,
    parse_attack_specs,
)
from callbacks.minimal_eps import MinimalEpsConfig, minimal_eps_batch, summarise
from callbacks.progress import progress_bar

#: Default per-epoch suite, sized by benchmarks/eval_cost.py to stay under 30% of a quickstart
#: training epoch: PGD-3 (L∞, no random start: deterministic, identical on 1 or N processes) at
#: two budgets on 64 samples. Use ``test_attacks`` for the strong suite at validate/test.
DEFAULT_ATTACKS: list[dict[str, Any]] = [
    {"name": "pgd", "norm": "linf", "steps": 3, "random_start": False},
]
DEFAULT_EPS: list[float] = [0.002, 0.004]
_MODES = ("eval", "train")


def robust_area(clean: float, curve: dict[float, float], lower_better: bool) -> float:
    """Normalised trapezoid area of metric vs ε over ``[0, max ε]`` (ε = 0 → ``clean``).

    Returns the metric's mean over the ε range; negated for lower-is-better metrics, so that
    higher always means more robust. ``nan`` when a value is missing.
    """
    xs = [0.0, *sorted(curve)]
    ys = [clean, *(curve[e] for e in xs[1:])]
    if len(xs) < 2 or any(not math.isfinite(y) for y in ys):
        return math.nan
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    mean = area / (xs[-1] - xs[0])
    return -mean if lower_better else mean


class AdversarialEvaluation(Callback):
    """Per-epoch (and validate/test) robustness evaluation on a fixed subset.

    Args:
        attacks: the per-epoch suite, a list of ``{name, label?, **params}`` (any attack of
            :mod:`attacks`, every constructor parameter but ``eps``/``bounds``), e.g.
            ``[{name: pgd, norm: linf, steps: 10}, {name: fgsm}]``. ``label`` renames an entry
            (needed when one attack appears twice). Default: :data:`DEFAULT_ATTACKS`. Or the
            name of a suite (``"standard"``, ``"quick"``; :mod:`attacks.suites`), resolved for
            the task at setup; a named classification suite is sequential (AutoAttack: later
            members skip samples already broken). ``loss`` in an entry names an attack loss
            (:mod:`attacks.task_losses`).
        eps: the ε grid, in the data's pixel units (``data_info.bounds``). Default
            :data:`DEFAULT_EPS`.
        subset: evaluation samples: a count (``int``) or a fraction of the split (``float``),
            chosen once from ``seed`` (first ``n`` of a seeded permutation) — the same samples
            every epoch, on every rank, independent of the val loader's order. ``None``: all.
        every_n_epochs: evaluate after epochs with ``(epoch + 1) % every_n_epochs == 0``
            during ``fit``; ``validate`` and ``test`` always evaluate.
        bn_mode, dropout_mode: BatchNorm / Dropout mode during the *attacks* (``"eval"`` or
            ``"train"``); running statistics never change. Metric forwards use eval mode.
        batch_size: batch size of the evaluation loop (default: the datamodule's eval batch
            size). Part of the setting: under DDP the subset is cut into the same batches
            whatever the number of processes.
        test_attacks, test_eps: a stronger suite for ``validate``/``test`` (more steps,
            restarts); default: ``attacks`` / ``eps``.
        seed: seed of the subset and of the attacks' random streams.
        write_json: write ``robustness.json`` and append ``robustness_history.jsonl``.
        plot: write ``robustness.png`` (and log it to W&B / TensorBoard).
        monitor_metric: the metric of the robust area (default: the task's main metric —
            accuracy, dice, mre, map).
        minimal_eps: ``{enabled, eps_max, n_bisect, attack}`` — per-sample minimal ε by
            bisection (see :mod:`callbacks.minimal_eps`); off by default.
        ensemble: compute the per-sample worst case over attacks.
        report: write ``report.md`` after ``test``.
        num_workers: DataLoader workers of the evaluation loop.
        cache_mb: keep this rank's collated subset batches in host memory between evaluations
            when they fit in this many MiB (``0``: reload every time). Saves re-reading and
            re-generating the same samples each epoch, and freezes any random val-time
            transform to one draw, so the subset really is the same every time.
        test_subset: the subset at ``validate``/``test`` (``"same"``: ``subset``; ``None`` or
            ``1.0``: the whole split).
        sanity: when to run the gradient-masking checks of :mod:`callbacks.sanity` and write
            them under ``"sanity"`` in ``robustness.json`` (warnings when they fire):
            ``"test"`` (validate/test only; costs one APGD-20 at a large ε and one extra clean
            forward per batch), ``"always"`` or ``"never"``.
        prefix: first part of every scalar name (``adv``); a second evaluation callback in the
            same run needs its own prefix, and then writes ``robustness_<prefix>.json`` etc.
    """

    def __init__(
        self,
        attacks: list[dict[str, Any]] | str | None = None,
        eps: list[float] | None = None,
        subset: int | float | None = 64,
        every_n_epochs: int = 1,
        bn_mode: str = "eval",
        dropout_mode: str = "eval",
        batch_size: int | None = None,
        test_attacks: list[dict[str, Any]] | str | None = None,
        test_eps: list[float] | None = None,
        seed: int = 0,
        write_json: bool = True,
        plot: bool = True,
        monitor_metric: str | None = None,
        minimal_eps: dict[str, Any] | None = None,
        ensemble: bool = True,
        report: bool = True,
        num_workers: int = 0,
        cache_mb: float = 256.0,
        test_subset: int | float | None | str = "same",
        prefix: str = "adv",
        sanity: str = "test",
    ) -> None:
        super().__init__()
        # A named suite ("standard", "quick"; attacks/suites.py) depends on the task: resolved
        # in setup(). Its sequential rule (skip broken samples) applies only to named suites.
        self._suite_names = {"per_epoch": attacks if isinstance(attacks, str) else None,
                             "test": test_attacks if isinstance(test_attacks, str) else None}
        from attacks.suites import SUITES

        for fname, value in (("attacks", attacks), ("test_attacks", test_attacks)):
            if isinstance(value, str) and value not in SUITES:
                raise ValueError(f"AdversarialEvaluation.{fname}: unknown suite {value!r}; known suites: {sorted(SUITES)}")
        if sanity not in ("test", "always", "never"):
            raise ValueError(f"AdversarialEvaluation.sanity must be 'test', 'always' or 'never', got {sanity!r}")
        self.sanity = sanity
        if isinstance(attacks, str):
            self.attack_configs: Any = attacks
            self.specs = []
        else:
            self.attack_configs = [dict(a) for a in (attacks if attacks is not None else DEFAULT_ATTACKS)]
            self.specs = parse_attack_specs(self.attack_configs, "AdversarialEvaluation.attacks")
        self.eps = check_eps_grid(eps if eps is not None else DEFAULT_EPS, "AdversarialEvaluation.eps")
        self.test_specs = (
            parse_attack_specs(test_attacks, "AdversarialEvaluation.test_attacks")
            if test_attacks is not None and not isinstance(test_attacks, str) else self.specs
        )
        self.test_eps = (
            check_eps_grid(test_eps, "AdversarialEvaluation.test_eps") if test_eps is not None else self.eps
        )
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"AdversarialEvaluation.every_n_epochs must be an int >= 1, got {every_n_epochs!r}")
        for name, value in (("bn_mode", bn_mode), ("dropout_mode", dropout_mode)):
            if value not in _MODES:
                raise ValueError(f"AdversarialEvaluation.{name} must be one of {_MODES}, got {value!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"AdversarialEvaluation.batch_size must be >= 1, got {batch_size}")
        if test_subset == "same":
            test_subset = subset
        for name, value in (("subset", subset), ("test_subset", test_subset)):
            try:
                if isinstance(value, str):
                    raise ValueError("a count, a fraction or null")
                select_subset(1, value, seed)
            except ValueError as err:
                raise ValueError(f"AdversarialEvaluation.{name}={value!r}: {err}") from None
        if not prefix or "/" in prefix:
            raise ValueError(f"AdversarialEvaluation.prefix must be a non-empty name without '/', got {prefix!r}")
        self.subset = subset
        self.test_subset = test_subset
        self.prefix = prefix
        self.every_n_epochs = every_n_epochs
        self.bn_mode = bn_mode
        self.dropout_mode = dropout_mode
        self.batch_size = batch_size
        self.seed = int(seed)
        self.write_json = write_json
        self.plot = plot
        self.monitor_metric = monitor_metric
        self.minimal_eps = MinimalEpsConfig.parse(minimal_eps, "AdversarialEvaluation.minimal_eps")
        self.ensemble = ensemble
        self.report = report
        self.num_workers = num_workers
        self.cache_mb = float(cache_mb)
        self._cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        #: the last record written (``robustness.json`` content), per split
        self.last_record: dict[str, dict[str, Any]] = {}

    # --- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_robust_task(pl_module, "AdversarialEvaluation")
        self.resolve_suites(pl_module)
        twins = [cb for cb in trainer.callbacks
                 if isinstance(cb, AdversarialEvaluation) and cb is not self and cb.prefix == self.prefix]
        if twins:
            raise ValueError(
                f"two AdversarialEvaluation callbacks log under prefix {self.prefix!r}: their scalars "
                "and robustness.json would mix; give the second one another `prefix`, or replace "
                "the experiment's callback list instead of appending to it"
            )

    def resolve_suites(self, pl_module: Any) -> None:
        """Turn named suites into specs for this task (idempotent)."""
        task, k = getattr(pl_module, "task", None), getattr(pl_module, "num_classes", None)
        per, test = self._suite_names["per_epoch"], self._suite_names["test"]
        if per is not None:
            self.specs = parse_attack_specs(per, "AdversarialEvaluation.attacks", task, k)
        if test is not None:
            self.test_specs = parse_attack_specs(test, "AdversarialEvaluation.test_attacks", task, k)
        elif per is not None:
            self.test_specs = self.specs

    def _sequential(self, pl_module: Any, suite: str) -> bool:
        from attacks.suites import is_sequential

        name = self._suite_names["test" if suite == "test" else "per_epoch"]
        if suite == "test" and name is None and self._suite_names["per_epoch"] and self.test_specs is self.specs:
            name = self._suite_names["per_epoch"]
        return name is not None and is_sequential(getattr(pl_module, "task", None))

    def file_name(self, name: str) -> str:
        """``robustness.json`` → ``robustness_<prefix>.json`` unless the prefix is ``adv``."""
        if self.prefix == "adv":
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}_{self.prefix}{dot}{ext}"

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":
            if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
                return
            self.evaluate(trainer, pl_module, "val", self.specs, self.eps, suite="per_epoch")
        else:  # trainer.validate: the stronger suite
            self.evaluate(trainer, pl_module, "val", self.test_specs, self.test_eps, suite="test")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate(trainer, pl_module, "test", self.test_specs, self.test_eps, suite="test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.report or "test" not in self.last_record:
            return
        log_dir = self._log_dir(trainer)  # collective: every rank calls it
        if trainer.is_global_zero:
            from callbacks.report import write_report

            write_report(
                self.last_record["test"],
                Path(log_dir) / self.file_name("report.md"),
                plot_name=self.file_name("robustness.png") if self.plot else None,
                checkpoint=getattr(trainer, "ckpt_path", None),
            )

    # --- the evaluation ------------------------------------------------------------------------
    def monitor_for(self, pl_module: Any, metric_names: Sequence[str]) -> str:
        """The metric behind ``adv/robust_area``."""
        wanted = self.monitor_metric or DEFAULT_MONITOR.get(pl_module.task)
        if wanted in metric_names:
            return str(wanted)
        if self.monitor_metric is not None:
            raise ValueError(
                f"AdversarialEvaluation.monitor_metric={self.monitor_metric!r} is not a metric of "
                f"the task; available: {list(metric_names)}"
            )
        return metric_names[0] if metric_names else ""

    def evaluate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        split: str,
        specs: Sequence[Any],
        eps: Sequence[float],
        suite: str = "per_epoch",
    ) -> dict[str, Any]:
        """Run the suite on the subset of ``split``, log, write files; return the record.

        Must be called on every rank (metric synchronisation is collective).
        """
        task = check_robust_task(pl_module, "AdversarialEvaluation")
        start = time.perf_counter()
        dataset, collate_fn, dm_bs = resolve_dataset(trainer, split)
        indices = select_subset(len(dataset), self.test_subset if suite == "test" else self.subset, self.seed)
        batch_size = self.batch_size or dm_bs or 32
        rank, world_size = world(trainer)
        mine = shard_batches(indices, batch_size, rank, world_size)
        if world_size > 1 and math.ceil(len(indices) / batch_size) < world_size and rank == 0:
            warnings.warn(
                f"AdversarialEvaluation: {len(indices)} samples in batches of {batch_size} give "
                f"fewer batches than the {world_size} processes; some ranks only run padding",
                stacklevel=2,
            )
        key = (split, id(dataset), len(dataset), tuple(indices), batch_size, rank, world_size)
        device = pl_module.device
        model = task.attack_model()
        minimal: list[tuple[int, float]] = []
        position = {idx: pos for pos, idx in enumerate(indices)}

        with preserved_rng(device), gradients_enabled(), guarded_model(pl_module, model), \
                trainer.precision_plugin.forward_context():  # the trainer's autocast, if any
            set_eval_mode(pl_module, model)
            if not specs:
                self.resolve_suites(pl_module)
                specs = self.test_specs if suite == "test" else self.specs
            check = self.sanity == "always" or (self.sanity == "test" and suite == "test")
            lo, hi = (float(b) for b in task.data_info.bounds)
            evaluator = RobustnessEvaluator(
                task, specs, eps, self.bn_mode, self.dropout_mode, self.seed, self.ensemble,
                sequential=self._sequential(pl_module, suite),
                large_eps=0.25 * (hi - lo) if check and math.isfinite(hi - lo) else None,
            )
            batches = progress_bar(  # silent unless rank 0 on a terminal (callbacks/progress.py)
                self._batches(key, dataset, mine, collate_fn), len(mine),
                f"{self.prefix} {split}: {len(specs)} attack(s) × {len(eps)} ε", trainer)
            for i, raw in enumerate(batches):
                batch_no, idx, counted = mine[i]
                batch = to_autograd_safe(batch_for(task, raw), device)
                evaluator.run_batch(batch_no, batch, counted)
                if self.minimal_eps.enabled:
                    gen = torch.Generator(device=device).manual_seed(self.seed + batch_no)
                    values = minimal_eps_batch(task, evaluator.model, batch, self.minimal_eps,
                                               self.bn_mode, self.dropout_mode, gen)
                    if counted:
                        minimal += [(position[j], float(v)) for j, v in zip(idx, values.tolist())]
            outcome = evaluator.compute()  # collective (torchmetrics sync)
        if self.minimal_eps.enabled:
            minimal = _gather_pairs(minimal, world_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start

        record = self._record(trainer, task, split, suite, outcome, list(specs), indices,
                              len(dataset), batch_size, world_size, seconds)
        if self.minimal_eps.enabled:
            values = [v for _, v in sorted(minimal)]
            record["minimal_eps"] = summarise(values, self.minimal_eps)
        if check:
            from callbacks.sanity import sanity_report

            ra = record["robust_area"]
            record["sanity"] = sanity_report(outcome, ra["metric"], ra["metric_lower_is_better"],
                                             warn=trainer.is_global_zero)
        self._log_scalars(pl_module, record)
        self.last_record[split] = record
        log_dir = self._log_dir(trainer)  # collective
        if trainer.is_global_zero:
            self._write_outputs(trainer, record, Path(log_dir))
        return record

    def _batches(self, key: tuple[Any, ...], dataset: Any, mine: list[tuple[int, list[int], bool]],
                 collate_fn: Any) -> Iterator[dict[str, Any]]:
        """This rank's subset batches (host memory), from the cache when it holds them."""
        if key in self._cache:
            yield from self._cache[key]
            return
        loader = subset_loader(dataset, [b for _, b, _ in mine], collate_fn, self.num_workers)
        kept: list[dict[str, Any]] | None = [] if self.cache_mb > 0 else None
        size = 0
        for raw in loader:
            if kept is not None:
                size += _nbytes(raw)
                kept = kept + [raw] if size <= self.cache_mb * 2**20 else None
            yield raw
        if kept is not None:
            # one subset per split: a new subset (other dataset, batch size…) replaces the old
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key[0]}
            self._cache[key] = kept

    # --- outputs -------------------------------------------------------------------------------
    def _record(
        self,
        trainer: pl.Trainer,
        pl_module: Any,
        split: str,
        suite: str,
        outcome: EvalOutcome,
        specs_used: list[Any],
        indices: list[int],
        split_size: int,
        batch_size: int,
        world_size: int,
        seconds: float,
    ) -> dict[str, Any]:
        monitor = self.monitor_for(pl_module, list(outcome.clean))
        lower = lower_is_better(monitor)
        attacks = []
        for (label, eps), metrics in outcome.attacks.items():
            desc = outcome.descriptions[(label, eps)]
            spec = next(sp for sp in specs_used if sp.label == label)
            entry = {
                "attack": label,
                "name": desc.get("name"),
                "norm": desc.get("norm"),
                "eps": eps,
                "steps": desc.get("steps"),
                "step_size": desc.get("step_size"),
                "restarts": desc.get("restarts"),
                "random_start": desc.get("random_start"),
                "metrics": metrics,
                "in_ensemble": spec.budgeted,
                "loss": spec.describe().get("loss", "task"),
                "gradients": outcome.gradients.get((label, eps)),
            }
            if outcome.sequential:
                entry["note"] = ("sequential suite: attacks only samples no earlier member broke; "
                                 "metrics are the worst case over this and earlier members")
            if not spec.budgeted:
                entry["note"] = "no ε budget: run with its own parameters at every grid point"
            extra = {k: v for k, v in desc.items() if k not in entry and k not in ("eps", "bounds")}
            entry.update(extra)
            attacks.append(entry)
        labels = list(dict.fromkeys(label for label, _ in outcome.attacks))
        attacks.sort(key=lambda e: (e["eps"], labels.index(e["attack"])))
        in_ensemble = [sp.label for sp in specs_used if sp.budgeted]
        ensemble = [
            {"attack": "ensemble", "eps": e, "attacks": in_ensemble, "metrics": m}
            for e, m in sorted(outcome.ensemble.items())
        ]
        if outcome.ensemble:
            curve = {e: m.get(monitor, math.nan) for e, m in outcome.ensemble.items()}
            source = "ensemble"
        else:  # without the ensemble, the worst attack per ε
            curve = {}
            for (_, e), m in outcome.attacks.items():
                v = m.get(monitor, math.nan)
                curve[e] = v if e not in curve else (max(curve[e], v) if lower else min(curve[e], v))
            source = "worst attack per ε"
        area = robust_area(outcome.clean.get(monitor, math.nan), curve, lower)
        definition = (
            f"{'negative ' if lower else ''}mean of {source} {monitor} over ε ∈ [0, {max(curve) if curve else 0:g}] "
            "(trapezoid, ε=0 is clean); higher = more robust"
        )
        return {
            "task": pl_module.task,
            "method": method_name(pl_module),
            "epoch": int(trainer.current_epoch),
            "split": split,
            "global_step": int(trainer.global_step),
            "suite": suite,
            "suite_name": self._suite_names["test" if suite == "test" else "per_epoch"] or (
                self._suite_names["per_epoch"] if suite == "test" and self.test_specs is self.specs else None),
            "sequential": outcome.sequential,
            "members": [_member(sp, outcome) for sp in specs_used],
            "clean": outcome.clean,
            "attacks": attacks,
            "ensemble": ensemble,
            "ensemble_rule": (
                "per sample, the candidate (clean or an attack's output) that violates the task's "
                "is_violated test, ties broken by the highest per-sample loss"
                if outcome.ensemble_rule == "violation_then_loss"
                else "per sample, the candidate (clean or an attack's output) with the highest per-sample loss"
            ),
            "robust_area": {"value": area, "metric": monitor, "higher_is_better": True,
                            "metric_lower_is_better": lower, "definition": definition},
            "eval_seconds": seconds,
            "subset": {
                "size": len(indices),
                "of": split_size,
                "requested": self.test_subset if suite == "test" else self.subset,
                "seed": self.seed,
                "selection": "first n of torch.randperm(split size, seed), sorted",
                "indices": indices,
            },
            "settings": {
                "bn_mode": self.bn_mode,
                "dropout_mode": self.dropout_mode,
                "batch_size": batch_size,
                "world_size": world_size,
                "seed": self.seed,
                "every_n_epochs": self.every_n_epochs,
                "precision": str(trainer.precision),
            },
        }

    def _log_scalars(self, pl_module: pl.LightningModule, record: dict[str, Any]) -> None:
        values: dict[str, float] = {}
        for m, v in record["clean"].items():
            values[f"{self.prefix}/clean/{m}"] = v
        for entry in record["attacks"]:
            for m, v in entry["metrics"].items():
                values[f"{self.prefix}/{entry['attack']}/eps={format_eps(entry['eps'])}/{m}"] = v
        for entry in record["ensemble"]:
            for m, v in entry["metrics"].items():
                values[f"{self.prefix}/ensemble/eps={format_eps(entry['eps'])}/{m}"] = v
        values[f"{self.prefix}/robust_area"] = record["robust_area"]["value"]
        values[f"{self.prefix}/eval_seconds"] = record["eval_seconds"]
        if "minimal_eps" in record:
            med = record["minimal_eps"]["median"]
            # Censored median (more than half not broken at eps_max): log the lower bound.
            values[f"{self.prefix}/minimal_eps_median"] = med if med is not None else self.minimal_eps.eps_max
        for key, value in values.items():
            # Metric values are already identical on every rank (torchmetrics synced them); a
            # max-reduce keeps them bit-exact (a mean might not) and makes eval_seconds the
            # slowest rank's time.
            pl_module.log(key, float(value), on_step=False, on_epoch=True, sync_dist=True,
                          reduce_fx="max", add_dataloader_idx=False)

    @staticmethod
    def _log_dir(trainer: pl.Trainer) -> str:
        return str(trainer.log_dir or trainer.default_root_dir)

    def _write_outputs(self, trainer: pl.Trainer, record: dict[str, Any], log_dir: Path) -> None:
        from callbacks.logger_outputs import log_image, log_table

        log_dir.mkdir(parents=True, exist_ok=True)
        if self.write_json:
            safe = json_safe(record)
            from callbacks.atomic import append_line_atomic, atomic_write_text

            # Crash-safe: a kill leaves the previous complete file or the new one.
            atomic_write_text(log_dir / self.file_name("robustness.json"),
                              json.dumps(safe, indent=2, allow_nan=False))
            append_line_atomic(log_dir / self.file_name("robustness_history.jsonl"),
                               json.dumps(safe, allow_nan=False))
        if self.plot:
            from callbacks.plotting import plot_robustness_curves

            info = getattr(robust_task_of(trainer.lightning_module), "data_info", None)
            path = plot_robustness_curves(record, log_dir / self.file_name("robustness.png"),
                                          record["robust_area"]["metric"],
                                          bounds=getattr(info, "bounds", None))  # x-axis units
            log_image(trainer, f"{self.prefix}/robustness_curve_{record['split']}", path,
                      caption=f"epoch {record['epoch']}")
        if self.plot and "minimal_eps" in record:
            from callbacks.plotting import plot_histogram

            me = record["minimal_eps"]
            values = [v for v in me["per_sample"] if v is not None]
            marks = {"median": me["median"]} if me["median"] is not None else {}
            path = plot_histogram(
                values, log_dir / self.file_name("minimal_eps.png"),
                f"minimal ε per sample ({me['censored_fraction']:.0%} not broken at ε_max={me['eps_max']:g})",
                f"ε ({me['norm']}, {me.get('attack', 'pgd').upper()}-{me['steps']}, {me['n_bisect']} bisections)", marks, bins=20,
            )
            log_image(trainer, f"{self.prefix}/minimal_eps_{record['split']}", path)
        metrics = list(record["clean"])
        rows = [["clean", 0.0, *(record["clean"][m] for m in metrics)]]
        rows += [[e["attack"], e["eps"], *(e["metrics"].get(m) for m in metrics)] for e in record["attacks"]]
        rows += [["ensemble", e["eps"], *(e["metrics"].get(m) for m in metrics)] for e in record["ensemble"]]
        log_table(trainer, f"{self.prefix}/robustness_table_{record['split']}", ["attack", "eps", *metrics], rows)


def _member(spec: Any, outcome: EvalOutcome) -> dict[str, Any]:
    """A suite member for ``robustness.json``: its spec with the steps and restarts it ran."""
    desc = next((d for (label, _), d in outcome.descriptions.items() if label == spec.label), {})
    return {**spec.describe(), "steps": desc.get("steps"), "restarts": desc.get("restarts")}


def json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats become ``null``, tensors lists, other objects strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def _nbytes(obj: Any) -> int:
    """Bytes held by the tensors of a batch."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _gather_pairs(pairs: list[tuple[int, float]], world_size: int) -> list[tuple[int, float]]:
    """All ranks' ``(subset position, value)`` pairs, on every rank."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return pairs
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, pairs)
    return [p for part in gathered for p in part]
