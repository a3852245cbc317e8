"""The statistics of randomized smoothing: exact binomial bounds and tests, a family-wise
correction over pixels, and order-statistic indices for percentile bounds.

* :func:`clopper_pearson_lower`: the one-sided ``1 − α`` Clopper–Pearson lower bound of a binomial
  proportion (Cohen, Rosenfeld & Kolter 2019, CERTIFY's ``LowerConfBound``);
* :func:`binomial_pvalue_greater`: the exact p-value of ``H0: p ≤ τ`` against ``p > τ`` (Fischer,
  Baader & Vechev 2021, SegCertify's per-pixel test); rejecting it at level α is the same event
  as the Clopper–Pearson lower bound exceeding τ;
* :func:`holm_reject` / :func:`bonferroni_reject`: family-wise error control over many tests
  (Holm 1979: step-down, never less powerful than Bonferroni);
* :func:`order_statistic_ranks`: which order statistics of ``n`` samples bound the ``p``-th
  percentile from below / above with probability ``≥ 1 − α`` (Chiang et al. 2020, median
  smoothing).

All functions are NumPy/SciPy, vectorised, deterministic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats

__all__ = ["Correction", "binomial_pvalue_greater", "bonferroni_reject", "clopper_pearson_lower",
           "holm_reject", "order_statistic_ranks", "reject"]

Correction = Literal["holm", "bonferroni", "none"]


def _check_alpha(alpha: float) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def clopper_pearson_lower(successes: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 − α`` Clopper–Pearson lower bound of ``p`` from ``successes`` of ``n``
    Bernoulli(p) draws: ``Beta(α; k, n − k + 1)`` (0 where ``k = 0``). Shape of ``successes``."""
    alpha = _check_alpha(alpha)
    k = np.asarray(successes, dtype=np.float64)
    if n <= 0:
        raise ValueError(f"clopper_pearson_lower: n must be positive, got {n}")
    if (k < 0).any() or (k > n).any():
        raise ValueError(f"clopper_pearson_lower: successes must lie in [0, {n}]")
    with np.errstate(invalid="ignore"):
        low = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.where(k > 0, low, 0.0)


def binomial_pvalue_greater(successes: np.ndarray | int, n: int, tau: float) -> np.ndarray:
    """``P(Binomial(n, τ) ≥ k)``: the exact one-sided p-value of ``H0: p ≤ τ``. Shape of ``k``."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"binomial_pvalue_greater: tau must lie in [0, 1], got {tau!r}")
    k = np.asarray(successes, dtype=np.float64)
    return stats.binom.sf(k - 1.0, n, tau)


def bonferroni_reject(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """``bool`` of ``pvalues``' shape: the tests rejected at family-wise level α (Bonferroni)."""
    p = np.asarray(pvalues, dtype=np.float64)
    return p <= _check_alpha(alpha) / max(p.size, 1)


def holm_reject(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """``bool`` of ``pvalues``' shape: the tests rejected by Holm's step-down procedure at
    family-wise level α (sorted p-values ``p_(1) ≤ … ≤ p_(m)``; reject ``p_(i)`` while every
    ``p_(j) ≤ α / (m − j + 1)`` for ``j ≤ i``)."""
    alpha = _check_alpha(alpha)
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.reshape(-1)
    m = flat.size
    if m == 0:
        return np.zeros(p.shape, dtype=bool)
    order = np.argsort(flat, kind="stable")
    thresholds = alpha / (m - np.arange(m))
    ok = flat[order] <= thresholds
    # the step-down stops at the first failure
    n_reject = m if ok.all() else int(np.argmin(ok))
    out = np.zeros(m, dtype=bool)
    out[order[:n_reject]] = True
    return out.reshape(p.shape)


def reject(pvalues: np.ndarray, alpha: float, correction: Correction) -> np.ndarray:
    """The rejected tests under ``correction`` (``holm``, ``bonferroni`` or ``none``)."""
    if correction == "holm":
        return holm_reject(pvalues, alpha)
    if correction == "bonferroni":
        return bonferroni_reject(pvalues, alpha)
    if correction == "none":
        return np.asarray(pvalues) <= _check_alpha(alpha)
    raise ValueError(f"correction must be 'holm', 'bonferroni' or 'none', got {correction!r}")


def order_statistic_ranks(n: int, p_low: float, p_high: float, alpha: float) -> tuple[int, int]:
    """1-based ranks ``(k_lo, k_hi)`` such that, for ``n`` i.i.d. draws of any real random
    variable with percentiles ``q_p``, ``P(X_(k_lo) ≤ q_{p_low}) ≥ 1 − α`` and
    ``P(X_(k_hi) ≥ q_{p_high}) ≥ 1 − α``, each as tight as possible.

    ``X_(k) ≤ q_p`` whenever at least ``k`` draws are ``≤ q_p``, and that count is at least
    ``Binomial(n, p)`` (stochastically), so ``k_lo`` is the largest ``k`` with
    ``P(Bin(n, p_low) ≥ k) ≥ 1 − α``; symmetrically ``k_hi`` is the smallest ``k`` with
    ``P(Bin(n, p_high) ≤ k − 1) ≥ 1 − α``. ``k_lo = 0`` / ``k_hi = n + 1`` mean that no order
    statistic is a valid bound (too few samples): the bound is the output's range.
    """
    alpha = _check_alpha(alpha)
    ks = np.arange(0, n + 2)
    # P(Bin ≥ k) = sf(k − 1); decreasing in k
    ge = stats.binom.sf(ks - 1, n, p_low)
    valid_lo = ks[(ge >= 1 - alpha) & (ks >= 1) & (ks <= n)]
    k_lo = int(valid_lo.max()) if valid_lo.size else 0
    le = stats.binom.cdf(ks - 1, n, p_high)  # P(Bin ≤ k − 1); increasing in k
    valid_hi = ks[(le >= 1 - alpha) & (ks >= 1) & (ks <= n)]
    k_hi = int(valid_hi.min()) if valid_hi.size else n + 1
    return k_lo, k_hi
