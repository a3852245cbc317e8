"""The record's ``corruptions`` section: errors, CE and mCE (Hendrycks & Dietterich 2019,
ImageNet-C; Di Salvo et al. 2024, MedMNIST-C).

:class:`CorruptionSection` holds:

* ``entries``: the task's metrics per corruption × severity;
* ``per_corruption``: each metric's mean over severities, the corruption's error ``E_c`` (the
  mean over severities of the *error* ``1 − m`` of the task's corruption metric ``m``, or ``m``
  itself when lower is better: MedMNIST-C's balanced error for classification, ``1 − Dice``,
  the radial error, ``1 − mAP``), and, against a reference run, ``CE_c = Σ_s E_{s,c} /
  Σ_s E^ref_{s,c}`` and relative ``rCE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^ref_{s,c} −
  E^ref_clean)``;
* ``mean`` (over corruptions and severities), ``mce`` and ``relative_mce`` (means of ``CE_c``
  and ``rCE_c`` over corruptions), and the cost: seconds and forward passes in all, per
  evaluated sample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corruptions import CorruptionSuite

__all__ = ["CorruptionSection", "build_section", "corruption_error", "error_metric_for", "load_reference",
           "mean_corruption_error", "section_of"]


def corruption_error(metrics: Mapping[str, Any], metric: str, lower_is_better: bool) -> float:
    """The error of ``metric``: ``1 − m`` (higher is better) or ``m`` (lower is better)."""
    v = metrics.get(metric)
    if v is None or not math.isfinite(float(v)):
        return math.nan
    return float(v) if lower_is_better else 1.0 - float(v)


def mean_corruption_error(errors: Mapping[str, Mapping[int, float]], clean: float,
                          ref_errors: Mapping[str, Mapping[int, float]], ref_clean: float) -> dict[str, Any]:
    """ImageNet-C's CE and relative CE per corruption and their means (mCE, relative mCE).

    ``errors[c][s]``: the model's error at corruption ``c``, severity ``s``; ``ref_*``: the
    reference model's. Corruptions or severities the reference lacks are left out (named in
    ``missing``); a denominator ≤ 0 gives ``nan`` for that corruption, left out of the mean and
    named in ``undefined`` (relative CE: the reference's error under the corruption is not
    above its clean error — ImageNet-C's relative CE is undefined there, and unstable when the
    denominator is small)."""
    ce: dict[str, float] = {}
    rce: dict[str, float] = {}
    missing: list[str] = []
    for c, by_sev in errors.items():
        ref = ref_errors.get(c)
        if ref is None or any(s not in ref for s in by_sev):
            missing.append(c)
            continue
        num = sum(by_sev.values())
        den = sum(ref[s] for s in by_sev)
        ce[c] = num / den if den > 0 else math.nan
        rnum = sum(e - clean for e in by_sev.values())
        rden = sum(ref[s] - ref_clean for s in by_sev)
        rce[c] = rnum / rden if rden > 0 else math.nan
    finite = [v for v in ce.values() if math.isfinite(v)]
    rfinite = [v for v in rce.values() if math.isfinite(v)]
    undefined = sorted({c for c, v in (*ce.items(), *rce.items()) if not math.isfinite(v)})
    return {"ce": ce, "relative_ce": rce, "missing": missing, "undefined": undefined,
            "mce": float(np.mean(finite)) if finite else math.nan,
            "relative_mce": float(np.mean(rfinite)) if rfinite else math.nan}


@dataclass
class CorruptionSection:
    """The ``corruptions`` object of ``robustness.json`` (see the module docstring)."""

    suite: str
    source: str
    severities: list[int]
    #: the metric whose error the CE uses, and its direction
    error_metric: str
    lower_is_better: bool
    entries: list[dict[str, Any]]
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    clean_error: float | None = None
    reference: dict[str, Any] | None = None
    seconds: float | None = None
    forwards: int | None = None
    samples: int | None = None

    # -- questions ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(dict.fromkeys(e["corruption"] for e in self.entries))

    def value(self, corruption: str, severity: int, metric: str) -> float | None:
        for e in self.entries:
            if e["corruption"] == corruption and int(e["severity"]) == int(severity):
                return e["metrics"].get(metric)
        return None

    def errors(self) -> dict[str, dict[int, float]]:
        """``{corruption: {severity: error}}``."""
        out: dict[str, dict[int, float]] = {}
        for e in self.entries:
            out.setdefault(e["corruption"], {})[int(e["severity"])] = corruption_error(
                e["metrics"], self.error_metric, self.lower_is_better)
        return out

    def per_corruption(self) -> list[dict[str, Any]]:
        """Per corruption: each metric's mean over severities and the mean error."""
        out = []
        for name in self.names():
            rows = [e for e in self.entries if e["corruption"] == name]
            metrics = sorted({m for e in rows for m in e["metrics"]})
            mean = {m: _mean([e["metrics"].get(m) for e in rows]) for m in metrics}
            out.append({"corruption": name, "mean": mean, "error": _mean(list(self.errors()[name].values()))})
        return out

    def mean(self) -> dict[str, float]:
        """Each metric's mean over every corruption and severity."""
        metrics = sorted({m for e in self.entries for m in e["metrics"]})
        return {m: _mean([e["metrics"].get(m) for e in self.entries]) for m in metrics}

    def with_reference(self, reference: CorruptionSection, source: str = "") -> CorruptionSection:
        """This section with CE / relative CE / mCE against ``reference`` (same error metric)."""
        if reference.error_metric != self.error_metric:
            raise ValueError(f"corruption reference {source!r} measures {reference.error_metric!r}, "
                             f"this run {self.error_metric!r}: the CE needs the same error")
        if self.clean_error is None or reference.clean_error is None:
            raise ValueError("corruption reference: both runs need their clean error for the relative mCE")
        res = mean_corruption_error(self.errors(), self.clean_error, reference.errors(), reference.clean_error)
        if res["missing"]:
            warnings.warn(f"corruption reference {source!r} lacks {res['missing']}: left out of the mCE",
                          stacklevel=2)
        self.reference = {"source": source, "suite": reference.suite, "clean_error": reference.clean_error,
                          **res}
        return self

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        per = self.per_corruption()
        ref = self.reference or {}
        for row in per:
            row["ce"] = ref.get("ce", {}).get(row["corruption"])
            row["relative_ce"] = ref.get("relative_ce", {}).get(row["corruption"])
        n = self.samples or 0
        return {
            "suite": self.suite, "source": self.source, "severities": self.severities,
            "error_metric": self.error_metric, "lower_is_better": self.lower_is_better,
            "error": (f"{self.error_metric}" if self.lower_is_better else f"1 - {self.error_metric}"),
            "corruptions": self.corruptions, "entries": self.entries, "per_corruption": per,
            "mean": self.mean(), "clean_error": self.clean_error,
            "mean_error": _mean([r["error"] for r in per]),
            "mce": ref.get("mce"), "relative_mce": ref.get("relative_mce"), "reference": self.reference,
            "seconds": self.seconds, "forwards": self.forwards, "samples": self.samples,
            "seconds_per_sample": (self.seconds / n) if n and self.seconds is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "corruptions") -> CorruptionSection:
        from callbacks.record_parts import RecordError

        try:
            return cls(suite=str(data["suite"]), source=str(data.get("source", "")),
                       severities=[int(s) for s in data["severities"]],
                       error_metric=str(data["error_metric"]), lower_is_better=bool(data["lower_is_better"]),
                       entries=[dict(e) for e in data["entries"]], corruptions=list(data.get("corruptions") or []),
                       clean_error=data.get("clean_error"), reference=data.get("reference"),
                       seconds=data.get("seconds"), forwards=data.get("forwards"), samples=data.get("samples"))
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"{source}: invalid corruption section ({err})") from None


