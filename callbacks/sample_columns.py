"""What the evaluator keeps per sample: each counted sample's per-sample metric (clean, per
attack × ε, worst case per ε) for ``robustness_samples.csv``, and the task's dataset-level
evidence (scores, detections) for ``robustness_evidence.json``.

:class:`SampleColumns` is filled batch by batch by
:class:`callbacks.evaluation_loop.RobustnessEvaluator` and gathered over the ranks once, at
compute (:meth:`SampleColumns.table`, :meth:`SampleColumns.evidence`: collectives under DDP).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

#: a column: ``(condition, ε)`` — ``("clean", None)``, ``(attack label, ε)``, ``("worst", ε)``
Column = tuple[str, float | None]


class SampleColumns:
    """Per-sample values and dataset-level evidence of the counted samples of this rank.

    Args:
        task: the evaluated task (its ``sample_evidence``, ``evidence_targets``,
            ``evidence_spec`` for the evidence; its per-sample metric's name for the table).
        evidence: keep the evidence too (only when the task offers all three methods).

    Values stay on the model's device until :meth:`table` / :meth:`evidence` (one copy then, no
    sync per attack × ε). A task whose evidence fails is warned about once and keeps none.
    """

    def __init__(self, task: Any, evidence: bool) -> None:
        self.task = task
        self.ids: list[torch.Tensor] = []
        self.values: dict[Column, list[torch.Tensor]] = {}
        self.evidence_ok = evidence and all(
            callable(getattr(task, name, None)) for name in ("evidence_spec", "sample_evidence", "evidence_targets"))
        self._evidence: dict[Column, list[Any]] = {}
        self._targets: list[list[Any]] = []

    def add_ids(self, ids: torch.Tensor) -> None:
        """The dataset indices ``int64 [B]`` (on the CPU) of the next counted batch."""
        self.ids.append(ids)

    def keep(self, column: Column, metric: torch.Tensor, output: Any, batch: dict[str, Any], size: int) -> None:
        """Append one batch's per-sample metric ``[B]`` (and the evidence of ``output``) to ``column``."""
        self.values.setdefault(column, []).append(metric.float())
        if self.evidence_ok:
            self._keep_evidence(column, output, batch, size)

    def _keep_evidence(self, column: Column, output: Any, batch: dict[str, Any], size: int) -> None:
        """The task's ``sample_evidence`` of ``output`` (a ``[B, …]`` tensor or a list of ``B``
        items); the clean column also keeps the batch's ``evidence_targets``."""
        try:
            value = self.task.sample_evidence(output, batch)
            if isinstance(value, torch.Tensor):
                value = value.detach()
            if len(value) != size:
                raise ValueError(f"{len(value)} entries for a batch of {size}")
            if column == ("clean", None):
                targets = list(self.task.evidence_targets(batch))
                if len(targets) != size:
                    raise ValueError(f"evidence_targets: {len(targets)} entries for a batch of {size}")
                self._targets.append(targets)
        except (AttributeError, NotImplementedError, TypeError, ValueError) as err:
            warnings.warn(f"{type(self.task).__name__}.sample_evidence failed ({err}); no dataset-level "
                          "evidence file and no intervals for AUROC / mAP", stacklevel=4)
            self.evidence_ok = False
            self._evidence.clear()
            self._targets.clear()
            return
        self._evidence.setdefault(column, []).append(value)

    # -- rollback (a stopped batch counts for nothing) ------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """How long every list is now (what :meth:`truncate` cuts back to)."""
        return {"ids": len(self.ids), "values": {k: len(v) for k, v in self.values.items()},
                "evidence": {k: len(v) for k, v in self._evidence.items()}, "targets": len(self._targets)}

    def truncate(self, snap: dict[str, Any]) -> None:
        del self.ids[snap["ids"]:]
        _truncate_columns(self.values, snap["values"])
        _truncate_columns(self._evidence, snap["evidence"])
        del self._targets[snap["targets"]:]

    # -- gathered results (collectives under DDP) ------------------------------------------------
    def table(self, ok: bool) -> Any:
        """The kept per-sample values of every rank as a :class:`callbacks.per_sample.SampleTable`
        sorted by sample id; ``None`` when nothing was kept. ``ok``: this rank's values are valid
        (the task's per-sample metric worked). Call on every rank."""
        from callbacks.per_sample import SampleTable, column_name, metric_name
        from lightning_modules.distributed import all_gather_objects, is_distributed

        ok = ok and bool(self.ids)
        ids = torch.cat(self.ids).numpy() if ok else None
        cols = {k: torch.cat(v).double().cpu().numpy() for k, v in self.values.items()} if ok else {}
        if is_distributed():
            parts = all_gather_objects((ids, cols))
            parts = [p for p in parts if p[0] is not None]  # a rank with no counted sample adds nothing
            if not parts:
                return None
            ids = np.concatenate([p[0] for p in parts])
            cols = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
        if ids is None:
            return None
        name = metric_name(self.task)
        named = {column_name(cond, name, eps): v for (cond, eps), v in cols.items()}
        return SampleTable(ids, named).sorted()

    def evidence(self, ok: bool) -> Any:
        """The kept dataset-level evidence of every rank as a
        :class:`callbacks.dataset_metrics.Evidence` sorted by sample id; ``None`` when none was
        kept (no per-sample values, or the task offers no ``sample_evidence``). Call on every rank."""
        from callbacks.dataset_metrics import Evidence, evidence_key, round9
        from lightning_modules.distributed import all_gather_objects, is_distributed

        ok = ok and self.evidence_ok and bool(self.ids) and len(self._targets) == len(self.ids)
        ids = torch.cat(self.ids).tolist() if ok else None
        cols: dict[Column, list[Any]] = {}
        targets: list[Any] = []
        if ok:
            for key, chunks in self._evidence.items():
                items: list[Any] = []
                for c in chunks:
                    items += c.float().cpu().tolist() if isinstance(c, torch.Tensor) else list(c)
                cols[key] = _rounded(items, round9)
            targets = [t for chunk in self._targets for t in chunk]
        if is_distributed():
            parts = all_gather_objects((ids, cols, targets))
            parts = [p for p in parts if p[0] is not None]
            if not parts:
                return None
            ids = [i for p in parts for i in p[0]]
            targets = [t for p in parts for t in p[2]]
            cols = {k: [v for p in parts for v in p[1][k]] for k in parts[0][1]}
        if ids is None:
            return None
        spec = self.task.evidence_spec()
        return Evidence(spec["kind"], list(spec["metrics"]), np.asarray(ids, dtype=np.int64), targets,
                        {evidence_key(cond, eps): v for (cond, eps), v in cols.items()},
                        dict(spec.get("info") or {})).sorted()


def _rounded(items: Any, fn: Callable[[float], float]) -> Any:
    """``items`` with every float passed through ``fn`` (nested lists; ints and bools kept)."""
    if isinstance(items, float):
        return fn(items)
    if isinstance(items, list):
        return [_rounded(v, fn) for v in items]
    return items


def _truncate_columns(columns: dict[Any, list[Any]], kept: dict[Any, int]) -> None:
    """Cut each column's list of per-batch chunks back to its ``kept`` length (a snapshot's
    counts); a column the snapshot did not have goes."""
    for key in list(columns):
        if kept.get(key, 0):
            del columns[key][kept[key]:]
        else:
            del columns[key]
