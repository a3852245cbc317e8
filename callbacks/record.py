"""``robustness.json`` as one typed object: :class:`RobustnessRecord`.

Every writer (:class:`callbacks.AdversarialEvaluation`) and every reader (``report.md``, the
curves, the CLI summary in ``train.py``, ``benchmarks/run.py`` and ``benchmarks/paper_report.py``)
goes through this module; nothing else reads ``robustness.json`` by string keys.

The JSON keys are DESIGN.md's contract (``task``, ``method``, ``epoch``, ``split``, ``clean``,
``attacks[{attack, norm, eps, steps, metrics}]``) plus medrobust's own (ensemble, robust area,
subset, settings, …) and ``schema_version``. A file without ``schema_version`` (written before
it existed) reads as version 0; the content is the same.

Files are written crash-safe (:mod:`callbacks.atomic`): ``robustness.json`` by temp file +
rename, each history line by rewriting ``robustness_history.jsonl`` through a temp file, so a
kill leaves the previous complete file. :func:`load_history` still tolerates a torn last line
(left by an older, non-atomic writer or a copy cut short) and says so in a warning.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callbacks.accounting import ComputeAccounting
from callbacks.record_parts import (
    AttackEntry,
    EnsembleEntry,
    MinimalEpsSummary,
    RecordError,
    RobustArea,
    SubsetInfo,
    _metrics,
    _need,
    json_safe,
)

__all__ = [
    "SCHEMA_VERSION",
    "AttackEntry",
    "EnsembleEntry",
    "MinimalEpsSummary",
    "RecordError",
    "RobustArea",
    "RobustnessRecord",
    "SubsetInfo",
    "append_history",
    "json_safe",
    "load_history",
]

#: version of the file layout; bump when a key changes meaning or disappears
SCHEMA_VERSION = 1


# --- the record --------------------------------------------------------------------------------
@dataclass
class RobustnessRecord:
    """One evaluation: clean metrics, every attack × ε, the worst case, the robust area and
    the exact setting. ``to_json``/``from_json`` (``save``/``load`` for files) keep the keys of
    ``robustness.json``."""

    task: str
    method: str
    epoch: int
    split: str
    clean: dict[str, float | None]
    attacks: list[AttackEntry]
    ensemble: list[EnsembleEntry] = field(default_factory=list)
    robust_area: RobustArea | None = None
    global_step: int | None = None
    suite: str | None = None
    suite_name: str | None = None
    sequential: bool = False
    members: list[dict[str, Any]] = field(default_factory=list)
    ensemble_rule: str = ""
    eval_seconds: float | None = None
    subset: SubsetInfo | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    #: per-sample minimal ε (only with ``minimal_eps`` enabled)
    minimal_eps: MinimalEpsSummary | None = None
    #: ``callbacks.sanity.sanity_report`` (only when the sanity checks ran)
    sanity: dict[str, dict[str, Any]] | None = None
    #: forward / backward passes and seconds per member × ε and in total
    #: (:class:`callbacks.accounting.ComputeAccounting`; ``None`` in files written before it)
    compute: ComputeAccounting | None = None
    #: the fired sanity flags and what they do to the numbers (``callbacks.sanity.
    #: mark_unreliable``): ``[{flag, message, affects, meaning, next}]``; ``None`` when no flag
    #: fired or the checks did not run. The affected entries carry ``unreliable: [flag, …]``.
    unreliable: list[dict[str, Any]] | None = None
    #: confidence intervals of the clean, per-attack, worst-case and robust-area numbers, from
    #: the per-sample file (:func:`callbacks.record_intervals.record_intervals`) and, for
    #: dataset-level metrics (AUROC, mAP), the evidence file under ``"dataset_metrics"``
    #: (:func:`callbacks.dataset_metrics.dataset_intervals`); read one with :meth:`interval`;
    #: ``None`` when not computed
    intervals: dict[str, Any] | None = None
    #: corruption × severity metrics, per-corruption means, mCE against a reference, cost
    #: (:class:`callbacks.corruption_section.CorruptionSection`); ``None`` when no corruption
    #: suite ran (and in files written before corruptions existed)
    corruptions: Any = None
    #: set when the evaluation was stopped before its end (SIGTERM): ``{reason,
    #: samples_evaluated, samples_planned, batches_evaluated, batches_planned, not_run}``; the
    #: numbers rest on the evaluated samples only (whole batches, every member × ε)
    incomplete: dict[str, Any] | None = None
    #: randomized-smoothing certificates of the same model on the same samples, one entry per σ
    #: (:func:`callbacks.certified_record.certification_entry`: settings n0, n, α, σ, batch, correction,
    #: seed, and the certified metric and abstain rate per L2 radius with intervals); ``None``
    #: when not certified
    certified: list[dict[str, Any]] | None = None
    #: each metric's direction ``{metric: higher_is_better}``, as the task's metric objects
    #: declare it (``RobustTask.metric_higher_is_better``); ``None`` in older files
    higher_is_better: dict[str, bool] | None = None
    schema_version: int = SCHEMA_VERSION

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "robustness record") -> RobustnessRecord:
        """Validate and type a parsed record; ``source`` (a path) starts every error message."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{source}: a record must be a JSON object, got {type(data).__name__}")
        version = _need(data, "schema_version", int, source, optional=True)
        version = 0 if version is None else version
        if version > SCHEMA_VERSION:
            raise RecordError(f"{source}: key 'schema_version' is {version}, newer than this medrobust "
                              f"reads ({SCHEMA_VERSION}); update medrobust")
        attacks = _need(data, "attacks", list, source)
        ensemble = _need(data, "ensemble", list, source, optional=True) or []
        area = data.get("robust_area")
        subset = data.get("subset")
        return cls(
            task=_need(data, "task", str, source),
            method=_need(data, "method", str, source),
            epoch=_need(data, "epoch", int, source),
            split=_need(data, "split", str, source),
            clean=_metrics(data, "clean", source),
            attacks=[AttackEntry.from_dict(e, f"{source}: attacks[{i}]") for i, e in enumerate(attacks)],
            ensemble=[EnsembleEntry.from_dict(e, f"{source}: ensemble[{i}]") for i, e in enumerate(ensemble)],
            robust_area=None if area is None else RobustArea.from_dict(area, f"{source}: robust_area"),
            global_step=_need(data, "global_step", int, source, optional=True),
            suite=data.get("suite"),
            suite_name=data.get("suite_name"),
            sequential=bool(data.get("sequential", False)),
            members=list(data.get("members") or []),
            ensemble_rule=str(data.get("ensemble_rule", "")),
            eval_seconds=_need(data, "eval_seconds", float, source, optional=True),
            subset=None if subset is None else SubsetInfo.from_dict(subset, f"{source}: subset"),
            settings=dict(_need(data, "settings", dict, source, optional=True) or {}),
            minimal_eps=None if data.get("minimal_eps") is None
            else MinimalEpsSummary.from_dict(data["minimal_eps"], f"{source}: minimal_eps"),
            sanity=_need(data, "sanity", dict, source, optional=True),
            compute=None if data.get("compute") is None
            else ComputeAccounting.from_dict(data["compute"], f"{source}: compute"),
            unreliable=_need(data, "unreliable", list, source, optional=True),
            intervals=_need(data, "intervals", dict, source, optional=True),
            corruptions=_corruptions(data.get("corruptions"), f"{source}: corruptions"),
            incomplete=_need(data, "incomplete", dict, source, optional=True),
            certified=_need(data, "certified", list, source, optional=True),
            higher_is_better=_need(data, "higher_is_better", dict, source, optional=True),
            schema_version=version,
        )

    @classmethod
    def coerce(cls, record: RobustnessRecord | Mapping[str, Any], source: str = "robustness record") -> RobustnessRecord:
        """``record`` itself, or a parsed ``robustness.json`` dict validated into one."""
        return record if isinstance(record, RobustnessRecord) else cls.from_dict(record, source)

    @classmethod
    def from_json(cls, text: str, source: str = "robustness record") -> RobustnessRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} column "
                              f"{err.colno}); the file is truncated or corrupt") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> RobustnessRecord:
        """Read ``robustness.json``; :class:`RecordError` naming the file and key when invalid."""
        from callbacks.atomic import read_result_text

        path = Path(path)
        return cls.from_json(read_result_text(path, "robustness record", RecordError), str(path))

    # -- writing ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``robustness.json`` object (floats may still be non-finite: see :meth:`to_json`)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "task": self.task, "method": self.method, "epoch": self.epoch, "split": self.split,
            "global_step": self.global_step, "suite": self.suite, "suite_name": self.suite_name,
            "sequential": self.sequential, "members": self.members, "clean": self.clean,
            "attacks": [e.to_dict() for e in self.attacks],
            "ensemble": [e.to_dict() for e in self.ensemble],
            "ensemble_rule": self.ensemble_rule,
            "robust_area": self.robust_area.to_dict() if self.robust_area is not None else None,
            "eval_seconds": self.eval_seconds,
            "subset": self.subset.to_dict() if self.subset is not None else None,
            "settings": self.settings,
        }
        if self.minimal_eps is not None:
            out["minimal_eps"] = self.minimal_eps.to_dict()
        if self.sanity is not None:
            out["sanity"] = self.sanity
        if self.compute is not None:
            out["compute"] = self.compute.to_dict()
        if self.unreliable:
            out["unreliable"] = self.unreliable
        if self.intervals is not None:
            out["intervals"] = self.intervals
        if self.corruptions is not None:
            out["corruptions"] = self.corruptions.to_dict()
        if self.incomplete is not None:
            out["incomplete"] = self.incomplete
        if self.certified is not None:
            out["certified"] = self.certified
        if self.higher_is_better is not None:
            out["higher_is_better"] = self.higher_is_better
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (non-finite numbers as ``null``)."""
        return json.dumps(json_safe(self.to_dict()), indent=indent, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` atomically (temp file + rename: a kill leaves the old file or this one)."""
        from callbacks.atomic import atomic_write_text

        return atomic_write_text(path, self.to_json())

    # -- questions readers ask ----------------------------------------------------------------
    def interval(self, kind: str, eps: float | None = None, attack: str | None = None,
                 metric: str | None = None) -> Any:
        """The :class:`callbacks.uncertainty.Interval` of the clean (``"clean"``), worst-case
        (``"worst"``, ``eps``), one attack's (``"attack"``, ``attack``, ``eps``) or the robust
        area's (``"robust_area"``) number, or ``None`` when the record has none. ``metric``:
        of that metric (default: the per-sample metric of ``intervals``; ``auroc``, ``map``…
        from ``intervals["dataset_metrics"]``)."""
        from callbacks.record_intervals import interval_of

        return interval_of(self.intervals, kind, eps, attack, metric)

    def certification(self, sigma: float) -> dict[str, Any] | None:
        """The ``certified`` entry of noise level ``sigma`` (``None`` when there is none)."""
        for entry in self.certified or []:
            if math.isclose(float(entry.get("sigma", math.nan)), float(sigma)):
                return entry
        return None

    def metric_names(self) -> list[str]:
        """The task's metric names, in the order the clean metrics were computed."""
        return list(self.clean)

    def attack_labels(self) -> list[str]:
        """Attack labels in suite order."""
        return list(dict.fromkeys(e.attack for e in self.attacks))

    def eps_grid(self) -> list[float]:
        return sorted({e.eps for e in self.attacks} | {e.eps for e in self.ensemble})

    def entries(self, attack: str) -> list[AttackEntry] | list[EnsembleEntry]:
        """The entries of one attack label (``"ensemble"``: the worst-case entries), by ε."""
        if attack == "ensemble":
            return sorted(self.ensemble, key=lambda e: e.eps)
        return sorted((e for e in self.attacks if e.attack == attack), key=lambda e: e.eps)

    def value(self, metric: str, attack: str | None = None, eps: float | None = None) -> float | None:
        """``metric`` clean (``attack=None``) or of ``attack`` (or ``"ensemble"``) at ``eps``."""
        if attack is None:
            return self.clean.get(metric)
        for e in self.entries(attack):
            if eps is not None and math.isclose(e.eps, float(eps)):
                return e.metrics.get(metric)
        return None

    def unreliable_flags(self) -> list[str]:
        """Names of the fired sanity flags that make robust numbers of this record upper bounds."""
        return [str(u.get("flag")) for u in self.unreliable or []]

    def lower_is_better(self, metric: str) -> bool | None:
        """The direction of ``metric`` as the task stated it (:attr:`higher_is_better`; in an
        older file, the robust area's flag for its metric), or ``None`` when the record does
        not say."""
        if self.higher_is_better and metric in self.higher_is_better:
            return not self.higher_is_better[metric]
        if self.robust_area is not None and self.robust_area.metric == metric:
            return self.robust_area.metric_lower_is_better
        return None