def _mean(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def error_metric_for(task: Any) -> str:
    """The metric whose error the mCE uses: the task's ``corruption_metric`` (classification:
    ``balanced_accuracy``, MedMNIST-C's balanced error), else its ``main_metric``."""
    return str(getattr(task, "corruption_metric", None) or task.main_metric)


def build_section(suite: CorruptionSuite, severities: Sequence[int],
                  metrics: Mapping[tuple[str, int], Mapping[str, float]], cost: Mapping[str, Any],
                  clean: Mapping[str, Any], error_metric: str, lower_is_better: bool) -> CorruptionSection:
    entries = [{"corruption": c.name, "severity": int(s), "metrics": dict(metrics[(c.name, s)])}
               for c in suite for s in severities]
    return CorruptionSection(
        suite=suite.name, source=suite.source, severities=[int(s) for s in severities],
        error_metric=error_metric, lower_is_better=lower_is_better, entries=entries,
        corruptions=[c.describe() for c in suite],
        clean_error=corruption_error(clean, error_metric, lower_is_better),
        seconds=float(cost.get("seconds", 0.0)), forwards=int(cost.get("forwards", 0)),
        samples=int(cost.get("samples", 0)))


def load_reference(value: Any) -> CorruptionSection:
    """A reference run's corruption section: a ``robustness.json`` path, a record or a section."""
    from callbacks.record import RobustnessRecord

    if isinstance(value, CorruptionSection):
        return value
    record = RobustnessRecord.coerce(value) if not isinstance(value, str | Path) else RobustnessRecord.load(value)
    if record.corruptions is None:
        raise ValueError(f"corruption reference {value!r} has no corruption results (evaluate it with the same "
                         "corruption suite first)")
    return record.corruptions


def section_of(got: Mapping[str, Any], clean: Mapping[str, Any], metric: str, lower_is_better: bool,
               reference: Any = None, where: str = "corruptions") -> CorruptionSection:
    """The section of one evaluation's corruption results (``got``:
    :attr:`callbacks.outcome.EvalOutcome.corruptions`; ``clean``: the record's clean metrics),
    its error from ``metric``, with CE / mCE against ``reference`` (a ``robustness.json`` path,
    a record or a section) when given."""
    if metric not in clean:
        raise ValueError(f"{where}: the task's corruption metric {metric!r} is not one of its metrics {list(clean)}")
    section = build_section(got["suite"], got["severities"], got["metrics"], got["cost"], clean, metric,
                            lower_is_better)
    if reference is not None:
        section.with_reference(load_reference(reference), str(reference))
    return section
