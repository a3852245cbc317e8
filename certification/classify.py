"""Randomized smoothing of a classifier: PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (ICML
2019, "Certified Adversarial Robustness via Randomized Smoothing").

The smoothed classifier ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ²I)``, is constant
within the L2 ball of radius ``R = σ·Φ⁻¹(p_A)`` around ``x`` when ``p_A`` lower-bounds the top
class's probability (their Theorem 1, with ``p_B = 1 − p_A``). CERTIFY estimates it:

1. draw ``n0`` noisy copies, take the most frequent class ``ĉ_A`` (selection);
2. draw ``n`` fresh copies, count ``n_A`` votes for ``ĉ_A`` (estimation);
3. ``p_A ≥ p̲_A``: the one-sided ``1 − α`` Clopper–Pearson lower bound of ``n_A / n``;
4. ``p̲_A > ½``: return ``ĉ_A`` and ``R = σ·Φ⁻¹(p̲_A)``; otherwise abstain.

With probability at least ``1 − α`` over the noise, a returned class is ``g(x)`` and ``g`` is
constant within ``R``. PREDICT returns ``g(x)`` without a radius: the top two counts of ``n``
draws, and a two-sided binomial test of ``n_A`` against ``n_A + n_B`` at level α (abstain when
the test does not reject); it returns a wrong class with probability at most α.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from certification.sampling import HardPredictor, NoiseSampler
from certification.statistics import clopper_pearson_lower

__all__ = ["ABSTAIN", "Certificate", "SmoothedClassifier"]

#: the label of an abstention
ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one image.

    Attributes:
        label: the smoothed class, or :data:`ABSTAIN`.
        radius: the certified L2 radius (input units); ``-1.0`` when abstaining (so that
            ``radius >= r`` is false for every ``r >= 0``).
        p_lower: ``p̲_A``, the lower confidence bound of the top class's probability.
        counts: ``int64 [K]`` votes of the ``n`` estimation draws.
    """

    label: int
    radius: float
    p_lower: float
    counts: Tensor

    @property
    def abstained(self) -> bool:
        return self.label == ABSTAIN


class SmoothedClassifier:
    """The smoothed version of a base classifier.

    Args:
        predict: the base classifier's hard decision: images ``[b, C, *spatial]`` → labels
            ``[b]`` (e.g. ``lambda x: model(x).argmax(1)``; a task module's
            ``hard_prediction``).
        num_classes: ``K``.
        sampler: the noise engine (σ, batch size, seed).

    Example::

        g = SmoothedClassifier(lambda x: net(x).argmax(1), 2, NoiseSampler(sigma=0.25))
        cert = g.certify(x[0], n0=100, n=1000, alpha=0.001, sample_id=0)
    """

    def __init__(self, predict: HardPredictor, num_classes: int, sampler: NoiseSampler) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"SmoothedClassifier.num_classes must be >= 2, got {num_classes!r}")
        self.predict_fn, self.num_classes, self.sampler = predict, int(num_classes), sampler

    @property
    def sigma(self) -> float:
        return self.sampler.sigma

    def counts(self, x: Tensor, num: int, generator: torch.Generator) -> Tensor:
        """``int64 [K]``: votes of ``num`` noisy copies of ``x`` (``[C, *spatial]``)."""
        return self.sampler.vote_counts(self.predict_fn, x, num, self.num_classes, generator)

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, sample_id: int = 0) -> Certificate:
        """CERTIFY (module docstring) for one image ``x`` ``[C, *spatial]``."""
        _check_counts(n0, n)
        gen = self.sampler.generator(sample_id, x.device)
        selection = self.counts(x, n0, gen)
        top = int(selection.argmax())
        counts = self.counts(x, n, gen)
        p_lower = float(clopper_pearson_lower(int(counts[top]), n, alpha))
        if p_lower <= 0.5:
            return Certificate(ABSTAIN, -1.0, p_lower, counts.cpu())
        radius = self.sigma * float(stats.norm.ppf(p_lower))
        return Certificate(top, radius, p_lower, counts.cpu())

    def predict(self, x: Tensor, n: int, alpha: float, sample_id: int = 0) -> int:
        """PREDICT (module docstring) for one image ``x`` ``[C, *spatial]``: a class or
        :data:`ABSTAIN`."""
        _check_counts(1, n)
        gen = self.sampler.generator(sample_id, x.device)
        counts = self.counts(x, n, gen).cpu().numpy()
        order = np.argsort(-counts, kind="stable")
        n_a, n_b = int(counts[order[0]]), int(counts[order[1]])
        if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(order[0])


def _check_counts(n0: int, n: int) -> None:
    if int(n0) < 1 or int(n) < 1:
        raise ValueError(f"randomized smoothing: n0 and n must be >= 1, got n0={n0!r}, n={n!r}")
