"""Confidence intervals, paired tests and verdicts (callbacks/uncertainty.py).

Coverage and null-rejection rates are measured on seeded simulations with a known truth, at the
sample sizes our test sets have (PH2: 40 images; PneumoniaMNIST: 624).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from callbacks.image_bootstrap import resampled_interval
from callbacks.uncertainty import (
    Interval,
    decide,
    expanded_level,
    mcnemar_exact,
    mean_interval,
    minimum_detectable_difference,
    paired_difference,
    proportion_interval,
    seeds_interval,
)

REPLICATIONS = 1000


@pytest.mark.parametrize("n", [40, 600])
@pytest.mark.parametrize("p", [0.5, 0.8])
def test_proportion_interval_covers_a_known_proportion(n: int, p: float) -> None:
    rng = np.random.default_rng(1000 + n)
    successes = rng.binomial(n, p, size=REPLICATIONS)
    covered = np.mean([proportion_interval(int(k), n).contains(p) for k in successes])
    assert 0.93 <= covered <= 0.97, covered
    # the same, exactly (no simulation noise): sum of the binomial pmf over covering k
    ks = np.arange(n + 1)
    exact = sum(stats.binom.pmf(k, n, p) for k in ks if proportion_interval(int(k), n).contains(p))
    assert 0.93 <= exact <= 0.97, exact


def _exact_coverage(n: int, p: float, method: str) -> float:
    ks = np.arange(n + 1)
    return float(sum(stats.binom.pmf(k, n, p) for k in ks
                     if proportion_interval(int(k), n, method=method).contains(p)))  # type: ignore[arg-type]


def test_why_agresti_coull_is_the_default() -> None:
    # Wilson dips below 93 % at p = 0.8, n = 40 (its known oscillation); Agresti–Coull does not,
    # and Clopper–Pearson never falls below nominal but overshoots
    assert _exact_coverage(40, 0.8, "wilson") < 0.93
    assert 0.93 <= _exact_coverage(40, 0.8, "agresti_coull") <= 0.97
    # near the edge of [0, 1] Agresti–Coull turns conservative, never anti-conservative
    assert 0.95 <= _exact_coverage(40, 0.95, "agresti_coull") <= 0.99
    assert _exact_coverage(40, 0.7, "exact") >= 0.95
    a, e = proportion_interval(28, 40), proportion_interval(28, 40, method="exact")
    assert e.high - e.low > a.high - a.low


@pytest.mark.parametrize("n", [40, 600])
def test_bootstrap_interval_covers_a_known_mean_of_dice_like_values(n: int) -> None:
    # Dice-like: skewed towards 1, bounded in [0, 1]; Beta(5, 2) has mean 5/7
    rng = np.random.default_rng(2000 + n)
    values = rng.beta(5.0, 2.0, size=(REPLICATIONS, n))
    intervals = mean_interval(values, seed=3)
    assert isinstance(intervals, list) and len(intervals) == REPLICATIONS
    covered = np.mean([iv.contains(5 / 7) for iv in intervals])
    assert 0.93 <= covered <= 0.97, covered


def test_expanded_level_shrinks_to_the_nominal_level_as_n_grows() -> None:
    assert expanded_level(0.95, 40) == pytest.approx(0.9595, abs=5e-4)
    assert expanded_level(0.95, 600) == pytest.approx(0.9507, abs=5e-4)
    assert expanded_level(0.95, 10_000) == pytest.approx(0.95, abs=1e-4)


def test_intervals_contain_their_estimate_and_are_seeded() -> None:
    rng = np.random.default_rng(0)
    v = rng.beta(2.0, 5.0, size=40)
    a, b = mean_interval(v, seed=7), mean_interval(v, seed=7)
    assert isinstance(a, Interval) and a == b
    assert a.low <= a.estimate <= a.high and a.estimate == pytest.approx(v.mean())
    c = mean_interval(v, seed=8)
    assert isinstance(c, Interval) and (c.low, c.high) != (a.low, a.high)
    for k in (0, 1, 20, 39, 40):
        iv = proportion_interval(k, 40)
        assert iv.low <= iv.estimate <= iv.high and 0.0 <= iv.low and iv.high <= 1.0
    const = mean_interval(np.full(40, 0.9))
    assert isinstance(const, Interval) and const.low == const.high == pytest.approx(0.9)


def test_bad_values_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        mean_interval([0.1, float("nan"), 0.3])
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])
    with pytest.raises(ValueError, match="successes <= n"):
        proportion_interval(5, 4)
    with pytest.raises(ValueError, match="level"):
        proportion_interval(1, 4, level=95)
    with pytest.raises(ValueError, match="same samples"):
        paired_difference([0.1, 0.2], [0.1, 0.2, 0.3])


def test_paired_tests_reject_at_the_nominal_rate_under_the_null() -> None:
    rng = np.random.default_rng(3)
    n = 40
    # continuous per-sample values (Dice) of two exchangeable models on the same samples:
    # a shared per-sample difficulty plus independent model noise
    difficulty = rng.beta(5.0, 2.0, size=(REPLICATIONS, n))
    a = np.clip(difficulty + rng.normal(0, 0.05, size=(REPLICATIONS, n)), 0, 1)
    b = np.clip(difficulty + rng.normal(0, 0.05, size=(REPLICATIONS, n)), 0, 1)
    intervals = mean_interval(a - b, seed=4)
    rejected = np.mean([not iv.contains(0.0) for iv in intervals])
    assert 0.03 <= rejected <= 0.07, rejected
    # 0/1 outcomes (accuracy), McNemar's exact test, at PneumoniaMNIST's size: exact tests on
    # discrete data reject at most alpha, and close to it for enough discordant pairs
    n = 624
    p_values = []
    for _ in range(REPLICATIONS):
        hard = rng.random(n) < 0.3
        a01 = ~hard & (rng.random(n) < 0.9) | hard & (rng.random(n) < 0.4)
        b01 = ~hard & (rng.random(n) < 0.9) | hard & (rng.random(n) < 0.4)
        p_values.append(mcnemar_exact(a01, b01)[0])
    rate = np.mean(np.array(p_values) < 0.05)
    assert 0.03 <= rate <= 0.07, rate


def test_paired_tests_detect_a_planted_difference() -> None:
    rng = np.random.default_rng(5)
    n = 200
    truth = rng.random(n) < 0.7
    better = truth | (rng.random(n) < 0.5)  # B fixes half of A's errors, breaks none
    cmp = paired_difference(better.astype(float), truth.astype(float), seed=0)
    assert cmp.p_value is not None and cmp.p_value < 1e-4
    assert cmp.discordant is not None and cmp.discordant[1] == 0 and cmp.discordant[0] > 0
    assert decide(cmp.difference, "greater") == "confirmed"
    dice_a = rng.beta(5, 2, size=n)
    cmp2 = paired_difference(dice_a + 0.05, dice_a + rng.normal(0, 0.02, n), seed=0)
    assert cmp2.p_value is None and cmp2.difference.low > 0


def test_mcnemar_matches_a_hand_computed_binomial() -> None:
    a = np.array([1, 1, 1, 1, 0, 1, 1, 0], dtype=bool)
    b = np.array([0, 0, 0, 1, 1, 1, 0, 0], dtype=bool)
    p, (b01, b10) = mcnemar_exact(a, b)
    assert (b01, b10) == (4, 1)
    # two-sided binomial(5, 1/2) at 4 of 5: P(X>=4) + P(X<=1) = 2 * 6/32
    assert p == pytest.approx(12 / 32)
    assert mcnemar_exact(a, a)[0] == 1.0


@pytest.mark.parametrize(
    ("low", "high", "claim", "expected"),
    [(0.01, 0.05, "greater", "confirmed"), (-0.05, -0.01, "greater", "refuted"),
     (-0.01, 0.05, "greater", "inconclusive"), (-0.05, -0.01, "less", "confirmed"),
     (0.01, 0.05, "less", "refuted"), (0.0, 0.05, "greater", "inconclusive")],
)
def test_three_outcome_verdicts(low: float, high: float, claim: str, expected: str) -> None:
    iv = Interval((low + high) / 2, low, high, 0.95, 40, "bca-expanded")
    assert decide(iv, claim, 0.0) == expected  # type: ignore[arg-type]


def test_verdict_on_an_undefined_interval_is_inconclusive() -> None:
    assert decide(Interval(0.5, math.nan, math.nan, 0.95, 3, "percentile"), "greater") == "inconclusive"


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based AUROC (Mann–Whitney U / (n1 n0)); NaN with one class."""
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def test_resampled_interval_covers_a_known_dataset_statistic() -> None:
    # the image-resampling bootstrap recomputes any statistic from indices; its coverage is
    # checked on one with a known truth and cheap evaluation (a proportion of n = 200)
    rng = np.random.default_rng(7)
    n, reps, covered = 200, 400, 0
    for r in range(reps):
        outcome = (rng.random(n) < 0.8).astype(float)
        iv = resampled_interval(lambda idx, o=outcome: o[idx].mean(), n, seed=r, n_resamples=400)
        covered += iv.contains(0.8)
    assert 0.92 <= covered / reps <= 0.98, covered / reps


