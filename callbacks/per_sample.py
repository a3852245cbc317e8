"""The per-sample results file, ``robustness_samples.csv``, written beside ``robustness.json``.

One row per evaluated sample, one column per (condition, metric), so that two runs evaluated on
the same samples can be compared pairwise and any statistic recomputed later without rerunning
attacks::

    sample_id,clean/accuracy,pgd/0.004/accuracy,worst/0.004/accuracy,...
    3,1,1,0
    17,1,0,0

Columns:

* ``sample_id``: the sample's index in its dataset split (the ``index`` key of the batch), an
  integer, unique within the file; rows are sorted by it.
* ``clean/<metric>``: the metric of the sample's clean prediction.
* ``<attack>/<eps>/<metric>``: under one attack (its label, e.g. ``apgd-ce``) at budget ``eps``.
* ``worst/<eps>/<metric>``: the per-sample worst case over the suite at ``eps``.
* other kinds of robustness (corruptions, certificates) add columns in the same
  ``<condition>/<level>/<metric>`` form.

Values are per-sample metric values as the task defines them (classification: ``accuracy`` is 1
for a correct prediction, 0 otherwise; segmentation: the image's Dice / IoU; landmarks: the
image's mean radial error). Floats are written with 9 significant digits (exact round-trip of
float32) in a fixed column order, so the same evaluation gives a byte-identical file; an empty
cell is a value the task could not define for that sample (NaN). The first line is a comment
naming the format version.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FILE_NAME", "FORMAT_VERSION", "SampleTable", "column_name", "metric_name"]

#: the file's name inside a run's log directory (beside ``robustness.json``)
FILE_NAME = "robustness_samples.csv"
#: bump when a column changes meaning
FORMAT_VERSION = 1
_HEADER = f"# medrobust per-sample results, format {FORMAT_VERSION}"


def metric_name(task: object) -> str:
    """The name of ``task``'s per-sample metric in the file: its ``per_sample_metric_name``
    where that differs from the main metric (detection: ``ap50``), else ``main_metric``."""
    return getattr(task, "per_sample_metric_name", None) or task.main_metric  # type: ignore[attr-defined]


def column_name(condition: str, metric: str, level: float | None = None) -> str:
    """``clean/accuracy``, ``pgd/0.004/accuracy``, ``worst/0.004/dice`` (``level``: ε, severity…)."""
    if "/" in condition or "," in condition:
        raise ValueError(f"per-sample column: condition {condition!r} may not contain '/' or ','")
    if level is None:
        return f"{condition}/{metric}"
    return f"{condition}/{float(level):g}/{metric}"


def common_ids(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted sample ids of both ``a`` and ``b`` (two runs' evaluated samples, for a paired
    comparison); ``ValueError`` when they share none."""
    common = np.intersect1d(a, b)
    if common.size == 0:
        raise ValueError("the two runs share no evaluated sample id: a paired comparison needs the "
                         "same samples (same split, subset and seed)")
    return common


@dataclass
class SampleTable:
    """Per-sample values of one evaluation: ``columns[name][i]`` belongs to ``sample_ids[i]``.

    Attributes:
        sample_ids: ``int64[N]``, unique.
        columns: column name → ``float64[N]``, in insertion order (the file's order).
    """

    sample_ids: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = np.asarray(self.sample_ids, dtype=np.int64).reshape(-1)
        if len(np.unique(ids)) != len(ids):
            seen, dup = set(), []
            for i in ids.tolist():
                if i in seen:
                    dup.append(i)
                seen.add(i)
            raise ValueError(f"per-sample table: sample ids must be unique; repeated: {dup[:10]}")
        self.sample_ids = ids
        self.columns = {k: self._check(k, v) for k, v in self.columns.items()}

    def _check(self, name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape[0] != self.sample_ids.shape[0]:
            raise ValueError(f"per-sample column {name!r}: {arr.shape[0]} values for "
                             f"{self.sample_ids.shape[0]} samples")
        return arr

    def add(self, name: str, values: Sequence[float] | np.ndarray) -> None:
        """Add one column; a name already present is an error (nothing is overwritten)."""
        if name in self.columns:
            raise ValueError(f"per-sample column {name!r} is already in the table")
        self.columns[name] = self._check(name, values)

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f"per-sample column {name!r} not in the table; columns: {list(self.columns)}")
        return self.columns[name]

    def sorted(self) -> SampleTable:
        """The same table with rows sorted by sample id."""
        order = np.argsort(self.sample_ids, kind="stable")
        return SampleTable(self.sample_ids[order], {k: v[order] for k, v in self.columns.items()})

    def aligned(self, other: SampleTable) -> tuple[SampleTable, SampleTable]:
        """Both tables restricted to the sample ids they share, in the same order (for paired
        comparisons). ``ValueError`` when they share none."""
        common = common_ids(self.sample_ids, other.sample_ids)
        return self._take(common), other._take(common)

    def _take(self, ids: np.ndarray) -> SampleTable:
        pos = {int(s): i for i, s in enumerate(self.sample_ids.tolist())}
        rows = np.array([pos[int(s)] for s in ids], dtype=np.int64)
        return SampleTable(ids.copy(), {k: v[rows] for k, v in self.columns.items()})

    # -- files ---------------------------------------------------------------------------------
    def to_csv(self) -> str:
        table = self.sorted()
        buf = io.StringIO()
        buf.write(_HEADER + "\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["sample_id", *table.columns])
        cols = list(table.columns.values())
        for i, sid in enumerate(table.sample_ids.tolist()):
            writer.writerow([sid, *(_fmt(c[i]) for c in cols)])
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename), like ``robustness.json``."""
        from callbacks.atomic import atomic_write_text

        return atomic_write_text(path, self.to_csv())

    @classmethod
    def load(cls, path: str | Path) -> SampleTable:
        """Read a file written by :meth:`save`; errors name the file, line and column."""
        from callbacks.atomic import read_result_text

        path = Path(path)
        lines = read_result_text(path, "per-sample results").splitlines()
        if not lines or not lines[0].startswith("# medrobust per-sample results"):
            raise ValueError(f"{path}: not a medrobust per-sample file (first line should be {_HEADER!r})")
        reader = csv.reader(lines[1:])
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: no header line") from None
        if not header or header[0] != "sample_id":
            raise ValueError(f"{path}: line 2: the first column must be 'sample_id', got {header[:1]}")
        ids: list[int] = []
        values: list[list[float]] = []
        for n, row in enumerate(reader, start=3):
            if len(row) != len(header):
                raise ValueError(f"{path}: line {n}: {len(row)} cells for {len(header)} columns")
            try:
                ids.append(int(row[0]))
                values.append([float(c) if c != "" else math.nan for c in row[1:]])
            except ValueError:
                raise ValueError(f"{path}: line {n}: a cell is not a number: {row}") from None
        arr = np.asarray(values, dtype=np.float64).reshape(len(ids), len(header) - 1)
        return cls(np.asarray(ids, dtype=np.int64), {h: arr[:, j] for j, h in enumerate(header[1:])})


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return ""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.9g}"
