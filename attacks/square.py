"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"): score-based, no gradients at all.

Random search over perturbations at the vertices of the threat model. Each query proposes a
change of the current perturbation inside one random square window (a cube for 3-D inputs)
per sample, and keeps it only where it raises that sample's loss. The window's share ``p`` of
the image starts at ``p_init`` and is halved on the paper's schedule (iterations 10, 50, 200,
500, 1000, 2000, 4000, 6000, 8000 of 10 000, rescaled to ``steps``).

* **L∞**: start from vertical stripes ``±ε`` (a random sign per channel and column); a proposal
  sets the whole window of one channel to a random ``±ε``.
* **L2** (simplified): start from random ``±`` stripes rescaled to ``‖δ‖₂ = ε``; a proposal
  redraws the window as Gaussian noise carrying the window's current mass plus a fresh share,
  then the whole perturbation is rescaled onto the ``ε`` sphere. The paper's exact L2 update
  (mass moved between two windows with its centred "square" pattern) is not reproduced; the
  acceptance rule, schedule and budget are the same.

Because it never looks at a gradient, a model that hides its gradient (quantised input,
saturated softmax) does not stop it: Square beating the white-box attacks is a
gradient-masking flag (see :mod:`callbacks.sanity`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Attack, AttackCall, Scalar, check_count, check_scalar, per_sample_norm
from .registry import register_attack

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@register_attack
class Square(Attack):
    """Square attack, L∞ or L2, on any per-sample loss.

    Args:
        eps: budget, float or ``[B]``.
        norm: ``"linf"`` or ``"l2"``.
        steps: queries (no-grad forwards) per restart, after the initial one.
        p_init: initial window area as a fraction of the spatial size (0.8 as in AutoAttack).
        restarts: independent random inits, worst case per sample.
        bounds, bn_mode, dropout_mode: see :class:`attacks.base.Attack`.

    Shape:
        ``x``: ``[B, C, *spatial]`` (any number of spatial dims) → same shape.
    """

    name = "square"
    gradient_free = True  # score-based: the evaluation counts its wins as a masking flag

    def __init__(
        self,
        eps: Scalar = 0.004,
        norm: str = "linf",
        steps: int = 1000,
        p_init: float = 0.8,
        restarts: int = 1,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: str = "eval",
        dropout_mode: str = "eval",
    ) -> None:
        if norm is None:
            raise ValueError("norm must be 'linf' or 'l2' for Square, got None")
        super().__init__(eps, norm, bounds, bn_mode, dropout_mode)
        check_scalar("eps", eps)
        check_count("steps", steps)
        check_count("restarts", restarts)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.steps = steps
        self.p_init = float(p_init)
        self.restarts = restarts
        self.random_start = True

    def _n_restarts(self) -> int:
        return self.restarts

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "p_init": self.p_init, "queries": self.steps + 1,
                "gradient_free": True}

    def _validate_call(self, call: AttackCall) -> None:
        if self.eps is None:
            raise ValueError("eps must be a float or a tensor of shape [B], got None")
        self._eps_tensor(call, self.eps, "eps")

    def _p(self, t: int) -> float:
        """Window share at query ``t`` (the paper's schedule, rescaled to ``steps``)."""
        t_paper = int(t / self.steps * 10_000)
        halvings = sum(t_paper > s for s in _SCHEDULE)
        return self.p_init / 2**halvings

    def _window(self, call: AttackCall, side: list[int]) -> Tensor:
        """``Bool[B, 1, *spatial]``: one random axis-aligned window of the given side per sample."""
        spatial = call.x.shape[2:]
        mask: Tensor | None = None
        for d, (n, s) in enumerate(zip(spatial, side)):
            start = (self._rand(call, "uniform", (call.batch,)) * (n - s + 1)).floor().long()
            idx = torch.arange(n, device=call.x.device)
            m = (idx[None] >= start[:, None]) & (idx[None] < start[:, None] + s)  # [B, n]
            shape = [call.batch] + [1] * len(spatial)
            shape[1 + d] = n
            m = m.view(shape)
            mask = m if mask is None else mask & m
        assert mask is not None
        return mask.unsqueeze(1)

    def _loss(self, call: AttackCall, xa: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.no_grad():
            out = call.model(xa)  # type: ignore[misc]
            loss = self._check_loss(call.loss_fn(out, call.target), call.batch).float()
            succ = None
            if call.success_fn is not None:
                succ = self._check_success(call.success_fn(out, call.target), call)
        return loss, succ

    def _run(self, call: AttackCall) -> Tensor:
        x, b = call.x, call.batch
        if x.ndim < 3:
            raise ValueError(f"Square needs [B, C, *spatial] inputs, got {tuple(x.shape)}")
        eps = self._eps_tensor(call, self.eps, "eps")
        eps_t = eps if isinstance(eps, Tensor) else torch.full((b,), eps, device=x.device, dtype=x.dtype)
        e = call.per_sample(eps_t)
        spatial = x.shape[2:]
        c = x.shape[1]

        def sign(shape: tuple[int, ...]) -> Tensor:
            return self._rand(call, "uniform", shape).lt(0.5).to(x.dtype).mul_(2).sub_(1)

        stripes = sign((b, c, *([1] * (len(spatial) - 1)), spatial[-1]))  # vertical stripes
        if self.norm == "linf":
            lower, upper = self._linf_box(call, eps)

            def project(delta: Tensor) -> Tensor:
                return (x + delta).clamp_(lower, upper)

            delta = stripes * e
        else:
            def project(delta: Tensor) -> Tensor:
                return self._project_l2(call, x + delta, eps)

            delta = stripes.expand_as(x).clone()
            delta *= e / per_sample_norm(delta, "l2").clamp_min(1e-12).view_as(e)
        x_best = project(delta)
        delta = x_best - x
        best_loss, success = self._loss(call, x_best)
        active = ~success if success is not None else torch.ones(b, dtype=torch.bool, device=x.device)

        for t in range(self.steps):
            if not bool(active.any()):
                break
            p = self._p(t)
            # side ≈ n·p^(1/dims) per axis, so the window covers a share p of the image
            side = [max(1, min(max(n - 1, 1), round(n * p ** (1 / len(spatial))))) for n in spatial]
            win = self._window(call, side)  # [B, 1, *spatial]
            if self.norm == "linf":
                new_vals = sign((b, c, *([1] * len(spatial)))) * e
                cand = torch.where(win, new_vals.expand_as(x), delta)
            else:
                inside = (delta * win).reshape(b, -1).norm(dim=1)
                mass = torch.sqrt(inside**2 + (eps_t**2) / max(1.0, 1 / p))  # old window mass + a share
                noise = self._rand(call, "normal") * win
                noise *= (mass / per_sample_norm(noise, "l2").clamp_min(1e-12)).view_as(e)
                cand = torch.where(win, noise, delta)
                cand *= (eps_t / per_sample_norm(cand, "l2").clamp_min(1e-12)).view_as(e)  # onto the sphere
            x_cand = project(cand)
            loss, succ = self._loss(call, x_cand)
            better = (loss > best_loss) & active
            if succ is not None:
                better = better | (succ & active)
                active = active & ~(succ & better)
            x_best = torch.where(call.per_sample(better), x_cand, x_best)
            best_loss = torch.where(better, loss, best_loss)
            delta = x_best - x
        return x_best
