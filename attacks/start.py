"""Input gradients: the one forward + input-gradient backward that every attack takes
(:func:`gradient_pass`), its per-sample health (:class:`GradientStats`), and the gradient at a
clean batch taken once and shared by the attack calls on that batch (:class:`StartGradient`,
:func:`start_gradient`), or asked for on its own (:func:`input_gradient`).

Gradients are taken with ``torch.autograd.grad`` wrt the input only, so parameter ``.grad`` is
never touched; under ``torch.autocast`` the model runs in reduced precision but the gradient is
taken wrt a float32 ``x`` and is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import losses
from .call import AttackCall, LossFn, Model, ViolationFn, prepare_call
from .checks import check_bounds
from .mode import Mode, attack_mode
from .tree import tree_map


@dataclass
class GradientStats:
    """Input-gradient health of one attack call, per sample (a gradient-masking check in the
    spirit of AutoAttack's ``checks.py``: reported, never repaired silently).

    Attributes:
        nonfinite: ``Bool[B]``, some step's gradient had a NaN/inf entry (those entries were
            replaced by 0 so the iterate stays finite — the attack then had no information).
        zero: ``Bool[B]``, every gradient the attack took for this sample was exactly zero
            (e.g. a quantising first layer or a saturated softmax: the attack cannot move).
        evaluations: number of input-gradient evaluations of the call (forward + backward).
    """

    nonfinite: Tensor
    zero: Tensor
    evaluations: int = 0

    def merge(self, nonfinite: Tensor, zero: Tensor) -> None:
        self.nonfinite |= nonfinite
        self.zero &= zero
        self.evaluations += 1


@dataclass
class StartGradient:
    """The input gradient at a clean batch ``x``, computed once (:func:`start_gradient`) and
    handed to attack calls on the same ``x`` (``atk(..., start=...)``), which then skip that
    forward + backward: the first step of every attack that starts at ``x`` itself (PGD / BIM /
    FGSM / MI-FGSM / APGD without random start) takes the gradient at ``x``, and for a fixed
    model, loss and input it is the same whatever the budget. An evaluation at several ε
    computes it once, from the same forward that gives the clean output.

    A call uses it only where it computes exactly the same thing: the same ``model`` object and
    ``loss_fn`` object (and ``is_violated``, when the call has one), eval-mode BatchNorm and
    Dropout for both (deterministic, per-sample forwards), an iterate equal to ``x`` element by
    element, and the same shape and dtype. Otherwise the attack ignores it and computes the
    gradient itself, so the result never depends on it — only the cost does.

    Attributes (``B`` the batch): ``x`` ``[B, *]`` the point (work dtype, as the attacks see
    it); ``grad`` ``[B, *]`` the gradient of ``sum_i loss_i`` wrt ``x`` (non-finite entries
    already replaced by 0, as :func:`gradient_pass` does); ``loss`` ``[B]``;
    ``nonfinite`` / ``zero`` ``Bool[B]`` its gradient health; ``violated`` ``Bool[B]`` (only when
    computed with an ``is_violated``); ``model``, ``loss_fn``, ``is_violated`` what it was computed
    with.
    """

    x: Tensor
    grad: Tensor
    loss: Tensor
    nonfinite: Tensor
    zero: Tensor
    model: Any
    loss_fn: LossFn
    is_violated: ViolationFn | None = None
    violated: Tensor | None = None

    def repeat(self, k: int) -> StartGradient:
        """The start of ``x`` repeated ``k`` times along the batch (``[k·B, *]``): for one call
        over ``torch.cat([x] * k)``."""
        def cat(t: Tensor | None) -> Tensor | None:
            return None if t is None else torch.cat([t] * k)

        return StartGradient(cat(self.x), cat(self.grad), cat(self.loss), cat(self.nonfinite),  # type: ignore[arg-type]
                             cat(self.zero), self.model, self.loss_fn, self.is_violated,  # type: ignore[arg-type]
                             cat(self.violated))

    def rows(self, idx: Tensor) -> StartGradient:
        """The start of the samples ``idx`` (``LongTensor[k]``) only (``[k, *]``): for a call
        over ``x[idx]`` (a per-sample forward makes each row's gradient its own)."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return StartGradient(pick(self.x), pick(self.grad), pick(self.loss), pick(self.nonfinite),  # type: ignore[arg-type]
                             pick(self.zero), self.model, self.loss_fn, self.is_violated,  # type: ignore[arg-type]
                             pick(self.violated))

    def applies_to(self, call: AttackCall, bn_mode: Mode, dropout_mode: Mode) -> bool:
        """Whether a call (of an attack with these modes) computes exactly this gradient at
        ``x`` (the values of its iterate are compared when it takes the gradient)."""
        return (self.model is call.model and self.loss_fn is call.loss_fn
                and (call.is_violated is None or (self.violated is not None and self.is_violated is call.is_violated))
                and (bn_mode, dropout_mode) == ("eval", "eval")
                and self.x.shape == call.x.shape and self.x.dtype == call.x.dtype
                and self.x.device == call.x.device)


