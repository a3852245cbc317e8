"""Schedules of the adversarial budget ε over training epochs.

* ``constant``: ε every epoch.
* ``linear``: linear warm-up, ``ε·(e + 1)/warmup_epochs`` for epoch ``e < warmup_epochs`` then
  ε — starting adversarial training with small budgets avoids the early collapse large budgets
  cause on an untrained network.
* ``staged``: a list of ``(ε, epochs)`` stages, the last one held afterwards. This is the
  "iterative adversarial training" of Joel et al. 2022 (e.g. ε = 0.001 for some epochs, then
  0.002), where each stage continues from the model of the previous one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from attacks.options import check_choice

#: how ε follows the epochs
ScheduleKind = Literal["constant", "linear", "staged"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleKind)


class EpsSchedule:
    """ε as a function of the (0-based) epoch: ``schedule(epoch) -> float``."""

    def __init__(
        self,
        kind: ScheduleKind = "constant",
        eps: float = 0.0,
        warmup_epochs: int = 0,
        stages: Sequence[Sequence[float]] | None = None,
        owner: str = "schedule",
    ) -> None:
        check_choice(f"{owner}.schedule", kind, SCHEDULES)
        self.kind = kind
        self.eps = float(eps)
        self.warmup_epochs = int(warmup_epochs)
        self.stages: list[tuple[float, int]] = []
        if kind == "linear" and self.warmup_epochs < 1:
            raise ValueError(f"{owner}.warmup_epochs must be >= 1 for schedule='linear', got {warmup_epochs}")
        if kind == "staged":
            if not stages:
                raise ValueError(f"{owner}.stages must list (eps, epochs) pairs for schedule='staged'")
            for i, stage in enumerate(stages):
                if len(stage) != 2:
                    raise ValueError(f"{owner}.stages[{i}] must be a pair (eps, epochs), got {stage!r}")
                e, n = float(stage[0]), int(stage[1])
                if e < 0 or n < 1:
                    raise ValueError(f"{owner}.stages[{i}] needs eps >= 0 and epochs >= 1, got {stage!r}")
                self.stages.append((e, n))
        elif self.eps < 0:
            raise ValueError(f"{owner}.eps must be >= 0, got {eps}")

    def __call__(self, epoch: int) -> float:
        if self.kind == "constant":
            return self.eps
        if self.kind == "linear":
            return self.eps * min(1.0, (epoch + 1) / self.warmup_epochs)
        start = 0
        for e, n in self.stages:
            if epoch < start + n:
                return e
            start += n
        return self.stages[-1][0]

    @property
    def max_eps(self) -> float:
        """The largest ε the schedule reaches."""
        return max(e for e, _ in self.stages) if self.kind == "staged" else self.eps

    def __repr__(self) -> str:
        if self.kind == "staged":
            return f"EpsSchedule(staged, stages={self.stages})"
        return f"EpsSchedule({self.kind}, eps={self.eps}, warmup_epochs={self.warmup_epochs})"
