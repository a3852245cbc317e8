"""Fast Minimum-Norm attack (Pintor et al. 2021, "Fast Minimum-norm Adversarial Attacks
through Adaptive Norm Bound Updates"): the smallest perturbation that makes each sample
adversarial, found by gradient steps inside a ball whose radius adapts per sample.

Per step ``k`` (cosine-annealed step ``α_k`` from ``alpha_init`` to ``alpha_final`` and radius
factor ``γ_k`` from ``gamma_init`` to ``gamma_final``):

1. one forward/backward at ``x + δ_k``: the margin loss ``L`` (positive exactly when the sample
   is adversarial) and its input gradient ``g``;
2. keep ``δ_k`` if it is adversarial and smaller than the best so far;
3. radius: adversarial → ``ε ← min(ε·(1 − γ), best norm)`` (shrink); not adversarial but one was
   found before → ``ε ← ε·(1 + γ)`` (grow back); none found yet → ``ε ← ‖δ_k‖ + |L| / ‖g‖_*``
   (a linear estimate of the distance to the boundary; ``‖·‖_*`` the dual norm: L1 for L∞,
   L2 for L2), and at least ``‖δ_k‖·(1 + γ)`` (our addition: an iterate sitting exactly on the
   boundary, ``L = 0`` with the tie going to the true class, would otherwise never move).
   ``ε`` never exceeds the largest perturbation the bounds allow;
4. ascend: ``δ ← δ + α·g/‖g‖₂``, project onto the ``ε``-ball, clamp to the bounds.

Its result is each sample's minimal ε found (``inf`` where no adversarial point was found):
:attr:`FMN.last_min_eps` after a call, or :meth:`FMN.minimal_eps`. With a budget ``eps`` (a
suite member, an ε grid), ``x_adv`` is the smallest adversarial point when it lies inside the
ball, and otherwise the best point projected onto the ball, so ``‖x_adv − x‖ ≤ eps`` always
holds; ``eps=None`` returns the smallest adversarial point at whatever norm (a minimum-norm
query, not a budgeted attack).

Why it is in the suites: a minimum-norm attack searches along the boundary rather than
ascending a loss at a fixed radius, and finds points that fixed-budget APGD misses
(AutoAttack's FAB-T plays this role; FMN is the simpler, faster successor).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import losses
from .base import Attack
from .call import AttackCall, LossFn, Norm, Scalar, ViolationFn
from .checks import check_count
from .mode import Mode
from .projection import linf_box, per_sample_norm, project_l2
from .registry import register_attack


@register_attack
class FMN(Attack):
    """FMN (Pintor et al. 2021), L∞ or L2, on any margin-type per-sample loss.

    Args:
        eps: budget, float or ``[B]`` (``x_adv`` is kept inside it), or ``None`` for the plain
            minimum-norm point.
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps (one forward + one input backward each).
        alpha_init, alpha_final: step size, cosine-annealed (the paper: 1 to ``alpha_init/100``
            for an L2-normalised gradient).
        gamma_init, gamma_final: radius update factor, cosine-annealed (the paper: 0.05 to 0.001).
        bounds, bn_mode, dropout_mode: see :class:`attacks.base.Attack`.

    The loss must be a *margin*: positive exactly when the sample is adversarial, zero on the
    boundary (its value over its gradient's dual norm estimates the distance to the boundary).
    The default is the CW logit margin ``max_{j≠y} z_j − z_y``; an ``is_violated``, when given,
    decides what is adversarial instead of ``loss > 0``.

    Shape:
        ``x``: ``[B, C, *spatial]`` (any shape ``[B, *]``) → same shape; :attr:`last_min_eps`
        ``[B]`` float32 (``inf``: none found).

    Example::

        atk = FMN(eps=0.004, norm="linf", steps=100)
        x_adv = atk(model, x, y)          # inside the 0.004-ball
        smallest = atk.last_min_eps       # [B], each sample's minimal ε found
    """

    name = "fmn"
    needs_norm = True
    minimal_norm = True  # reports each sample's minimal ε (callbacks.minimal_eps uses it)
    last_min_eps: Tensor | None = None

    def __init__(
        self,
        eps: Scalar | None = None,
        norm: Norm = "linf",
        steps: int = 100,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        check_count("steps", steps)
        alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
        for key, value in (("alpha_init", alpha_init), ("alpha_final", alpha_final),
                           ("gamma_init", gamma_init), ("gamma_final", gamma_final)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a number > 0, got {value!r}")
        if not (gamma_init < 1 and gamma_final < 1):
            raise ValueError(f"gamma_init and gamma_final must be < 1, got {gamma_init}, {gamma_final}")
        self.steps = steps
        self.alpha_init, self.alpha_final = float(alpha_init), float(alpha_final)
        self.gamma_init, self.gamma_final = float(gamma_init), float(gamma_final)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "alpha_init": self.alpha_init, "alpha_final": self.alpha_final,
                "gamma_init": self.gamma_init, "gamma_final": self.gamma_final, "minimal_norm": True}

    def _default_loss(self) -> LossFn:
        return losses.logit_margin

    def minimal_eps(self, model: Any, x: Tensor, target: Any = None, loss_fn: LossFn | None = None,
                    is_violated: ViolationFn | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Each sample's minimal ε found, ``[B]`` float32 (``inf``: no adversarial point)."""
        self(model, x, target, loss_fn=loss_fn, is_violated=is_violated, generator=generator)
        assert self.last_min_eps is not None
        return self.last_min_eps

    def _dual(self, g: Tensor) -> Tensor:
        flat = g.reshape(g.shape[0], -1)
        return flat.abs().sum(dim=1) if self.norm == "linf" else torch.linalg.vector_norm(flat, dim=1)

    def _project(self, call: AttackCall, delta: Tensor, radius: Tensor) -> Tensor:
        """``δ`` onto the ``radius``-ball (``[B]``, may hold ``inf``), then ``x + δ`` into the bounds."""
        r = call.per_sample(radius)
        if self.norm == "linf":
            delta = torch.maximum(torch.minimum(delta, r), -r)
        else:
            n = per_sample_norm(delta, "l2")
            factor = (radius / n.clamp_min(torch.finfo(n.dtype).tiny)).clamp(max=1.0)
            delta = delta * call.per_sample(factor)
        return (call.x + delta).clamp(call.lo, call.hi) - call.x

    def _run(self, call: AttackCall) -> Tensor:
        x, b = call.x, call.batch
        norm: Norm = self.norm  # type: ignore[assignment]
        # the largest perturbation the bounds allow: no radius beyond it makes sense
        room = torch.maximum(x - call.lo, call.hi - x)
        worst = per_sample_norm(torch.nan_to_num(room, posinf=1e30), norm)
        delta = torch.zeros_like(x)
        radius = torch.full((b,), math.inf, device=x.device, dtype=x.dtype)
        best_norm = torch.full((b,), math.inf, device=x.device, dtype=x.dtype)
        best_delta = torch.zeros_like(x)
        found = torch.zeros(b, dtype=torch.bool, device=x.device)
        for k in range(self.steps):
            cosine = (1 + math.cos(math.pi * k / self.steps)) / 2
            alpha = self.alpha_final + (self.alpha_init - self.alpha_final) * cosine
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine
            grad, loss, violated = self.input_gradient(call, x + delta)
            adv = violated if violated is not None else loss > 0
            size, best_norm, best_delta = _keep_smallest(call, delta, adv, best_norm, best_delta, norm)
            found |= adv
            to_boundary = loss.abs().to(x.dtype) / self._dual(grad).clamp_min(1e-12)
            # never-adversarial samples: the linear estimate, but at least a γ-growth, so a sample
            # stuck exactly on the boundary (a tie the argmax gives the true class) still crosses
            estimate = torch.maximum(size + to_boundary, size * (1 + gamma))
            radius = torch.where(adv, torch.minimum(radius * (1 - gamma), best_norm),
                                 torch.where(found, radius * (1 + gamma), estimate))
            radius = torch.minimum(radius, worst)
            g2 = torch.linalg.vector_norm(grad.reshape(b, -1), dim=1).clamp_min(1e-12)
            delta = self._project(call, delta + alpha * grad / call.per_sample(g2), radius)
        # the last iterate was not checked by a forward yet
        last_loss, violated = self._evaluate(call, x + delta)
        if last_loss is not None:
            adv = violated if violated is not None else last_loss > 0
            _, best_norm, best_delta = _keep_smallest(call, delta, adv, best_norm, best_delta, norm)
            found |= adv
        self.last_min_eps = best_norm.float().detach()
        chosen = torch.where(call.per_sample(found), best_delta, delta)
        if self.eps is None:
            return x + chosen
        eps = call.budget(self.eps, "eps")
        if norm == "linf":
            lower, upper = linf_box(call, eps)  # type: ignore[arg-type]
            return (x + chosen).clamp(lower, upper)
        return project_l2(call, x + chosen, eps)  # type: ignore[arg-type]


def _keep_smallest(call: AttackCall, delta: Tensor, adv: Tensor, best_norm: Tensor, best_delta: Tensor,
                   norm: Norm) -> tuple[Tensor, Tensor, Tensor]:
    """Keep each sample's smallest adversarial perturbation so far: ``delta`` ``[B, *]`` with
    ``adv`` ``Bool[B]`` against the best ``[B]`` norms and ``[B, *]`` perturbations. Returns
    ``(‖delta‖ [B], best_norm, best_delta)``."""
    size = per_sample_norm(delta, norm)
    smaller = adv & (size < best_norm)
    best_delta = torch.where(call.per_sample(smaller), delta, best_delta)
    return size, torch.where(smaller, size, best_norm), best_delta
