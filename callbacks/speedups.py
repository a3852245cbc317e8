"""What the evaluation runner reuses or skips between and within evaluations
(:class:`Speedups`), each switch documented with what it saves and why the numbers stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Speedups"]


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
            with one forward (:meth:`callbacks.evaluation_shortcuts.EvaluationShortcuts._stack_members`): fewer, larger calls.
            Bit-identical on the CPU; the stacked input is capped at 16 MiB. Only on an
            accelerator: on the CPU (one thread, the quickstart CNN) the 64-row passes cost
            more per row than two 32-row ones and stacking made the evaluation ≈ 1.2 ms slower
            (paired median of 55 interleaved runs, slower in 76 % of them; docs/scaling.md).
        share_start: PGD / BIM / FGSM without random start take their first gradient at the
            clean input, the same for every ε: compute it once per batch, in the same pass as
            the clean output (the clean forward, run with gradients, plus one backward), and
            hand it to every ε's call (:class:`attacks.StartGradient`;
            :meth:`callbacks.evaluation_shortcuts.EvaluationShortcuts._shared_start`). Per sample, PGD-3 at 2 ε: 7 forward +
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
