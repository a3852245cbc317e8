"""Seeded random draws for corruptions: one generator for the batch, or one seed per sample.

A corruption asks :class:`Draw` for per-sample random tensors (``[B, *shape]``) and never
touches the global RNG. Two sources:

* ``generator``: one ``torch.Generator`` on the images' device; every draw is one batched call
  (training-time augmentation: fast).
* ``seeds``: one integer per sample (``[B]``); sample ``i``'s draws come from its own
  generator, :func:`attacks.seeding.seeded_generator` ``(seeds[i])``, so a sample's corruption does not depend on the batch it
  is in, its position there, or the number of DDP processes (evaluation: the seed is derived
  from the evaluation seed, the sample's dataset index, the corruption and the severity).
  A batch then equals the per-image application exactly (on the CPU).

With neither, a fresh generator seeded from key 0 is used (deterministic, never the global RNG).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attacks.seeding import seeded_generator

__all__ = ["Draw"]

class Draw:
    """Per-sample random tensors for a batch of ``batch`` images on ``device``.

    Args:
        batch: number of samples ``B``.
        device: where the draws live (the images' device).
        generator: one generator for the whole batch (on ``device``).
        seeds: ``[B]`` integer seeds, one generator per sample (exclusive with ``generator``).
    """

    def __init__(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None,
                 seeds: Sequence[int] | Tensor | None = None) -> None:
        if generator is not None and seeds is not None:
            raise ValueError("Draw: give a generator or per-sample seeds, not both")
        self.batch, self.device = int(batch), torch.device(device)
        self._per_sample: list[torch.Generator] | None = None
        if seeds is not None:
            values = [int(s) for s in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
            if len(values) != self.batch:
                raise ValueError(f"Draw: {len(values)} seeds for a batch of {self.batch}")
            self._per_sample = [seeded_generator(s, device=self.device) for s in values]
            self.generator = None
        else:
            if generator is None:
                generator = seeded_generator(0, device=self.device)
            if torch.device(generator.device).type != self.device.type:
                raise ValueError(f"Draw: the generator is on {generator.device}, the images on {self.device}")
            self.generator = generator

    def _each(self, fn, shape: tuple[int, ...]) -> Tensor:  # noqa: ANN001
        if self._per_sample is None:
            return fn((self.batch, *shape), self.generator)
        return torch.stack([fn(shape, g) for g in self._per_sample]) if self.batch else \
            torch.empty((0, *shape), device=self.device)

    def normal(self, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B, *shape]`` standard normal."""
        return self._each(lambda s, g: torch.randn(s, generator=g, device=self.device, dtype=dtype), shape)

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B, *shape]`` uniform on ``[0, 1)``."""
        return self._each(lambda s, g: torch.rand(s, generator=g, device=self.device, dtype=dtype), shape)

    def poisson(self, rates: Tensor) -> Tensor:
        """Poisson draws with ``rates`` (``[B, …]``, float), per sample."""
        if rates.shape[0] != self.batch:
            raise ValueError(f"Draw.poisson: rates for {rates.shape[0]} samples, batch of {self.batch}")
        if self._per_sample is None:
            return torch.poisson(rates, generator=self.generator)
        return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, self._per_sample)])

    def integers(self, low: int, high: int, *shape: int) -> Tensor:
        """``[B, *shape]`` int64 uniform on ``{low, …, high}`` (both included)."""
        u = self.uniform(*shape, dtype=torch.float64)
        return (low + torch.floor(u * (high - low + 1))).long().clamp_(low, high)