def test_resampled_interval_of_auroc_contains_its_estimate() -> None:
    # positives ~ N(1, 1), negatives ~ N(0, 1): AUROC = Phi(1 / sqrt(2)) = 0.760
    rng = np.random.default_rng(8)
    labels = rng.random(300) < 0.5
    scores = rng.normal(labels.astype(float), 1.0)
    iv = resampled_interval(lambda idx: _auroc(scores[idx], labels[idx]), 300, seed=0, n_resamples=300)
    assert iv.low <= iv.estimate <= iv.high and iv.method == "percentile"
    assert iv.contains(float(stats.norm.cdf(1 / math.sqrt(2))))
    assert 0.05 < iv.high - iv.low < 0.2


def test_resampled_interval_drops_undefined_resamples_and_says_so() -> None:
    labels = np.array([False] * 9 + [True])
    scores = np.linspace(0, 1, 10)
    iv = resampled_interval(lambda idx: _auroc(scores[idx], labels[idx]), 10, seed=0, n_resamples=100)
    assert iv.estimate == 1.0
    # about a third of resamples lack the single positive: they are dropped, not counted as 0
    assert iv.method == "percentile" or "defined resamples" in iv.method


def test_seeds_interval_widens_with_seed_to_seed_variation() -> None:
    rng = np.random.default_rng(6)
    samples = rng.beta(5, 2, size=100)
    same = np.stack([samples, samples, samples])
    spread = np.stack([samples - 0.1, samples, samples + 0.1])
    a, b = seeds_interval(same, seed=0), seeds_interval(spread, seed=0)
    assert a.estimate == pytest.approx(b.estimate)
    assert (b.high - b.low) > 1.5 * (a.high - a.low)
    assert seeds_interval(spread, seed=0) == b
    with pytest.raises(ValueError, match=r"\[seeds, samples\]"):
        seeds_interval(samples)


