"""Standard adversarial training (SAT): PGD-k inside an ε-ball (Madry et al. 2018), with ε
schedules including the staged schedule of Joel et al. 2022."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks import Attack, AttackSpec
from attacks.mode import Mode
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_choice,
    check_range,
    detach_output,
)
from lightning_modules.methods.schedules import SCHEDULES, EpsSchedule, ScheduleKind
from lightning_modules.protocol import Batch, TrainableTask


class SAT(TrainingMethod):
    """Madry et al. 2018 adversarial training, task-agnostic.

    Each step: the ``attack`` (default PGD-10 L∞) maximises the task's per-sample loss inside
    the ball of radius ε(epoch) around every image (in pixel units of ``data_info.bounds``),
    then the network is trained on ``(1 − β)·L(x) + β·L(x_adv)``; ``beta=1`` is
    adversarial-only training (Madry et al.; Joel et al. 2022 "100 % adversarial batches").

    Args:
        eps: budget ε (the maximum of a ``linear`` schedule).
        attack: the attack, an :class:`attacks.AttackSpec` or its mapping (``None``:
            :attr:`default_attack`, PGD-10 L∞ with step ``2.5·ε/10`` and random start). A
            mapping without ``name`` or naming ``pgd`` changes the default
            (``{steps: 7, rel_step_size: 0.25}``: Joel et al. 2022's PGD-7 with step ε/4, which
            follows the schedule); another attack stands on its own
            (``{name: mifgsm, steps: 5}``, ``{name: apgd, steps: 10}``,
            ``{name: pgd, restarts: 3}``). It is built each step at the current ε.
        beta: weight of the adversarial loss, in ``(0, 1]``.
        schedule: ``"constant"``, ``"linear"`` (warm-up over ``warmup_epochs``) or
            ``"staged"`` (``stages``).
        warmup_epochs: epochs of the linear warm-up.
        stages: ``[[eps, epochs], ...]`` for ``schedule="staged"``.
        attack_bn_mode, attack_dropout_mode: BatchNorm / Dropout mode during the attack's
            forwards (``"eval"``: running statistics, the usual threat model; ``"train"``:
            batch statistics — the running statistics are restored afterwards either way).
        seed: seed of the attack's random start (with the global step and rank) for
            reproducible and resumable runs; ``None`` uses the global RNG.

    The training forward runs clean and adversarial images through the network *together*
    (one BatchNorm batch: the statistics see both, and DDP sees one forward). Logged:
    ``eps`` (current budget), ``loss_clean``, ``loss_adv``, ``adv_violated`` (fraction of the
    batch not "correct" at ``x_adv``).
    """

    name = "sat"
    #: PGD-10 L∞ (Madry et al.), the attack's own step ``2.5·ε/steps`` and random start
    default_attack = {"name": "pgd", "norm": "linf", "steps": 10}
    legacy_attack_fields = {"norm": "norm", "steps": "steps", "step_size": "step_size",
                            "rel_step_size": "rel_step_size",
                            "random_start": "random_start"}

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
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_choice(owner, "schedule", schedule, SCHEDULES)
        check_range(owner, "beta", beta, 0.0, 1.0, lo_open=True)
        self.set_attack(attack, self.default_attack)
        self.schedule = EpsSchedule(schedule, eps, warmup_epochs, stages, owner=owner)
        self.beta = float(beta)
        self.set_attack_modes(attack_bn_mode, attack_dropout_mode)
        self.seed = seed
        self._current_eps = self.schedule(0)

    # ------------------------------------------------------------------ state
    @property
    def current_eps(self) -> float:
        """ε used in the current (or last) epoch."""
        return self._current_eps

    def signals(self) -> dict[str, float]:
        return {"eps": self._current_eps}

    def on_train_epoch_start(self, task: TrainableTask) -> None:
        self._current_eps = self.schedule(int(task.current_epoch))

    def make_attack(self, task: TrainableTask, eps: float) -> Attack:
        """The attack of this step (budget ``eps``)."""
        return self.attack.build(eps, tuple(task.data_info.bounds),
                                 (self.attack_bn_mode, self.attack_dropout_mode))

    # ------------------------------------------------------------------ training
    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
        eps = self.schedule(int(task.current_epoch))
        self._current_eps = eps
        x = batch["image"]
        model = task.attack_model()
        if eps <= 0:  # a schedule may start at 0: plain training, no attack cost
            loss = task.batch_loss(model(x), batch)
            return loss, {"eps": 0.0, "loss_clean": loss.detach()}
        atk = self.make_attack(task, eps)
        x_adv = atk(model, x, batch, loss_fn=task.per_sample_loss,
                    generator=self.generator(task, x.device, self.seed))
        logs: Logs = {"eps": eps}
        if self.beta >= 1.0:
            out_adv = model(x_adv)
            loss_adv = task.batch_loss(out_adv, batch)
            loss = loss_adv
        else:
            out_clean, out_adv = task.forward_joint([x, x_adv])
            loss_clean = task.batch_loss(out_clean, batch)
            loss_adv = task.batch_loss(out_adv, batch)
            loss = (1 - self.beta) * loss_clean + self.beta * loss_adv
            logs["loss_clean"] = loss_clean.detach()
        logs["loss_adv"] = loss_adv.detach()
        with torch.no_grad():
            logs["adv_violated"] = task.is_violated(detach_output(out_adv), batch).float().mean()
        return loss, logs
