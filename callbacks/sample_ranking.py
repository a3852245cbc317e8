"""How the evaluation judges a candidate of each sample, and keeps its per-sample values.

:class:`SampleRanking` is the part of :class:`callbacks.evaluation_loop.RobustnessEvaluator`
that asks the task about one output of a batch: its per-sample loss, whether it violates
(``is_violated``), and its per-sample metric turned into a badness (higher = worse for the
model; :func:`attacks.worst_case.badness`). The ensemble's worst-case rule ranks candidates by
these, and the per-sample file (``robustness_samples.csv``, :class:`callbacks.sample_columns.
SampleColumns`) keeps the same metric values. A task that cannot answer one of the questions
(no per-sample metric, no threshold-free ``is_violated``) is warned about once and the rule
falls back to the next question.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from attacks.worst_case import badness
from callbacks.sample_columns import SampleColumns


class SampleRanking:
    """Per-sample loss, violation and metric of an output (see the module docstring); a part of
    :class:`~callbacks.evaluation_loop.RobustnessEvaluator`, which calls :meth:`_init_ranking`."""

    task: Any
    device: torch.device

    def _init_ranking(self, task: Any, higher: bool | None, keep_per_sample: bool) -> None:
        """``higher``: the main metric's direction when known already (e.g. kept by the runner
        from the last evaluation); else asked of the task at the first metric."""
        self._violation_ok = True
        self._metric_ok = True
        #: direction of the task's main metric (``None``: not asked yet)
        self._higher: bool | None = None if higher is None else bool(higher)
        #: the last output's per-sample metric: (output, value) — the ensemble's score and the
        #: per-sample file read the same call
        self._last_metric: tuple[Any, torch.Tensor | None] | None = None
        self.keep_per_sample = bool(keep_per_sample)
        #: the per-sample values and the dataset-level evidence kept (callbacks/sample_columns.py)
        self.columns = SampleColumns(task, evidence=self.keep_per_sample)

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

    def _sample_ids(self, ids: Any, batch: dict[str, Any], size: int) -> torch.Tensor:
        """``int64[B]`` (CPU): the batch's samples' dataset indices for the per-sample file:
        ``ids``, else the batch's ``index`` entry."""
        if ids is None:
            ids = batch.get("index")
        if ids is None:
            raise ValueError("RobustnessEvaluator(keep_per_sample=True): the batch has no 'index' "
                             "entry and run_batch got no ids; the per-sample file needs each "
                             "sample's dataset index")
        ids = torch.as_tensor(ids, dtype=torch.int64).detach().cpu().reshape(-1)
        if ids.numel() != size:
            raise ValueError(f"RobustnessEvaluator.run_batch: {ids.numel()} sample ids for a batch of {size}")
        return ids
