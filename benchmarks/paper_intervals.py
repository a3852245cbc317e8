"""The paper-suite verdicts: intervals from the runs' per-sample files, and the tests on them.

Every claim of :mod:`benchmarks.paper_suites` is restated as one or more *tests on an interval*
(:class:`IntervalTest`): a quantity (a difference of two models on the same test samples, a
model's worst case against half its clean accuracy, …), its confidence interval, and the side
of a threshold the claim puts it on. :func:`callbacks.uncertainty.decide` turns each test into
*confirmed* / *refuted* / *inconclusive*; a rule of several tests combines them with
:func:`all_of` / :func:`any_of` (three-valued logic: a conjunction is confirmed only when every
part is, refuted when any part is).

Where the numbers come from: each run of ``results.json`` names its run folder (``log_dir``);
the evaluation wrote ``robustness_samples.csv`` beside ``robustness.json`` there (one row per
test sample, :mod:`callbacks.per_sample`). A quantity is built from :class:`Term` s, each one
run's per-sample values (a column, a mean of columns, a per-sample robust area) times a
coefficient:

==============================  =====================================================================
case                            interval
==============================  =====================================================================
one seed, one run's accuracy    Agresti–Coull (:func:`~callbacks.uncertainty.proportion_interval`), as
                                the record's own interval
one seed, linear quantity       BCa at Hesterberg's expanded level of the per-sample combination
                                (:func:`~callbacks.uncertainty.paired_difference` for A − B: the
                                pairs stay together, so the samples' shared difficulty cancels)
N seeds, linear quantity        :func:`~callbacks.uncertainty.seeds_interval` of ``d[s, i] =
                                Σ coef·X_run[s, i]``: row ``s`` pairs seed ``s`` of every run.
                                Seeds of different runs are independent trainings, so the rows are
                                i.i.d. draws of (model A, model B) pairs and the two-level bootstrap
                                (seeds, then one shared draw of samples) covers both the seed-to-seed
                                and the sample-to-sample variation, still paired on samples
a ratio of means (kept          two-level percentile bootstrap of the statistic itself
fraction of clean accuracy)     (:func:`statistic_interval`): one shared draw of samples, seeds drawn
                                per run
no per-sample file (results     the record's own interval (``intervals`` of ``robustness.json``) for a
written before issue 23)        one-run quantity; for A − B the conservative unpaired interval
                                ``[low_A − high_B, high_A − low_B]``; otherwise no interval, and the
                                verdict is *inconclusive* with the reason
==============================  =====================================================================

Each test also states ``n`` and the smallest effect ``n`` could detect
(:func:`~callbacks.uncertainty.minimum_detectable_difference`, 80 % power at the interval's
level): from the standard deviation of the per-sample combination for one seed, from the
interval's width (``SE ≈ width / (2·z)``) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from benchmarks.common import ROOT, seed_entries
from benchmarks.paper_evidence import Term, run_matrices
from callbacks.uncertainty import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Interval,
    Verdict,
    decide,
    mean_interval,
    minimum_detectable_difference,
    paired_difference,
    proportion_interval,
    seeds_interval,
)


# ------------------------------------------------------------------------------ three-valued logic
def all_of(verdicts: Sequence[str]) -> Verdict:
    """Conjunction: *refuted* when any part is, *confirmed* when every part is, else *inconclusive*."""
    if any(v == "refuted" for v in verdicts):
        return "refuted"
    return "confirmed" if verdicts and all(v == "confirmed" for v in verdicts) else "inconclusive"


def any_of(verdicts: Sequence[str]) -> Verdict:
    """Disjunction: *confirmed* when any part is, *refuted* when every part is, else *inconclusive*."""
    if any(v == "confirmed" for v in verdicts):
        return "confirmed"
    return "refuted" if verdicts and all(v == "refuted" for v in verdicts) else "inconclusive"


def negate(verdict: str) -> Verdict:
    return {"confirmed": "refuted", "refuted": "confirmed"}.get(verdict, "inconclusive")  # type: ignore[return-value]


def _finite_columns(mats: list[np.ndarray]) -> list[np.ndarray]:
    """Drop samples whose value is undefined (NaN) in any term or seed."""
    ok = np.all([np.isfinite(m).all(axis=0) for m in mats], axis=0)
    return [m[:, ok] for m in mats]


def _z(level: float) -> float:
    return float(stats.norm.ppf(1 - (1 - level) / 2))


def _mdd_from_width(iv: Interval) -> float | None:
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)) or iv.n < 2:
        return None
    se = (iv.high - iv.low) / (2 * _z(iv.level))
    return minimum_detectable_difference(iv.n, se * math.sqrt(iv.n), iv.level)


@dataclass
class Estimate:
    """An interval with what a report says about it: ``n`` samples, ``seeds``, the smallest
    effect ``n`` could detect, McNemar's p for a paired 0/1 difference, or why there is none."""

    interval: Interval | None
    seeds: int = 1
    mdd: float | None = None
    p_value: float | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def linear_estimate(terms: Sequence[Term], level: float = DEFAULT_LEVEL, seed: int = 0) -> Estimate:
    """The interval of ``Σ coef_k · mean(values_k)`` over the samples the runs share (module
    docstring: one seed → BCa / paired BCa; N seeds → two-level; no files → the records)."""
    mats, reason = run_matrices(terms)
    if mats is None:
        return _record_fallback(terms, reason or "", level)
    mats = _finite_columns(mats)
    n_seeds = min(m.shape[0] for m in mats)
    notes = []
    if any(m.shape[0] != n_seeds for m in mats):
        notes.append(f"the first {n_seeds} seeds of each run")
    d = sum(t.coef * m[:n_seeds] for t, m in zip(terms, mats))
    assert isinstance(d, np.ndarray)
    n = d.shape[1]
    if n < 2:
        return Estimate(None, reason="fewer than 2 samples with defined values")
    if n_seeds == 1:
        plain = len(terms) == 2 and sorted(t.coef for t in terms) == [-1.0, 1.0]
        if plain:
            a, b = (mats[0][0], mats[1][0]) if terms[0].coef > 0 else (mats[1][0], mats[0][0])
            cmp = paired_difference(a, b, level=level, seed=seed)
            iv, p = cmp.difference, cmp.p_value
        elif len(terms) == 1 and terms[0].coef == 1.0 and np.isin(d[0], (0.0, 1.0)).all():
            iv, p = proportion_interval(int(d[0].sum()), n, level), None  # as the record's accuracy interval
        else:
            iv, p = mean_interval(d[0], level=level, seed=seed), None
        assert isinstance(iv, Interval)
        sd = float(np.std(d[0], ddof=1))
        return Estimate(iv, 1, minimum_detectable_difference(n, sd, level), p, notes=notes)
    iv = seeds_interval(d, level=level, seed=seed)
    iv = Interval(iv.estimate, iv.low, iv.high, iv.level, n, iv.method)  # n: samples, not seeds × samples
    return Estimate(iv, n_seeds, _mdd_from_width(iv), notes=notes)


