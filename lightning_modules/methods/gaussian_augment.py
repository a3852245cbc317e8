"""Gaussian noise augmentation: training a base model for randomized smoothing (Cohen, Rosenfeld
& Kolter 2019, "Certified Adversarial Robustness via Randomized Smoothing", section 3.3 and
appendix). The smoothed classifier ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ²I)``, is
only accurate when the base model ``f`` is accurate on noisy inputs, so ``f`` is trained on
``x + δ`` with the same σ that certification will use.

σ is in the units of the model's input (``data_info.bounds``, the units of attack budgets and of
the certified L2 radius): with images in ``[0, 1]``, ``σ = 0.25`` is Cohen et al.'s σ = 0.25.
The noisy image is *not* clamped to the bounds, as in Cohen et al.: certification
(:mod:`certification`) draws the same unclamped noise, so the base model is trained on exactly
the inputs it is certified on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.methods.base import Logs, TrainingMethod, check_range
from lightning_modules.protocol import Batch, TrainableTask


class GaussianAugment(TrainingMethod):
    """Train on ``x + N(0, σ²I)`` (task-agnostic: the task's own loss on the noisy batch).

    Args:
        sigma: noise standard deviation σ > 0, in input units (see the module docstring).
        clean_fraction: fraction of each batch kept clean (0 = Cohen et al.: every sample
            noisy); the clean samples keep the clean accuracy of a model meant for both uses.
        seed: seed of the noise (with the global step and rank, :meth:`TrainingMethod.generator`);
            ``None`` uses the global RNG.

    Shape: the batch's ``image`` is ``[B, C, *spatial]`` (2-D or 3-D); the noise has its shape.
    Logged: ``sigma``, ``noisy_fraction``.
    """

    name = "gaussian_augment"

    def __init__(self, sigma: float = 0.25, clean_fraction: float = 0.0, seed: int | None = 0) -> None:
        super().__init__()
        owner = type(self).__name__
        check_range(owner, "sigma", sigma, 0.0, lo_open=True)
        check_range(owner, "clean_fraction", clean_fraction, 0.0, 1.0, hi_open=True)
        self.sigma = float(sigma)
        self.clean_fraction = float(clean_fraction)
        self.seed = seed

    def noisy(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(x + δ, noisy)``: ``x`` ``[B, C, *spatial]`` with Gaussian noise on the samples
        picked by ``noisy`` (``bool[B]``, all of them when ``clean_fraction == 0``)."""
        dev = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
        pick = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if self.clean_fraction > 0:
            u = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device)
            pick = u >= self.clean_fraction
        mask = pick.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        return x + self.sigma * noise * mask, pick

    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        x = batch["image"]
        gen = self.generator(task, x.device, self.seed)
        x_noisy, pick = self.noisy(x, gen)
        out = task.attack_model()(x_noisy)
        loss = task.batch_loss(out, batch)
        return loss, {"sigma": torch.tensor(self.sigma), "noisy_fraction": pick.float().mean()}

    def signals(self) -> dict[str, float]:
        return {"sigma": self.sigma}