def _corruptions(data: Any, source: str) -> Any:
    if data is None:
        return None
    from callbacks.corruption_section import CorruptionSection

    return CorruptionSection.from_dict(data, source)


# --- the history -------------------------------------------------------------------------------
def append_history(path: str | Path, record: RobustnessRecord) -> Path:
    """Append ``record`` as one line of ``robustness_history.jsonl``, atomically (the file is
    rewritten through a temp file: old lines, or old lines plus this complete one)."""
    from callbacks.atomic import append_line_atomic

    return append_line_atomic(path, record.to_json(indent=None))


def load_history(path: str | Path) -> list[RobustnessRecord]:
    """Every record of ``robustness_history.jsonl``, oldest first.

    A torn *last* line (no newline and not valid JSON: a copy cut short, or a writer older than
    the atomic one) is dropped with a warning naming the file; a bad line elsewhere is a
    :class:`RecordError` naming the file and the line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise RecordError(f"{path}: cannot read the robustness history ({err.strerror})") from None
    lines = raw.split("\n")
    out: list[RobustnessRecord] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = n == len(lines)  # no newline after it
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if last:
                warnings.warn(f"{path}: line {n} is torn (an interrupted write); ignoring it", stacklevel=2)
                break
            raise RecordError(f"{path}: line {n} is not valid JSON; the history is corrupt") from None
        out.append(RobustnessRecord.from_dict(data, f"{path}: line {n}"))
    return out
