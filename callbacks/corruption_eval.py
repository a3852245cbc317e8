"""Corruptions in the robustness record: the corruption × severity loop, its record section,
mCE, intervals, scalars, report and curve.

:class:`CorruptionEvaluator` runs beside the attack loop on the same subset batches (the
runner hands it each batch: :meth:`callbacks.evaluation_runner.EvaluationRunner.run`), so the
attacks and the corruptions are measured on the same samples of the same model. Per corruption
× severity it feeds the task's own metric collection with the model's output on the corrupted
images (the batch's targets are passed unchanged: no corruption of the family moves content),
and keeps each sample's per-sample metric for ``robustness_samples.csv`` under
``corruption-<name>/<severity>/<metric>``. A sample's corruption is seeded by (evaluation seed,
its dataset index, corruption, severity): the same whatever the batch, the rank or the number
of processes.

The record's ``corruptions`` section (:class:`CorruptionSection`), per Hendrycks & Dietterich
2019 (ImageNet-C) and Di Salvo et al. 2024 (MedMNIST-C):

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
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.seeding import mix_seed
from callbacks.common import compute_metrics
from corruptions import CorruptionSuite, corruption_suite

__all__ = ["CorruptionEvaluator", "CorruptionSection", "condition", "corruption_error",
           "mce_interval", "mean_corruption_error"]

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
        from callbacks.outcome import sum_counts, sum_values

        metrics = {k: compute_metrics(m) for k, m in self.metrics.items()}
        cost = {**sum_values({"seconds": self.seconds}),
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


# --------------------------------------------------------------------------- errors and mCE


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


# --------------------------------------------------------------------------- intervals, scalars, report, curve


def corruption_intervals(table: Any, metric: str, section: CorruptionSection, level: float,
                         seed: int) -> dict[str, Any]:
    """Intervals of each corruption × severity mean, of each corruption's mean over severities
    and of the overall mean (the per-sample mean over the cells: a bootstrap), from the
    per-sample ``table``."""
    from callbacks.per_sample import column_name
    from callbacks.record_intervals import _interval
    from callbacks.uncertainty import mean_interval

    cells, means = [], []
    per_name: dict[str, list[np.ndarray]] = {}
    for name in section.names():
        for s in section.severities:
            col = table.columns.get(column_name(condition(name), metric, s))
            if col is None:
                continue
            per_name.setdefault(name, []).append(col)
            ci = _interval(col, level, seed)
            if ci is not None:
                cells.append({"corruption": name, "severity": int(s), **ci.to_dict()})
        if per_name.get(name):
            avg = np.nanmean(np.stack(per_name[name]), axis=0)
            avg = avg[np.isfinite(avg)]
            if avg.size:
                means.append({"corruption": name, **mean_interval(avg, level, seed).to_dict()})
    out: dict[str, Any] = {"cells": cells, "per_corruption": means}
    if per_name:
        allv = np.nanmean(np.stack([c for cols in per_name.values() for c in cols]), axis=0)
        allv = allv[np.isfinite(allv)]
        out["mean"] = mean_interval(allv, level, seed).to_dict() if allv.size else None
    return out


def mce_interval(columns: Mapping[str, np.ndarray], ref_columns: Mapping[str, np.ndarray], names: Sequence[str],
                 severities: Sequence[int], metric: str, lower_is_better: bool = False,
                 labels: np.ndarray | None = None, num_classes: int | None = None, level: float = 0.95,
                 seed: int = 0, n_resamples: int = 2000) -> dict[str, Any]:
    """Paired percentile bootstrap over test samples of a model's mCE and relative mCE against a
    reference model (Hendrycks & Dietterich 2019), from both runs' per-sample values.

    Each resample draws the test samples with repetition (as multinomial weights,
    :func:`callbacks.uncertainty.bootstrap_weights`) and applies the *same* draw to both models
    (paired: the samples are the same images), recomputes every corruption × severity error and
    the clean error of both, and passes them to :func:`mean_corruption_error`, so each resample's
    mCE has exactly the point estimate's definition. A corruption whose CE (or relative CE)
    denominator is ≤ 0 in a resample is left out of that resample's mean, as in the point
    estimate; ``undefined`` says in what fraction of resamples each corruption was left out.
    The interval is the percentile interval of the resamples whose mCE is defined: the mCE is a
    ratio of dataset-level errors (balanced error is not a mean of per-sample values), so the
    percentile bootstrap is used, as for the project's other dataset-level metrics
    (:func:`callbacks.uncertainty.weighted_interval`); BCa would need a jackknife over samples of
    the whole statistic and is not used.

    Args:
        columns, ref_columns: per-sample values ``[n]`` of the model and of the reference, on
            the same samples in the same order, keyed as in ``robustness_samples.csv``:
            ``clean/<metric>`` and ``corruption-<name>/<severity>/<metric>``.
        names, severities: the corruptions and severities to use.
        metric: the per-sample metric (``accuracy``: 0/1 correctness for classification).
        lower_is_better: the metric's direction (error ``m`` instead of ``1 − m``).
        labels: ``int[n]`` class labels: the error is the balanced error (1 − mean per-class
            recall of the 0/1 ``metric``; MedMNIST-C's), else the plain mean error.
        num_classes: classes of ``labels`` (default ``labels.max() + 1``).
    Returns:
        ``{"mce", "relative_mce"}`` (:class:`callbacks.uncertainty.Interval`; the estimate is the
        statistic on the observed samples), ``"error"`` (``"balanced"`` or ``"plain"``),
        ``"undefined"`` / ``"relative_undefined"`` (``{corruption: fraction of resamples}``),
        ``"estimate_undefined"`` / ``"estimate_relative_undefined"`` (the observed set's left-out
        corruptions), ``"resamples"`` and ``"defined"`` (resamples with a finite mCE / relative mCE).
    """
    from callbacks.per_sample import column_name
    from callbacks.uncertainty import (
        Interval,
        _check_level,
        bootstrap_weights,
        weighted_balanced_accuracy,
    )

    level = _check_level(level)
    keys = [column_name("clean", metric)] + [column_name(condition(c), metric, s) for c in names for s in severities]
    arrays = []
    for which, cols in (("model", columns), ("reference", ref_columns)):
        missing = [k for k in keys if k not in cols]
        if missing:
            raise KeyError(f"mce_interval: the {which}'s per-sample columns lack {missing[:3]}"
                           f"{' …' if len(missing) > 3 else ''}")
        arrays.append({k: np.asarray(cols[k], dtype=np.float64).reshape(-1) for k in keys})
    n = arrays[0][keys[0]].shape[0]
    if n == 0 or any(a.shape[0] != n for d in arrays for a in d.values()):
        raise ValueError(f"mce_interval: every per-sample column needs the same n > 0 samples (first has {n})")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.shape[0] != n:
            raise ValueError(f"mce_interval: labels has {labels.shape[0]} entries for {n} samples")
        bad = [k for d in arrays for k, a in d.items() if not np.isin(a, (0.0, 1.0)).all()]
        if bad:
            raise ValueError(f"mce_interval: balanced error needs 0/1 per-sample {metric!r}; {bad[0]} is not")
        k_cls = int(num_classes) if num_classes is not None else int(labels.max()) + 1

    def errors(weights: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per model: ``{column: error[R]}`` under sample ``weights[R, n]``."""
        out = []
        for d in arrays:
            errs = {}
            for k, a in d.items():
                if labels is not None:
                    errs[k] = 1.0 - weighted_balanced_accuracy(a, labels, k_cls, weights)
                    continue
                ok = np.isfinite(a)
                with np.errstate(invalid="ignore", divide="ignore"):
                    m = (weights @ np.where(ok, a, 0.0)) / (weights @ ok.astype(np.float64))
                errs[k] = m if lower_is_better else 1.0 - m
            out.append(errs)
        return out

    def statistic(weights: np.ndarray) -> list[dict[str, Any]]:
        mod, ref = errors(weights)
        res = []
        for r in range(weights.shape[0]):
            by = {c: {int(s): float(mod[column_name(condition(c), metric, s)][r]) for s in severities} for c in names}
            rby = {c: {int(s): float(ref[column_name(condition(c), metric, s)][r]) for s in severities} for c in names}
            res.append(mean_corruption_error(by, float(mod[keys[0]][r]), rby, float(ref[keys[0]][r])))
        return res

    point = statistic(np.ones((1, n)))[0]
    draws = statistic(bootstrap_weights(n, n_resamples, seed))
    alpha = (1 - level) / 2
    out: dict[str, Any] = {"error": "balanced" if labels is not None else "plain", "resamples": int(n_resamples)}
    for key, per in (("mce", "ce"), ("relative_mce", "relative_ce")):
        vals = np.array([d[key] for d in draws], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        est = float(point[key])
        if vals.size < max(20, n_resamples // 2) or not math.isfinite(est):
            out[key] = Interval(est, math.nan, math.nan, level, n, f"percentile ({vals.size} defined resamples)")
        else:
            low, high = (float(v) for v in np.quantile(vals, [alpha, 1 - alpha]))
            tol = 1e-9 * max(1.0, abs(est))  # float noise only: a genuine exclusion is kept and shown
            low = est if est < low <= est + tol else low
            high = est if est - tol <= high < est else high
            out[key] = Interval(est, low, high, level, n, "percentile, paired")
        out["defined" if key == "mce" else "relative_defined"] = int(vals.size)
        label = "undefined" if key == "mce" else "relative_undefined"
        out[label] = {c: float(np.mean([not math.isfinite(d[per][c]) for d in draws])) for c in names}
        out["estimate_" + label] = [c for c in names if not math.isfinite(point[per][c])]
    return out


def scalar_values(section: CorruptionSection, prefix: str) -> dict[str, float]:
    data = section.to_dict()
    out: dict[str, float] = {}
    for e in section.entries:
        for m, v in e["metrics"].items():
            out[f"{prefix}/corruption/{e['corruption']}/sev={e['severity']}/{m}"] = _num(v)
    for row in data["per_corruption"]:
        for m, v in row["mean"].items():
            out[f"{prefix}/corruption/{row['corruption']}/mean/{m}"] = _num(v)
    for m, v in data["mean"].items():
        out[f"{prefix}/corruption/mean/{m}"] = _num(v)
    out[f"{prefix}/corruption/mean_error"] = _num(data["mean_error"])
    if data["mce"] is not None:
        out[f"{prefix}/corruption/mce"] = _num(data["mce"])
        out[f"{prefix}/corruption/relative_mce"] = _num(data["relative_mce"])
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.4f}"


def report_section(section: CorruptionSection, metric: str, intervals: Mapping[str, Any] | None = None,
                   plot_name: str | None = None) -> list[str]:
    """``report.md``'s corruption section: ``metric`` per corruption × severity (with its
    interval when known), the mean, the error, CE and relative CE, and mCE."""
    data = section.to_dict()
    sev = section.severities
    cell_ci = {(r["corruption"], int(r["severity"])): r for r in (intervals or {}).get("cells", [])}
    lines = [f"## Corruptions — suite `{section.suite}`", "",
             f"Source: {section.source}. Metric: `{metric}` per severity; error for CE: "
             f"`{data['error']}` (clean error {_fmt(section.clean_error)}).", "",
             "| corruption | " + " | ".join(f"sev {s}" for s in sev) + " | mean | error | CE | rel. CE |",
             "|---|" + "---|" * (len(sev) + 4)]
    for row in data["per_corruption"]:
        name = row["corruption"]
        cells = []
        for s in sev:
            v = section.value(name, s, metric)
            ci = cell_ci.get((name, s))
            cells.append(_fmt(v) + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(row['mean'].get(metric))} | "
                     f"{_fmt(row['error'])} | {_fmt(row['ce'])} | {_fmt(row['relative_ce'])} |")
    lines += ["", f"Mean `{metric}` over corruptions and severities: **{_fmt(data['mean'].get(metric))}**; "
              f"mean error {_fmt(data['mean_error'])}."]
    if data["mce"] is not None:
        ref = data["reference"] or {}
        lines.append(f"mCE **{_fmt(data['mce'])}**, relative mCE **{_fmt(data['relative_mce'])}** against "
                     f"`{ref.get('source', '')}` (ImageNet-C's definitions; < 1: more robust than the reference).")
    if section.samples:
        lines.append(f"Cost: {section.forwards} forward passes, {_fmt(section.seconds)} s "
                     f"({_fmt(data['seconds_per_sample'])} s per evaluated sample).")
    if plot_name:
        lines += ["", f"![metric vs severity]({plot_name})"]
    return [*lines, ""]


def plot_corruption_curves(section: CorruptionSection, clean: Mapping[str, Any], metric: str,
                           path: str | Path) -> Path:
    """``metric`` vs severity (0 = clean) per corruption and the mean over corruptions."""
    from callbacks.plotting import _save, plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0, *section.severities]
    c0 = clean.get(metric)
    for name in section.names():
        ys = [c0, *(section.value(name, s, metric) for s in section.severities)]
        ax.plot(xs, [_num(y) for y in ys], marker="o", lw=1, alpha=0.7, label=name)
    mean = [c0, *(_mean([section.value(n, s, metric) for n in section.names()]) for s in section.severities)]
    ax.plot(xs, [_num(y) for y in mean], color="black", lw=2.5, marker="s", label="mean")
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(metric)
    ax.set_title(f"corruption suite {section.suite}")
    ax.set_xticks(xs)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return _save(fig, path)


