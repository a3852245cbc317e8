"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020, "Understanding and Improving Fast
Adversarial Training"): FGSM training plus a gradient-alignment regulariser."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks import AttackSpec, attack_mode
from attacks.mode import Mode
from lightning_modules.methods.base import Logs, check_range
from lightning_modules.methods.sat import SAT
from lightning_modules.methods.schedules import ScheduleKind
from lightning_modules.protocol import Batch, TrainableTask


class GradAlign(SAT):
    """FGSM adversarial training with GradAlign, task-agnostic.

    ``L = L_adv + λ·mean_i (1 − cos(∇x ℓ_i(x), ∇x ℓ_i(x + η_i)))`` with ``η_i`` uniform in
    the ε-ball and ``ℓ_i`` the task's per-sample loss: the input gradient is kept locally
    linear, which is what single-step training loses at catastrophic overfitting. The cosine
    needs second-order gradients (``create_graph=True``): about three times the cost of an
    FGSM step, still far below PGD-10. The adversarial term is :class:`SAT`'s with the default
    attack FGSM of step ε from ``x`` (the paper's "FGSM + GradAlign", no random start).

    Args:
        align_weight: ``λ`` (the paper: 0.2 at ε = 8/255 on CIFAR-10, grown with ε; it has to
            be tuned per ε and dataset). Other arguments: :class:`SAT`.

    The two gradient forwards run in the attack's BatchNorm / Dropout modes (running statistics
    never change) and touch no parameter ``.grad``: their graph enters the loss, which the
    trainer's backward differentiates once.
    """

    name = "gradalign"
    #: FGSM with step ε from x (Andriushchenko & Flammarion's FGSM + GradAlign)
    default_attack = {"name": "fgsm", "norm": "linf", "random_start": False}
    legacy_attack_fields: dict[str, str] = {}

    def __init__(
        self,
        eps: float = 0.004,
        attack: dict[str, Any] | AttackSpec | None = None,
        beta: float = 1.0,
        schedule: ScheduleKind = "constant",
        warmup_epochs: int = 0,
        stages: list[list[float]] | None = None,
        attack_bn_mode: Mode = "eval",
        attack_dropout_mode: Mode = "eval",
        seed: int | None = 0,
        align_weight: float = 0.2,
    ) -> None:
        super().__init__(eps=eps, attack=attack, beta=beta, schedule=schedule, warmup_epochs=warmup_epochs,
                         stages=stages, attack_bn_mode=attack_bn_mode, attack_dropout_mode=attack_dropout_mode,
                         seed=seed)
        check_range(type(self).__name__, "align_weight", align_weight, 0.0)
        self.align_weight = float(align_weight)

    def alignment(self, task: TrainableTask, batch: Batch, eps: float,
                  generator: torch.Generator | None) -> Tensor:
        """``[B]`` per-sample ``1 − cos(∇x ℓ(x), ∇x ℓ(x + η))``, differentiable w.r.t. the
        parameters (double backpropagation)."""
        x = batch["image"]
        lo, hi = task.data_info.bounds
        if generator is None:
            u = torch.rand(x.shape, device=x.device, dtype=x.dtype)
        else:
            u = torch.rand(x.shape, generator=generator, device=generator.device,
                           dtype=x.dtype).to(x.device)
        if self.attack.setting("norm") == "l2":
            eta = torch.randn_like(u)
            eta = eta / eta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1)) * eps
        else:
            eta = (2 * u - 1) * eps
        x_noisy = (x + eta).clamp(lo, hi)
        model = task.attack_model()
        grads = []
        with attack_mode(model, bn=self.attack_bn_mode, dropout=self.attack_dropout_mode):
            for xi in (x, x_noisy):
                xi = xi.detach().requires_grad_(True)
                loss = task.per_sample_loss(model(xi), batch)
                (g,) = torch.autograd.grad(loss.sum(), xi, create_graph=True)
                grads.append(g.flatten(1))
        cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=1, eps=1e-12)
        return 1.0 - cos

    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        loss, logs = super().training_loss(task, batch)
        eps = self._current_eps
        if self.align_weight > 0 and eps > 0:
            # its own stream: (seed + 1, step, rank), so the FGSM start is unchanged by it
            gen = self.generator(task, batch["image"].device,
                                 None if self.seed is None else self.seed + 1)
            misalign = self.alignment(task, batch, eps, gen).mean()
            loss = loss + self.align_weight * misalign
            logs["grad_misalignment"] = misalign.detach()
        return loss, logs
