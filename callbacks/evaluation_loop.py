"""The robustness evaluation itself, independent of when a callback triggers it.

:func:`evaluate_batches` runs every attack at every ε on a stream of batches and feeds the
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
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from attacks.seeding import seeded_generator
from attacks.spec import AttackSpec
from attacks.start import StartGradient, start_gradient
from attacks.tree import select_rows
from attacks.worst_case import Worst, badness, keep_worst
from callbacks.accounting import ComputeAccounting, ComputeMeter, CountingModel
from callbacks.common import compute_metrics
from callbacks.metric_feed import MAX_STACK_BYTES, MetricFeed, evaluation_metrics
from callbacks.outcome import EvalMetrics, EvalOutcome, sum_counts, sum_values
from callbacks.sample_columns import SampleColumns


def task_loss_tensors(task: Any, output: Any, batch: dict[str, Any],
                      inputs: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` that the named attack losses (:mod:`attacks.task_losses`) take: the
    task's own :meth:`~lightning_modules.protocol.RobustTask.attack_loss_inputs`.

    ``inputs`` is the loss's :attr:`attacks.task_losses.AttackLoss.inputs`: ``"default"``, or
    another kind that a task offers through an ``inputs`` argument of ``attack_loss_inputs``
    (detection's ``"matched"``: the predictions of the locations / proposals that cover a
    ground-truth object, for DAG).
    """
    fn = getattr(task, "attack_loss_inputs", None)
    if fn is None:
        raise ValueError(f"no named attack losses for {type(task).__name__} (it has no "
                         "attack_loss_inputs); drop `loss:` to use the task's own loss")
    if inputs == "default":
        return fn(output, batch)
    if "inputs" not in inspect.signature(fn).parameters:
        raise ValueError(f"attack loss inputs {inputs!r} are not offered by {type(task).__name__} "
                         "(its attack_loss_inputs takes no `inputs`); pick a loss for this task")
    return fn(output, batch, inputs=inputs)


def check_eps_grid(eps: Sequence[float] | float | None, field_name: str) -> list[float]:
    """Sorted, unique, positive ε values."""
    if eps is None:
        raise ValueError(f"{field_name}: give a list of budgets, e.g. [0.002, 0.004, 0.008]")
    values = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not values:
        raise ValueError(f"{field_name}: the ε grid is empty")
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{field_name}: every ε must be a number > 0 (ε = 0 is the clean metric), got {v!r}")
        out.append(float(v))
    return sorted(set(out))


