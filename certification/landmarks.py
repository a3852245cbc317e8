"""Median smoothing of landmark coordinates: certified bounds on each decoded coordinate
(Chiang, Curry, Abdelkader, Kumar, Dickerson & Goldstein, NeurIPS 2020, "Detection as Regression:
Certified Object Detection by Median Smoothing").

For a scalar output ``f(x)`` and ``δ ~ N(0, σ²I)`` let ``h_p(x)`` be the ``p``-th percentile of
``f(x + δ)``. The median-smoothed output is ``h_½(x)``, and for every ``‖ε‖₂ ≤ R`` (their
Theorem 1)::

    h_{p̲}(x) ≤ h_½(x + ε) ≤ h_{p̄}(x),   p̲ = Φ(−R/σ),  p̄ = Φ(R/σ).

Both percentiles are estimated from ``n`` draws by order statistics that bound them with
probability ``≥ 1 − α`` (:func:`certification.statistics.order_statistic_ranks`); the ``4·L``
bounds of an image's ``L`` points (lower and upper, ``x`` and ``y``) share α by Bonferroni, so the
whole image's boxes hold together. Each landmark gets a certified **box**
``[x_lo, x_hi] × [y_lo, y_hi]`` of the positions its median-smoothed prediction can reach within
radius ``R``, and a certified bound on its radial error: the distance from the true point to the
box's farthest corner (pixels; mm with the image's spacing).

The base model's points are clipped to the image (``[0, W − 1] × [0, H − 1]``): a deterministic
part of the base model, so the theorem covers it, and it makes a bound without a valid order
statistic (too few draws for a large ``R``) the image border instead of infinity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import stats
from torch import Tensor

from certification.sampling import HardPredictor, NoiseSampler
from certification.statistics import order_statistic_ranks

__all__ = ["LandmarkCertificate", "MedianSmoothedLandmarks", "radial_error_bound"]


@dataclass(frozen=True)
class LandmarkCertificate:
    """Median smoothing's answer for one image.

    Attributes:
        radii: the radii ``R`` (input units), ascending.
        median: ``[L, 2]`` ``(x, y)`` pixels: the median-smoothed points (sample median).
        lower, upper: ``[len(radii), L, 2]``: the certified box corners per radius.
    """

    radii: tuple[float, ...]
    median: Tensor
    lower: Tensor
    upper: Tensor


class MedianSmoothedLandmarks:
    """The median-smoothed version of a landmark model.

    Args:
        predict: the base model's decoded points: images ``[b, C, H, W]`` → ``[b, L, 2]``
            ``(x, y)`` pixels (a task module's ``hard_prediction``).
        image_size: ``(H, W)`` (or ``(D, H, W)``: the last two are used), for the clip.
        sampler: the noise engine (σ, batch size, seed).
    """

    def __init__(self, predict: HardPredictor, image_size: Sequence[int], sampler: NoiseSampler) -> None:
        self.predict_fn, self.sampler = predict, sampler
        h, w = int(image_size[-2]), int(image_size[-1])
        self.extent = (float(w - 1), float(h - 1))

    @property
    def sigma(self) -> float:
        return self.sampler.sigma

    def _points(self, x: Tensor) -> Tensor:
        pts = self.predict_fn(x).float()
        hi = torch.tensor(self.extent, device=pts.device)
        return torch.minimum(pts.clamp_min(0.0), hi)

    def certify(self, x: Tensor, radii: Sequence[float], n: int, alpha: float,
                sample_id: int = 0) -> LandmarkCertificate:
        """Median smoothing (module docstring) of one image ``x`` ``[C, *spatial]``."""
        rs = tuple(sorted(float(r) for r in radii))
        if not rs or rs[0] < 0:
            raise ValueError(f"MedianSmoothedLandmarks: radii must be >= 0 and not empty, got {list(radii)}")
        if int(n) < 1:
            raise ValueError(f"MedianSmoothedLandmarks: n must be >= 1, got {n!r}")
        gen = self.sampler.generator(sample_id, x.device)
        draws = self.sampler.collect(self._points, x, n, gen).cpu()  # [n, L, 2]
        ordered, _ = draws.sort(dim=0)
        median = draws.median(dim=0).values
        bounds = 4 * draws.shape[1]
        lo_edge = torch.zeros(2)
        hi_edge = torch.tensor(self.extent)
        lowers, uppers = [], []
        for r in rs:
            p_lo, p_hi = float(stats.norm.cdf(-r / self.sigma)), float(stats.norm.cdf(r / self.sigma))
            k_lo, k_hi = order_statistic_ranks(n, p_lo, p_hi, alpha / bounds)
            low = ordered[k_lo - 1] if k_lo >= 1 else lo_edge.expand_as(median)
            high = ordered[k_hi - 1] if k_hi <= n else hi_edge.expand_as(median)
            lowers.append(low)
            uppers.append(high)
        return LandmarkCertificate(rs, median, torch.stack(lowers), torch.stack(uppers))


def radial_error_bound(lower: Tensor, upper: Tensor, truth: Tensor) -> Tensor:
    """The largest distance from ``truth`` to a point of the box ``[lower, upper]``.

    Args:
        lower, upper: ``[..., L, 2]`` box corners; truth: ``[L, 2]`` (broadcast).

    Returns:
        ``[..., L]``: ``‖max(|lower − t|, |upper − t|)‖₂`` per landmark (pixels).
    """
    far = torch.maximum((lower - truth).abs(), (upper - truth).abs())
    return far.norm(dim=-1)
