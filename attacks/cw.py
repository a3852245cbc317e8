"""Carlini–Wagner L2 attack (Carlini & Wagner 2017, "Towards Evaluating the Robustness of
Neural Networks"), for classification.

A minimal-perturbation attack: for each sample it looks for the *smallest* L2 perturbation that
changes the decision, minimising ``‖x' − x‖² + c·max(z_y − max_{i≠y} z_i, −κ)`` with Adam in
a change of variables ``x' = mid + half·tanh(w)`` that keeps ``x'`` inside ``bounds`` without
clipping, and a per-sample binary search over ``c``.

Needs a classifier: ``model(x)`` must return logits ``[B, K]`` and ``target`` integer labels
``[B]`` (or a batch dict with them under ``"target"``). ``loss_fn`` is used only to report the
final per-sample loss; ``is_violated``, if given, replaces the built-in "margin > κ" test of
what counts as adversarial (CW keeps optimising to shrink the perturbation, so there is no
early stop).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Attack
from .call import AttackCall, Scalar
from .checks import check_count
from .losses import unwrap_target
from .mode import Mode
from .projection import project_l2
from .registry import register_attack


@register_attack
class CW(Attack):
    """Carlini–Wagner L2.

    Args:
        c: initial trade-off constant (per sample it is then binary-searched: halved towards
            the last failure after a violation, ×10 while it never found one).
        kappa: confidence κ ≥ 0: a violation needs ``max_{i≠y} z_i − z_y > κ`` (``> 0`` for κ=0).
        steps: Adam steps per binary-search round (forward + backward each).
        lr: Adam learning rate in tanh space.
        binary_search_steps: rounds of the search over ``c``; total cost is up to
            ``binary_search_steps × steps`` gradient steps (less with ``abort_early``).
        abort_early: end a round when the objective stopped decreasing (checked every
            ``steps // 10`` steps), as in the paper's code.
        eps: optional L2 cap (float or ``[B]``): the smallest adversarial found is projected
            onto this ball, so the output respects the budget but may then stop being
            adversarial. ``None`` (default): unbounded.
        bounds, bn_mode, dropout_mode: see :class:`attacks.base.Attack`.

    Per sample the output is the smallest violating iterate seen over all rounds, or ``x``
    itself where no adversarial example was found.
    """

    name = "cw"

    def __init__(
        self,
        c: float = 1.0,
        kappa: float = 0.0,
        steps: int = 100,
        lr: float = 0.01,
        binary_search_steps: int = 5,
        abort_early: bool = True,
        eps: Scalar | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm="l2", bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        if not all(math.isfinite(b) for b in self.bounds):
            raise ValueError(f"CW needs finite bounds for its tanh mapping, got {self.bounds}")
        if not c > 0:
            raise ValueError(f"c must be > 0, got {c}")
        if not kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {kappa}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        check_count("steps", steps)
        check_count("binary_search_steps", binary_search_steps)
        self.c, self.kappa, self.lr = float(c), float(kappa), float(lr)
        self.steps, self.binary_search_steps = steps, binary_search_steps
        self.abort_early = abort_early

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "steps": self.steps,
            "binary_search_steps": self.binary_search_steps,
            "c": self.c,
            "kappa": self.kappa,
            "lr": self.lr,
        }

    def _labels(self, call: AttackCall) -> Tensor:
        labels = unwrap_target(call.target)
        if labels.shape != (call.batch,) or labels.is_floating_point():
            raise ValueError(
                f"CW needs integer class labels of shape [B]=[{call.batch}] as target, "
                f"got {tuple(labels.shape)} {labels.dtype}"
            )
        return labels.long().to(call.x.device)

    def _run(self, call: AttackCall) -> Tensor:
        x, b = call.x, call.batch
        labels = self._labels(call).unsqueeze(1)
        eps = call.budget(self.eps, "eps")
        mid, half = (call.hi + call.lo) / 2, (call.hi - call.lo) / 2
        # tanh-space start at x (clamped off ±1, where atanh is infinite).
        lim = 1 - 1e-6
        w0 = torch.atanh(((x - mid) / half).clamp_(-lim, lim))

        c = torch.full((b,), self.c, device=x.device, dtype=x.dtype)
        c_lo = torch.zeros_like(c)
        c_hi = torch.full_like(c, float("inf"))
        best_l2 = torch.full_like(c, float("inf"))
        best_adv = x.clone()
        beta1, beta2 = 0.9, 0.999
        check_every = max(self.steps // 10, 1)

        for _ in range(self.binary_search_steps):
            w = w0.clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            found = torch.zeros(b, dtype=torch.bool, device=x.device)
            prev = float("inf")
            for t in range(self.steps):
                wv = w.detach().requires_grad_(True)
                xa = torch.tanh(wv).mul(half).add(mid)
                logits = call.model(xa)  # type: ignore[misc]
                if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != b:
                    got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
                    raise ValueError(f"CW needs a classifier returning logits [B, K], got {got}")
                z = logits.float()
                z_true = z.gather(1, labels).squeeze(1)
                z_other = z.scatter(1, labels, float("-inf")).amax(dim=1)
                gap = z_other - z_true  # > 0 ⇔ misclassified
                l2 = (xa - x).pow(2).reshape(b, -1).sum(dim=1)
                objective = l2 + c * (-gap).clamp(min=-self.kappa)
                (grad,) = torch.autograd.grad(objective.sum(), wv)

                with torch.no_grad():
                    if call.is_violated is not None:
                        violated = call.violated(logits.detach())
                    else:
                        violated = gap > self.kappa if self.kappa > 0 else gap > 0
                    l2 = l2.detach()
                    improved = violated & (l2 < best_l2)
                    best_l2 = torch.where(improved, l2, best_l2)
                    best_adv = torch.where(call.per_sample(improved), xa.detach(), best_adv)
                    found |= violated

                    # Adam (elementwise, so one optimiser state serves the whole batch).
                    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    m_hat = m / (1 - beta1 ** (t + 1))
                    v_hat = v / (1 - beta2 ** (t + 1))
                    w.addcdiv_(m_hat, v_hat.sqrt_().add_(1e-8), value=-self.lr)

                if self.abort_early and t % check_every == 0:
                    current = float(objective.detach().sum())
                    if current > prev * 0.9999:
                        break
                    prev = current

            # Binary search on c, per sample.
            c_hi = torch.where(found, torch.minimum(c_hi, c), c_hi)
            c_lo = torch.where(found, c_lo, torch.maximum(c_lo, c))
            c = torch.where(torch.isfinite(c_hi), (c_lo + c_hi) / 2, c * 10)

        x_adv = best_adv.clamp_(call.lo, call.hi)
        if eps is not None:
            x_adv = project_l2(call, x_adv, eps)
        return x_adv
