"""The runner of :class:`callbacks.AdversarialEvaluation`: *what* is evaluated and *where*.

Given a split and a suite, :class:`EvaluationRunner` picks the fixed subset, deals its batches
to the DDP ranks, keeps them cached in host memory between evaluations, and drives
:class:`callbacks.evaluation_loop.RobustnessEvaluator` (the attack × ε loop) with gradients
enabled and the model guarded — plus the optional per-sample minimal ε. It returns a
:class:`RunResult`; turning that into scalars and files is the writers' job
(:mod:`callbacks.evaluation_writers`), deciding *when* to run is the callback's.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist

from attacks.seeding import seeded_generator
from attacks.tree import tree_leaves
from callbacks.adapter import batch_for
from callbacks.common import (
    gradients_enabled,
    guarded_model,
    preserved_rng,
    resolve_dataset,
    select_subset,
    set_eval_mode,
    shard_batches,
    subset_loader,
    to_autograd_safe,
    world,
)
from callbacks.evaluation_loop import EvaluationStopped, RobustnessEvaluator
from callbacks.evaluation_stop import StopInfo, StopSignal, agree_on_stop
from callbacks.minimal_eps import MinimalEpsConfig, minimal_eps_batch
from callbacks.outcome import EvalOutcome
from callbacks.progress import MemberProgress

MODES = ("eval", "train")


@dataclass
class Speedups:
    """What the runner reuses or skips between and within evaluations. None of it changes a
    number but ``early_exit`` (fit's per-epoch evaluation only; see below):
    ``benchmarks/eval_cost.py --compare`` runs the path with all of them off beside the
    default and checks that the records agree (with ``early_exit``: that the main metric is the
    same or lower at every ε).

    Attributes:
        reuse_metrics: keep the metric collections of a suite × ε grid and ``reset()`` them
            each evaluation instead of building new ones (building a torchmetrics collection
            costs about as much as a forward of a small CNN).
        device_cache: keep the subset's batches on the model's device between evaluations
            (within ``cache_mb``), instead of copying and cloning them every epoch.
        randomness_only_with_sanity: the second clean forward of the randomness check runs only
            when the sanity checks run (its result is read nowhere else).
        cache_directions: ask the task once for each metric's direction (higher or lower is
            better) instead of building its metric collection for every question.
        stack_eps: attack all ε of a deterministic member (PGD/BIM/FGSM without random start,
            the per-epoch default) in one call over the batch repeated per ε, and score them
            with one forward (:meth:`RobustnessEvaluator._stack_members`): fewer, larger calls.
            Bit-identical on the CPU; the stacked input is capped at 16 MiB. Only on an
            accelerator: on the CPU (one thread, the quickstart CNN) the 64-row passes cost
            more per row than two 32-row ones and stacking made the evaluation ≈ 1.2 ms slower
            (paired median of 55 interleaved runs, slower in 76 % of them; docs/scaling.md).
        share_start: PGD / BIM / FGSM without random start take their first gradient at the
            clean input, the same for every ε: compute it once per batch, in the same pass as
            the clean output (the clean forward, run with gradients, plus one backward), and
            hand it to every ε's call (:class:`attacks.StartGradient`;
            :meth:`RobustnessEvaluator._shared_start`). Per sample, PGD-3 at 2 ε: 7 forward +
            5 backward passes instead of 9 + 6. Bit-identical on the CPU.
        alias_ensemble: while one member wins every sample at an ε (a one-member suite whose
            attack never makes a sample less wrong than clean: the usual case), the ensemble
            collection would get exactly that member's updates; they are deferred instead of
            repeated and the ensemble reports the member's metrics
            (:meth:`callbacks.metric_feed.MetricFeed.defer_ensemble`; replayed when a batch differs).
        merge_updates: for a task that declares ``metrics_batch_invariant`` (classification:
            its metrics keep integer counts and lists of rows), each collection gets one
            update over all its batches at the end instead of one per batch
            (:meth:`callbacks.metric_feed.MetricFeed.update`); the same states, so the same numbers.
        direct_logging: in ``fit``'s per-epoch evaluation, hand the scalars to the loggers, to
            ``trainer.callback_metrics`` (what ``ModelCheckpoint`` / ``EarlyStopping`` monitor)
            and to ``trainer.logged_metrics`` in one call
            (:func:`callbacks.evaluation_writers.publish_scalars`) instead of one
            ``LightningModule.log`` per scalar (≈ 0.2 ms each: Lightning copies its bookkeeping
            of the key on every call). The same keys and float32 values, at the same step and
            epoch, but in a logger row of their own (CSV: a second row with that step and epoch;
            W&B: a second ``log`` call with that ``trainer/global_step``). ``validate`` /
            ``test`` always use ``self.log`` (their scalars are the results those calls return).
        early_exit: in the per-epoch evaluation only (``run(per_epoch=True)``), samples already violated at a smaller ε
            of the grid (or clean) are not attacked again at the larger ones
            (:class:`callbacks.evaluation_loop.RobustnessEvaluator`, ``early_exit``), for a task
            whose violation is final (classification: misclassified). **The one entry that
            changes numbers**: robust accuracy the same or lower at each ε (monotone in ε),
            AUROC under attack computed with the violated samples' smaller-ε outputs. ``validate``
            / ``test`` (the reported suites) never use it. The record's ``settings`` say
            whether it was on, and each member's ``gradients.attacked`` how many samples it
            attacked.
    """

    reuse_metrics: bool = True
    device_cache: bool = True
    randomness_only_with_sanity: bool = True
    cache_directions: bool = True
    stack_eps: bool = True
    share_start: bool = True
    alias_ensemble: bool = True
    merge_updates: bool = True
    direct_logging: bool = True
    early_exit: bool = True

    @classmethod
    def none(cls) -> Speedups:
        """The evaluation as it ran before these existed (for side-by-side benchmarks)."""
        return cls(**{f.name: False for f in fields(cls)})


@dataclass
class RunResult:
    """One evaluation as computed (identical on every rank)."""

    #: ``None`` only when a stop (``stopped``) came before any sample was evaluated (one process)
    outcome: EvalOutcome | None
    #: dataset indices of the subset (sorted)
    indices: list[int]
    split_size: int
    batch_size: int
    world_size: int
    #: wall time on this rank, synchronised with the device
    seconds: float
    #: per subset position, the minimal ε (``inf``: not violated at ``eps_max``); ``None`` when off
    minimal_eps: list[float] | None = None
    #: set when the evaluation was stopped early (SIGTERM): what ran and what did not
    stopped: StopInfo | None = None


class EvaluationRunner:
    """Subset, sharding, cache and the attack × ε loop (see the module docstring).

    Args: as :class:`callbacks.AdversarialEvaluation` (``bn_mode``, ``dropout_mode``, ``seed``,
    ``ensemble``, ``batch_size``, ``num_workers``, ``cache_mb``, ``minimal_eps``); ``who``
    prefixes error messages.
    """

    def __init__(self, seed: int = 0, bn_mode: str = "eval", dropout_mode: str = "eval",
                 ensemble: bool = True, batch_size: int | None = None, num_workers: int = 0,
                 cache_mb: float = 256.0, minimal_eps: MinimalEpsConfig | None = None,
                 who: str = "AdversarialEvaluation") -> None:
        for name, value in (("bn_mode", bn_mode), ("dropout_mode", dropout_mode)):
            if value not in MODES:
                raise ValueError(f"{who}.{name} must be one of {MODES}, got {value!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"{who}.batch_size must be >= 1, got {batch_size}")
        self.seed = int(seed)
        self.bn_mode = bn_mode
        self.dropout_mode = dropout_mode
        self.ensemble = ensemble
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_mb = float(cache_mb)
        self.minimal_eps = minimal_eps or MinimalEpsConfig()
        self.who = who
        self._cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        #: what is reused between evaluations (see :class:`Speedups`)
        self.speedups = Speedups()
        self._device_cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self._metrics: dict[tuple[Any, ...], Any] = {}
        #: (task, its main metric's direction), kept with ``cache_directions``
        self._direction: tuple[Any, bool] | None = None
        #: keep each sample's metric values for ``robustness_samples.csv`` (callbacks/per_sample.py)
        self.keep_per_sample = True

    @staticmethod
    def check_subset(name: str, value: Any, who: str = "AdversarialEvaluation") -> None:
        """``ValueError`` naming the argument unless ``value`` is a count, a fraction or ``None``."""
        try:
            if isinstance(value, str):
                raise ValueError("a count, a fraction or null")
            select_subset(1, value, 0)
        except ValueError as err:
            raise ValueError(f"{who}.{name}={value!r}: {err}") from None

    def run(self, trainer: Any, pl_module: Any, task: Any, split: str, specs: Sequence[Any],
            eps: Sequence[float], subset: int | float | None, sequential: bool = False,
            sanity: bool = False, label: str = "", corruptions: Any = None,
            corruption_severities: Sequence[int] = (1, 2, 3, 4, 5), per_epoch: bool = False) -> RunResult:
        """Evaluate ``specs`` × ``eps`` on the subset of ``split``; on every rank (collective).

        ``corruptions``: a corruption suite (:mod:`corruptions.suites`) run on the same batches
        at ``corruption_severities`` (:class:`callbacks.corruption_eval.CorruptionEvaluator`);
        its metrics and cost land in ``outcome.corruptions``, its per-sample values in the same
        per-sample table. ``per_epoch``: the evaluation is fit's per-epoch one, the only one
        :attr:`Speedups.early_exit` applies to."""
        start = time.perf_counter()
        dataset, collate_fn, dm_bs = resolve_dataset(trainer, split)
        indices = select_subset(len(dataset), subset, self.seed)
        batch_size = self.batch_size or dm_bs or 32
        rank, world_size = world(trainer)
        batch_size = batch_size_for_world(len(indices), batch_size, world_size, rank, split, self.who)
        mine = shard_batches(indices, batch_size, rank, world_size)
        key = (split, id(dataset), len(dataset), tuple(indices), batch_size, rank, world_size)
        device = pl_module.device
        model = task.attack_model()
        minimal: list[tuple[int, float]] = []
        position = {idx: pos for pos, idx in enumerate(indices)}

        with preserved_rng(device), gradients_enabled(), guarded_model(pl_module, model), \
                trainer.precision_plugin.forward_context():  # the trainer's autocast, if any
            set_eval_mode(pl_module, model)
            lo, hi = (float(b) for b in task.data_info.bounds)
            fast = self.speedups
            metrics_key = (id(task), split, tuple(sp.label for sp in specs), tuple(eps), self.ensemble)
            evaluator = RobustnessEvaluator(
                task, specs, eps, self.bn_mode, self.dropout_mode, self.seed, self.ensemble,
                sequential=sequential,
                large_eps=0.25 * (hi - lo) if sanity and math.isfinite(hi - lo) else None,
                check_randomness=sanity or not fast.randomness_only_with_sanity,
                metrics=self._reusable_metrics(metrics_key, task) if fast.reuse_metrics else None,
                stack_eps=fast.stack_eps and device.type != "cpu", share_start=fast.share_start, alias_ensemble=fast.alias_ensemble,
                merge_updates=fast.merge_updates,
                early_exit=fast.early_exit and per_epoch,
                keep_per_sample=self.keep_per_sample,
                higher=self._kept_direction(task) if fast.cache_directions else None,
            )
            corrupting = None
            if corruptions is not None:
                from callbacks.corruption_eval import CorruptionEvaluator

                corrupting = CorruptionEvaluator(task, evaluator.model, corruptions, corruption_severities,
                                                 self.seed, self.keep_per_sample)
            if fast.reuse_metrics:  # one grid per split: a new suite replaces the old one
                self._metrics = {k: v for k, v in self._metrics.items() if k[1] != split}
                self._metrics[metrics_key] = (task, evaluator.metrics)  # the task: ids get reused
            # one step per batch × member × ε; silent unless rank 0 on a terminal (callbacks/progress.py)
            bar = MemberProgress(len(mine) * len(specs) * len(eps),
                                 f"{label} {split}: {len(specs)} attack(s) × {len(eps)} ε", trainer)
            evaluator.on_member = bar.member
            # A SIGTERM stops the evaluation after the member × ε that is running
            # (EvaluationStopped) instead of running on to the end. Not in fit's per-epoch
            # evaluation: it is short, Lightning ends the fit right after it, and arming the stop
            # copies every metric state before each batch (≈ 1 ms)
            armed = getattr(getattr(trainer, "state", None), "fn", None) != "fit"  # TrainerFn: a str enum
            signal_stop = StopSignal(trainer) if armed else None
            if signal_stop is not None:
                evaluator.should_stop = signal_stop
            stopped: StopInfo | None = None
            done = i = 0
            if signal_stop is not None:
                signal_stop.install()
            try:
                batches = self._device_batches(key, dataset, mine, collate_fn, task, device)
                for i, batch in enumerate(batches):
                    bar.at_batch(i, len(mine))
                    batch_no, idx, counted = mine[i]
                    evaluator.run_batch(batch_no, batch, counted, ids=idx)
                    if corrupting is not None:
                        evaluator.meter.begin(counted, "corruptions")
                        corrupting.run_batch(batch, counted, idx)
                        evaluator.meter.end()
                    if self.minimal_eps.enabled:
                        evaluator.meter.begin(counted, "minimal_eps")
                        gen = seeded_generator(self.seed, batch_no, device=device)
                        values = minimal_eps_batch(task, evaluator.model, batch, self.minimal_eps,
                                                   self.bn_mode, self.dropout_mode, gen)
                        evaluator.meter.end()
                        if counted:
                            minimal += [(position[j], float(v)) for j, v in zip(idx, values.tolist())]
                    done += len(idx) if counted else 0
            except EvaluationStopped as stop:
                stopped = StopInfo(reason="SIGTERM", attack=stop.attack, eps=stop.eps, batches_done=i,
                                   batches=len(mine), samples_done=done,
                                   samples=sum(len(b) for _, b, c in mine if c))
            finally:
                bar.close()
            if signal_stop is not None and world_size > 1:
                # each rank stopped on its own signal, at its own member × ε: one collective so that
                # every rank agrees (and writes, raises, exits alike) before the metrics' sync
                stopped = agree_on_stop(stopped, len(mine), sum(len(b) for _, b, c in mine if c))
            if stopped is not None and world_size <= 1 and done == 0:
                # stopped inside the first batch: nothing to compute (a metric such as AUROC cannot
                # compute on zero samples); the caller stops with nothing written
                stopped.samples = len(indices)
                return RunResult(None, indices, len(dataset), batch_size, world_size,
                                 time.perf_counter() - start, None, stopped)
            outcome = evaluator.compute()  # collective (torchmetrics sync)
            if stopped is not None:  # over every rank: the samples counted, of the whole subset
                stopped.samples_done = int(outcome.total_samples or outcome.num_samples)
                stopped.samples = len(indices)
            if fast.cache_directions and evaluator._higher is not None:
                self._direction = (task, evaluator._higher)
            if corrupting is not None:
                from callbacks.corruption_eval import merge_columns
                from callbacks.per_sample import metric_name

                metrics, cost = corrupting.compute()  # collective
                ids, cols = corrupting.per_sample_columns(metric_name(task))  # collective
                merge_columns(outcome.per_sample, ids, cols)
                outcome.corruptions = {"metrics": metrics, "cost": cost, "suite": corrupting.suite,
                                       "severities": corrupting.severities}
        per_sample = None
        if self.minimal_eps.enabled:
            per_sample = [v for _, v in sorted(_gather_pairs(minimal, world_size))]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return RunResult(outcome, indices, len(dataset), batch_size, world_size,
                         time.perf_counter() - start, per_sample, stopped)

    def _kept_direction(self, task: Any) -> bool | None:
        """The main metric's direction learnt by the last evaluation of this very task object
        (asking the task builds its whole metric collection: ≈ 1 ms on the quickstart)."""
        kept = self._direction
        return kept[1] if kept is not None and kept[0] is task else None

    def _reusable_metrics(self, key: tuple[Any, ...], task: Any) -> Any:
        """The collections kept for ``key`` if they were built by this very task object."""
        kept = self._metrics.get(key)
        return kept[1] if kept is not None and kept[0] is task else None

    def _device_batches(self, key: tuple[Any, ...], dataset: Any, mine: list[tuple[int, list[int], bool]],
                        collate_fn: Any, task: Any, device: torch.device) -> Iterator[dict[str, Any]]:
        """This rank's subset batches on ``device``, autograd-safe (see :func:`to_autograd_safe`).

        With :attr:`Speedups.device_cache` and a host cache that holds the subset, the device
        copies are kept too (same key + device), so later evaluations skip the copy. Nothing
        writes into a batch: attacks clone their input and build new tensors."""
        dkey = (*key, str(device))
        if self.speedups.device_cache and dkey in self._device_cache:
            yield from self._device_cache[dkey]
            return
        kept: list[dict[str, Any]] = []
        for raw in self._batches(key, dataset, mine, collate_fn):
            batch = to_autograd_safe(batch_for(task, raw), device)
            kept.append(batch)
            yield batch
        if self.speedups.device_cache and key in self._cache:  # within cache_mb
            self._device_cache = {dkey: kept, **{k: v for k, v in self._device_cache.items() if k[0] != key[0]}}

    def _batches(self, key: tuple[Any, ...], dataset: Any, mine: list[tuple[int, list[int], bool]],
                 collate_fn: Any) -> Iterator[dict[str, Any]]:
        """This rank's subset batches (host memory), from the cache when it holds them.

        Caching also freezes any random val-time transform to one draw, so the subset really is
        the same every epoch."""
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


def batch_size_for_world(n: int, batch_size: int, world_size: int, rank: int, split: str,
                         who: str = "AdversarialEvaluation") -> int:
    """The evaluation batch size, made smaller when the subset would give fewer batches than
    processes: a process whose only batch is padding never updates the task metrics, and
    torchmetrics then skips the collectives of its list states that the other processes
    run (a gloo/NCCL "collective mismatch" or a hang). Every process gets a counted batch."""
    if world_size <= 1 or math.ceil(n / batch_size) >= world_size:
        return batch_size
    if n < world_size:
        raise ValueError(
            f"{who}: the {split} subset has {n} sample(s), fewer than the {world_size} "
            "processes; every process needs at least one (raise `subset`, or evaluate on "
            "fewer devices)")
    smaller = math.ceil(n / world_size)
    if rank == 0:
        warnings.warn(
            f"{who}: {n} {split} samples in batches of {batch_size} give fewer batches "
            f"than the {world_size} processes; evaluating in batches of {smaller} so that "
            "every process has one (random starts are seeded per batch, so attacks with a "
            f"random start can differ from a run in batches of {batch_size})",
            stacklevel=3,
        )
    return smaller


def _nbytes(obj: Any) -> int:
    """Bytes held by the tensors of a batch."""
    return sum(t.element_size() * t.nelement() for t in tree_leaves(obj))


def _gather_pairs(pairs: list[tuple[int, float]], world_size: int) -> list[tuple[int, float]]:
    """All ranks' ``(subset position, value)`` pairs, on every rank."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return pairs
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, pairs)
    return [p for part in gathered for p in part]
