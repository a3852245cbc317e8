"""Paired comparison of two evaluated runs on the same samples: ``medrobust compare A B``.

Each run's ``robustness_samples.csv`` (:mod:`callbacks.per_sample`) is read, the two are
restricted to the sample ids they share, and every column present in both is compared: the
difference of means A − B with a paired bootstrap interval, and McNemar's exact p-value for
0/1 columns (accuracy). Pairing removes the samples' shared difficulty from the comparison, so
it is far more sensitive than comparing two unpaired intervals. Where both runs also kept
``robustness_evidence.json`` (:mod:`callbacks.evidence`), their dataset-level metrics
(AUROC, balanced accuracy, F1, mAP…) are compared too: the paired BCa bootstrap of A − B over one
shared draw of images (rows ``clean/auroc``, ``worst/<ε>/map``…).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from callbacks.per_sample import FILE_NAME, SampleTable
from callbacks.uncertainty import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Interval,
    _check_level,
    decide,
    paired_difference,
)

__all__ = ["ComparisonRow", "compare_runs", "compare_tables", "format_comparison", "main",
           "paired_dataset_differences", "samples_path", "shared_columns"]


@dataclass(frozen=True)
class ComparisonRow:
    """One column compared: mean of A, mean of B, the paired difference A − B."""

    column: str
    n: int
    mean_a: float
    mean_b: float
    difference: Interval
    p_value: float | None

    @property
    def verdict(self) -> str:
        """``A > B`` / ``A < B`` when the interval excludes 0 — and, for 0/1 columns, McNemar's
        exact test agrees at the same level — else ``inconclusive``.

        Why the McNemar guard: with few discordant pairs all one way, the bootstrap of the mean
        difference has almost no spread (3 of 200 pairs give ``[0.005, 0.040]``) while the exact
        test says p = 0.25; the bootstrap is anti-conservative there, the exact test is not."""
        if self.p_value is not None and not (self.p_value < 1 - self.difference.level):
            return "inconclusive"
        if decide(self.difference, "greater") == "confirmed":
            return "A > B"
        if decide(self.difference, "less") == "confirmed":
            return "A < B"
        return "inconclusive"


def samples_path(run: str | Path) -> Path:
    """The per-sample file of ``run``: the file itself, or ``<run>/robustness_samples.csv``."""
    path = Path(run)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-sample results; evaluate the run with medrobust "
                                f"(it writes {FILE_NAME} beside robustness.json)")
    return path


def shared_columns(a: Any, b: Any, wanted: list[str] | Sequence[str] | None, what: str) -> list[str]:
    """The columns of ``a`` that ``b`` has too (in ``a``'s order), or ``wanted`` once each of
    them is checked to be in both (``ValueError`` naming ``what`` and the missing ones)."""
    shared = [c for c in a if c in b]
    if wanted is None:
        return shared
    missing = [c for c in wanted if c not in shared]
    if missing:
        raise ValueError(f"{what} {missing} are not in both runs; shared: {shared}")
    return list(wanted)


def compare_tables(a: SampleTable, b: SampleTable, columns: list[str] | None = None,
                   level: float = DEFAULT_LEVEL, seed: int = 0) -> list[ComparisonRow]:
    """Compare every column shared by ``a`` and ``b`` (or ``columns``) on their shared samples."""
    a, b = a.aligned(b)
    shared = shared_columns(a.columns, b.columns, columns, "columns")
    if not shared:
        raise ValueError("the two runs share no per-sample column: were they evaluated with the same "
                         "attacks, ε and metrics?")
    rows: list[ComparisonRow] = []
    for name in shared:
        va, vb = a.column(name), b.column(name)
        ok = np.isfinite(va) & np.isfinite(vb)
        if ok.sum() < 2:
            continue
        cmp = paired_difference(va[ok], vb[ok], level=level, seed=seed)
        rows.append(ComparisonRow(name, int(ok.sum()), float(va[ok].mean()), float(vb[ok].mean()),
                                  cmp.difference, cmp.p_value))
    return rows


def paired_dataset_differences(a: Any, b: Any, keys: Sequence[str] | None = None,
                               level: float = DEFAULT_LEVEL, seed: int = 0,
                               n_resamples: int = DEFAULT_RESAMPLES) -> list[tuple[str, float, float, Interval]]:
    """Model A against model B on the same images, for every dataset-level metric of the columns
    both evaluated (or ``keys``): ``(name, metric of A, metric of B, interval of A − B)`` with
    ``name`` as in the per-sample file (``clean/auroc``, ``worst/0.004/map``).

    Paired: both metrics are computed on every resample of one draw of image weights (the same
    images for both models, :func:`callbacks.dataset_metrics.weight_rows` with the same seed), and the interval is the BCa
    interval of the differences (the jackknife of the difference for the acceleration), so the
    images' shared difficulty cancels as in :func:`callbacks.uncertainty.paired_difference`."""
    from callbacks.dataset_metrics import _interval, metric_draws

    level = _check_level(level)
    a, b = a.aligned(b)
    shared = shared_columns(a.columns, b.columns, keys, "dataset-level columns")
    da, db = metric_draws(a, shared, n_resamples, seed), metric_draws(b, shared, n_resamples, seed)
    out = []
    for metric in [m for m in da if m in db]:
        for key in shared:
            xa, xb = da[metric][key], db[metric][key]
            iv = _interval(xa - xb, level, a.n, n_resamples)
            if iv is not None:
                out.append((f"{key}/{metric}", float(xa[0]), float(xb[0]), iv))
    return out


def _evidence(run: str | Path) -> Any:
    """The run's dataset-level evidence (``robustness_evidence.json`` beside its per-sample
    file), or ``None`` when it has none (written before it, or a task without it)."""
    from callbacks.evidence import FILE_NAME as EVIDENCE_FILE
    from callbacks.evidence import Evidence

    path = Path(run)
    path = (path if path.is_dir() else path.parent) / EVIDENCE_FILE
    return Evidence.load(path) if path.is_file() else None


def compare_runs(run_a: str | Path, run_b: str | Path, columns: list[str] | None = None,
                 level: float = DEFAULT_LEVEL, seed: int = 0) -> list[ComparisonRow]:
    """:func:`compare_tables` on two runs' per-sample files (run folders or file paths), then,
    where both runs kept dataset-level evidence, the paired differences of their AUROC / mAP…
    (:func:`paired_dataset_differences`; rows ``clean/auroc``,
    ``worst/<ε>/map``…, no McNemar p-value)."""
    ev_a, ev_b = _evidence(run_a), _evidence(run_b)
    diffs = []
    if ev_a is not None and ev_b is not None and ev_a.kind == ev_b.kind:
        diffs = paired_dataset_differences(ev_a, ev_b, level=level, seed=seed)
    names = {d[0] for d in diffs}
    per_sample = None if columns is None else [c for c in columns if c not in names]
    rows = []
    if per_sample is None or per_sample:
        rows = compare_tables(SampleTable.load(samples_path(run_a)), SampleTable.load(samples_path(run_b)),
                              per_sample, level, seed)
    rows += [ComparisonRow(name, iv.n, va, vb, iv, None) for name, va, vb, iv in diffs
             if columns is None or name in columns]
    return rows


def format_comparison(rows: list[ComparisonRow], name_a: str = "A", name_b: str = "B") -> str:
    """A markdown table: column, n, mean A, mean B, A − B [interval], McNemar p, verdict."""
    level = rows[0].difference.level if rows else DEFAULT_LEVEL
    lines = [f"A = {name_a}", f"B = {name_b}", "",
             f"| column | n | A | B | A − B [{level:.0%} CI] | McNemar p | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "–" if r.p_value is None else (f"{r.p_value:.3g}" if not math.isnan(r.p_value) else "–")
        lines.append(f"| {r.column} | {r.n} | {r.mean_a:.3f} | {r.mean_b:.3f} | {r.difference} | {p} | {r.verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``medrobust compare RUN_A RUN_B [--column C ...] [--level 0.95] [--seed 0]``."""
    parser = argparse.ArgumentParser(prog="medrobust compare", description=(
        "Paired comparison of two runs evaluated on the same samples (their robustness_samples.csv)."))
    parser.add_argument("run_a", help="run folder (holding robustness_samples.csv) or the file itself")
    parser.add_argument("run_b")
    parser.add_argument("--column", action="append", default=None,
                        help="compare only this column (repeatable), e.g. worst/0.004/accuracy")
    parser.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="confidence level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    try:
        rows = compare_runs(args.run_a, args.run_b, args.column, args.level, args.seed)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"medrobust compare: {err}\n")
    print(format_comparison(rows, str(args.run_a), str(args.run_b)))
    return 0
