"""Per-pixel randomized smoothing of a segmentation model with abstention and a family-wise
correction: SegCertify of Fischer, Baader & Vechev (ICML 2021, "Scalable Certified Segmentation
via Randomized Smoothing").

Each pixel ``i`` of the smoothed map is the class the base model gives it most often under
``δ ~ N(0, σ²I)``. For a radius ``R`` let ``τ = Φ(R/σ)``: a pixel whose top-class probability
exceeds ``τ`` keeps its class for every ``‖δ‖₂ ≤ R`` (Cohen et al.'s Theorem 1, per pixel). The
procedure:

1. ``n0`` draws: the most frequent class ``ĉ_i`` of every pixel (selection);
2. ``n`` fresh draws: ``n_i`` votes for ``ĉ_i`` per pixel;
3. per pixel the exact binomial test of ``H0: p_i ≤ τ`` (p-value ``P(Bin(n, τ) ≥ n_i)``);
4. the tests of all pixels of the image together under Holm's (or Bonferroni's) correction at
   family-wise level α: a pixel whose test is rejected is certified with ``ĉ_i``, the others
   **abstain**.

With probability at least ``1 − α`` every certified pixel of the image is right about the
smoothed map *at the same time*, for every perturbation of L2 norm ``≤ R``. Scores at radius ``R``
(:func:`certified_scores`) count abstained pixels as wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from certification.sampling import HardPredictor, NoiseSampler
from certification.statistics import Correction, binomial_pvalue_greater, reject

__all__ = ["ABSTAIN", "SegmentationCertificate", "SmoothedSegmenter", "certified_scores"]

ABSTAIN = -1


@dataclass(frozen=True)
class SegmentationCertificate:
    """SegCertify's answer for one image at several radii.

    Attributes:
        radii: the radii ``R`` (input units), ascending.
        labels: ``int64 [len(radii), *spatial]``: the certified class per pixel, or
            :data:`ABSTAIN` (-1) where the pixel abstains at that radius.
        top: ``int64 [*spatial]``: the selected class ``ĉ`` per pixel (the smoothed map's
            estimate, before any test).
        counts: ``int64 [*spatial]``: the ``n`` estimation draws' votes for ``ĉ``.
    """

    radii: tuple[float, ...]
    labels: Tensor
    top: Tensor
    counts: Tensor

    def abstain_rate(self) -> Tensor:
        """``[len(radii)]``: the fraction of pixels that abstain at each radius."""
        return (self.labels == ABSTAIN).flatten(1).float().mean(dim=1)


class SmoothedSegmenter:
    """The per-pixel smoothed version of a base segmentation model.

    Args:
        predict: the base model's label map: images ``[b, C, *spatial]`` → ``int [b, *spatial]``.
        num_classes: ``K`` (background included).
        sampler: the noise engine (σ, batch size, seed).
        correction: ``"holm"`` (default), ``"bonferroni"`` or ``"none"`` (no family-wise
            control: each pixel alone at level α — not a certificate of the whole map).
    """

    def __init__(self, predict: HardPredictor, num_classes: int, sampler: NoiseSampler,
                 correction: Correction = "holm") -> None:
        if correction not in get_args(Correction):
            raise ValueError(f"SmoothedSegmenter.correction must be one of {list(get_args(Correction))}, "
                             f"got {correction!r}")
        if int(num_classes) < 2:
            raise ValueError(f"SmoothedSegmenter.num_classes must be >= 2, got {num_classes!r}")
        self.predict_fn, self.num_classes = predict, int(num_classes)
        self.sampler, self.correction = sampler, correction

    @property
    def sigma(self) -> float:
        return self.sampler.sigma

    def certify(self, x: Tensor, radii: Sequence[float], n0: int, n: int, alpha: float,
                sample_id: int = 0) -> SegmentationCertificate:
        """SegCertify (module docstring) for one image ``x`` ``[C, *spatial]`` at each radius of
        ``radii`` (``0`` certifies the smoothed map itself: ``τ = ½``)."""
        if int(n0) < 1 or int(n) < 1:
            raise ValueError(f"SmoothedSegmenter: n0 and n must be >= 1, got n0={n0!r}, n={n!r}")
        rs = tuple(sorted(float(r) for r in radii))
        if not rs or rs[0] < 0:
            raise ValueError(f"SmoothedSegmenter: radii must be >= 0 and not empty, got {list(radii)}")
        gen = self.sampler.generator(sample_id, x.device)
        selection = self.sampler.vote_counts(self.predict_fn, x, n0, self.num_classes, gen)
        top = selection.argmax(dim=0)
        counts = self.sampler.vote_counts(self.predict_fn, x, n, self.num_classes, gen)
        votes = counts.gather(0, top.unsqueeze(0)).squeeze(0).cpu()
        top = top.cpu()
        k = votes.numpy().reshape(1, -1)
        # every radius at once: the p-values [R, pixels] in one call, each row its own family
        taus = stats.norm.cdf(np.asarray(rs, dtype=np.float64) / self.sigma)
        certified = reject(binomial_pvalue_greater(k, n, taus[:, None]), alpha, self.correction, axis=1)
        mask = torch.from_numpy(np.ascontiguousarray(certified)).reshape(len(rs), *top.shape)
        labels = torch.where(mask, top.unsqueeze(0), torch.full_like(top, ABSTAIN).unsqueeze(0))
        return SegmentationCertificate(rs, labels, top, votes)


def certified_scores(labels: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Certified pixel accuracy and Dice of label maps with abstentions, abstained pixels wrong.

    Args:
        labels: ``int [R, *spatial]``, class or :data:`ABSTAIN` per pixel (one map per radius).
        target: ``int [*spatial]``, the true classes.
        num_classes: ``K`` (class 0 is the background).

    Returns:
        ``(pixel_accuracy, dice)``, each ``[R]``. Dice is the mean over the foreground classes
        present in the target or the certified prediction, or that an abstained pixel could take
        (1.0 when none is; as the task's per-image Dice), with every abstained pixel counted against it in the worst way: a
        false negative of its true class and a false positive of every other foreground class.
        For one foreground class (PH2) that is the smallest Dice any filling of the abstained
        pixels could give, so it is a lower bound on the Dice of the smoothed map under every
        perturbation within the radius; for several it is a (looser) lower bound still.
    """
    r = labels.shape[0]
    lab = labels.reshape(r, -1).long()
    t = target.reshape(1, -1).long().to(lab.device).expand_as(lab)
    abstain = lab == ABSTAIN
    acc = ((lab == t) & ~abstain).float().mean(dim=1)
    dices = []
    for c in range(1, num_classes):
        pred_c = (lab == c)
        true_c = (t == c)
        tp = (pred_c & true_c).sum(dim=1).float()
        fp = (pred_c & ~true_c).sum(dim=1).float() + (abstain & ~true_c).sum(dim=1).float()
        fn = (true_c & ~pred_c).sum(dim=1).float()  # abstained true-c pixels are not pred_c
        denom = 2 * tp + fp + fn
        # an abstained pixel could be class c: it makes c present (worst case)
        present = true_c.any(dim=1) | pred_c.any(dim=1) | (abstain & ~true_c).any(dim=1)
        dices.append(torch.where(present, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan"))))
    if not dices:
        return acc, torch.ones(r)
    d = torch.stack(dices, dim=1)
    return acc, torch.nan_to_num(d.nanmean(dim=1), nan=1.0)
