"""The writers of :class:`callbacks.AdversarialEvaluation`: from a run to its outputs.

* :func:`build_record` — the :class:`~callbacks.record.RobustnessRecord` of one
  :class:`~callbacks.evaluation_runner.RunResult` (with the robust area, :func:`robust_area`);
* :func:`log_scalars` — ``<prefix>/clean/<metric>``, ``<prefix>/<attack>/eps=<ε>/<metric>``,
  ``<prefix>/ensemble/…``, ``<prefix>/robust_area``, ``<prefix>/eval_seconds``… (through
  ``LightningModule.log``, or in ``fit`` all at once: :func:`publish_scalars`);
* :func:`write_outputs` — ``robustness.json`` (atomic), a line of ``robustness_history.jsonl``
  (atomic), the curve and minimal-ε PNGs and a logger table (rank 0 only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from callbacks.common import format_eps
from callbacks.evaluation_runner import RunResult
from callbacks.outcome import EvalOutcome
from callbacks.record import AttackEntry, EnsembleEntry, RobustArea, RobustnessRecord, SubsetInfo

ENSEMBLE_RULES = {
    "task_metric_then_loss": "per sample, the candidate (clean or an attack's output) with the worst value of "
                             "the task's per-sample metric, ties broken by the highest per-sample loss",
    "violation_then_loss": "per sample, the candidate (clean or an attack's output) that violates the task's "
                           "is_violated test, ties broken by the highest per-sample loss",
    "loss": "per sample, the candidate (clean or an attack's output) with the highest per-sample loss",
}


def robust_area(clean: float, curve: dict[float, float], lower_better: bool) -> float:
    """Normalised trapezoid area of metric vs ε over ``[0, max ε]`` (ε = 0 → ``clean``).

    Returns the metric's mean over the ε range; negated for lower-is-better metrics, so that
    higher always means more robust. ``nan`` when a value is missing.
    """
    xs = [0.0, *sorted(curve)]
    ys = [clean, *(curve[e] for e in xs[1:])]
    if len(xs) < 2 or any(not math.isfinite(y) for y in ys):
        return math.nan
    mean = trapezoid_mean(xs, ys)
    return -mean if lower_better else mean


def trapezoid_mean(xs: Sequence[float], ys: Sequence[Any]) -> Any:
    """The trapezoid mean of ``ys`` over ``xs`` (sorted, at least two): floats, or arrays of
    per-sample values (the same operations in the same order, so a one-sample array gives the
    float's bits; :func:`callbacks.record_intervals.sample_area`)."""
    area = 0
    for i in range(len(xs) - 1):
        area = area + (xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2
    return area / (xs[-1] - xs[0])


def _attack_entries(outcome: EvalOutcome, specs: Sequence[Any]) -> list[AttackEntry]:
    entries = []
    for (label, eps), metrics in outcome.attacks.items():
        desc = outcome.descriptions[(label, eps)]
        spec = next(sp for sp in specs if sp.label == label)
        note = None
        if outcome.sequential:
            note = ("sequential suite: attacks only samples no earlier member broke; "
                    "metrics are the worst case over this and earlier members")
        if not spec.budgeted:
            note = "no ε budget: run with its own parameters at every grid point"
        known = set(AttackEntry._ORDER) | {"eps", "bounds"}
        entries.append(AttackEntry(
            attack=label, eps=eps, metrics=metrics, name=desc.get("name"), norm=desc.get("norm"),
            steps=desc.get("steps"), step_size=desc.get("step_size"), restarts=desc.get("restarts"),
            random_start=desc.get("random_start"), in_ensemble=spec.budgeted,
            loss=spec.describe().get("loss", "task"), gradients=outcome.gradients.get((label, eps)),
            note=note, extra={k: v for k, v in desc.items() if k not in known},
        ))
    labels = list(dict.fromkeys(label for label, _ in outcome.attacks))
    entries.sort(key=lambda e: (e.eps, labels.index(e.attack)))
    return entries


def build_record(run: RunResult, *, task: Any, trainer: Any, split: str, suite: str,
                 suite_name: str | None, specs: Sequence[Any], monitor: str, lower: bool,
                 requested_subset: Any, settings: dict[str, Any], method: str) -> RobustnessRecord:
    """The record of one run. ``monitor``/``lower``: the robust area's metric and direction
    (the task's :attr:`main_metric` and its torchmetrics ``higher_is_better`` by default)."""
    outcome = run.outcome
    if outcome.ensemble:
        curve = {e: _num(m.get(monitor)) for e, m in outcome.ensemble.items()}
        source = "ensemble"
    else:  # without the ensemble, the worst attack per ε
        curve = {}
        for (_, e), m in outcome.attacks.items():
            v = _num(m.get(monitor))
            curve[e] = v if e not in curve else (max(curve[e], v) if lower else min(curve[e], v))
        source = "worst attack per ε"
    area = robust_area(_num(outcome.clean.get(monitor)), curve, lower)
    definition = (
        f"{'negative ' if lower else ''}mean of {source} {monitor} over ε ∈ [0, {max(curve) if curve else 0:g}] "
        "(trapezoid, ε=0 is clean); higher = more robust"
    )
    in_ensemble = [sp.label for sp in specs if sp.budgeted]
    return RobustnessRecord(
        task=task.task, method=method, epoch=int(trainer.current_epoch), split=split,
        global_step=int(trainer.global_step), suite=suite, suite_name=suite_name,
        sequential=outcome.sequential, members=[_member(sp, outcome) for sp in specs],
        clean=outcome.clean, attacks=_attack_entries(outcome, specs),
        ensemble=[EnsembleEntry(e, m, list(in_ensemble)) for e, m in sorted(outcome.ensemble.items())],
        ensemble_rule=ENSEMBLE_RULES[outcome.ensemble_rule],
        robust_area=RobustArea(area, monitor, lower, definition),
        eval_seconds=run.seconds,
        subset=SubsetInfo(size=len(run.indices), of=run.split_size, requested=requested_subset,
                          seed=settings.get("seed"),
                          selection="first n of torch.randperm(split size, seed), sorted",
                          indices=list(run.indices)),
        settings={"bn_mode": settings.get("bn_mode"), "dropout_mode": settings.get("dropout_mode"),
                  "batch_size": run.batch_size, "world_size": run.world_size, "seed": settings.get("seed"),
                  "every_n_epochs": settings.get("every_n_epochs"), "precision": str(trainer.precision),
                  # samples violated at a smaller ε skipped the larger ones (Speedups.early_exit)
                  "early_exit": bool(outcome.early_exit)},
        compute=outcome.compute,
    )


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _member(spec: Any, outcome: EvalOutcome) -> dict[str, Any]:
    """A suite member: its spec with the steps and restarts it ran."""
    desc = next((d for (label, _), d in outcome.descriptions.items() if label == spec.label), {})
    return {**spec.describe(), "steps": desc.get("steps"), "restarts": desc.get("restarts")}


def scalar_values(record: RobustnessRecord, prefix: str, minimal_eps_max: float | None = None) -> dict[str, float]:
    """The scalars of one record, by logged name."""
    values: dict[str, float] = {}
    for m, v in record.clean.items():
        values[f"{prefix}/clean/{m}"] = _num(v)
    for entry in record.attacks:
        for m, v in entry.metrics.items():
            values[f"{prefix}/{entry.attack}/eps={format_eps(entry.eps)}/{m}"] = _num(v)
    for ens in record.ensemble:
        for m, v in ens.metrics.items():
            values[f"{prefix}/ensemble/eps={format_eps(ens.eps)}/{m}"] = _num(v)
    values[f"{prefix}/robust_area"] = _num(record.robust_area.value if record.robust_area else None)
    # confidence bounds (with ``intervals``): the clean, worst-case and robust-area numbers
    if record.intervals:
        name = record.intervals.get("metric", "metric")
        # the robust area's interval is of the area's own metric (detection: mAP, not the
        # per-sample AP@0.5 the per-sample intervals are of)
        area_metric = record.robust_area.metric if record.robust_area is not None else name
        bounds = [(f"{prefix}/clean/{name}", record.interval("clean")),
                  (f"{prefix}/robust_area", record.interval("robust_area", metric=area_metric))]
        bounds += [(f"{prefix}/ensemble/eps={format_eps(e.eps)}/{name}", record.interval("worst", e.eps))
                   for e in record.ensemble]
        # dataset-level metrics (AUROC, mAP…): their bounds beside their scalars
        for m in record.intervals.get("dataset_metrics") or {}:
            bounds.append((f"{prefix}/clean/{m}", record.interval("clean", metric=m)))
            bounds += [(f"{prefix}/ensemble/eps={format_eps(e.eps)}/{m}", record.interval("worst", e.eps, metric=m))
                       for e in record.ensemble]
        for key, ci in bounds:
            if ci is not None:
                values[f"{key}_ci_low"], values[f"{key}_ci_high"] = ci.low, ci.high
    if record.corruptions is not None:
        from callbacks.corruption_report import scalar_values as corruption_scalars

        values.update(corruption_scalars(record.corruptions, prefix))
    values[f"{prefix}/eval_seconds"] = _num(record.eval_seconds)
    if record.minimal_eps is not None:
        med = record.minimal_eps.median
        # Censored median (more than half not violated at eps_max): log the lower bound.
        values[f"{prefix}/minimal_eps_median"] = med if med is not None else _num(minimal_eps_max)
    return values


def log_scalars(pl_module: Any, record: RobustnessRecord, prefix: str, minimal_eps_max: float | None = None,
                direct: bool = False, step: int | None = None) -> None:
    """Log the record's scalars (:func:`scalar_values`): one ``pl_module.log`` each, or with
    ``direct`` (``fit``'s per-epoch evaluation, :attr:`Speedups.direct_logging`) all at once
    through :func:`publish_scalars` at the logger ``step``."""
    values = scalar_values(record, prefix, minimal_eps_max)
    if direct:
        publish_scalars(pl_module.trainer, values, pl_module.device, step)
        return
    for key, value in values.items():
        # Metric values are already identical on every rank (torchmetrics synced them); a
        # max-reduce keeps them bit-exact (a mean might not) and makes eval_seconds the
        # slowest rank's time.
        pl_module.log(key, float(value), on_step=False, on_epoch=True, sync_dist=True,
                      reduce_fx="max", add_dataloader_idx=False)


def scalar_dtype() -> torch.dtype:
    """The dtype ``LightningModule.log`` stores a float in: the default dtype, at least float32."""
    dtype = torch.get_default_dtype()
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def publish_scalars(trainer: Any, values: dict[str, float], device: torch.device | str = "cpu",
                    step: int | None = None) -> None:
    """What ``LightningModule.log(key, value, on_epoch=True, sync_dist=True, reduce_fx="max")``
    of each scalar in an ``on_validation_epoch_end`` hook of ``fit`` leads to, in one call.

    * every rank: ``trainer.callback_metrics`` and ``trainer.logged_metrics`` get each value as a
      0-d tensor of :func:`scalar_dtype` on ``device`` — so ``ModelCheckpoint(monitor=…)``,
      ``EarlyStopping`` and a scheduler's monitor see it as they would a logged one;
    * the values are max-reduced over the ranks in one collective (they are equal on every
      rank, except ``eval_seconds``: the slowest rank's, as ``reduce_fx="max"`` gives);
    * rank 0: each logger's ``log_metrics`` with ``epoch`` added, at ``step`` — the step Lightning
      logs the epoch's own scalars with, as :class:`callbacks.logger_step.CountsLoggerStep` counts
      it (``None``: ``trainer.global_step``) — in a row of their own; CSV, W&B and the others write
      it at their next ``save`` (Lightning saves right after logging the epoch's own scalars, in
      the same validation end).

    A tenth of the cost of the ``log`` calls: each ``log`` call copies Lightning's
    bookkeeping of its key (≈ 0.2 ms on the CPU; 22 scalars on the quickstart).
    """
    if not values:
        return
    stacked = torch.tensor([float(v) for v in values.values()], dtype=scalar_dtype(), device=device)
    if int(getattr(trainer, "world_size", 1)) > 1:
        stacked = trainer.strategy.reduce(stacked, reduce_op="max")
    tensors = dict(zip(values, stacked.unbind(0)))
    trainer.callback_metrics.update(tensors)
    trainer.logged_metrics.update(tensors)
    if trainer.loggers and trainer.is_global_zero:
        scalars: dict[str, float] = dict(zip(values, stacked.tolist()))
        scalars.setdefault("epoch", trainer.current_epoch)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=int(trainer.global_step if step is None else step))


def write_outputs(trainer: Any, record: RobustnessRecord, log_dir: Path, file_name: Callable[[str], str],
                  prefix: str, write_json: bool = True, plot: bool = True,
                  bounds: Sequence[float] | None = None, directions: dict[str, bool] | None = None,
                  samples: Any = None, evidence: Any = None) -> None:
    """Rank 0: the files and logger outputs of one record (see the module docstring);
    ``samples``: the per-sample table (``callbacks.per_sample.SampleTable``) written beside
    ``robustness.json`` as ``robustness_samples.csv`` (with ``write_json``); ``evidence``: the
    dataset-level evidence (``callbacks.evidence.Evidence``) written as
    ``robustness_evidence.json``."""
    from callbacks.logger_outputs import log_image, log_table

    log_dir.mkdir(parents=True, exist_ok=True)
    if write_json:
        from callbacks.record import append_history

        # Crash-safe: a kill leaves the previous complete file or the new one.
        record.save(log_dir / file_name("robustness.json"))
        if samples is not None:
            from callbacks.per_sample import FILE_NAME

            samples.save(log_dir / file_name(FILE_NAME))
        if evidence is not None:
            from callbacks.evidence import FILE_NAME as EVIDENCE_FILE

            evidence.save(log_dir / file_name(EVIDENCE_FILE))
        append_history(log_dir / file_name("robustness_history.jsonl"), record)
    if plot:
        from callbacks.plotting import plot_robustness_curves

        monitor = record.robust_area.metric if record.robust_area else None
        path = plot_robustness_curves(record, log_dir / file_name("robustness.png"), monitor,
                                      bounds=bounds, directions=directions)  # x-axis units
        log_image(trainer, f"{prefix}/robustness_curve_{record.split}", path, caption=f"epoch {record.epoch}")
    if plot and record.minimal_eps is not None:
        from callbacks.plotting import plot_histogram

        me = record.minimal_eps
        values = [v for v in me.per_sample if v is not None]
        marks = {"median": me.median} if me.median is not None else {}
        path = plot_histogram(
            values, log_dir / file_name("minimal_eps.png"),
            f"minimal ε per sample ({me.censored_fraction:.0%} not violated at ε_max={me.eps_max:g})",
            f"ε ({me.norm}, {me.attack.upper()}-{me.steps}, {me.n_bisect} bisections)", marks, bins=20,
        )
        log_image(trainer, f"{prefix}/minimal_eps_{record.split}", path)
    metrics = record.metric_names()
    rows = [["clean", 0.0, *(record.clean[m] for m in metrics)]]
    rows += [[e.attack, e.eps, *(e.metrics.get(m) for m in metrics)] for e in record.attacks]
    rows += [["ensemble", e.eps, *(e.metrics.get(m) for m in metrics)] for e in record.ensemble]
    log_table(trainer, f"{prefix}/robustness_table_{record.split}", ["attack", "eps", *metrics], rows)
