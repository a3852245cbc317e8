"""The robustness evaluation itself, independent of when a callback triggers it.

:class:`RobustnessEvaluator` runs every attack at every ε on a stream of batches and feeds the
task's own torchmetrics: clean, per attack × ε, and the per-sample worst case over attacks
("ensemble"). It talks to the task only through the ``RobustTask`` protocol.

Ensemble rule (per sample, per ε; ``attacks/worst_case.py``). Candidates are the clean input
(δ = 0 lies in every ball) and each attack's output. The worst candidate is the one with the
worst value of the task's own per-sample metric (``per_sample_metric``: correct / wrong,
per-image Dice, radial error, per-image AP@0.5; its direction from ``metric_higher_is_better``)
— among candidates with equal metric, the one with the highest per-sample task loss. No loss
value or surrogate threshold decides, so the ensemble can never report less than its strongest
member on any sample (rule ``task_metric_then_loss``). A task (or adapter) without a per-sample
metric falls back to ``is_violated`` then the loss (``violation_then_loss``), or the loss alone.
The metric is then updated with the model's output *at that sample's chosen input*, so metrics
that need every sample at once (AUROC, mAP) see one coherent prediction per sample.

Sequential suites (classification) skip samples already *violated*, ``is_violated`` at the kept
candidate (misclassified: for classification the same event as the metric's worst value).

Per-sample values (``keep_per_sample``): the same per-sample metric, for every counted sample,
clean, under each attack × ε and for the worst case per ε, keyed by the sample's dataset index,
become :attr:`~callbacks.outcome.EvalOutcome.per_sample` (a
:class:`callbacks.per_sample.SampleTable`, gathered over ranks) — the ``robustness_samples.csv``
beside ``robustness.json``. In a sequential suite a member's column is the worst case after it
and the members before it (the samples it skipped keep their earlier result), as its aggregate
metric in the record is.

Its parts, one job per file: :mod:`callbacks.sample_ranking`, :mod:`callbacks.sanity` (counts),
:mod:`callbacks.evaluation_shortcuts`, :mod:`callbacks.evaluation_results`,
:mod:`callbacks.evaluation_stop` and :mod:`callbacks.attack_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from attacks.seeding import seeded_generator
from attacks.spec import AttackSpec
from attacks.start import start_gradient
from attacks.tree import select_rows
from attacks.worst_case import Worst, keep_worst
from callbacks.accounting import ComputeMeter, CountingModel
from callbacks.attack_loss import member_loss
from callbacks.evaluation_results import EvaluationResults
from callbacks.evaluation_shortcuts import EvaluationShortcuts, _rows_of
from callbacks.evaluation_stop import EvaluationStopped, metric_states, restore_metric_states
from callbacks.metric_feed import MetricFeed, evaluation_metrics
from callbacks.outcome import EvalMetrics
from callbacks.sample_ranking import SampleRanking
from callbacks.sanity import SanityCounts
from lightning_modules.distributed import is_distributed


class RobustnessEvaluator(SampleRanking, SanityCounts, EvaluationShortcuts, EvaluationResults):
    """Runs a suite of attacks × ε on batches and accumulates the task's metrics.

    Args:
        task: the LightningModule implementing ``RobustTask``.
        specs: the attack suite.
        eps: the ε grid (``> 0``; the clean metric is ε = 0).
        bn_mode, dropout_mode: BatchNorm / Dropout mode *during attack forwards*. Metric forwards
            always run with the whole model in eval mode.
        seed: base seed of the attacks' random streams (random starts, noises), combined with
            the global batch number so results do not depend on the number of ranks.
        ensemble: also compute the per-sample worst case over attacks.
        check_randomness: forward the clean batch a second time and count samples whose two
            eval-mode outputs differ (a sanity check of :mod:`callbacks.sanity`; one extra
            forward per batch). The runner turns it on only when the sanity checks run.
        metrics: metric collections to reuse (reset here), e.g. from the previous epoch's
            evaluation of the same suite; built fresh when ``None``.
        stack_eps: attack every ε of a deterministic member in one call (see
            :meth:`_stack_members`); the same numbers with fewer, larger calls.
        keep_per_sample: keep each counted sample's per-sample metric, clean, per attack × ε and
            worst case per ε, keyed by its dataset index (``run_batch``'s ``ids``, else the
            batch's ``index``); :meth:`compute` returns them as a ``SampleTable``.
        share_start: take the clean output and the input gradient at ``x`` from one forward
            (with its backward) and hand that gradient to every member that starts at ``x``
            (:data:`SHARES_START`, no random start, the task loss), at every ε, instead of each
            call taking it again (see :meth:`_shared_start`); the same numbers, fewer passes.
        alias_ensemble: while one member wins every sample at an ε, the ensemble's metrics are
            that member's (its updates are deferred, not repeated; :meth:`MetricFeed.defer_ensemble`).
        merge_updates: for a task whose metric states do not depend on how the samples are cut
            into updates (``metrics_batch_invariant``: classification's integer counts and lists
            of rows), keep each collection's ``(output, batch)`` pairs and give them to it in
            one update over the concatenated batches at :meth:`compute` (:meth:`MetricFeed.update`): one
            update per collection per evaluation instead of one per batch.
        early_exit: across an ascending ε grid, a sample already violated at the previous ε (or
            clean: ε = 0) is not attacked again: every member's result for it at the next ε is
            the previous ε's worst case (inside the larger ball, so still violated), and only the
            other samples are attacked and forwarded. Only for a task whose violation is final
            (``violation_is_final``: a misclassified sample's per-sample metric cannot get worse),
            with the ensemble on and not sequential; otherwise ignored. It changes numbers: the
            main metric is the same or lower (a sample PGD broke at a smaller ε but not at a
            larger one now counts as violated at both), and score-based metrics (AUROC) see the
            violated samples' smaller-ε outputs. The runner uses it in fit's per-epoch
            evaluation only (:attr:`callbacks.speedups.Speedups.early_exit`).

    Compute accounting: every forward and backward through the model, and the wall time, are
    charged by :attr:`meter` (:mod:`callbacks.accounting`) to the suite member × ε or to the
    evaluator's own part that ran them; :meth:`compute` returns them in
    :attr:`~callbacks.outcome.EvalOutcome.compute`. With ``share_start`` the one pass at ``x``
    (the clean forward and the backward every ε's first step starts from) is charged to
    ``clean``; the members are charged the steps after it.
    """

    def __init__(
        self,
        task: Any,
        specs: Sequence[AttackSpec],
        eps: Sequence[float],
        bn_mode: str = "eval",
        dropout_mode: str = "eval",
        seed: int = 0,
        ensemble: bool = True,
        sequential: bool = False,
        large_eps: float | None = None,
        large_eps_steps: int = 20,
        check_randomness: bool = True,
        metrics: EvalMetrics | None = None,
        stack_eps: bool = False,
        keep_per_sample: bool = False,
        share_start: bool = False,
        alias_ensemble: bool = False,
        higher: bool | None = None,
        merge_updates: bool = False,
        early_exit: bool = False,
    ) -> None:
        self.task = task
        self.sequential = bool(sequential) and ensemble
        self.specs = list(specs)
        self.eps = list(eps)
        self.seed = int(seed)
        self.ensemble = ensemble
        device = next((p.device for p in task.parameters()), torch.device("cpu"))
        #: charges passes and seconds to the running member / part (callbacks/accounting.py)
        self.meter = ComputeMeter(device)
        # every attack and metric forward goes through the counter (it changes no result)
        self.model: nn.Module = CountingModel(task.attack_model(), self.meter)
        self.stack_eps, self.modes = bool(stack_eps), (bn_mode, dropout_mode)
        self.share_start = bool(share_start)
        self.early_exit = (bool(early_exit) and self.ensemble and not self.sequential
                           and bool(getattr(task, "violation_is_final", False))
                           and list(eps) == sorted(eps) and len(set(eps)) == len(list(eps)))
        #: outputs computed already, by id of their input (see :meth:`_stack_members`)
        self._scored: dict[int, tuple[torch.Tensor, Any]] = {}
        self._starts_at_x: bool | None = None  # some member takes the gradient at x first
        bounds = tuple(task.data_info.bounds)
        self.attacks = {
            (s.label, e): s.build(e, bounds, (bn_mode, dropout_mode)) for s in self.specs for e in self.eps
        }
        self._init_ranking(task, higher, keep_per_sample)  # callbacks/sample_ranking.py
        #: asked before each member × ε: ``True`` stops the evaluation (:meth:`run_batch`)
        self.should_stop: Callable[[], bool] | None = None
        #: told ``(label, ε)`` before each member × ε runs (``("sanity", None)``: the large-ε check)
        self.on_member: Callable[[str, float | None], None] | None = None
        self.num_samples = 0
        self.gradients = {k: {"attacked": 0, "nonfinite": 0, "zero": 0} for k in self.attacks}
        self._init_sanity(check_randomness, large_eps, large_eps_steps, bounds)  # callbacks/sanity.py
        self.device = device
        self.metrics = evaluation_metrics(task, list(self.attacks), self.eps, ensemble, device, reuse=metrics)
        #: the collections' updates: merged, and the worst case's deferred while aliased
        #: (callbacks/metric_feed.py); the ranks of a DDP run must compute the same
        #: collections: no aliasing there
        self.feed = MetricFeed(task, self.metrics, merge_updates=merge_updates,
                               alias_ensemble=alias_ensemble and not is_distributed())

    def _loss_fn(self, spec: AttackSpec, out_clean: Any, idx: torch.Tensor | None, size: int,
                 default: Any) -> Any:
        """The member's attack loss (:func:`callbacks.attack_loss.member_loss`)."""
        return member_loss(self.task, spec, out_clean, idx, default)

    def _count_gradients(self, key: tuple[str, float], attack: Any, attacked: int) -> None:
        stats = getattr(attack, "last_gradients", None)
        g = self.gradients[key]
        g["attacked"] += attacked
        if stats is not None and attacked:
            g["nonfinite"] += int(stats.nonfinite.sum())
            g["zero"] += int(stats.zero.sum())
            attack.last_gradients = None

    def forward(self, x: torch.Tensor) -> Any:
        hit = self._scored.pop(id(x), None)
        if hit is not None and hit[0] is x:  # scored already, with the other ε (_stack_members)
            return hit[1]
        with torch.no_grad():
            return self.model(x)

    # -- the loop -------------------------------------------------------------------------------
    def run_batch(self, batch_no: int, batch: dict[str, Any], counted: bool = True,
                  ids: Sequence[int] | torch.Tensor | None = None) -> None:
        """Clean + every attack × ε on one batch (already on the device, autograd-safe).

        ``counted=False`` (a DDP padding copy) runs the same computation but updates nothing.
        ``ids``: the samples' dataset indices (``[B]``) for the per-sample file; the batch's
        ``index`` entry when ``None``.

        Before each member × ε, :attr:`on_member` is told which one starts (a progress bar) and
        :attr:`should_stop` is asked whether to stop (a SIGTERM): then :class:`EvaluationStopped`
        is raised after the member × ε that ran last, and every count and metric this batch
        had updated is put back as it was before the batch (:meth:`_snapshot`), so what
        :meth:`compute` reports rests on whole batches only.
        """
        snapshot = self._snapshot() if self.should_stop is not None else None
        try:
            self._run_batch(batch_no, batch, counted, ids)
        except EvaluationStopped:
            if snapshot is not None:
                self._restore(snapshot)
            self.meter.end()
            raise

    def _next_member(self, label: str, eps: float | None) -> None:
        """A member × ε (``label``, ``eps``; ``("sanity", None)``: the large-ε check) is about to
        run: report it, or stop before it when asked to."""
        if self.should_stop is not None and self.should_stop():
            raise EvaluationStopped(label, eps)
        if self.on_member is not None:
            self.on_member(label, eps)

    def _collections(self) -> list[Any]:
        m = self.metrics
        return [m.clean, *m.attacks.values(), *m.ensemble.values()]

    def _snapshot(self) -> dict[str, Any]:
        """Every state :meth:`run_batch` changes, copied (tensor states cloned, list states
        shallow-copied: their tensors are never written in place)."""
        return {"metrics": metric_states(self._collections()), "num_samples": self.num_samples, "random_clean": self._random_clean,
                "large_violated": self.large_violated, "gradients": {k: dict(v) for k, v in self.gradients.items()},
                "blackbox_wins": dict(self.blackbox_wins), "columns": self.columns.snapshot(),
                "feed": self.feed.snapshot()}

    def _restore(self, snap: dict[str, Any]) -> None:
        """Back to :meth:`_snapshot`'s state (the batch that was stopped counts for nothing)."""
        restore_metric_states(snap["metrics"])
        self.num_samples, self._random_clean = snap["num_samples"], snap["random_clean"]
        self.large_violated, self.gradients = snap["large_violated"], snap["gradients"]
        self.blackbox_wins = snap["blackbox_wins"]
        self.feed.restore(snap["feed"])
        self.columns.truncate(snap["columns"])

    def _run_batch(self, batch_no: int, batch: dict[str, Any], counted: bool,
                   ids: Sequence[int] | torch.Tensor | None) -> None:
        task = self.task
        x = batch["image"]
        size = x.shape[0]
        self.meter.begin(counted, "clean")  # compute accounting; padding copies are not charged
        self._scored.clear()
        self._last_metric = None
        keep = counted and self.keep_per_sample and self._metric_ok
        if keep:
            ids = self._sample_ids(ids, batch, size)

        def task_loss(output: Any, target: Any) -> torch.Tensor:
            return task.per_sample_loss(output, target)

        start = None
        if self._shared_start(x):  # the clean forward, with the backward the first steps start from
            start, out_clean = start_gradient(self.model, x, batch, task_loss,
                                              bounds=tuple(task.data_info.bounds))
        else:
            out_clean = self.forward(x)
        if keep:
            self._keep(("clean", None), out_clean, batch, size)
            if self._metric_ok:
                self.columns.add_ids(ids)
        if counted:
            self.feed.update(self.metrics.clean, out_clean, batch)
            self.num_samples += size
            self._count_randomness(out_clean, x, size)
        if self.ensemble or any(sp.loss for sp in self.specs):
            loss_clean = self._loss(out_clean, batch)
            score_clean = self._score(out_clean, batch, size)
            viol_clean = self._violated(out_clean, batch, size)

        def is_violated(output: Any, target: Any) -> torch.Tensor:
            return task.is_violated(output, target).bool().reshape(-1)

        early = self.early_exit and self._violation_ok and isinstance(out_clean, torch.Tensor)
        stacked = {} if early else self._stack_members(batch_no, batch, x, size, task_loss, start)  # {} unless stack_eps
        # early_exit: the previous ε's worst case per sample (ε = 0: the clean input) and which
        # samples it breaks; those are not attacked again
        carried = (x, out_clean, viol_clean) if early else None

        for e_i, eps in enumerate(self.eps):
            if self.ensemble:
                worst = Worst(x, loss_clean, score_clean)
                violated = viol_clean  # is_violated at each sample's kept candidate
                white = score_clean  # worst score of the clean input and the gradient members
                winner = torch.full((size,), -1, dtype=torch.long, device=x.device)
                outputs: dict[int, Any] = {-1: out_clean}
            todo = None if carried is None else (~carried[2]).nonzero().flatten()
            for a_i, spec in enumerate(self.specs):
                self._next_member(spec.label, eps)
                self.meter.switch((spec.label, eps))
                attack = stacked.get((spec.label, eps)) or self.attacks[(spec.label, eps)]
                gen = seeded_generator(self.seed, batch_no, a_i, e_i, device=x.device)
                if carried is not None:
                    x_adv, out = self._attack_remaining(attack, spec, batch, x, size, todo, carried,
                                                        out_clean, task_loss, gen, start)
                    if counted:
                        self._count_gradients((spec.label, eps), attack, todo.numel())
                elif self.sequential and spec.budgeted:
                    # AutoAttack's rule: later members spend nothing on samples already violated.
                    todo = (~violated).nonzero().flatten()
                    x_adv = worst.x.clone()
                    if todo.numel():
                        sub = select_rows(batch, todo, size)
                        x_adv[todo] = attack(self.model, x[todo], sub,
                                             loss_fn=self._loss_fn(spec, out_clean, todo, size, task_loss),
                                             is_violated=is_violated if self._violation_ok else None,
                                             generator=gen)
                else:
                    todo = None
                    x_adv = attack(self.model, x, batch,
                                   loss_fn=self._loss_fn(spec, out_clean, None, size, task_loss),
                                   generator=gen, start=start)  # used where it applies
                if carried is None:
                    if counted:
                        self._count_gradients((spec.label, eps), attack, size if todo is None else todo.numel())
                    out = self.forward(x_adv)
                if counted:
                    self.feed.update(self.metrics.attacks[(spec.label, eps)], out, batch)
                if keep:
                    self._keep((spec.label, eps), out, batch, size)
                if not (self.ensemble and spec.budgeted):
                    continue
                # the one worst-case rule of attacks/worst_case.py (also the restarts')
                score = self._score(out, batch, size)
                worst, better = keep_worst(worst, x_adv, self._loss(out, batch), score)
                violated = torch.where(better, self._violated(out, batch, size), violated)
                if a_i not in self._gradient_free and score is not None and white is not None:
                    white = torch.maximum(white.float(), score.float())
                if bool(better.any()):
                    winner = torch.where(better, torch.full_like(winner, a_i), winner)
                    outputs[a_i] = out
            self.meter.switch("ensemble")
            if carried is not None:  # the next ε starts from this one's worst case
                carried = (worst.x, _rows_of(outputs, winner), violated)
            if not (self.ensemble and counted):
                continue
            self._count_blackbox_wins(eps, winner, worst.score, white)
            # One candidate won every sample: reuse its output; otherwise forward the mix once.
            first = int(winner[0])
            uniform = bool((winner == first).all()) and first in outputs
            ens_out = outputs[first] if uniform else None
            if carried is not None and not uniform:
                # early_exit: the worst case's output is each sample's winning row (no forward);
                # a member whose output equals it row for row stands in for it (the usual case:
                # a sample skipped at this ε has the same row in every candidate that carries it)
                ens_out = carried[1]
                first = next((k for k, v in outputs.items() if k >= 0 and torch.equal(v, ens_out)), -1)
                uniform = first >= 0
            if keep:  # the worst case's per-sample values, whether its metric update is deferred or not
                if ens_out is None:
                    ens_out = self.forward(worst.x)
                self._keep(("worst", eps), ens_out, batch, size)
            if uniform and first >= 0 and self.feed.defer_ensemble(eps, first, outputs[first], batch):
                continue  # the member's own update, deferred (MetricFeed.defer_ensemble)
            self.feed.replay_ensemble(eps)
            if ens_out is None:
                ens_out = self.forward(worst.x)
            self.feed.update(self.metrics.ensemble[eps], ens_out, batch)

        if self.large_eps is not None:
            self._next_member("sanity", None)
            self.meter.switch("sanity")
            self._large_eps_check(batch_no, batch, counted, task_loss)
        self.meter.end()
