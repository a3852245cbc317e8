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


def binomial_pvalue_greater(successes: np.ndarray | int, n: int, tau: float | np.ndarray) -> np.ndarray:
    """``P(Binomial(n, τ) ≥ k)``: the exact one-sided p-value of ``H0: p ≤ τ``. ``τ`` may be an
    array (several radii at once): the result has the broadcast shape of ``k`` and ``τ``."""
    t = np.asarray(tau, dtype=np.float64)
    if not ((t >= 0.0) & (t <= 1.0)).all():
        raise ValueError(f"binomial_pvalue_greater: tau must lie in [0, 1], got {tau!r}")
    k = np.asarray(successes, dtype=np.float64)
    return stats.binom.sf(k - 1.0, n, t)


def _families(p: np.ndarray, axis: int | None) -> np.ndarray:
    """``p`` as ``[F, m]``: one row per family of tests (``axis=None``: one family, all of ``p``;
    an axis: every slice along it is a family)."""
    if axis is None:
        return p.reshape(1, -1)
    return np.moveaxis(p, axis, -1).reshape(-1, p.shape[axis])


def _unfamilies(rows: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    """The inverse of :func:`_families`."""
    if axis is None:
        return rows.reshape(shape)
    moved = list(np.moveaxis(np.empty(shape, dtype=bool), axis, -1).shape)
    return np.moveaxis(rows.reshape(moved), -1, axis)


def bonferroni_reject(pvalues: np.ndarray, alpha: float, axis: int | None = None) -> np.ndarray:
    """``bool`` of ``pvalues``' shape: the tests rejected at family-wise level α (Bonferroni);
    ``axis``: each slice along it is its own family (``None``: all tests are one family)."""
    alpha = _check_alpha(alpha)
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size if axis is None else p.shape[axis]
    return p <= alpha / max(m, 1)


def holm_reject(pvalues: np.ndarray, alpha: float, axis: int | None = None) -> np.ndarray:
    """``bool`` of ``pvalues``' shape: the tests rejected by Holm's step-down procedure at
    family-wise level α (sorted p-values ``p_(1) ≤ … ≤ p_(m)``; reject ``p_(i)`` while every
    ``p_(j) ≤ α / (m − j + 1)`` for ``j ≤ i``). ``axis``: each slice along it is its own family,
    all handled in one vectorised pass (``None``: all tests are one family)."""
    alpha = _check_alpha(alpha)
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return np.zeros(p.shape, dtype=bool)
    rows = _families(p, axis)
    m = rows.shape[1]
    order = np.argsort(rows, axis=1, kind="stable")
    ok = np.take_along_axis(rows, order, axis=1) <= alpha / (m - np.arange(m))
    # the step-down stops at each family's first failure
    n_reject = np.where(ok.all(axis=1), m, np.argmin(ok, axis=1))
    out = np.empty(rows.shape, dtype=bool)
    np.put_along_axis(out, order, np.arange(m)[None, :] < n_reject[:, None], axis=1)
    return _unfamilies(out, p.shape, axis)


def reject(pvalues: np.ndarray, alpha: float, correction: Correction, axis: int | None = None) -> np.ndarray:
    """The rejected tests under ``correction`` (``holm``, ``bonferroni`` or ``none``); ``axis``:
    each slice along it is its own family (``None``: one family)."""
    if correction == "holm":
        return holm_reject(pvalues, alpha, axis)
    if correction == "bonferroni":
        return bonferroni_reject(pvalues, alpha, axis)
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
