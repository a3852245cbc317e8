"""The one sampling engine of randomized smoothing: Gaussian noise batches on the model's device,
statistics accumulated batch by batch, one seeded generator per image.

Every smoothed model (:mod:`certification.classify`, :mod:`certification.segment`,
:mod:`certification.landmarks`) asks this engine for the base model's hard predictions on
``x + δ``, ``δ ~ N(0, σ²I)``:

* :meth:`NoiseSampler.vote_counts`: per class (and per pixel) how often the base model chose it —
  ``[K]`` for an image label, ``[K, *spatial]`` for a label map; memory independent of ``n``;
* :meth:`NoiseSampler.collect`: every draw's output (``[n, *shape]``), for statistics that need
  the whole sample (median smoothing's order statistics).

Noise is drawn in batches of ``batch_size`` copies of one image, on the device of the image (put
the image where the model is), with a generator seeded by ``(seed, sample id)``: the same image
gets the same noise whatever batch, subset or order it is evaluated in, and the same seed gives the
same counts. The noise is *not* clamped to the image bounds (Cohen et al.; the base model was
trained on unclamped noise, :class:`lightning_modules.methods.GaussianAugment`). 2-D and 3-D
images alike: ``x`` is ``[C, *spatial]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.seeding import seeded_generator

__all__ = ["HardPredictor", "NoiseSampler", "sample_generator"]

#: the base model as the engine sees it: images ``[b, C, *spatial]`` → hard predictions
#: (labels ``[b]``, label maps ``[b, *spatial]``, points ``[b, L, 2]``)
HardPredictor = Callable[[Tensor], Tensor]


def sample_generator(seed: int, sample_id: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded by ``(seed, sample_id)`` through a hash, so neighbouring
    ids do not get correlated streams."""
    return seeded_generator("smoothing", int(seed), int(sample_id), device=device)


@dataclass
class NoiseSampler:
    """Gaussian noise batches and the statistics accumulated over them.

    Args:
        sigma: noise standard deviation σ (input units, the units of the certified L2 radius).
        batch_size: noisy copies per forward pass of the base model.
        seed: seed of every image's generator (with its sample id).

    Counts ``forwards`` (noisy images passed through the base model) for cost accounting.
    """

    sigma: float
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not float(self.sigma) > 0:
            raise ValueError(f"NoiseSampler.sigma must be > 0, got {self.sigma!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"NoiseSampler.batch_size must be >= 1, got {self.batch_size!r}")
        self.sigma = float(self.sigma)
        self.batch_size = int(self.batch_size)
        self.forwards = 0

    def generator(self, sample_id: int, device: torch.device | str) -> torch.Generator:
        return sample_generator(self.seed, sample_id, device)

    def noisy_batches(self, x: Tensor, num: int, generator: torch.Generator) -> Iterator[Tensor]:
        """``x + δ`` in batches (``[b, C, *spatial]``, ``b ≤ batch_size``), ``num`` in all."""
        if x.ndim < 2:
            raise ValueError(f"NoiseSampler: x must be one image [C, *spatial], got shape {tuple(x.shape)}")
        if num < 1:
            raise ValueError(f"NoiseSampler: the number of samples must be >= 1, got {num}")
        left = int(num)
        while left > 0:
            b = min(self.batch_size, left)
            # one buffer per batch, filled and shifted in place: the same values as
            # ``x + σ·randn(...)`` (randn is ``normal_`` on an empty tensor) without two temporaries
            noise = torch.empty((b, *x.shape), device=generator.device, dtype=x.dtype).normal_(generator=generator)
            left -= b
            self.forwards += b
            yield noise.to(x.device).mul_(self.sigma).add_(x.unsqueeze(0))

    @torch.no_grad()
    def vote_counts(self, predict: HardPredictor, x: Tensor, num: int, num_classes: int,
                    generator: torch.Generator) -> Tensor:
        """``int64 [K, *out]``: how many of ``num`` noisy copies of ``x`` the base model labels
        ``k`` (per output position: ``out`` is ``()`` for an image label, the spatial shape for
        a label map). Labels outside ``[0, K)`` are an error naming them."""
        counts: Tensor | None = None
        for xb in self.noisy_batches(x, num, generator):
            labels = predict(xb).long()
            if labels.shape[0] != xb.shape[0]:
                raise ValueError(f"NoiseSampler: the predictor returned {labels.shape[0]} labels for a batch of "
                                 f"{xb.shape[0]}")
            lo_t, hi_t = torch.aminmax(labels)  # one pass over the labels
            lo, hi = int(lo_t), int(hi_t)
            if lo < 0 or hi >= num_classes:
                raise ValueError(f"NoiseSampler: predicted labels in [{lo}, {hi}], outside [0, {num_classes})")
            if counts is None:
                counts = torch.zeros((num_classes, *labels.shape[1:]), dtype=torch.long, device=labels.device)
            counts.scatter_add_(0, labels, torch.ones_like(labels))
        assert counts is not None
        return counts

    @torch.no_grad()
    def collect(self, predict: HardPredictor, x: Tensor, num: int, generator: torch.Generator) -> Tensor:
        """``[num, *out]``: the base model's output for each of ``num`` noisy copies of ``x``."""
        return torch.cat([predict(xb) for xb in self.noisy_batches(x, num, generator)])
