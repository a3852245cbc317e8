"""What an attack loss is: a named factory for one task family (:class:`AttackLoss`), called
once per attack call as ``factory(clean_logits, steps, **args)`` and returning the per-sample
loss ``(logits, labels) -> [B]`` (:data:`Loss`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

Loss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackLoss:
    """A named attack loss: the task it is for and its factory."""

    task: str
    factory: Callable[..., Loss]
    doc: str
    #: which ``(logits, labels)`` the evaluator hands over (``callbacks.attack_loss.
    #: task_loss_tensors``): ``"default"``, or ``"matched"`` (detection: class logits of the
    #: locations matched to ground-truth objects, for DAG)
    inputs: Literal["default", "matched"] = "default"
