"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy"), task-agnostic through the task's ``output_divergence``."""

from __future__ import annotations

import torch
from torch import Tensor

from attacks import PGD, attack_mode
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_choice,
    check_range,
    detach_output,
)
from lightning_modules.protocol import Batch, RobustTask


class TRADES(TrainingMethod):
    """``L = L_task(x) + β · D(f(x_adv), f(x))`` where ``x_adv`` maximises the divergence
    ``D`` (the task's :meth:`output_divergence`: KL of class probabilities for classification,
    per-pixel KL for segmentation, heatmap MSE for landmarks) inside the ε-ball.

    Args:
        eps: budget (pixel units of ``data_info.bounds``).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps.
        step_size: PGD step; ``None`` → the attack's default ``2.5·ε/steps``.
        beta: weight of the robust term (Zhang et al.: 6 for CIFAR-10; 1/λ in the paper).
        init_radius: radius of the random start as a fraction of ε (TRADES starts at
            ``x + 0.001·N(0, 1)``: the divergence's gradient is zero at ``x`` itself).
        attack_bn_mode, attack_dropout_mode: module modes during the attack, also used for the
            clean reference output the attack diverges from (Zhang et al. attack in eval mode).
        seed: seed of the random start; ``None`` = global RNG.
    """

    name = "trades"

    def __init__(
        self,
        eps: float = 0.004,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        beta: float = 6.0,
        init_radius: float = 0.1,
        attack_bn_mode: str = "eval",
        attack_dropout_mode: str = "eval",
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_choice(owner, "norm", norm, ("linf", "l2"))
        check_range(owner, "eps", eps, 0.0, lo_open=True)
        check_range(owner, "beta", beta, 0.0)
        check_range(owner, "init_radius", init_radius, 0.0, 1.0, lo_open=True)
        if step_size is not None:
            check_range(owner, "step_size", step_size, 0.0, lo_open=True)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{owner}.steps must be an int >= 1, got {steps!r}")
        self.eps, self.norm, self.steps, self.step_size = float(eps), norm, steps, step_size
        self.beta, self.init_radius = float(beta), float(init_radius)
        self.set_attack_modes(attack_bn_mode, attack_dropout_mode)
        self.seed = seed

    def signals(self) -> dict[str, float]:
        return {"eps": self.eps}

    def training_loss(self, task: RobustTask, batch: Batch) -> tuple[Tensor, Logs]:
        x = batch["image"]
        model = task.attack_model()
        with torch.no_grad(), attack_mode(model, bn=self.attack_bn_mode, dropout=self.attack_dropout_mode):
            reference = detach_output(model(x))

        def divergence(output: object, target: Batch) -> Tensor:
            return task.output_divergence(output, reference)

        atk = PGD(eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                  random_start=True, init_radius=self.init_radius * self.eps,
                  bounds=tuple(task.data_info.bounds), bn_mode=self.attack_bn_mode,
                  dropout_mode=self.attack_dropout_mode)
        x_adv = atk(model, x, batch, loss_fn=divergence,
                    generator=self.generator(task, x.device, self.seed))
        out_clean, out_adv = task.forward_joint([x, x_adv])
        natural = task.per_sample_loss(out_clean, batch).mean()
        robust = task.output_divergence(out_adv, out_clean).mean()
        loss = natural + self.beta * robust
        return loss, {"eps": self.eps, "loss_clean": natural.detach(), "divergence": robust.detach()}
