"""Corruption-aware training: :class:`CorruptionAugment` (MedMNIST-C's augmentation use).

Di Salvo et al. 2024 train with their corruptions as augmentation: per image, one corruption
of the modality's suite or the identity, chosen uniformly, at a random intensity. Here the
intensity is a severity drawn uniformly from ``severities`` (MedMNIST-C draws a continuous
parameter between its severity-1 and severity-5 values), and the whole batch is corrupted in
a few batched calls on the device: the samples that drew corruption ``c`` at severity ``s`` go
through ``c`` together. Applied to the clean batch *before* the training method's step, so it
combines with every method (SAT then attacks the corrupted images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from attacks.seeding import seeded_generator
from corruptions.suites import CorruptionSuite, corruption_suite

__all__ = ["CorruptionAugment"]


class CorruptionAugment:
    """Corrupt a fraction of the training images with a suite's corruptions.

    Args:
        suite: a suite name (``"chest_xray"``…) or a list of corruptions.
        p: probability that an image is corrupted (MedMNIST-C: the identity is one more choice
            among ``k`` corruptions, ``p = k / (k + 1)``; ``None`` means that).
        severities: the severities drawn uniformly (default 1–5).
        exclude: corruption names of the suite left out (e.g. those the test measures, to test
            on unseen corruptions).
    """

    def __init__(self, suite: str | Sequence[Mapping[str, Any]] | CorruptionSuite = "chest_xray",
                 p: float | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
                 exclude: Sequence[str] = ()) -> None:
        full = corruption_suite(suite, "corruption_augment.suite")
        unknown = sorted(set(exclude) - set(full.names))
        if unknown:
            raise ValueError(f"corruption_augment.exclude: {unknown} are not in suite {full.name!r} "
                             f"({full.names})")
        self.corruptions = [c for c in full.corruptions if c.name not in set(exclude)]
        if not self.corruptions:
            raise ValueError("corruption_augment: every corruption of the suite is excluded")
        self.suite_name = full.name
        k = len(self.corruptions)
        self.p = k / (k + 1) if p is None else float(p)
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"corruption_augment.p must be in [0, 1], got {p!r}")
        sev = [int(s) for s in severities]
        if not sev or any(not 1 <= s <= 5 for s in sev):
            raise ValueError(f"corruption_augment.severities must be a non-empty list of 1…5, got {severities!r}")
        self.severities = sev

    def __call__(self, x: Tensor, generator: torch.Generator | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """``x`` (``[B, C, *S]``) with each image corrupted with probability ``p`` (a new tensor)."""
        b = x.shape[0]
        gen = generator if generator is not None else seeded_generator(0, device=x.device)
        u = torch.rand(b, generator=gen, device=x.device)
        which = torch.randint(len(self.corruptions), (b,), generator=gen, device=x.device)
        sev = torch.tensor(self.severities, device=x.device)[
            torch.randint(len(self.severities), (b,), generator=gen, device=x.device)]
        hit = u < self.p
        out = x.clone()
        for c_i, corruption in enumerate(self.corruptions):
            for s in self.severities:
                rows = (hit & (which == c_i) & (sev == s)).nonzero().flatten()
                if rows.numel():
                    out[rows] = corruption(x[rows], s, generator=gen, bounds=bounds)
        return out

    def describe(self) -> dict[str, Any]:
        return {"suite": self.suite_name, "corruptions": [c.name for c in self.corruptions],
                "p": self.p, "severities": self.severities}