def plot_corruption_panel(task: Any, batch: Mapping[str, Any], suite: CorruptionSuite | str, path: str | Path,
                          index: int = 0, seed: int = 0) -> Path:
    """Example panel: sample ``index`` of ``batch`` at severities 0–5 (columns) of every
    corruption of ``suite`` (rows), each titled with the model's prediction — the predicted class
    and its probability for a ``[B, K]`` logit output — and the task's per-sample metric (red
    where it is worse than on the clean image). Corrupted with the evaluation's per-sample seed."""
    from callbacks.per_sample import metric_name
    from callbacks.plotting import _save, plt

    suite = corruption_suite(suite)
    one = {k: (v[index:index + 1] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch["image"].shape[0]
               else v) for k, v in batch.items()}
    x = one["image"]
    sid = int(torch.as_tensor(one.get("index", [index])).reshape(-1)[0])
    bounds = tuple(float(b) for b in task.data_info.bounds)
    model = task.attack_model()
    name = metric_name(task)
    higher = bool(task.metric_higher_is_better())
    fig, axes = plt.subplots(len(suite), 6, figsize=(12, 1.9 * len(suite)), squeeze=False)
    for r, c in enumerate(suite):
        base = None
        for s in range(6):
            xc = c(x, s, seeds=[_seed(seed, sid, r, s)], bounds=bounds)
            with torch.no_grad():
                out = model(xc)
            value = float(task.per_sample_metric(out, one).reshape(-1)[0])
            base = value if s == 0 else base
            text = f"{name}={value:.2f}"
            if isinstance(out, torch.Tensor) and out.ndim == 2:
                p = torch.softmax(out.float(), 1)[0]
                text = f"class {int(p.argmax())} ({float(p.max()):.2f}) · " + text
            worse = s > 0 and math.isfinite(value) and base is not None and (value < base if higher else value > base)
            ax = axes[r, s]
            img = xc[0].detach().float().cpu()
            img = img[:, img.shape[1] // 2] if img.ndim == 4 else img  # a volume: its middle slice
            img = img.permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] != 3 else img.clip(*bounds), cmap="gray",
                      vmin=bounds[0], vmax=bounds[1])
            ax.set_title(f"{'clean' if s == 0 else f'sev {s}'}: {text}", fontsize=6,
                         color="red" if worse else "black")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(c.name, fontsize=7)
    fig.suptitle(f"corruption suite {suite.name}, sample {sid}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return _save(fig, path)


def resolve_suite(value: Any, where: str) -> CorruptionSuite | None:
    """``None`` stays ``None``; a name or list becomes a checked suite."""
    if value is None:
        return None
    return corruption_suite(value, where)