def _record_fallback(terms: Sequence[Term], reason: str, level: float) -> Estimate:
    """Intervals of the records standing for the terms (no per-sample files): one term → its
    interval × coef; A − B → the conservative unpaired ``[low_A − high_B, high_A − low_B]``."""
    from callbacks.record import RobustnessRecord

    ivs = []
    for t in terms:
        rec = (t.entry or {}).get(t.kind)
        if not rec or t.fallback is None or len(seed_entries(t.entry or {})) != 1:
            return Estimate(None, reason=reason)
        rec = RobustnessRecord.coerce(rec, "results.json record")
        if not rec.intervals or (t.fallback_metric and rec.intervals.get("metric") != t.fallback_metric):
            return Estimate(None, reason=f"{reason}; the record has no interval for it")
        iv = rec.interval(t.fallback[0], t.fallback[1])
        if iv is None:
            return Estimate(None, reason=f"{reason}; the record has no interval for it")
        lo, hi = sorted((t.coef * iv.low, t.coef * iv.high))
        ivs.append(Interval(t.coef * iv.estimate, lo, hi, iv.level, iv.n, iv.method))
    if len(ivs) == 1:
        iv = ivs[0]
        return Estimate(iv, 1, _mdd_from_width(iv), notes=["the record's interval (no per-sample file)"])
    if len(ivs) == 2 and sorted(t.coef for t in terms) == [-1.0, 1.0]:
        a, b = ivs  # coefficients already applied: the difference is a sum
        iv = Interval(a.estimate + b.estimate, a.low + b.low, a.high + b.high, a.level, min(a.n, b.n),
                      "unpaired-conservative")
        return Estimate(iv, 1, _mdd_from_width(iv),
                        notes=["no per-sample files: conservative unpaired interval from the records"])
    return Estimate(None, reason=reason)


