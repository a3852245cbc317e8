"""The loss a suite member maximises: the task's own per-sample loss, or a named attack loss.

A member's ``loss:`` (an entry of :data:`attacks.task_losses.ATTACK_LOSSES`: margin, DLR,
targeted losses…) works on ``(logits, labels)`` tensors; the task turns its output and batch
into them (:meth:`~lightning_modules.protocol.RobustTask.attack_loss_inputs`). The evaluation
loop and the minimal-ε search build their attack losses here.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from attacks.spec import AttackSpec

__all__ = ["member_loss", "task_loss_tensors"]


def task_loss_tensors(task: Any, output: Any, batch: dict[str, Any],
                      inputs: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` that the named attack losses (:mod:`attacks.task_losses`) take: the
    task's own :meth:`~lightning_modules.protocol.RobustTask.attack_loss_inputs`.

    ``inputs`` is the loss's :attr:`attacks.task_losses.AttackLoss.inputs`: ``"default"``, or
    another kind that a task offers through an ``inputs`` argument of ``attack_loss_inputs``
    (detection's ``"matched"``: the predictions of the locations / proposals that cover a
    ground-truth object, for DAG).
    """
    fn = getattr(task, "attack_loss_inputs", None)
    if fn is None:
        raise ValueError(f"no named attack losses for {type(task).__name__} (it has no "
                         "attack_loss_inputs); drop `loss:` to use the task's own loss")
    if inputs == "default":
        return fn(output, batch)
    if "inputs" not in inspect.signature(fn).parameters:
        raise ValueError(f"attack loss inputs {inputs!r} are not offered by {type(task).__name__} "
                         "(its attack_loss_inputs takes no `inputs`); pick a loss for this task")
    return fn(output, batch, inputs=inputs)


def member_loss(task: Any, spec: AttackSpec, out_clean: Any, idx: torch.Tensor | None, default: Any) -> Any:
    """The attack's loss: the task's per-sample loss, or the spec's named attack loss on the
    task's ``(logits, labels)`` (targets of targeted losses from the clean output)."""
    if spec.loss is None:
        return default
    from attacks.task_losses import ATTACK_LOSSES, make_attack_loss

    steps = int(spec.params.get("steps", 1))
    reference = getattr(task, "attack_loss_reference", None)
    clean_logits = reference(out_clean) if reference is not None else None
    if clean_logits is not None and idx is not None:
        clean_logits = clean_logits[idx]
    fn = make_attack_loss(spec.loss, clean_logits, steps, **spec.loss_args)
    inputs = ATTACK_LOSSES[spec.loss].inputs

    def loss(output: Any, batch: Any) -> torch.Tensor:
        logits, labels = task_loss_tensors(task, output, batch, inputs)
        return fn(logits, labels)

    return loss