def test_minimum_detectable_difference_shrinks_with_root_n() -> None:
    d40, d160 = minimum_detectable_difference(40, 0.2), minimum_detectable_difference(160, 0.2)
    assert d40 == pytest.approx(2 * d160)
    assert d40 == pytest.approx((1.959964 + 0.841621) * 0.2 / math.sqrt(40), rel=1e-5)


def test_weighted_dataset_metrics_match_torchmetrics_at_unit_weights() -> None:
    import torch
    from torchmetrics.functional.classification import (
        binary_auroc,
        multiclass_auroc,
        multiclass_recall,
    )

    from callbacks.image_bootstrap import (
        weighted_auroc,
        weighted_balanced_accuracy,
        weighted_macro_auroc,
    )

    rng = np.random.default_rng(9)
    y = rng.random(300) < 0.4
    s = np.round(rng.normal(y.astype(float), 1.0), 1)  # rounded: ties must count 1/2
    assert weighted_auroc(s, y, np.ones(300)) == pytest.approx(
        binary_auroc(torch.tensor(s), torch.tensor(y).long()).item(), abs=1e-6)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=120)
    lab = rng.integers(0, 3, 120)
    assert weighted_macro_auroc(p, lab, np.ones((1, 120)))[0] == pytest.approx(
        multiclass_auroc(torch.tensor(p), torch.tensor(lab), 3, average="macro").item(), abs=1e-6)
    pred = p.argmax(1)
    assert weighted_balanced_accuracy(pred == lab, lab, 3, np.ones(120)) == pytest.approx(
        multiclass_recall(torch.tensor(pred), torch.tensor(lab), 3, average="macro").item(), abs=1e-6)


def test_weighted_metrics_equal_the_metric_of_the_resampled_set() -> None:
    # a weight vector of counts is the same as repeating images: check against explicit repeats
    from callbacks.image_bootstrap import bootstrap_weights, weighted_auroc, weighted_interval

    rng = np.random.default_rng(10)
    y = rng.random(50) < 0.5
    s = rng.normal(y.astype(float), 1.0)
    w = bootstrap_weights(50, 5, seed=1)
    assert (w.sum(axis=1) == 50).all()
    for row in w:
        idx = np.repeat(np.arange(50), row.astype(int))
        assert weighted_auroc(s, y, row[None])[0] == pytest.approx(_auroc(s[idx], y[idx]))
    iv = weighted_interval(lambda W: weighted_auroc(s, y, W), 50, seed=2)
    assert iv.low <= iv.estimate <= iv.high and iv.estimate == pytest.approx(_auroc(s, y))
    assert iv == weighted_interval(lambda W: weighted_auroc(s, y, W), 50, seed=2)