class RobustnessEvaluator:
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
            evaluation only (:attr:`callbacks.evaluation_runner.Speedups.early_exit`).

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
        self.check_randomness = bool(check_randomness)
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
        self._violation_ok = True
        self._metric_ok = True
        #: direction of the task's main metric (``higher``: known already, e.g. kept by the
        #: runner from the last evaluation; else asked of the task at the first metric)
        self._higher: bool | None = None if higher is None else bool(higher)
        #: the last output's per-sample metric: (output, value) — the ensemble's score and the
        #: per-sample file read the same call
        self._last_metric: tuple[Any, torch.Tensor | None] | None = None
        self.keep_per_sample = bool(keep_per_sample)
        #: asked before each member × ε: ``True`` stops the evaluation (:meth:`run_batch`)
        self.should_stop: Callable[[], bool] | None = None
        #: told ``(label, ε)`` before each member × ε runs (``("sanity", None)``: the large-ε check)
        self.on_member: Callable[[str, float | None], None] | None = None
        #: the per-sample values and the dataset-level evidence kept (callbacks/sample_columns.py)
        self.columns = SampleColumns(task, evidence=self.keep_per_sample)
        self.num_samples = 0
        self.gradients = {k: {"attacked": 0, "nonfinite": 0, "zero": 0} for k in self.attacks}
        self._random_clean = 0
        self._gradient_free = {i for i, sp in enumerate(self.specs)
                               if getattr(self.attacks[(sp.label, self.eps[0])], "gradient_free", False)}
        self.blackbox_wins = dict.fromkeys(self.eps, 0)
        # Sanity check: a huge budget must break (almost) everything (Carlini et al. 2019,
        # "On evaluating adversarial robustness"); APGD on the task loss, L∞.
        self.large_eps = large_eps
        self.large_eps_steps = int(large_eps_steps)
        self.large_violated = 0
        if large_eps is not None:
            from attacks import APGD

            # From x, not a random start: at such a budget a uniform start is a noise image,
            # often far from every decision boundary the gradient could follow.
            self._large_attack = APGD(eps=float(large_eps), norm="linf", steps=self.large_eps_steps,
                                      random_start=False, bounds=bounds, bn_mode=bn_mode,
                                      dropout_mode=dropout_mode)
        self.device = device
        self.metrics = evaluation_metrics(task, list(self.attacks), self.eps, ensemble, device, reuse=metrics)
        #: the collections' updates: merged, and the worst case's deferred while aliased
        #: (callbacks/metric_feed.py); the ranks of a DDP run must compute the same
        #: collections: no aliasing there
        self.feed = MetricFeed(task, self.metrics, merge_updates=merge_updates,
                               alias_ensemble=alias_ensemble and not _distributed())

    # -- per-sample ranking -------------------------------------------------------------------
    def _loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        return self.task.per_sample_loss(output, batch).detach().float()

    def _violated(self, output: Any, batch: dict[str, Any], size: int) -> torch.Tensor:
        """``is_violated`` with the task's default threshold; all-False (rank by loss only)
        for a task that cannot decide without an explicit threshold."""
        if self._violation_ok:
            try:
                return self.task.is_violated(output, batch).detach().bool().reshape(size)
            except (NotImplementedError, TypeError, ValueError) as err:
                warnings.warn(
                    f"{type(self.task).__name__}.is_violated(output, batch) failed ({err}); no sample "
                    "counts as violated (no sequential skipping, no large-ε check)"
                    + ("" if self._metric_ok else "; the ensemble ranks candidates by per-sample loss only"),
                    stacklevel=2,
                )
                self._violation_ok = False
        return torch.zeros(size, dtype=torch.bool, device=self.device)

    def _score(self, output: Any, batch: dict[str, Any], size: int) -> torch.Tensor | None:
        """``[B]`` how bad each sample's ``output`` is for the model, higher = worse: the task's
        per-sample metric oriented by its direction (:func:`attacks.worst_case.badness`); the
        violation flag for a task without one; ``None`` (rank by loss) without either."""
        metric = self._metric(output, batch, size)
        if metric is not None:
            return badness(metric, self._higher)
        if self._violation_ok:
            viol = self._violated(output, batch, size)
            return viol if self._violation_ok else None
        return None

    def _metric(self, output: Any, batch: dict[str, Any], size: int) -> torch.Tensor | None:
        """``[B]`` float: the task's ``per_sample_metric`` of ``output`` (computed once per output:
        the last call is kept), or ``None`` for a task without one (warned once)."""
        if self._last_metric is not None and self._last_metric[0] is output:
            return self._last_metric[1]
        metric = None
        if self._metric_ok:
            try:
                metric = self.task.per_sample_metric(output, batch).detach().reshape(size).to(self.device)
                if self._higher is None:
                    self._higher = bool(self.task.metric_higher_is_better())
            except (AttributeError, NotImplementedError, TypeError, ValueError) as err:
                warnings.warn(
                    f"{type(self.task).__name__}.per_sample_metric(output, batch) failed ({err}); the "
                    "ensemble judges the worst case by is_violated, then the per-sample loss, and no "
                    "per-sample file is written",
                    stacklevel=3,
                )
                self._metric_ok = False
                metric = None
        self._last_metric = (output, metric)
        return metric

    def _keep(self, column: tuple[str, float | None], output: Any, batch: dict[str, Any], size: int) -> None:
        """Keep one batch's per-sample metric of ``output`` (and its evidence) in the column
        ``column`` (``(condition, ε or None)``)."""
        metric = self._metric(output, batch, size)
        if metric is not None:
            self.columns.keep(column, metric, output, batch, size)

    def evidence(self) -> Any:
        """The kept dataset-level evidence of every rank (:meth:`SampleColumns.evidence`; a
        collective under DDP: call on every rank), or ``None``."""
        return self.columns.evidence(self.keep_per_sample and self._metric_ok)

    def per_sample_table(self) -> Any:
        """The kept per-sample values of every rank (:meth:`SampleColumns.table`; a collective
        under DDP: call on every rank), or ``None`` (``keep_per_sample`` off, or the task has no
        per-sample metric)."""
        return self.columns.table(self.keep_per_sample and self._metric_ok)

    def _loss_fn(self, spec: AttackSpec, out_clean: Any, idx: torch.Tensor | None, size: int,
                 default: Any) -> Any:
        """The attack's loss: the task's per-sample loss, or the spec's named attack loss on the
        task's ``(logits, labels)`` (targets of targeted losses from the clean output)."""
        if spec.loss is None:
            return default
        from attacks.task_losses import ATTACK_LOSSES, make_attack_loss

        task = self.task
        steps = int(spec.params.get("steps", 1))
        reference = getattr(task, "attack_loss_reference", None)
        clean_logits = reference(out_clean) if reference is not None else None
        if clean_logits is not None and idx is not None:
            clean_logits = clean_logits[idx]
        fn = make_attack_loss(spec.loss, clean_logits, steps, **spec.loss_args)
        inputs = ATTACK_LOSSES[spec.loss].inputs

        def loss(output: Any, batch: Any) -> torch.Tensor:
            logits, labels = task_loss_tensors(task, output, batch, inputs)
            return fn(logits, labels)

        return loss

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

    def _stack_members(self, batch_no: int, batch: dict[str, Any], x: torch.Tensor, size: int,
                       loss_fn: Any, start: StartGradient | None = None) -> dict[tuple[str, float], _Precomputed]:
        """ε-stacking: run each deterministic member once over the batch repeated for every ε
        (``[len(eps)·B, *]``, budget ``ε_i`` on the ``i``-th copy) and score the result with one
        forward; return stand-ins that hand each ε its rows.

        Exact: a member qualifies only when its output depends on nothing but each sample and
        its own ε — an attack without randomness (:data:`STACKABLE`, no random start, one
        restart, the task loss), eval-mode BatchNorm / Dropout (per-sample forwards), not in a
        sequential suite (no early stop), a batch of per-sample tensors only — so every row
        takes the same steps as in its own call.
        On the CPU the results are bit-identical (``benchmarks/eval_cost.py --compare`` checks
        the metrics); a GPU may round batched kernels differently. Skipped when the stacked input
        would exceed :data:`MAX_STACK_BYTES` (its activations scale with it). Passes are charged
        to each ε by its rows (equal: no early stop); seconds are shared equally. ``start``: the
        gradient at ``x`` (:meth:`_shared_start`), repeated for the stacked call.
        """
        k = len(self.eps)
        if not self.stack_eps or k < 2 or self.sequential or self.modes != ("eval", "eval") \
                or k * x.element_size() * x.nelement() > MAX_STACK_BYTES:
            return {}
        # only batches whose every entry is a per-sample tensor can be repeated per ε (detection's
        # lists of boxes, or metadata, keep the ordinary path)
        if not all(isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == size for v in batch.values()):
            return {}
        out: dict[tuple[str, float], _Precomputed] = {}
        for a_i, spec in enumerate(self.specs):
            desc = self.attacks[(spec.label, self.eps[0])].describe()
            if not (spec.budgeted and spec.loss is None and desc.get("name") in STACKABLE
                    and not desc.get("random_start") and (desc.get("restarts") or 1) == 1):
                continue
            keys = [(spec.label, e) for e in self.eps]
            self.meter.switch(("stacked", spec.label))
            eps = torch.tensor(self.eps, dtype=x.dtype, device=x.device).repeat_interleave(size)
            attack = spec.build(eps, tuple(self.task.data_info.bounds), self.modes)
            # each row's step exactly as its own ε's attack rounds it (a float step is rounded
            # to x's dtype once; rel·ε computed on the float32 ε tensor may differ by an ulp)
            own = [self.attacks[key] for key in keys]
            steps = [a.step_size if a.step_size is not None else a.default_step_size(a.eps) for a in own]
            if all(isinstance(v, float) for v in steps):
                attack.step_size = torch.tensor(steps, dtype=torch.float64, device=x.device).repeat_interleave(size)
            many = {key: torch.cat([v] * k) for key, v in batch.items()}
            gen = seeded_generator(self.seed, batch_no, a_i, 0, device=x.device)
            x_adv = attack(self.model, torch.cat([x] * k), many, loss_fn=loss_fn, generator=gen,
                           start=None if start is None else start.repeat(k))
            with torch.no_grad():
                scored = self.model(x_adv)
            self.meter.share(("stacked", spec.label), keys)
            if not (isinstance(scored, torch.Tensor) and scored.shape[0] == k * size):
                continue  # an output we cannot cut by rows: the ordinary path
            stats = attack.last_gradients
            for i, key in enumerate(keys):
                rows = slice(i * size, (i + 1) * size)
                grads = None if stats is None else type(stats)(stats.nonfinite[rows], stats.zero[rows], stats.evaluations)
                pre = _Precomputed(x_adv[rows], grads)
                self._scored[id(pre.x_adv)] = (pre.x_adv, scored[rows])
                out[key] = pre
        return out

    def _shared_start(self, x: torch.Tensor) -> bool:
        """Whether to take the clean output and the gradient at ``x`` from one pass
        (``share_start``): some member starts at ``x`` with the task loss (so it would take that
        very gradient first: :data:`SHARES_START`, no random start), every attack and metric
        forward sees the whole model in eval mode (the attacks' modes and the model's own, so
        the pass's output *is* the clean output), not sequential (members attack subsets),
        and ``x`` is float32 / float64 (the attacks' work dtype: the same forward)."""
        if not (self.share_start and not self.sequential and self.modes == ("eval", "eval")
                and x.dtype in (torch.float32, torch.float64)):
            return False
        if self._starts_at_x is None:
            self._starts_at_x = any(
                spec.budgeted and spec.loss is None and desc.get("name") in SHARES_START
                and not desc.get("random_start") and (desc.get("restarts") or 1) == 1
                for spec in self.specs for desc in [self.attacks[(spec.label, self.eps[0])].describe()])
        model = getattr(self.model, "model", self.model)  # inside the counting wrapper
        return self._starts_at_x and not any(m.training for m in model.modules())

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
        metrics = []
        for collection in self._collections():
            for metric in _metric_members(collection):
                state = {k: _copy_state(v) for k, v in metric.metric_state.items()}
                metrics.append((metric, state, metric._update_count))
        return {"metrics": metrics, "num_samples": self.num_samples, "random_clean": self._random_clean,
                "large_violated": self.large_violated, "gradients": {k: dict(v) for k, v in self.gradients.items()},
                "blackbox_wins": dict(self.blackbox_wins), "columns": self.columns.snapshot(),
                "feed": self.feed.snapshot()}

    def _restore(self, snap: dict[str, Any]) -> None:
        """Back to :meth:`_snapshot`'s state (the batch that was stopped counts for nothing)."""
        for metric, state, count in snap["metrics"]:
            for k, v in state.items():
                setattr(metric, k, v)
            metric._update_count = count
            metric._computed = None
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
            if ids is None:
                ids = batch.get("index")
            if ids is None:
                raise ValueError("RobustnessEvaluator(keep_per_sample=True): the batch has no 'index' "
                                 "entry and run_batch got no ids; the per-sample file needs each "
                                 "sample's dataset index")
            ids = torch.as_tensor(ids, dtype=torch.int64).detach().cpu().reshape(-1)
            if ids.numel() != size:
                raise ValueError(f"RobustnessEvaluator.run_batch: {ids.numel()} sample ids for a batch of {size}")

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
            if self.check_randomness:
                # Sanity check (AutoAttack's checks.py): a second clean forward must agree.
                self._random_clean += int(_differs(out_clean, self.forward(x), size).sum())
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
            if self._gradient_free:
                gf = torch.zeros_like(winner, dtype=torch.bool)
                for i in self._gradient_free:
                    gf |= winner == i
                # a win: the gradient-free member's metric is worse than every gradient member's
                # and the clean one's (classification: it broke a sample no gradient attack broke)
                if worst.score is not None and white is not None:
                    gf &= worst.score.float() > white.float()
                self.blackbox_wins[eps] += int(gf.sum())
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
        if self.large_eps is not None and counted:
            gen = seeded_generator(self.seed, batch_no, -1, -1, device=x.device)
            x_big = self._large_attack(self.model, x, batch, loss_fn=task_loss, generator=gen)
            out_big = self.forward(x_big)
            self.large_violated += int(self.task.is_violated(out_big, batch).bool().sum()) if self._violation_ok else 0
        self.meter.end()

    def _attack_remaining(self, attack: Any, spec: AttackSpec, batch: dict[str, Any], x: torch.Tensor,
                          size: int, todo: torch.Tensor, carried: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                          out_clean: Any, task_loss: Any, gen: torch.Generator,
                          start: StartGradient | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``early_exit``: ``(x_adv [B, *], output [B, …])`` of one member at one ε, attacking and
        forwarding only the samples ``todo`` (``LongTensor[k]``) that the previous ε left
        unviolated; the others keep the previous ε's worst case ``carried = (x, output, violated)``.

        The ``k`` rows are padded to a multiple of :data:`ROW_BUCKET` (repeats of the first one,
        whose results are dropped, gradient health included): the first pass at a new batch
        size builds the CPU kernels for that shape (≈ 2 ms for the quickstart CNN), and with
        ``k`` free every epoch would meet new sizes. The padding rows are passes the meter
        counts."""
        x_adv, out = carried[0].clone(), carried[1].clone()
        k = todo.numel()
        if k == 0:
            return x_adv, out
        every = k == size
        padded = min(size, -(-k // ROW_BUCKET) * ROW_BUCKET)
        rows = torch.cat([todo, todo[:1].expand(padded - k)]) if padded > k else todo
        sub = batch if every else select_rows(batch, rows, size)
        result = attack(self.model, x if every else x[rows], sub,
                        loss_fn=self._loss_fn(spec, out_clean, None if every else rows, size, task_loss),
                        generator=gen, start=start if every or start is None else start.rows(rows))
        stats = getattr(attack, "last_gradients", None)
        if stats is not None and rows.numel() > k:  # the padding rows' gradient health is not a sample's
            stats.nonfinite, stats.zero = stats.nonfinite[:k], stats.zero[:k]
        x_adv[todo] = result[:k]
        out[todo] = self.forward(result)[:k]
        return x_adv, out

    def run(self, batches: Iterable[tuple[int, dict[str, Any], bool]]) -> None:
        for batch_no, batch, counted in batches:
            self.run_batch(batch_no, batch, counted)

    def compute(self) -> EvalOutcome:
        """Compute every collection; a collective under DDP (call on every rank, same order)."""
        self.feed.flush()  # merge_updates: the kept updates, one per collection
        clean = compute_metrics(self.metrics.clean)
        attacks = {k: compute_metrics(m) for k, m in self.metrics.attacks.items()}
        ensemble = {}
        for e, m in self.metrics.ensemble.items():
            alias = self.feed.alias(e)  # every update was that member's (MetricFeed.defer_ensemble)
            ensemble[e] = (dict(attacks[(self.specs[alias].label, e)]) if alias is not None
                           else compute_metrics(m))
        descriptions = {k: dict(a.describe()) for k, a in self.attacks.items()}
        rule = ("task_metric_then_loss" if self._metric_ok
                else "violation_then_loss" if self._violation_ok else "loss")
        gradients = {k: sum_counts(v) for k, v in self.gradients.items()}
        total = sum_counts({"n": self.num_samples})["n"]
        randomness = sum_counts({"n": self._random_clean})["n"] / max(total, 1)
        wins = {e: sum_counts({"n": v})["n"] for e, v in self.blackbox_wins.items()}
        large = None
        if self.large_eps is not None:
            c = sum_counts({"violated": self.large_violated, "samples": self.num_samples})
            large = {"eps": self.large_eps, "steps": self.large_eps_steps, "attack": "apgd linf, task loss",
                     "decidable": self._violation_ok, **c}
        return EvalOutcome(clean, attacks, ensemble, descriptions, rule, self.num_samples,
                           gradients, randomness, self.sequential, wins, large, total,
                           compute=self.accounting(total, gradients),
                           per_sample=self.per_sample_table(), evidence=self.evidence(),
                           early_exit=self.early_exit)

    def accounting(self, total: int | None = None,
                   gradients: dict[tuple[str, float], dict[str, int]] | None = None) -> ComputeAccounting:
        """Passes and seconds so far, summed over ranks (a collective under DDP: call on every
        rank, same order). ``total``/``gradients``: the summed sample and attacked counts, when
        the caller has them already."""
        if total is None:
            total = sum_counts({"n": self.num_samples})["n"]
        if gradients is None:
            gradients = {k: sum_counts(v) for k, v in self.gradients.items()}
        mine = self.meter.totals()
        # every rank sums the same keys in the same order (a part a rank never ran counts 0)
        keys = [*self.attacks, "clean", "ensemble", "sanity", "minimal_eps", "corruptions"]
        flat = {f"{i}.{k}": mine.get(key, {}).get(k, 0.0)
                for i, key in enumerate(keys) for k in ("forward", "backward", "seconds")}
        summed = sum_values(flat)
        totals = {key: {k: summed[f"{i}.{k}"] for k in ("forward", "backward", "seconds")}
                  for i, key in enumerate(keys)
                  if key in self.attacks or any(summed[f"{i}.{k}"] for k in ("forward", "seconds"))}
        attacked = {k: int(v["attacked"]) for k, v in gradients.items()}
        return ComputeAccounting.build(totals, total, attacked, self.sequential, list(self.attacks))


#: ``early_exit`` attacks the unviolated rows of a batch padded to a multiple of this (a few
#: batch sizes, whose CPU kernels are built once, instead of a new size nearly every epoch)
ROW_BUCKET = 4
#: attacks whose result depends only on each sample and its ε when they have no random start
STACKABLE = ("pgd", "bim", "fgsm")
#: attacks whose first step, without a random start, takes the gradient at ``x`` (what
#: :meth:`RobustnessEvaluator._shared_start` computes once for all of them)
SHARES_START = ("pgd", "bim", "fgsm", "mifgsm")


class EvaluationStopped(Exception):
    """The evaluation was asked to stop (:attr:`RobustnessEvaluator.should_stop`) before
    ``attack`` at ``eps`` of the current batch; that batch's updates were undone."""

    def __init__(self, attack: str, eps: float | None) -> None:
        super().__init__(f"stopped before {attack}" + ("" if eps is None else f" at ε={eps:g}"))
        self.attack, self.eps = attack, eps


def _metric_members(collection: Any) -> list[Any]:
    """Every torchmetrics ``Metric`` in a collection (a ``MetricCollection``, a dict of metrics,
    or one metric), metrics nested inside metrics included (a metric built from others keeps
    its state in them), without copying compute-group states."""
    from torchmetrics import Metric

    if isinstance(collection, nn.Module):
        return [m for m in collection.modules() if isinstance(m, Metric)]
    if isinstance(collection, dict):
        return [m for v in collection.values() for m in _metric_members(v)]
    return []


def _copy_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return list(value)
    return value


class _Precomputed:
    """Stand-in for an attack whose output on this batch was computed already (ε-stacking):
    calling it returns that output; ``last_gradients`` is the gradient health of its rows."""

    def __init__(self, x_adv: torch.Tensor, gradients: Any) -> None:
        self.x_adv, self.last_gradients = x_adv, gradients

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.x_adv


def _distributed() -> bool:
    """More than one process in an initialised default group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rows_of(outputs: dict[int, torch.Tensor], winner: torch.Tensor) -> torch.Tensor:
    """``[B, …]``: each sample's row of the candidate that won it (``winner[i]`` a key of
    ``outputs``: -1 the clean output, else a member's), i.e. the output of the worst case."""
    out = outputs[-1].clone()
    for key, value in outputs.items():
        if key != -1:
            rows = winner == key
            out[rows] = value[rows]
    return out


def _differs(a: Any, b: Any, size: int) -> torch.Tensor:
    """``Bool[B]``: two outputs of one input differ (beyond float noise) for each sample."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.ndim == 0 or a.shape[0] != size:
            return torch.zeros(size, dtype=torch.bool, device=a.device)
        d = (a.float() - b.float()).abs().reshape(size, -1)
        scale = a.float().abs().reshape(size, -1).amax(dim=1, keepdim=True).clamp_min(1.0)
        return (d > 1e-4 * scale).any(dim=1)
    if isinstance(a, dict) and isinstance(b, dict):
        out = torch.zeros(size, dtype=torch.bool)
        for k in a:
            if k in b:
                r = _differs(a[k], b[k], size)
                out = out.to(r.device) | r
        return out
    return torch.zeros(size, dtype=torch.bool)
