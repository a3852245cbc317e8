"""Many evaluated models in one table: ``medrobust leaderboard DIR…`` (markdown and CSV).

In the spirit of RobustBench's leaderboard, for a lab's own models: each ``robustness.json``
(:class:`callbacks.record.RobustnessRecord`) is one row — the clean main metric, the per-sample
worst case over the suite at every ε, the robust area — with the confidence interval of each
number where the record has intervals (``[low, high]``), sorted by the robust area or by any
metric at any ε. Records of different tasks or main metrics cannot share a table: that is an
error naming each record and what it holds, as is a file that is not a record.

Sort keys (``--sort``): ``robust_area`` (default); ``clean`` or ``<metric>`` (clean value);
``<metric>@<eps>`` (the worst case at ε); ``<attack>:<metric>@<eps>`` (one attack at ε). Best
first in the metric's direction (the record's, else the name's: ``mre`` is lower-is-better);
rows without the value go last.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callbacks.common import format_eps
from callbacks.record import RecordError, RobustnessRecord

__all__ = ["Board", "build_board", "collect_records", "main"]

FILE = "robustness.json"


def collect_records(paths: Sequence[str | Path]) -> list[tuple[str, RobustnessRecord]]:
    """``(name, record)`` for every ``robustness.json`` under ``paths`` (a file, or a folder
    searched recursively); the name is the record's folder (relative to the folder given).
    Every bad file is named at once."""
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append((p.parent.name or str(p.parent), p))
        elif p.is_dir():
            hits = sorted(p.rglob(FILE))
            if not hits:
                raise ValueError(f"leaderboard: no {FILE} under {str(p)!r}")
            # named by the folder below the given one (the given one's name for its own record)
            found += [(str(h.parent.relative_to(p)) if h.parent != p else p.name or str(p), h) for h in hits]
        else:
            raise FileNotFoundError(f"leaderboard: {str(p)!r} does not exist")
    out: list[tuple[str, RobustnessRecord]] = []
    bad: list[str] = []
    for name, f in found:
        try:
            out.append((name, RobustnessRecord.load(f)))
        except (RecordError, ValueError, OSError) as err:
            bad.append(str(err))
    if bad:
        raise ValueError("leaderboard: these files are not robustness records:\n  " + "\n  ".join(bad))
    if not out:
        raise ValueError("leaderboard: no records given")
    return out


@dataclass
class Cell:
    """One number of the table and its interval (``None`` where the record has none)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def text(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "—"
        ci = f" [{self.low:.3f}, {self.high:.3f}]" if self.low is not None and self.high is not None else ""
        return f"{self.value:.3f}{ci}"


@dataclass
class Board:
    """The table: ``columns`` (headers) and ``rows`` (name, cells…, flags), sorted."""

    metric: str
    columns: list[str]
    rows: list[tuple[str, list[Cell], str]]
    sort: str

    def markdown(self) -> str:
        head = ["#", "model", *self.columns, "flags"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, (name, cells, flags) in enumerate(self.rows, start=1):
            lines.append("| " + " | ".join([str(i), name, *(c.text() for c in cells), flags or ""]) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        head = ["rank", "model"]
        for c in self.columns:
            head += [c, f"{c} ci_low", f"{c} ci_high"]
        writer.writerow([*head, "flags"])
        for i, (name, cells, flags) in enumerate(self.rows, start=1):
            row: list[Any] = [i, name]
            for c in cells:
                row += ["" if v is None else f"{v:.6g}" for v in (c.value, c.low, c.high)]
            writer.writerow([*row, flags])
        return buf.getvalue()


def _check_schema(records: list[tuple[str, RobustnessRecord]]) -> str:
    """The shared main metric; an error naming each record when tasks or metrics differ."""
    kinds = {(r.task, r.robust_area.metric if r.robust_area else next(iter(r.clean), "")) for _, r in records}
    if len(kinds) > 1:
        lines = [f"{name}: task {r.task!r}, metric "
                 f"{(r.robust_area.metric if r.robust_area else next(iter(r.clean), ''))!r}" for name, r in records]
        raise ValueError("leaderboard: the records mix tasks or main metrics and cannot share a table:\n  "
                         + "\n  ".join(lines))
    return next(iter(kinds))[1]


def _direction_lower(records: list[tuple[str, RobustnessRecord]], metric: str) -> bool:
    """The direction of ``metric`` as the records state it (the task's metric object, written
    with the robust area); never guessed from the name."""
    for _, r in records:
        said = r.lower_is_better(metric)
        if said is not None:
            return said
    raise ValueError(f"leaderboard: the records do not state whether larger {metric!r} is better (a "
                     "record states it for its robust-area metric); sort by robust_area or by that metric")


def _interval(rec: RobustnessRecord, metric: str, kind: str, eps: float | None = None,
              attack: str | None = None) -> tuple[float | None, float | None]:
    # the per-sample metric's interval, or a dataset-level metric's (AUROC, mAP)
    iv = rec.interval(kind, eps, attack, metric=metric)
    ok = iv is not None and math.isfinite(iv.low) and math.isfinite(iv.high)
    return (iv.low, iv.high) if ok else (None, None)


def _parse_sort(key: str) -> tuple[str, str | None, str | None, float | None]:
    """``(kind, attack, metric, eps)`` of a sort key (see the module docstring)."""
    if key == "robust_area":
        return "robust_area", None, None, None
    attack, metric_eps = (key.split(":", 1) if ":" in key else (None, key))
    if "@" in metric_eps:
        metric, eps_text = metric_eps.split("@", 1)
        try:
            eps = float(eps_text)
        except ValueError:
            raise ValueError(f"leaderboard: --sort {key!r}: {eps_text!r} is not a number (e.g. accuracy@0.004)") from None
        return ("attack" if attack else "worst"), attack, metric, eps
    if attack is not None:
        raise ValueError(f"leaderboard: --sort {key!r}: an attack needs an ε (ATTACK:METRIC@EPS)")
    return "clean", None, (None if metric_eps == "clean" else metric_eps), None


def build_board(records: list[tuple[str, RobustnessRecord]], sort: str = "robust_area",
                metric: str | None = None) -> Board:
    """The leaderboard of ``records`` showing ``metric`` (default: the records' main metric)."""
    main = _check_schema(records)
    metric = metric or main
    missing = [name for name, r in records if metric not in r.clean]
    if missing:
        raise ValueError(f"leaderboard: metric {metric!r} is not in the records {missing}")
    grid = sorted({e for _, r in records for e in r.eps_grid()})
    columns = [f"clean {metric}", *(f"worst {metric} @ {format_eps(e)}" for e in grid), "robust area"]
    rows: list[tuple[str, list[Cell], str, RobustnessRecord]] = []
    for name, r in records:
        cells = [Cell(r.value(metric), *_interval(r, metric, "clean"))]
        for e in grid:
            cells.append(Cell(r.value(metric, "ensemble", e), *_interval(r, metric, "worst", e)))
        area = r.robust_area.value if r.robust_area is not None and r.robust_area.metric == metric else None
        low, high = _interval(r, metric, "robust_area") if area is not None else (None, None)
        cells.append(Cell(area, low, high))
        flags = ", ".join(r.unreliable_flags())
        notes = [f"⚠ upper bound ({flags})"] if flags else []
        if r.incomplete:  # a stopped evaluation: its numbers rest on fewer samples than planned
            notes.append(f"⚠ incomplete ({r.incomplete.get('samples_evaluated')} of "
                         f"{r.incomplete.get('samples_planned')} samples)")
        rows.append((name, cells, "; ".join(notes), r))

    kind, attack, sort_metric, eps = _parse_sort(sort)
    sort_metric = sort_metric or metric

    def key_value(rec: RobustnessRecord) -> float | None:
        if kind == "robust_area":
            return rec.robust_area.value if rec.robust_area is not None else None
        if kind == "clean":
            return rec.value(sort_metric)
        return rec.value(sort_metric, attack or "ensemble", eps)

    if kind != "robust_area":
        known = {m for _, r in records for m in r.clean}
        if sort_metric not in known:
            raise ValueError(f"leaderboard: --sort {sort!r}: unknown metric {sort_metric!r}; the records "
                             f"have {sorted(known)}")
    lower = kind != "robust_area" and _direction_lower(records, sort_metric)

    def order(row: tuple[str, list[Cell], str, RobustnessRecord]) -> tuple[int, float, str]:
        v = key_value(row[3])
        if v is None or math.isnan(v):
            return 1, 0.0, row[0]
        return 0, (v if lower else -v), row[0]

    ordered = sorted(rows, key=order)
    return Board(metric, columns, [(n, c, f) for n, c, f, _ in ordered], sort)


def main(argv: list[str] | None = None) -> int:
    """``medrobust leaderboard DIR... [--sort KEY] [--metric M] [--csv FILE] [--md FILE]``."""
    parser = argparse.ArgumentParser(prog="medrobust leaderboard", description=(
        "Many robustness.json records in one table (markdown on stdout; --csv / --md files)."))
    parser.add_argument("paths", nargs="+", help="run folders (searched for robustness.json) or record files")
    parser.add_argument("--sort", default="robust_area",
                        help="robust_area (default), clean, METRIC, METRIC@EPS (worst case) or ATTACK:METRIC@EPS")
    parser.add_argument("--metric", default=None, help="the metric shown (default: the records' main metric)")
    parser.add_argument("--csv", default=None, help="also write the table as CSV here")
    parser.add_argument("--md", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    try:
        board = build_board(collect_records(args.paths), args.sort, args.metric)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"medrobust leaderboard: {err}\n")
    text = board.markdown()
    print(text, end="")
    if args.csv:
        Path(args.csv).write_text(board.csv())
    if args.md:
        Path(args.md).write_text(text)
    return 0
