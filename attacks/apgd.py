"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks"): PGD whose step size needs no tuning.

What differs from :class:`attacks.PGD` (from the paper's description):

* **Step size** starts at ``η = 2ε`` per sample and is *halved at checkpoints*
  ``w_j = ⌈p_j·N⌉`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``. At checkpoint ``w_j`` a sample's η is
  halved when (1) the loss increased in fewer than ``ρ·(w_j − w_{j−1})`` of the steps since the
  last checkpoint (``ρ = 0.75``), or (2) η was not halved at the last checkpoint and the best
  loss has not improved since. A sample whose η is halved restarts from its best point.
* **Momentum** ``α = 0.75``: ``z = P(x_k + η·s(∇))``,
  ``x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))`` (the first step is plain).
* **Best point per sample**: the result is each sample's highest-loss iterate (with a
  ``is_violated``: the first adversarial iterate, after which the sample stops moving).

``s(∇)`` is ``sign(∇)`` for L∞ and ``∇/‖∇‖₂`` for L2; ``P`` projects onto the ε-ball ∩
``bounds``. Any per-sample loss works; for classification the paper pairs CE with the
scale-invariant DLR loss (:func:`attacks.losses.dlr_loss`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Attack
from .call import AttackCall, Norm, Scalar
from .checks import check_count, check_restarts
from .mode import Mode
from .projection import linf_box, project_l2, random_start, steepest_direction
from .registry import register_attack


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j`` (``1 <= w_j < steps``) at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while True:
        nxt = round(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06), 9)
        if nxt > 1:
            break
        p.append(nxt)
    # round first: 0.22 + 0.19 + 0.16 is 0.5700000000000001 in floating point, not 0.57
    ws = {math.ceil(round(q * steps, 9)) for q in p[1:]}
    return sorted(w for w in ws if 0 < w < steps)


@register_attack
class APGD(Attack):
    """Auto-PGD, L∞ or L2, on any per-sample loss (see the module docstring).

    Args:
        eps: budget, float or ``[B]`` tensor, ``>= 0``.
        norm: ``"linf"`` or ``"l2"``.
        steps: input-gradient evaluations per restart (``N_iter``; the paper uses 100).
        restarts: independent random starts, worst case per sample (see :class:`attacks.PGD`).
        rho: checkpoint condition (1) threshold, 0.75 in the paper.
        momentum: ``α``, 0.75 in the paper.
        random_start: start uniformly in the L∞ cube / on the L2 sphere of radius ``eps``
            (then projected to ``bounds``); ``False`` starts at ``x``.
        bounds, bn_mode, dropout_mode: see :class:`attacks.base.Attack`.

    Shape:
        ``x``: ``[B, C, *spatial]`` (2-D or 3-D) → ``x_adv`` of the same shape.

    Cost: ``steps`` × (forward + input-gradient backward) per restart, like PGD-``steps``.

    Example::

        atk = APGD(eps=8 / 255, steps=100)
        x_adv = atk(model, x, y, loss_fn=attacks.losses.dlr_loss)
    """

    name = "apgd"
    needs_norm = True
    needs_eps = True

    def __init__(
        self,
        eps: Scalar = 0.004,
        norm: Norm = "linf",
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        random_start: bool = True,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        check_count("steps", steps)
        check_restarts(restarts, bool(random_start))
        if not 0 < rho <= 1 or not 0 <= momentum <= 1:
            raise ValueError(f"rho must be in (0, 1] and momentum in [0, 1], got {rho}, {momentum}")
        self.steps = steps
        self.restarts = restarts
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.random_start = bool(random_start)

    def _n_restarts(self) -> int:
        return self.restarts

    def _resolved_step_size_for_report(self) -> Scalar | None:
        return None if self.eps is None else self.eps * 2.0  # the initial η; halved adaptively

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rho": self.rho, "momentum": self.momentum,
                "step_size_rule": "2·eps, halved at checkpoints (Croce & Hein 2020)"}

    # -------------------------------------------------------------- the loop
    def _run(self, call: AttackCall) -> Tensor:
        x, b = call.x, call.batch
        eps_t = call.budget_tensor(self.eps, "eps")  # type: ignore[arg-type]
        view = call.per_sample
        direction = steepest_direction(self.norm)  # type: ignore[arg-type]
        if self.norm == "linf":
            lower, upper = linf_box(call, eps_t)

            def project(xa: Tensor) -> Tensor:
                return xa.clamp_(lower, upper)
        else:
            def project(xa: Tensor) -> Tensor:
                # in place on a fresh tensor (APGD projects twice per step)
                return project_l2(call, xa, eps_t)

        if self.random_start:
            x_k = project(random_start(call, self.norm, eps_t))  # type: ignore[arg-type]
        else:
            x_k = x.clone()

        eta = 2.0 * eps_t  # [B]
        grad, loss, violated = self.input_gradient(call, x_k)
        best_x, best_loss, best_grad = x_k.clone(), loss.clone(), grad.clone()
        active = ~violated if violated is not None else None
        best_violated = violated.clone() if violated is not None else None
        x_prev = x_k.clone()
        loss_prev = loss
        increases = torch.zeros(b, device=x.device)
        checkpoints = apgd_checkpoints(self.steps)
        last_ckpt = 0
        halved_last = torch.zeros(b, dtype=torch.bool, device=x.device)
        best_at_last = best_loss.clone()

        for k in range(1, self.steps):
            if active is not None and not bool(active.any()):
                break
            with torch.no_grad():
                z = project(direction(grad).mul_(view(eta)).add_(x_k))
                if k == 1:
                    x_new = z
                else:  # x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}), in place on z
                    a = self.momentum
                    x_new = project(z.sub_(x_k).mul_(a).add_(x_k - x_prev, alpha=1 - a).add_(x_k))
                if active is not None:  # adversarial samples keep their iterate
                    x_new = torch.where(view(active), x_new, x_k)
                x_prev, x_k = x_k, x_new
            grad, loss, violated = self.input_gradient(call, x_k)
            with torch.no_grad():
                increases += (loss > loss_prev).float()
                loss_prev = loss
                better = loss > best_loss
                if active is not None:
                    assert violated is not None and best_violated is not None
                    newly = violated & active
                    better = (better & active) | newly
                    best_violated |= newly
                    active = active & ~violated
                if bool(better.any()):  # copy only the improved samples
                    best_x[better] = x_k[better]
                    best_grad[better] = grad[better]
                    best_loss = torch.where(better, loss, best_loss)
                if k in checkpoints:
                    span = k - last_ckpt
                    few_increases = increases < self.rho * span
                    stalled = ~halved_last & (best_loss <= best_at_last)
                    halve = few_increases | stalled
                    if active is not None:
                        halve &= active
                    eta = torch.where(halve, eta / 2, eta)
                    # Restart halved samples from their best point, without momentum.
                    x_k = torch.where(view(halve), best_x, x_k)
                    x_prev = torch.where(view(halve), best_x, x_prev)
                    grad = torch.where(view(halve), best_grad, grad)
                    loss_prev = torch.where(halve, best_loss, loss_prev)
                    halved_last, best_at_last = halve, best_loss.clone()
                    increases.zero_()
                    last_ckpt = k
        return best_x