def statistic_interval(terms: Sequence[Term], statistic: Callable[[list[np.ndarray]], np.ndarray],
                       level: float = DEFAULT_LEVEL, seed: int = 0,
                       n_resamples: int = DEFAULT_RESAMPLES) -> Estimate:
    """Two-level percentile bootstrap of ``statistic([mean of term k] for k)`` (each ``[R]``
    over resamples) for a quantity that is not linear in the means (a ratio). Each resample
    draws one set of samples shared by every run (paired) and, per run, its seeds with
    repetition (terms of the same run share the draw: the same models). With one seed per run
    it is the paired percentile bootstrap over samples."""
    mats, reason = run_matrices(terms)
    if mats is None:
        return Estimate(None, reason=reason)
    mats = _finite_columns(mats)
    n = mats[0].shape[1]
    if n < 2:
        return Estimate(None, reason="fewer than 2 samples with defined values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_resamples), n))
    runs: dict[int, np.ndarray] = {}
    for t, m in zip(terms, mats):
        key = id(t.entry)
        if key not in runs:
            runs[key] = rng.integers(0, m.shape[0], size=(int(n_resamples), m.shape[0]))
    means = []
    for t, m in zip(terms, mats):
        s = runs[id(t.entry)]
        out = np.empty(int(n_resamples))
        for start in range(0, int(n_resamples), 256):
            si, ii = s[start:start + 256], idx[start:start + 256]
            out[start:start + 256] = m[si[:, :, None], ii[:, None, :]].mean(axis=(1, 2))
        means.append(t.coef * out)
    draws = np.asarray(statistic(means), dtype=np.float64)
    est = float(np.asarray(statistic([np.array([t.coef * m.mean()]) for t, m in zip(terms, mats)]))[0])
    draws = draws[np.isfinite(draws)]
    if draws.size < n_resamples // 2 or not math.isfinite(est):
        return Estimate(None, reason=f"the statistic is undefined on most resamples ({draws.size} of {n_resamples})")
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    n_seeds = max(m.shape[0] for m in mats)
    iv = Interval(est, float(min(low, est)), float(max(high, est)), level, n,
                  "two-level percentile" if n_seeds > 1 else "paired percentile")
    return Estimate(iv, n_seeds, _mdd_from_width(iv))


# ------------------------------------------------------------------------------ dataset-level metrics
def dataset_estimate(entry: dict[str, Any] | None, metric: str, key: str = "clean", kind: str = "test",
                     level: float = DEFAULT_LEVEL, seed: int = 0,
                     n_resamples: int = DEFAULT_RESAMPLES) -> Estimate:
    """The interval of a dataset-level metric (``auroc``, ``map``…) of one run's column ``key``
    (``clean``, ``worst/<ε>``) from each seed's ``robustness_evidence.json``
    (:mod:`callbacks.dataset_metrics`).

    One seed: BCa over images, as the record's own ``dataset_metrics`` interval. Several
    seeds: a two-level percentile bootstrap — each resample draws one set of images (weights
    shared by every seed, the same test set) and the seeds with repetition, and averages the
    drawn seeds' metrics on those images. Without evidence files: the record's
    ``dataset_metrics`` interval for one seed, else no interval (the reason says why)."""
    from callbacks.dataset_metrics import weighted_bca_interval
    from callbacks.dataset_statistics import statistics
    from callbacks.evidence import FILE_NAME as EVIDENCE_FILE
    from callbacks.evidence import Evidence
    from callbacks.image_bootstrap import bootstrap_weights
    from callbacks.record import RobustnessRecord

    if not entry or not entry.get(kind):
        return Estimate(None, reason=f"no {kind} record")
    seeds = seed_entries(entry)
    evidence = []
    for e in seeds:
        path = ROOT / str(e.get("log_dir") or "") / EVIDENCE_FILE
        if not e.get("log_dir") or not path.is_file():
            evidence = []
            break
        evidence.append(Evidence.load(path))
    if not evidence:
        rec = RobustnessRecord.coerce(entry[kind], "results.json record")
        eps = float(key.split("/", 1)[1]) if "/" in key else None
        iv = rec.interval("clean" if eps is None else "worst", eps, metric=metric) if len(seeds) == 1 else None
        if iv is None:
            return Estimate(None, reason=f"{metric} is a dataset-level metric and the run has no "
                                         f"`{EVIDENCE_FILE}` to resample (results written before it)")
        return Estimate(iv, 1, _mdd_from_width(iv), notes=["the record's interval"])
    stats_ = []
    for ev in evidence:
        if not np.array_equal(ev.sample_ids, evidence[0].sample_ids):
            return Estimate(None, reason="the seeds were evaluated on different samples")
        try:
            stats_.append(statistics(ev, key)[metric])
        except KeyError as err:
            return Estimate(None, reason=f"the evidence file has no {metric!r} for {key!r} ({err})")
    n = evidence[0].n
    if len(stats_) == 1:
        iv = weighted_bca_interval(stats_[0], n, level, seed, n_resamples)
        if iv is None:
            return Estimate(None, reason=f"{metric} is undefined on the evaluated samples")
        return Estimate(iv, 1, _mdd_from_width(iv))
    ones = np.ones((1, n))
    est = float(np.mean([float(st(ones)[0]) for st in stats_]))
    weights = bootstrap_weights(n, n_resamples, seed)
    per_seed = np.stack([np.asarray(st(weights), dtype=np.float64) for st in stats_])      # [S, R]
    rng = np.random.default_rng(seed + 1)
    drawn = rng.integers(0, len(stats_), size=(int(n_resamples), len(stats_)))             # [R, S]
    draws = np.nanmean(per_seed[drawn, np.arange(int(n_resamples))[:, None]], axis=1)
    draws = draws[np.isfinite(draws)]
    if not math.isfinite(est) or draws.size < n_resamples // 2:
        return Estimate(None, reason=f"{metric} is undefined on most resamples")
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    iv = Interval(est, float(min(low, est)), float(max(high, est)), level, n, "two-level percentile")
    return Estimate(iv, len(stats_), _mdd_from_width(iv))


# ------------------------------------------------------------------------------ tests on intervals
@dataclass
class IntervalTest:
    """One part of a rule: ``name``'s estimate, decided against ``threshold`` on the ``claim`` side."""

    name: str
    estimate: Estimate
    claim: Literal["greater", "less"]
    threshold: float = 0.0
    #: the point estimate from the records (means over seeds), for :attr:`point_verdict` when
    #: there is no interval; default: the interval's estimate
    point: float | None = None

    @property
    def point_verdict(self) -> Verdict | None:
        """What the point estimate alone says (the two-valued reading before intervals): on the
        claim's side → confirmed, on the other → refuted, exactly at the threshold → inconclusive;
        ``None`` when there is no point estimate either."""
        iv = self.estimate.interval
        value = self.point if self.point is not None else (iv.estimate if iv is not None else None)
        if value is None or not math.isfinite(value):
            return None
        return decide(Interval(value, value, value, DEFAULT_LEVEL, 1, "point"), self.claim, self.threshold)

    @property
    def verdict(self) -> Verdict:
        iv = self.estimate.interval
        if iv is None:
            return "inconclusive"
        verdict = decide(iv, self.claim, self.threshold)
        if self.mcnemar_disagrees and verdict != "inconclusive":
            return "inconclusive"
        return verdict

    @property
    def mcnemar_disagrees(self) -> bool:
        """A paired 0/1 difference whose bootstrap interval excludes 0 while McNemar's exact test
        does not reject: the bootstrap cannot go below 0 when every discordant pair goes one way
        (3 such pairs already give a 95 % interval above 0; McNemar's p is then 0.25), so with
        few discordant pairs the exact test decides and the verdict stays inconclusive."""
        e = self.estimate
        return (e.p_value is not None and e.interval is not None and self.threshold == 0.0
                and decide(e.interval, self.claim, 0.0) != "inconclusive" and e.p_value >= 1 - e.interval.level)

    def text(self) -> str:
        """``staged − naive … = 0.210 [0.090, 0.330] > 0: confirmed (n = 40, 2 seeds, detects ≥ 0.12)``."""
        side = ">" if self.claim == "greater" else "<"
        e = self.estimate
        if e.interval is None:
            return f"{self.name} {side} {self.threshold:g}: no interval ({e.reason}) → inconclusive"
        bits = [f"n = {e.interval.n}"]
        if e.seeds > 1:
            bits.append(f"{e.seeds} seeds")
        if e.mdd is not None:
            bits.append(f"detects ≥ {e.mdd:.3f}")
        if e.p_value is not None:
            bits.append(f"McNemar p = {e.p_value:.3g}")
        bits += e.notes
        if self.mcnemar_disagrees:
            bits.append("the interval excludes 0 but McNemar's exact test does not reject: too few discordant pairs")
        return f"{self.name} = {e.interval} {side} {self.threshold:g}: {self.verdict} ({', '.join(bits)})"


def point_reading(tests: Sequence[IntervalTest], combine: Callable[[list[str]], str] | None = None) -> str | None:
    """The verdict the point estimates alone give, combined as the rule combines its tests
    (``combine`` of the point verdicts; default: the conjunction); ``None`` when a test has no
    point estimate."""
    verdicts = [t.point_verdict for t in tests]
    if not verdicts or any(v is None for v in verdicts):
        return None
    return (combine or all_of)([str(v) for v in verdicts])


def tests_summary(tests: Sequence[IntervalTest]) -> str:
    return "; ".join(t.text() for t in tests)