def gradient_pass(call: AttackCall, x_adv: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Any]:
    """One forward and one input-gradient backward at ``x_adv`` (``[B, *]``): ``(grad, loss,
    violated, nonfinite, zero, output)`` — ``grad`` ``[B, *]`` of ``sum_i loss_i`` wrt ``x_adv``
    in its dtype, ``loss`` ``[B]`` float32 detached, ``violated`` ``Bool[B]`` from the *same*
    forward (``None`` without a test), ``nonfinite`` / ``zero`` ``Bool[B]`` the gradient health,
    ``output`` the model's output, detached."""
    xv = x_adv.detach().requires_grad_(True)
    output = call.model(xv)  # type: ignore[misc]
    loss = call.loss(output)
    (grad,) = torch.autograd.grad(loss.float().sum(), xv)
    output = tree_map(Tensor.detach, output)
    with torch.no_grad():
        violated = call.violated(output)
    if grad.dtype != xv.dtype:  # autograd already matches x's dtype; guard, never bf16
        grad = grad.to(xv.dtype)
    # A NaN/inf gradient would poison x_adv; treat it as "no information" instead — but
    # count it (and all-zero gradients) per sample, so gradient masking is reported.
    flat = grad.detach().reshape(grad.shape[0], -1)
    nonfinite = ~torch.isfinite(flat).all(dim=1)
    if bool(nonfinite.any()):
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        flat = grad.reshape(grad.shape[0], -1)
    zero = ~(flat != 0).any(dim=1) if flat.shape[1] else torch.ones_like(nonfinite)
    return grad, loss.detach().float(), violated, nonfinite, zero, output


def input_gradient(
    model: Model,
    x: Tensor,
    target: Any = None,
    loss_fn: LossFn | None = None,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[Tensor, Tensor]:
    """Gradient of ``sum_i loss_fn(model(x), target)_i`` wrt ``x`` alone, and the loss ``[B]``.

    ``x``: ``[B, *]``; ``bounds`` only checks that ``x`` lies inside them. The same primitive the
    attacks use (``torch.autograd.grad`` wrt the input, so parameter
    ``.grad`` stays untouched; grad in ``x``'s dtype — float32 for float32 ``x`` even under
    autocast). Runs in the model's current mode; wrap in :func:`attack_mode` to choose one.
    """
    call = prepare_call(model, x, target, losses.cross_entropy if loss_fn is None else loss_fn, None,
                        None, check_bounds(bounds), "input_gradient")
    with torch.enable_grad():
        grad, loss, *_ = gradient_pass(call, call.x)
    return grad, loss


def start_gradient(
    model: Model,
    x: Tensor,
    target: Any = None,
    loss_fn: LossFn | None = None,
    is_violated: ViolationFn | None = None,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[StartGradient, Any]:
    """One forward of ``x`` (``[B, *]``) with its input-gradient backward, exactly as an attack
    takes it at ``x`` (eval-mode BatchNorm / Dropout, :func:`attack_mode`): the
    :class:`StartGradient` to hand to attack calls on the same ``x`` (``atk(model, x, target,
    loss_fn, start=...)``), and the model's output at ``x``, detached (the clean output: a
    caller that needs it anyway gets it from the same forward; containers come back as
    :func:`attacks.tree.tree_map` rebuilds them — plain dict / list / tuple — as a
    ``is_violated`` sees them during an attack).

    ``loss_fn`` default: per-sample cross-entropy, as the attacks'; give the very object the
    attack calls will get (the calls compare it by identity). ``bounds`` only range-checks
    ``x``. Parameter ``.grad`` stays untouched.
    """
    call = prepare_call(model, x, target, losses.cross_entropy if loss_fn is None else loss_fn,
                        is_violated, None, check_bounds(bounds), "start_gradient")
    with attack_mode(model, bn="eval", dropout="eval"), torch.enable_grad():
        grad, loss, violated, nonfinite, zero, output = gradient_pass(call, call.x)
    start = StartGradient(call.x, grad, loss, nonfinite, zero, model, call.loss_fn, is_violated, violated)
    return start, output
