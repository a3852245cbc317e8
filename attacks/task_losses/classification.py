"""Attack losses for classification logits ``[B, K]`` with integer labels ``[B]``: CE, the CW
margin, DLR and the targeted DLR / CE of APGD-T (see :mod:`attacks.task_losses`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .. import losses
from .base import AttackLoss, Loss


def _ce(clean: Tensor | None, steps: int) -> Loss:
    return lambda z, y: losses.cross_entropy(z, y)


def _margin(clean: Tensor | None, steps: int) -> Loss:
    """The CW margin; a single logit: its margin on the wrong side (:func:`attacks.losses.logit_margin`)."""
    return lambda z, y: losses.logit_margin(z, y)


def _dlr(clean: Tensor | None, steps: int) -> Loss:
    """DLR needs ``K >= 3`` (``z_π3``). Documented fallback: with 1 or 2 logits it is the CW
    margin, since DLR's scale normaliser does not exist there."""
    def loss(z: Tensor, y: Tensor) -> Tensor:
        if z.ndim == 2 and z.shape[1] < 3:
            return _margin(clean, steps)(z, y)
        return losses.dlr_loss(z, y)

    return loss


def _target_classes(clean: Tensor | None, labels_rank: int) -> Callable[[Tensor], Tensor]:
    if clean is None:
        raise ValueError("targeted attack losses need the clean logits to choose the targets")

    def pick(y: Tensor) -> Tensor:
        z = clean.float().scatter(1, y.long().reshape(-1, 1), float("-inf"))
        k = z.shape[1] - 1
        if labels_rank > k:
            raise ValueError(f"target_rank={labels_rank} but only {k} other classes exist")
        return z.topk(labels_rank, dim=1).indices[:, labels_rank - 1]

    return pick


def _dlr_targeted(clean: Tensor | None, steps: int, target_rank: int = 1) -> Loss:
    """APGD-T's loss; the target is the ``target_rank``-th most likely wrong clean class."""
    pick = _target_classes(clean, int(target_rank))
    return lambda z, y: losses.dlr_targeted_loss(z, y, pick(y))


def _ce_targeted(clean: Tensor | None, steps: int, target_rank: int = 1) -> Loss:
    pick = _target_classes(clean, int(target_rank))
    return lambda z, y: losses.ce_targeted_loss(z, y, pick(y))


LOSSES: dict[str, AttackLoss] = {
    "ce": AttackLoss("classification", _ce, "cross-entropy"),
    "margin": AttackLoss("classification", _margin, "CW logit margin"),
    "dlr": AttackLoss("classification", _dlr, "DLR (CW margin for K < 3)"),
    "dlr_targeted": AttackLoss("classification", _dlr_targeted, "targeted DLR (K >= 4)"),
    "ce_targeted": AttackLoss("classification", _ce_targeted, "targeted CE"),
}
