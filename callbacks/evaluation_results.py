"""What the evaluation loop hands back: its metrics computed and its counters summed over ranks.

:class:`EvaluationResults` is the part of :class:`callbacks.evaluation_loop.RobustnessEvaluator`
that turns its state after the last batch into an :class:`~callbacks.outcome.EvalOutcome`
(:meth:`~EvaluationResults.compute`) and its compute meter into a
:class:`~callbacks.accounting.ComputeAccounting` (:meth:`~EvaluationResults.accounting`). Both
are collectives under DDP: every rank calls them in the same order.
"""

from __future__ import annotations

from typing import Any

from callbacks.accounting import ComputeAccounting
from callbacks.common import compute_metrics
from callbacks.outcome import EvalOutcome, sum_counts
from lightning_modules.distributed import sum_over_ranks


class EvaluationResults:
    """:meth:`compute` and :meth:`accounting` of the evaluator (see the module docstring)."""

    attacks: dict[tuple[str, float], Any]
    specs: list[Any]
    sequential: bool
    meter: Any

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
        summed = sum_over_ranks(flat)
        totals = {key: {k: summed[f"{i}.{k}"] for k in ("forward", "backward", "seconds")}
                  for i, key in enumerate(keys)
                  if key in self.attacks or any(summed[f"{i}.{k}"] for k in ("forward", "seconds"))}
        attacked = {k: int(v["attacked"]) for k, v in gradients.items()}
        return ComputeAccounting.build(totals, total, attacked, self.sequential, list(self.attacks))
