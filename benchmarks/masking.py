"""Gradient maskings: a model wrapped so that its input gradients say little or nothing, the
cases a gradient-based evaluation overestimates (Athalye et al. 2018, "Obfuscated gradients give
a false sense of security"). The masked-gradient benchmarks and the sanity-check tests wrap
their trained models in these (one home for both)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["Masked", "Quantised", "Scaled"]


class Quantised(nn.Module):
    """``round(x·levels)/levels``, then the wrapped model: a non-differentiable first layer whose
    gradient is zero almost everywhere (no straight-through estimator).

    Shape: ``x`` as the wrapped model takes it; the output is the model's."""

    def __init__(self, model: nn.Module, levels: int = 16) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


class Scaled(nn.Module):
    """The wrapped model's output × ``scale``: a saturated softmax (cross-entropy and its
    gradient are exactly 0 on confident samples; at 1e4 the softmax is one-hot in float32)."""

    def __init__(self, model: nn.Module, scale: float = 1000.0) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


class Masked:
    """A trained task module whose attack model is ``wrap(module.attack_model())`` (everything
    else — loss, metrics, violation test — delegated to the module)."""

    def __init__(self, module: Any, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self._module, self._model = module, wrap(module.attack_model())

    def attack_model(self) -> nn.Module:
        return self._model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)
