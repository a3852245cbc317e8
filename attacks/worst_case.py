"""The per-sample worst-case rule, in one place.

Used by the attacks' restarts (:meth:`attacks.base.Attack.perturb` keeps the worst restart per
sample) and by the evaluation's ensemble (``callbacks/evaluation_loop.py`` keeps the worst
attack per sample, as AutoAttack does). A candidate replaces the current worst when it
*succeeds* (breaks the sample: misclassified, or the task's violation test) and the current one
does not, or when both agree on success and its per-sample loss is higher. Without a success
test the rule is "higher loss wins".
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Worst", "is_worse", "keep_worst"]


class Worst(NamedTuple):
    """The worst candidate per sample so far.

    Attributes:
        x: ``[B, C, *spatial]`` inputs.
        loss: ``[B]`` per-sample loss of ``x``.
        success: ``Bool[B]`` (the sample is broken at ``x``) or ``None`` without a success test.
    """

    x: Tensor
    loss: Tensor
    success: Tensor | None


def is_worse(loss: Tensor, best_loss: Tensor, success: Tensor | None = None,
             best_success: Tensor | None = None) -> Tensor:
    """``Bool[B]``: the candidate (``loss``, ``success``) is worse for the model than the best.

    Success first (when both success tensors are given), then the higher loss. Ties keep the
    current best, so the first candidate wins among equals.
    """
    higher = loss > best_loss
    if success is None or best_success is None:
        return higher
    success, best_success = success.bool(), best_success.bool()
    return (success & ~best_success) | ((success == best_success) & higher)


def keep_worst(best: Worst, x: Tensor, loss: Tensor, success: Tensor | None = None) -> tuple[Worst, Tensor]:
    """Merge one candidate into ``best``; returns the new worst case and the ``Bool[B]`` mask
    of samples the candidate took over.

    Args:
        best: the current worst case.
        x: candidate inputs, same shape as ``best.x``.
        loss: candidate per-sample loss ``[B]``.
        success: candidate ``Bool[B]`` or ``None``.
    """
    better = is_worse(loss, best.loss, success, best.success)
    mask = better.view(-1, *([1] * (x.ndim - 1)))
    new_success = best.success
    if success is not None and best.success is not None:
        # a sample that was broken stays broken: `better` only ever adds successes
        new_success = best.success | (success.bool() & better)
    return Worst(torch.where(mask, x, best.x), torch.where(better, loss, best.loss), new_success), better
