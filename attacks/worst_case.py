"""The per-sample worst-case rule, in one place.

Used by the attacks' restarts (:meth:`attacks.base.Attack.perturb` keeps the worst restart per
sample) and by the evaluation's ensemble (``callbacks/evaluation_loop.py`` keeps the worst
attack per sample, as AutoAttack does).

Each candidate carries a per-sample **score** that says how bad the candidate is for the
model, *higher = worse*: in the evaluation the task's own per-sample metric, oriented by its
direction (``−Dice``, ``+radial error``, ``−correct``…: see
:meth:`lightning_modules.protocol.RobustTask.per_sample_metric`); inside an attack its violation
flag (``Bool``: violated counts as 1, which for classification *is* the metric, 1 − correct). A
candidate replaces the current worst when its score is higher, or when the scores tie and its
per-sample loss is higher. Without a score the rule is "higher loss wins". The loss only ever
breaks ties: a suite keeps the member that hurt the *metric* most, so it can never report less
than its strongest member (a loss or a surrogate threshold such as "Dice < 0.5" does not decide).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Worst", "is_worse", "keep_worst", "badness"]


class Worst(NamedTuple):
    """The worst candidate per sample so far.

    Attributes:
        x: ``[B, C, *spatial]`` inputs.
        loss: ``[B]`` per-sample loss of ``x`` (the tie-break).
        score: ``[B]`` how bad ``x`` is for the model, higher = worse (a float metric oriented
            by :func:`badness`, or a ``Bool`` violation flag), or ``None`` without one.
    """

    x: Tensor
    loss: Tensor
    score: Tensor | None

    @property
    def violated(self) -> Tensor | None:
        """The score when it is a ``Bool`` violation flag (attack restarts), else ``None``."""
        s = self.score
        return s if s is not None and s.dtype == torch.bool else None


def badness(metric: Tensor, higher_is_better: bool) -> Tensor:
    """``[B]`` float: a per-sample task metric turned into a score where higher = worse for the
    model (``−metric`` for Dice / accuracy, ``metric`` for radial error). NaN (an undefined
    metric) becomes ``−inf``: such a candidate never wins on the metric, only on ties."""
    m = metric.detach().float()
    s = -m if higher_is_better else m
    return torch.nan_to_num(s, nan=float("-inf"))


def is_worse(loss: Tensor, best_loss: Tensor, score: Tensor | None = None,
             best_score: Tensor | None = None) -> Tensor:
    """``Bool[B]``: the candidate (``loss``, ``score``) is worse for the model than the best.

    The higher score first (when both scores are given; ``Bool`` scores count violated as the
    higher), then the higher loss. Ties keep the current best, so the first candidate wins
    among equals.
    """
    higher = loss > best_loss
    if score is None or best_score is None:
        return higher
    s, b = _as_score(score), _as_score(best_score)
    return (s > b) | ((s == b) & higher)


def _as_score(score: Tensor) -> Tensor:
    return score.float() if score.dtype == torch.bool else score


def keep_worst(best: Worst, x: Tensor, loss: Tensor, score: Tensor | None = None) -> tuple[Worst, Tensor]:
    """Merge one candidate into ``best``; returns the new worst case and the ``Bool[B]`` mask
    of samples the candidate took over.

    Args:
        best: the current worst case.
        x: candidate inputs, same shape as ``best.x``.
        loss: candidate per-sample loss ``[B]``.
        score: candidate ``[B]`` score (higher = worse; float or ``Bool``) or ``None``.
    """
    better = is_worse(loss, best.loss, score, best.score)
    mask = better.view(-1, *([1] * (x.ndim - 1)))
    new_score = best.score
    if score is not None and best.score is not None:
        # `better` needs a score at least as high, so a violated sample stays violated
        new_score = torch.where(better, score.to(best.score.dtype), best.score)
    return Worst(torch.where(mask, x, best.x), torch.where(better, loss, best.loss), new_score), better
