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
        - class_path: callbacks.ModelCheckpoint
          init_args: {monitor: adv/robust_area, mode: max}

Determinism and DDP: the subset is cut into the same batches whatever the number of processes
and whole batches are dealt to ranks (padding copies are computed but never counted); every
attack's random stream is seeded by (seed, global batch number, attack, ε). So 1 and N
processes give identical numbers on the same checkpoint — also with random starts.

Structure: this class is the *trigger* (when: every ``every_n_epochs`` validation epochs,
validate, test); :class:`callbacks.evaluation_runner.EvaluationRunner` is the *runner* (the
subset, its DDP shards and cache, the attack × ε loop of :mod:`callbacks.evaluation_loop`);
:mod:`callbacks.evaluation_writers` holds the *writers* (the
:class:`~callbacks.record.RobustnessRecord`, scalars, files). The robust area's metric and its
direction are the task's (``main_metric``, ``metric_higher_is_better``).

With ``every_n_epochs > 1`` the scalars exist only on evaluated epochs (those with
``(epoch + 1) % every_n_epochs == 0``); give a ``ModelCheckpoint`` / ``EarlyStopping`` that
monitors them the same ``every_n_epochs`` (ModelCheckpoint uses the same convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl

from callbacks.common import check_robust_task, method_name, metric_direction
from callbacks.corruption_eval import check_severities, resolve_suite
from callbacks.evaluation_runner import AttackMode, EvaluationRunner
from callbacks.evaluation_stop import EvaluationInterrupted
from callbacks.evaluation_writers import build_record, log_scalars, robust_area, write_outputs
from callbacks.logger_step import CountsLoggerStep
from callbacks.minimal_eps import MinimalEpsConfig, summarise
from callbacks.record import MinimalEpsSummary, RobustnessRecord, json_safe
from callbacks.suite_plan import DEFAULT_ATTACKS, SuitePlan, check_eps_grid

__all__ = ["DEFAULT_ATTACKS", "DEFAULT_EPS", "AdversarialEvaluation", "json_safe", "robust_area"]

DEFAULT_EPS: list[float] = [0.002, 0.004]
#: when an optional part of the evaluation runs: at validate / test only, at every evaluation, never
When = Literal["test", "always", "never"]


class AdversarialEvaluation(CountsLoggerStep):
    """Per-epoch (and validate/test) robustness evaluation on a fixed subset.

    Args:
        attacks: the per-epoch suite, a list of ``{name, label?, **params}`` (any attack of
            :mod:`attacks`, every constructor parameter but ``eps``/``bounds``), e.g.
            ``[{name: pgd, norm: linf, steps: 10}, {name: fgsm}]``. ``label`` renames an entry
            (needed when one attack appears twice). Default: :data:`DEFAULT_ATTACKS`. Or the
            name of a suite (``"standard"``, ``"quick"``; :mod:`attacks.suites`), resolved for
            the task at setup; a named classification suite is sequential (AutoAttack: later
            members skip samples already violated). ``loss`` in an entry names an attack loss
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
        monitor_metric: the metric of the robust area (default: the task's ``main_metric`` —
            accuracy, dice, mre, map; its direction comes from the task's metric object).
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
        intervals: when to put confidence intervals of the clean, per-attack, worst-case and
            robust-area numbers into the record (``"intervals"``), ``report.md``, the CLI summary
            and the logged scalars (``…_ci_low`` / ``…_ci_high``), computed from the per-sample
            file ``robustness_samples.csv`` (always written beside ``robustness.json``; see
            :mod:`callbacks.record_intervals`): ``"test"`` (validate/test only), ``"always"``
            or ``"never"``.
        interval_level: their confidence level (0.95).
        corruptions: a corruption suite run beside the attacks on the same subset at every
            evaluation (a modality name of :mod:`corruptions.suites` — ``"chest_xray"``,
            ``"dermoscopy"``, ``"microscopy"``, ``"xray"``, ``"retina"``, ``"ct"``, ``"mri"`` —
            or a list of corruptions); ``None``: none. Its results are the record's
            ``corruptions`` section (:mod:`callbacks.corruption_section`): metric per corruption ×
            severity, means, error, CE / mCE against ``corruption_reference``, cost; scalars
            ``<prefix>/corruption/…``; per-sample columns ``corruption-<name>/<severity>/<metric>``;
            a curve ``corruptions.png``; a section of ``report.md``.
        test_corruptions: the suite at ``validate``/``test`` (``"same"``: ``corruptions``).
        corruption_severities: the severities run (1–5).
        corruption_reference: a reference run's ``robustness.json`` (evaluated with the same
            suite), for ImageNet-C's CE, relative CE and mCE; ``None``: errors only.
    """

    def __init__(
        self,
        attacks: list[dict[str, Any]] | str | None = None,
        eps: list[float] | None = None,
        subset: int | float | None = 64,
        every_n_epochs: int = 1,
        bn_mode: AttackMode = "eval",
        dropout_mode: AttackMode = "eval",
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
        test_subset: int | float | Literal["same"] | None = "same",
        prefix: str = "adv",
        sanity: When = "test",
        intervals: When = "test",
        interval_level: float = 0.95,
        corruptions: str | list[dict[str, Any]] | None = None,
        test_corruptions: str | list[dict[str, Any]] | None = "same",
        corruption_severities: list[int] | None = None,
        corruption_reference: str | None = None,
    ) -> None:
        super().__init__()
        who = "AdversarialEvaluation"
        for name, value in (("sanity", sanity), ("intervals", intervals)):
            if value not in ("test", "always", "never"):
                raise ValueError(f"{who}.{name} must be 'test', 'always' or 'never', got {value!r}")
        if not 0.0 < float(interval_level) < 1.0:
            raise ValueError(f"{who}.interval_level must be in (0, 1), e.g. 0.95; got {interval_level!r}")
        self.intervals, self.interval_level = intervals, float(interval_level)
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"{who}.every_n_epochs must be an int >= 1, got {every_n_epochs!r}")
        if not prefix or "/" in prefix:
            raise ValueError(f"{who}.prefix must be a non-empty name without '/', got {prefix!r}")
        self.suites = SuitePlan(attacks, test_attacks, who)
        self.eps = check_eps_grid(eps if eps is not None else DEFAULT_EPS, f"{who}.eps")
        self.test_eps = check_eps_grid(test_eps, f"{who}.test_eps") if test_eps is not None else self.eps
        test_subset = subset if test_subset == "same" else test_subset
        for name, value in (("subset", subset), ("test_subset", test_subset)):
            EvaluationRunner.check_subset(name, value, who)
        self.minimal_eps = MinimalEpsConfig.parse(minimal_eps, f"{who}.minimal_eps")
        #: subset, sharding, cache and the attack × ε loop
        self.runner = EvaluationRunner(seed, bn_mode, dropout_mode, ensemble, batch_size, num_workers,
                                       cache_mb, self.minimal_eps, who)
        self.sanity, self.subset, self.test_subset, self.prefix = sanity, subset, test_subset, prefix
        self.every_n_epochs, self.bn_mode, self.dropout_mode = every_n_epochs, bn_mode, dropout_mode
        self.batch_size, self.seed, self.ensemble = batch_size, int(seed), ensemble
        self.write_json, self.plot, self.report = write_json, plot, report
        self.monitor_metric = monitor_metric
        self.num_workers, self.cache_mb = num_workers, float(cache_mb)
        #: the last record written (``robustness.json`` content), per split
        self.last_record: dict[str, RobustnessRecord] = {}
        self.corruptions = resolve_suite(corruptions, f"{who}.corruptions")
        self.test_corruptions = (self.corruptions if test_corruptions == "same"
                                 else resolve_suite(test_corruptions, f"{who}.test_corruptions"))
        self.corruption_severities = check_severities(corruption_severities, f"{who}.corruption_severities")
        self.corruption_reference = corruption_reference

    # --- when: the trigger ---------------------------------------------------------------------
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
        self.suites.resolve(pl_module)

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
            self.evaluate(trainer, pl_module, "val", self.suites.specs, self.eps, suite="per_epoch")
        else:  # trainer.validate: the stronger suite
            self.evaluate(trainer, pl_module, "val", self.suites.test_specs, self.test_eps, suite="test")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate(trainer, pl_module, "test", self.suites.test_specs, self.test_eps, suite="test")

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
                corruption_plot=self.file_name("corruptions.png") if self.plot else None,
            )

    # --- the evaluation ------------------------------------------------------------------------
    def monitor_for(self, task: Any, metric_names: Sequence[str]) -> str:
        """The metric behind ``adv/robust_area``: ``monitor_metric`` or the task's main metric."""
        wanted = self.monitor_metric or getattr(task, "main_metric", None)
        if wanted in metric_names:
            return str(wanted)
        if self.monitor_metric is not None:
            raise ValueError(
                f"AdversarialEvaluation.monitor_metric={self.monitor_metric!r} is not a metric of "
                f"the task; available: {list(metric_names)}"
            )
        return metric_names[0] if metric_names else ""

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str,
                 specs: Sequence[Any], eps: Sequence[float], suite: str = "per_epoch") -> RobustnessRecord:
        """Run the suite on the subset of ``split``, log, write files; return the record.

        Must be called on every rank (metric synchronisation is collective).
        """
        task = check_robust_task(pl_module, "AdversarialEvaluation")
        if not specs:
            self.resolve_suites(pl_module)
            specs = self.suites.test_specs if suite == "test" else self.suites.specs
        check = self.sanity == "always" or (self.sanity == "test" and suite == "test")
        run = self.runner.run(trainer, pl_module, task, split, specs, eps,
                              self.test_subset if suite == "test" else self.subset,
                              sequential=self.suites.sequential(pl_module, suite), sanity=check, label=self.prefix,
                              corruptions=self.test_corruptions if suite == "test" else self.corruptions,
                              corruption_severities=self.corruption_severities, per_epoch=suite == "per_epoch")
        if run.stopped is not None and run.stopped.samples_done == 0:
            raise EvaluationInterrupted(
                f"{self.prefix} {split}: stopped by {run.stopped.reason} before the first batch was "
                "evaluated by every member × ε; nothing written (a smaller batch_size stops with more done)")
        assert run.outcome is not None  # None only with nothing evaluated (stopped above)
        monitor = self.monitor_for(task, list(run.outcome.clean))
        lower = not self._direction(task, monitor)
        record = build_record(
            run, task=task, trainer=trainer, split=split, suite=suite, suite_name=self.suites.name(suite),
            specs=list(specs), monitor=monitor, lower=lower, method=method_name(task),
            requested_subset=self.test_subset if suite == "test" else self.subset,
            settings={"bn_mode": self.bn_mode, "dropout_mode": self.dropout_mode, "seed": self.seed,
                      "every_n_epochs": self.every_n_epochs})
        if run.minimal_eps is not None:
            record.minimal_eps = MinimalEpsSummary.from_dict(summarise(run.minimal_eps, self.minimal_eps),
                                                             "minimal_eps")
        if check:
            from callbacks.sanity import mark_unreliable, sanity_report

            record.sanity = sanity_report(run.outcome, monitor, lower, warn=trainer.is_global_zero)
            mark_unreliable(record)  # a fired flag marks the numbers it makes upper bounds
        samples = run.outcome.per_sample
        if samples is not None and (self.intervals == "always" or (self.intervals == "test" and suite == "test")):
            from callbacks.record_intervals import evaluation_intervals

            # from the per-sample values and the evidence, identical on every rank (gathered), seeded
            record.intervals = evaluation_intervals(record, samples, run.outcome.evidence, task, self._direction,
                                                    self.interval_level, self.seed)
        if run.outcome.corruptions is not None:
            self._corruption_section(record, run, task, samples)
        if run.stopped is not None:
            record.incomplete = run.stopped.to_dict()
        # fit: straight to the loggers and callback_metrics (Speedups.direct_logging)
        direct = self.runner.speedups.direct_logging and trainer.state.fn == "fit"
        log_scalars(pl_module, record, self.prefix, self.minimal_eps.eps_max, direct=direct, step=self.logger_step)
        record.higher_is_better = {m: d for m in record.metric_names()
                                   if (d := self._direction(task, m, None)) is not None}
        self.last_record[split] = record
        log_dir = self._log_dir(trainer)  # collective
        if trainer.is_global_zero:
            write_outputs(trainer, record, Path(log_dir), self.file_name, self.prefix, self.write_json,
                          self.plot, bounds=getattr(task.data_info, "bounds", None),
                          directions=record.higher_is_better,
                          samples=run.outcome.per_sample, evidence=run.outcome.evidence)
            if record.corruptions is not None:
                from callbacks.corruption_report import write_corruption_outputs

                write_corruption_outputs(trainer, record, Path(log_dir), self.file_name, self.prefix, self.plot)
        if record.incomplete is not None:
            if split == "test":
                self.on_test_end(trainer, pl_module)  # report.md, marked incomplete
            raise EvaluationInterrupted(
                f"{self.prefix} {split}: stopped by {run.stopped.reason}; the incomplete record "
                f"({record.incomplete['samples_evaluated']} of {record.incomplete['samples_planned']} "
                f"samples) is written to {log_dir}")
        return record

    def _corruption_section(self, record: RobustnessRecord, run: Any, task: Any, samples: Any) -> None:
        """The record's ``corruptions`` section (:mod:`callbacks.corruption_section`: mCE against
        the reference), with intervals where the attacks have theirs."""
        from callbacks.corruption_intervals import corruption_intervals
        from callbacks.corruption_section import error_metric_for, section_of

        metric = error_metric_for(task)
        record.corruptions = section_of(run.outcome.corruptions, record.clean, metric,
                                        not bool(self._direction(task, metric)), self.corruption_reference,
                                        "AdversarialEvaluation.corruptions")
        if record.intervals is not None and samples is not None:
            from callbacks.per_sample import metric_name

            record.intervals["corruptions"] = corruption_intervals(samples, metric_name(task), record.corruptions,
                                                                   self.interval_level, self.seed)

    def _direction(self, task: Any, metric: str, *fallback: Any) -> Any:
        """:func:`~callbacks.common.metric_direction`, asked once per task and metric (the task
        builds its metric collection to answer; see :class:`EvaluationRunner.speedups`)."""
        if not self.runner.speedups.cache_directions:
            return metric_direction(task, metric, *fallback)
        cache = self.__dict__.setdefault("_directions", {})
        key = (id(task), metric, bool(fallback))
        if key not in cache or cache[key][0] is not task:  # ids of dead objects get reused
            cache[key] = (task, metric_direction(task, metric, *fallback))
        return cache[key][1]

    @staticmethod
    def _log_dir(trainer: pl.Trainer) -> str:
        return str(trainer.log_dir or trainer.default_root_dir)
