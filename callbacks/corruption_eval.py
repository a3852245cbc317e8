"""Corruptions beside the attacks: the corruption × severity loop of an evaluation.

:class:`CorruptionEvaluator` runs beside the attack loop on the same subset batches (the
runner hands it each batch: :meth:`callbacks.evaluation_runner.EvaluationRunner.run`), so the
attacks and the corruptions are measured on the same samples of the same model. Per corruption
× severity it feeds the task's own metric collection with the model's output on the corrupted
images (the batch's targets are passed unchanged: no corruption of the family moves content),
and keeps each sample's per-sample metric for ``robustness_samples.csv`` under
``corruption-<name>/<severity>/<metric>``. A sample's corruption is seeded by (evaluation seed,
its dataset index, corruption, severity): the same whatever the batch, the rank or the number
of processes.

The rest of the corruption results, one job per file: the record's section, errors and mCE
(:mod:`callbacks.corruption_section`), their intervals (:mod:`callbacks.corruption_intervals`),
scalars, report section and figures (:mod:`callbacks.corruption_report`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from attacks.seeding import mix_seed
from callbacks.common import compute_metrics
from corruptions import CorruptionSuite, corruption_suite

__all__ = ["CorruptionEvaluator", "check_severities", "condition", "merge_columns", "resolve_suite"]

PREFIX = "corruption-"


def condition(name: str) -> str:
    """The per-sample file's condition of corruption ``name`` (``corruption-<name>``)."""
    return PREFIX + name


def _seed(seed: int, sample: int, corruption: int, severity: int) -> int:
    """The seed of one sample's corruption at one severity (:func:`attacks.seeding.mix_seed`)."""
    return mix_seed(seed, sample, corruption, severity)


class CorruptionEvaluator:
    """Every corruption × severity of ``suite`` on batches; the task's metrics per cell.

    Args:
        task: the ``RobustTask`` (its ``build_metrics``, ``update_metrics``, ``per_sample_metric``,
            ``data_info.bounds``).
        model: the model to forward (the runner's counting wrapper).
        suite: a :class:`corruptions.CorruptionSuite` or its name.
        severities: the severities to run (1–5).
        seed: the evaluation seed.
        keep_per_sample: keep per-sample metric values (for the per-sample file).
    """

    def __init__(self, task: Any, model: Any, suite: CorruptionSuite | str, severities: Sequence[int] = (1, 2, 3, 4, 5),
                 seed: int = 0, keep_per_sample: bool = True) -> None:
        self.task, self.model = task, model
        self.suite = corruption_suite(suite)
        self.severities = [int(s) for s in severities]
        if not self.severities or any(not 1 <= s <= 5 for s in self.severities):
            raise ValueError(f"corruption severities must be in 1…5, got {severities!r}")
        self.seed = int(seed)
        self.keep_per_sample = bool(keep_per_sample)
        device = next((p.device for p in task.parameters()), torch.device("cpu"))
        self.metrics = {(c.name, s): task.build_metrics().to(device)
                        for c in self.suite for s in self.severities}
        self.bounds = tuple(float(b) for b in task.data_info.bounds)
        self._ids: list[torch.Tensor] = []
        self._values: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.seconds = 0.0
        self.forwards = 0
        self.num_samples = 0
        self.device = device

    def run_batch(self, batch: dict[str, Any], counted: bool, ids: Sequence[int] | torch.Tensor) -> None:
        """Every corruption × severity on one batch (on the device, autograd-safe)."""
        start = time.perf_counter()
        x = batch["image"]
        size = x.shape[0]
        ids_t = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).cpu()
        keep = counted and self.keep_per_sample
        for c_i, corruption in enumerate(self.suite):
            for s in self.severities:
                seeds = [_seed(self.seed, int(i), c_i, s) for i in ids_t.tolist()]
                x_c = corruption(x, s, seeds=seeds, bounds=self.bounds)
                with torch.no_grad():
                    out = self.model(x_c)
                self.forwards += size if counted else 0
                if counted:
                    self.task.update_metrics(self.metrics[(corruption.name, s)], out, batch)
                if keep and self.keep_per_sample:
                    try:
                        value = self.task.per_sample_metric(out, batch).detach().reshape(size).float()
                    except (AttributeError, NotImplementedError, TypeError, ValueError) as err:
                        warnings.warn(f"{type(self.task).__name__}.per_sample_metric failed ({err}); no "
                                      "per-sample corruption columns", stacklevel=2)
                        self.keep_per_sample, self._values, self._ids = False, {}, []
                        continue
                    self._values.setdefault((corruption.name, s), []).append(value)
        if keep and self.keep_per_sample:
            self._ids.append(ids_t)
        if counted:
            self.num_samples += size
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - start if counted else 0.0

    def compute(self) -> tuple[dict[tuple[str, int], dict[str, float]], dict[str, Any]]:
        """``(metrics per (corruption, severity), {"seconds", "forwards", "samples"})``, summed
        over ranks (a collective under DDP)."""
        from callbacks.outcome import sum_counts
        from lightning_modules.distributed import sum_over_ranks

        metrics = {k: compute_metrics(m) for k, m in self.metrics.items()}
        cost = {**sum_over_ranks({"seconds": self.seconds}),
                **sum_counts({"forwards": self.forwards, "samples": self.num_samples})}
        return metrics, cost

    def per_sample_columns(self, metric: str) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """``(ids, {column: values})`` of every rank (a collective under DDP)."""
        from callbacks.per_sample import column_name
        from lightning_modules.distributed import is_distributed

        ids = torch.cat(self._ids).numpy() if self._ids else None
        cols = {k: torch.cat(v).double().cpu().numpy() for k, v in self._values.items()} if self._ids else {}
        if is_distributed():
            import torch.distributed as dist

            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (ids, cols))
            parts = [p for p in parts if p[0] is not None]
            if not parts:
                return None, {}
            ids = np.concatenate([p[0] for p in parts])
            cols = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
        return ids, {column_name(condition(n), metric, s): v for (n, s), v in cols.items()}


def merge_columns(table: Any, ids: np.ndarray | None, columns: Mapping[str, np.ndarray]) -> None:
    """Add ``columns`` (values in ``ids`` order) to the per-sample ``table`` by sample id."""
    if table is None or ids is None:
        return
    pos = {int(s): i for i, s in enumerate(ids.tolist())}
    rows = np.array([pos[int(s)] for s in table.sample_ids.tolist()], dtype=np.int64)
    for name, values in columns.items():
        table.add(name, values[rows])


def resolve_suite(value: Any, where: str) -> CorruptionSuite | None:
    """``None`` stays ``None``; a name or list becomes a checked suite."""
    if value is None:
        return None
    return corruption_suite(value, where)


def check_severities(value: Sequence[int] | None, where: str) -> list[int]:
    """Sorted unique severities in 1…5 (``None``: all five); ``ValueError`` naming ``where``."""
    sev = [1, 2, 3, 4, 5] if value is None else list(value)
    if not sev or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5 for s in sev):
        raise ValueError(f"{where} must be a non-empty list of ints in 1…5, got {sev!r}")
    return sorted(set(sev))
