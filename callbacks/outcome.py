"""What one robustness evaluation produced, before it becomes a record.

:class:`EvalOutcome` is the rank-synchronised result of
:class:`callbacks.evaluation_loop.RobustnessEvaluator`; :func:`sum_counts` sums the integer
counters (gradient health, sanity checks) over DDP ranks (floats such as seconds go through
:func:`lightning_modules.distributed.sum_over_ranks` directly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_modules.distributed import sum_over_ranks

__all__ = ["EvalMetrics", "EvalOutcome", "sum_counts"]


@dataclass
class EvalMetrics:
    """Fresh metric collections for one evaluation (moved to the model's device)."""

    clean: Any
    attacks: dict[tuple[str, float], Any]
    ensemble: dict[float, Any]


@dataclass
class EvalOutcome:
    """Computed (rank-synchronised) metrics of one evaluation."""

    clean: dict[str, float]
    attacks: dict[tuple[str, float], dict[str, float]]
    ensemble: dict[float, dict[str, float]]
    descriptions: dict[tuple[str, float], dict[str, Any]]
    ensemble_rule: str
    num_samples: int
    #: per (attack, ε): samples attacked, with a non-finite / an all-zero input gradient
    gradients: dict[tuple[str, float], dict[str, int]] = field(default_factory=dict)
    #: fraction of subset samples whose two clean eval-mode forwards differed
    clean_randomness: float = 0.0
    sequential: bool = False
    #: per ε: samples whose worst case came from a gradient-free attack and violates
    blackbox_wins: dict[float, int] = field(default_factory=dict)
    #: the large-ε check: ``{"eps", "steps", "violated", "samples"}`` or None
    large_eps: dict[str, Any] | None = None
    #: subset samples over all ranks
    total_samples: int = 0
    #: forward / backward sample passes and seconds per member × ε and part, summed over ranks
    compute: Any = None
    #: per-sample metric values (``callbacks.per_sample.SampleTable``, all ranks), or None
    per_sample: Any = None
    #: dataset-level evidence (``callbacks.evidence.Evidence``, all ranks): what AUROC /
    #: mAP are recomputed from on resampled image sets; None when the task keeps none
    evidence: Any = None
    #: corruption × severity metrics and cost (``{"metrics", "cost", "suite", "severities"}``,
    #: :mod:`callbacks.corruption_eval`), or None when no corruption suite ran
    corruptions: Any = None
    #: whether samples violated at a smaller ε skipped the larger ones (``Speedups.early_exit``)
    early_exit: bool = False


def sum_counts(counts: dict[str, int]) -> dict[str, int]:
    """Sum integer counters over DDP ranks (identity without a process group)."""
    return {k: int(v) for k, v in sum_over_ranks(counts).items()}

