"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy"), task-agnostic through the task's ``output_divergence``."""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from attacks import AttackSpec, attack_mode
from attacks.mode import Mode
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_choice,
    check_range,
    detach_output,
)
from lightning_modules.protocol import Batch, TrainableTask

#: TRADES' training forwards: the authors' two forwards, or one joint forward
TradesForward = Literal["separate", "joint"]
FORWARDS: tuple[str, ...] = get_args(TradesForward)


class TRADES(TrainingMethod):
    """``L = L_task(x) + β · D(f(x_adv), f(x))`` where ``x_adv`` maximises the divergence
    ``D`` (the task's :meth:`output_divergence`: KL of class probabilities for classification,
    per-pixel KL for segmentation, heatmap MSE for landmarks) inside the ε-ball.

    Args:
        eps: budget (pixel units of ``data_info.bounds``).
        attack: the attack maximising the divergence, an :class:`attacks.AttackSpec` or its
            mapping (``None``: :attr:`default_attack`, PGD-10 L∞ with step ``2.5·ε/10`` from
            the authors' start ``x + 0.001·N(0, 1)`` — a small Gaussian, because the
            divergence's gradient is zero at ``x`` itself; ``0.001`` is in pixel units of
            ``[0, 1]`` images, as in their code). A mapping without ``name`` or naming ``pgd``
            changes the default (see :class:`SAT`). The attack is handed the divergence as its
            loss.
        beta: weight of the robust term (Zhang et al.: 6 for CIFAR-10; 1/λ in the paper).
        attack_bn_mode, attack_dropout_mode: module modes during the attack, also used for the
            clean reference output the attack diverges from (Zhang et al. attack in eval mode).
        seed: seed of the random start; ``None`` = global RNG.
        forward: how the training forwards run. ``"separate"`` (default, the authors' code):
            ``f(x)`` and ``f(x_adv)`` are two train-mode forwards, so BatchNorm normalises the
            clean and the adversarial batch each with its own statistics. ``"joint"``: one
            forward over ``[x, x_adv]`` (one set of batch statistics for both; cheaper, and
            what this method did before).

    Fidelity to the authors' ``trades_loss`` (Zhang et al. 2019): same start, same inner
    maximisation of ``KL(f(x) ‖ f(x_adv))`` in eval mode, same loss
    ``CE(f(x), y) + β·KL(f(x) ‖ f(x_adv))`` with gradients through both outputs, same
    separate train-mode forwards. One difference: the start is projected onto the ball and
    the range before the first step (their L∞ code clips only after each step); the two
    differ only where a Gaussian coordinate exceeds ε (ε = 0.004: beyond 4σ), and the first
    step's clip removes the excess there anyway.
    """

    name = "trades"
    #: PGD-10 L∞ from x + 0.001·N(0, 1) (Zhang et al.'s code)
    default_attack = {"name": "pgd", "norm": "linf", "steps": 10, "random_start": True,
                      "init_radius": 0.001, "init_distribution": "normal"}
    legacy_attack_fields = {"norm": "norm", "steps": "steps", "step_size": "step_size",
                            "init_radius": "rel_init_radius"}

    def __init__(
        self,
        eps: float = 0.004,
        attack: dict[str, Any] | AttackSpec | None = None,
        beta: float = 6.0,
        attack_bn_mode: Mode = "eval",
        attack_dropout_mode: Mode = "eval",
        seed: int | None = 0,
        forward: TradesForward = "separate",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_choice(owner, "forward", forward, FORWARDS)
        self.forward_mode = forward
        check_range(owner, "eps", eps, 0.0, lo_open=True)
        check_range(owner, "beta", beta, 0.0)
        self.set_attack(attack, self.default_attack)
        self.eps, self.beta = float(eps), float(beta)
        self.set_attack_modes(attack_bn_mode, attack_dropout_mode)
        self.seed = seed

    def signals(self) -> dict[str, float]:
        return {"eps": self.eps}

    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        x = batch["image"]
        model = task.attack_model()
        with torch.no_grad(), attack_mode(model, bn=self.attack_bn_mode, dropout=self.attack_dropout_mode):
            reference = detach_output(model(x))

        def divergence(output: object, target: Batch) -> Tensor:
            return task.output_divergence(output, reference)

        atk = self.attack.build(self.eps, tuple(task.data_info.bounds),
                                (self.attack_bn_mode, self.attack_dropout_mode))
        x_adv = atk(model, x, batch, loss_fn=divergence,
                    generator=self.generator(task, x.device, self.seed))
        if self.forward_mode == "joint":
            out_clean, out_adv = task.forward_joint([x, x_adv])
        else:
            out_clean, out_adv = model(x), model(x_adv)
        natural = task.batch_loss(out_clean, batch)
        robust = task.output_divergence(out_adv, out_clean).mean()
        loss = natural + self.beta * robust
        return loss, {"eps": self.eps, "loss_clean": natural.detach(), "divergence": robust.detach()}
