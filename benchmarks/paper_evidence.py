"""The evidence behind the paper-suite verdicts: each run's per-sample values.

Each run of ``results.json`` names its run folder (``log_dir``); the evaluation wrote
``robustness_samples.csv`` beside ``robustness.json`` there (one row per test sample,
:mod:`callbacks.per_sample`). A quantity of a claim is built from :class:`Term` s, each one run's
per-sample values (a column, a mean of columns, a per-sample robust area) times a coefficient;
:func:`run_matrices` lines the terms' runs and seeds up on the samples they share. The intervals
and tests on them: :mod:`benchmarks.paper_intervals`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.common import ROOT, seed_entries
from callbacks.per_sample import FILE_NAME, SampleTable, column_name
from callbacks.record_intervals import sample_area

#: per-sample file of each kind of record a run keeps (``noise``: the second evaluation callback)
SAMPLE_FILES = {"test": FILE_NAME, "noise": "robustness_samples_noise.csv"}

PerSample = Callable[[SampleTable], np.ndarray]


@functools.lru_cache(maxsize=256)
def _load_table(path: str, mtime: float) -> SampleTable:  # mtime: a rewritten file is read again
    return SampleTable.load(path)


def run_tables(entry: dict[str, Any] | None, kind: str = "test") -> tuple[list[SampleTable], str | None]:
    """The per-sample tables of every seed of a run (``kind``: ``test`` or ``noise``), or ``([],
    reason)`` when any is missing (an older ``results.json``, a failed run, a moved folder). A
    table whose row count differs from its record's number of evaluated samples is refused (it
    cannot be that record's file)."""
    from callbacks.record import RobustnessRecord

    if not entry or not entry.get(kind):
        return [], f"no {kind} record"
    tables = []
    for e in seed_entries(entry):
        log_dir = e.get("log_dir")
        if not log_dir:
            return [], "no run folder in results.json"
        path = ROOT / log_dir / SAMPLE_FILES[kind]
        if not path.is_file():
            return [], f"no per-sample file `{SAMPLE_FILES[kind]}` in `{log_dir}` (results written before per-sample files)"
        table = _load_table(str(path), path.stat().st_mtime)
        rec = RobustnessRecord.coerce(e[kind], "results.json record") if e.get(kind) else None
        size = rec.subset.size if rec is not None and rec.subset is not None else None
        if size is not None and size != len(table.sample_ids):
            return [], f"`{path}` holds {len(table.sample_ids)} samples, its record {size}"
        tables.append(table)
    return tables, None


def column(name: str) -> PerSample:
    """Per-sample values of one column, e.g. ``clean/accuracy``."""
    def values(t: SampleTable) -> np.ndarray:
        return t.column(name)
    values.__name__ = name
    return values


def columns_mean(names: Sequence[str]) -> PerSample:
    """Per-sample mean over several columns (e.g. every attack × ε entry): its mean over samples
    is the mean of the columns' means, the way the tables average entries."""
    names = list(names)

    def values(t: SampleTable) -> np.ndarray:
        if not names:
            raise KeyError("no column to average")
        return np.mean(np.stack([t.column(n) for n in names]), axis=0)
    return values


def robust_area(metric: str, eps: Sequence[float], lower_is_better: bool) -> PerSample:
    """Each sample's robust area (its clean and worst-case values over the ε grid, negated when
    lower is better: :func:`callbacks.record_intervals.sample_area`); the mean is the record's."""
    def values(t: SampleTable) -> np.ndarray:
        curve = {float(e): t.column(column_name("worst", metric, e)) for e in eps}
        return sample_area(t.column(column_name("clean", metric)), curve, lower_is_better)
    return values


@dataclass
class Term:
    """``coef`` × the mean over samples of ``values`` of one run (every seed of it).

    ``fallback``: the record interval standing for this term when the run has no per-sample
    file: ``("clean", None)``, ``("robust_area", None)`` or ``("worst", ε)`` of the record's
    ``intervals`` (used only when its ``metric`` is ``fallback_metric``)."""

    entry: dict[str, Any] | None
    values: PerSample
    coef: float = 1.0
    kind: str = "test"
    fallback: tuple[str, float | None] | None = None
    fallback_metric: str | None = None


def run_matrices(terms: Sequence[Term]) -> tuple[list[np.ndarray] | None, str | None]:
    """``[S_k, N]`` per term, on the sample ids every table shares (sorted), or a reason."""
    per_term: list[list[SampleTable]] = []
    for t in terms:
        tables, reason = run_tables(t.entry, t.kind)
        if reason:
            return None, reason
        per_term.append(tables)
    ids = np.unique(functools.reduce(np.intersect1d, [tb.sample_ids for tables in per_term for tb in tables]))
    if ids.size < 2:
        return None, "the runs share fewer than 2 evaluated samples"
    out = []
    for t, tables in zip(terms, per_term):
        rows = []
        for tb in tables:
            pos = np.searchsorted(tb.sorted().sample_ids, ids)
            try:
                rows.append(np.asarray(t.values(tb.sorted()), dtype=np.float64)[pos])
            except KeyError as err:
                return None, f"per-sample column missing: {err}"
        out.append(np.stack(rows))
    return out, None


