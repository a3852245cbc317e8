"""Standard adversarial training (SAT): PGD-k inside an ε-ball (Madry et al. 2018), with ε
schedules including the staged schedule of Joel et al. 2022."""

from __future__ import annotations

import torch
from torch import Tensor

from attacks import PGD
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_choice,
    check_range,
    detach_output,
)
from lightning_modules.methods.schedules import SCHEDULES, EpsSchedule
from lightning_modules.protocol import Batch, RobustTask


class SAT(TrainingMethod):
    """Madry et al. 2018 adversarial training, task-agnostic.

    Each step: PGD-``steps`` maximises the task's per-sample loss inside the ``norm`` ball of
    radius ε(epoch) around every image (in pixel units of ``data_info.bounds``), then the
    network is trained on ``(1 − β)·L(x) + β·L(x_adv)``; ``beta=1`` is adversarial-only
    training (Madry et al.; Joel et al. 2022 "100 % adversarial batches").

    Args:
        eps: budget ε (the maximum of a ``linear`` schedule).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps ``k``.
        step_size: absolute PGD step; ``None`` → ``rel_step_size·ε`` if given, else the attack's
            default ``2.5·ε/k``.
        rel_step_size: step as a fraction of the current ε (Joel et al. 2022: ``0.25``, i.e.
            ε/4), so the step follows the schedule.
        random_start: PGD's random start inside the ball.
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

    def __init__(
        self,
        eps: float = 0.004,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        beta: float = 1.0,
        schedule: str = "constant",
        warmup_epochs: int = 0,
        stages: list[list[float]] | None = None,
        attack_bn_mode: str = "eval",
        attack_dropout_mode: str = "eval",
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_choice(owner, "norm", norm, ("linf", "l2"))
        check_choice(owner, "schedule", schedule, SCHEDULES)
        check_range(owner, "beta", beta, 0.0, 1.0, lo_open=True)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{owner}.steps must be an int >= 1, got {steps!r}")
        if step_size is not None:
            check_range(owner, "step_size", step_size, 0.0, lo_open=True)
        if rel_step_size is not None:
            check_range(owner, "rel_step_size", rel_step_size, 0.0, lo_open=True)
        if step_size is not None and rel_step_size is not None:
            raise ValueError(f"{owner}: give step_size or rel_step_size, not both")
        self.schedule = EpsSchedule(schedule, eps, warmup_epochs, stages, owner=owner)
        self.norm, self.steps = norm, steps
        self.step_size, self.rel_step_size = step_size, rel_step_size
        self.random_start, self.beta = bool(random_start), float(beta)
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

    def on_train_epoch_start(self, task: RobustTask) -> None:
        self._current_eps = self.schedule(int(task.current_epoch))

    def make_attack(self, task: RobustTask, eps: float) -> PGD:
        """The PGD attack of this step (budget ``eps``)."""
        if self.step_size is not None:
            step: float | None = self.step_size
        elif self.rel_step_size is not None:
            step = self.rel_step_size * eps
        else:
            step = None
        return PGD(eps=eps, norm=self.norm, steps=self.steps, step_size=step,
                   random_start=self.random_start, bounds=tuple(task.data_info.bounds),
                   bn_mode=self.attack_bn_mode, dropout_mode=self.attack_dropout_mode)

    # ------------------------------------------------------------------ training
    def training_loss(self, task: RobustTask, batch: Batch) -> tuple[Tensor, Logs]:
        eps = self.schedule(int(task.current_epoch))
        self._current_eps = eps
        x = batch["image"]
        model = task.attack_model()
        if eps <= 0:  # a schedule may start at 0: plain training, no attack cost
            loss = task.per_sample_loss(model(x), batch).mean()
            return loss, {"eps": 0.0, "loss_clean": loss.detach()}
        atk = self.make_attack(task, eps)
        x_adv = atk(model, x, batch, loss_fn=task.per_sample_loss,
                    generator=self.generator(task, x.device, self.seed))
        logs: Logs = {"eps": eps}
        if self.beta >= 1.0:
            out_adv = model(x_adv)
            loss_adv = task.per_sample_loss(out_adv, batch).mean()
            loss = loss_adv
        else:
            out_clean, out_adv = task.forward_joint([x, x_adv])
            loss_clean = task.per_sample_loss(out_clean, batch).mean()
            loss_adv = task.per_sample_loss(out_adv, batch).mean()
            loss = (1 - self.beta) * loss_clean + self.beta * loss_adv
            logs["loss_clean"] = loss_clean.detach()
        logs["loss_adv"] = loss_adv.detach()
        with torch.no_grad():
            logs["adv_violated"] = task.is_violated(detach_output(out_adv), batch).float().mean()
        return loss, logs
