"""General (non-adversarial) noises, as used by Xue et al. 2019 ("Improving Robustness of
Medical Image Diagnosis with Denoising Convolutional Neural Networks") to train and test the
denoising defence: Gaussian, uniform, salt-and-pepper and speckle.

They share the attack interface (``noise(model, x, target, generator=g) -> x_noisy``) so the
evaluation grid can mix them with attacks, but ignore the model and the loss: ``__call__``
never runs the model (``model`` may be ``None``); :meth:`perturb` runs one forward only to
report the loss/violation at the noisy input. All randomness comes from ``generator`` (``None``:
the global RNG). Outputs are clamped to ``bounds``. Gaussian, uniform and speckle noise take
an optional ``eps`` (float or ``[B]``): the noisy input is then also clamped to the L∞ ball of
radius ``eps`` around ``x`` (uniform noise always has one: its amplitude).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .base import Attack, describe_value
from .call import AttackCall, Scalar
from .checks import check_scalar
from .mode import Mode
from .projection import linf_box
from .registry import register_attack


class Noise(Attack):
    """Base of the noises: draw, clamp to the optional L∞ ``eps`` ball, clamp to bounds."""

    uses_model = False

    def __init__(
        self,
        eps: Scalar | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm="linf" if eps is not None else None, bounds=bounds,
                         bn_mode=bn_mode, dropout_mode=dropout_mode)

    def _noisy(self, call: AttackCall) -> Tensor:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "steps": 0, "step_size": None,
                **{k: describe_value(v) for k, v in self._params().items()}}

    def _run(self, call: AttackCall) -> Tensor:
        x_noisy = self._noisy(call)
        eps = call.budget(self.eps, "eps")
        if eps is not None:
            lower, upper = linf_box(call, eps)
            return x_noisy.clamp_(lower, upper)
        return x_noisy.clamp_(call.lo, call.hi)


class _GaussianScaled(Noise):
    """A noise drawn as ``std·N(0, 1)`` per coordinate (``std`` float or ``[B]``, in input
    units), with the optional L∞ cap ``eps``; subclasses say how it meets ``x``."""

    def __init__(self, std: Scalar = 0.1, eps: Scalar | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0), bn_mode: Mode = "eval",
                 dropout_mode: Mode = "eval") -> None:
        super().__init__(eps=eps, bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        self.std = check_scalar("std", std)

    def _params(self) -> dict[str, Any]:
        return {"std": self.std}

    def _scaled_normal(self, call: AttackCall) -> Tensor:
        """``std·N(0, 1)`` of ``x``'s shape, from the call's generator."""
        return call.rand("normal").mul_(call.per_sample(call.budget(self.std, "std")))


@register_attack
class GaussianNoise(_GaussianScaled):
    """Additive Gaussian noise ``x + std·N(0, 1)``; ``std`` float or ``[B]``, in input units."""

    name = "gaussian"

    def _noisy(self, call: AttackCall) -> Tensor:
        return self._scaled_normal(call).add_(call.x)


@register_attack
class UniformNoise(Noise):
    """Additive uniform noise ``x + U(−eps, eps)`` (so always inside the L∞ ``eps`` ball)."""

    name = "uniform"
    needs_eps = True

    def __init__(self, eps: Scalar = 0.1, bounds: tuple[float, float] = (0.0, 1.0),
                 bn_mode: Mode = "eval", dropout_mode: Mode = "eval") -> None:
        super().__init__(eps=eps, bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)

    def _noisy(self, call: AttackCall) -> Tensor:
        eps = call.per_sample(call.budget(self.eps, "eps"))
        return call.rand("uniform").mul_(2).sub_(1).mul_(eps).add_(call.x)


@register_attack
class SaltPepperNoise(Noise):
    """Salt-and-pepper noise: a fraction ``amount`` of the pixels is set to ``hi`` (salt, with
    probability ``salt_ratio``) or ``lo`` (pepper). A *pixel* is one spatial position, shared by
    all channels (an RGB pixel turns white/black, not one colour of it)."""

    name = "salt_pepper"

    def __init__(self, amount: float = 0.05, salt_ratio: float = 0.5,
                 bounds: tuple[float, float] = (0.0, 1.0), bn_mode: Mode = "eval",
                 dropout_mode: Mode = "eval") -> None:
        super().__init__(eps=None, bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        if not all(math.isfinite(b) for b in self.bounds):
            raise ValueError(f"salt-and-pepper noise needs finite bounds, got {self.bounds}")
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {amount}")
        if not 0.0 <= salt_ratio <= 1.0:
            raise ValueError(f"salt_ratio must be in [0, 1], got {salt_ratio}")
        self.amount, self.salt_ratio = float(amount), float(salt_ratio)

    def _params(self) -> dict[str, Any]:
        return {"amount": self.amount, "salt_ratio": self.salt_ratio}

    def _noisy(self, call: AttackCall) -> Tensor:
        x = call.x
        shape = (x.shape[0], 1, *x.shape[2:]) if x.ndim > 2 else x.shape
        u = call.rand("uniform", shape)
        salt = u < self.amount * self.salt_ratio
        pepper = (u < self.amount) & ~salt
        return x.masked_fill(salt, call.hi).masked_fill_(pepper, call.lo)


@register_attack
class SpeckleNoise(_GaussianScaled):
    """Multiplicative speckle noise ``x + x·std·N(0, 1)`` (ultrasound/OCT-like); ``std`` float
    or ``[B]``. Zero-valued pixels stay unchanged."""

    name = "speckle"

    def _noisy(self, call: AttackCall) -> Tensor:
        return self._scaled_normal(call).mul_(call.x).add_(call.x)
