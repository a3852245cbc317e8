"""Which attacks an evaluation callback runs: the per-epoch suite and the stronger test suite.

Each is a list of ``{name, label?, **params}`` (parsed into :class:`attacks.AttackSpec` at once)
or the name of a suite of :mod:`attacks.suites` (``"standard"``, ``"quick"``), which depends on
the task and is resolved at ``setup``. A named classification suite is *sequential*
(AutoAttack's rule: later members attack only samples no earlier member broke).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from attacks.spec import parse_attack_specs

#: Default per-epoch suite, sized by benchmarks/eval_cost.py to stay under 30% of a quickstart
#: training epoch: PGD-3 (L∞, no random start: deterministic, identical on 1 or N processes) at
#: two budgets on 64 samples. Use ``test_attacks`` for the strong suite at validate/test.
DEFAULT_ATTACKS: list[dict[str, Any]] = [
    {"name": "pgd", "norm": "linf", "steps": 3, "random_start": False},
]


def check_eps_grid(eps: Sequence[float] | float | None, field_name: str) -> list[float]:
    """Sorted, unique, positive ε values."""
    if eps is None:
        raise ValueError(f"{field_name}: give a list of budgets, e.g. [0.002, 0.004, 0.008]")
    values = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not values:
        raise ValueError(f"{field_name}: the ε grid is empty")
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{field_name}: every ε must be a number > 0 (ε = 0 is the clean metric), got {v!r}")
        out.append(float(v))
    return sorted(set(out))


class SuitePlan:
    """The per-epoch and test suites of one callback (see the module docstring)."""

    def __init__(self, attacks: list[dict[str, Any]] | str | None,
                 test_attacks: list[dict[str, Any]] | str | None, who: str) -> None:
        from attacks.suites import SUITES

        for fname, value in (("attacks", attacks), ("test_attacks", test_attacks)):
            if isinstance(value, str) and value not in SUITES:
                raise ValueError(f"{who}.{fname}: unknown suite {value!r}; known suites: {sorted(SUITES)}")
        self.who = who
        #: ``"linf"`` / ``"l2"``: the threat model of every member of a *named* suite (``None``:
        #: each member's own, L∞ for the shipped suites); set by ``medrobust.evaluate(norm=…)``
        self.norm: str | None = None
        self.names = {"per_epoch": attacks if isinstance(attacks, str) else None,
                      "test": test_attacks if isinstance(test_attacks, str) else None}
        if isinstance(attacks, str):
            self.attack_configs: Any = attacks
            self.specs: list[Any] = []
        else:
            self.attack_configs = [dict(a) for a in (attacks if attacks is not None else DEFAULT_ATTACKS)]
            self.specs = parse_attack_specs(self.attack_configs, f"{who}.attacks")
        self.test_specs = (
            parse_attack_specs(test_attacks, f"{who}.test_attacks")
            if test_attacks is not None and not isinstance(test_attacks, str) else self.specs
        )

    def resolve(self, pl_module: Any) -> None:
        """Turn named suites into specs for this task (idempotent).

        The task and its number of classes are the *robust task's*: the module itself, or its
        :class:`~callbacks.adapter.RobustTaskAdapter` (a module of the user's own has neither)."""
        task, k = task_and_classes(pl_module)
        kind = _task_object(task)
        per, test = self.names["per_epoch"], self.names["test"]
        if kind is not None and kind.warn_unknown_classes() and k is None and (per or test):
            warnings.warn(
                f"{self.who}: the number of classes is unknown, so the named suite "
                f"{per or test!r} runs without its targeted members (they need >= 4 classes); "
                "give the RobustTaskAdapter num_classes=K", stacklevel=2)
        if per is not None:
            self.specs = parse_attack_specs(self._named(per, kind, k), f"{self.who}.attacks", None, k)
        if test is not None:
            self.test_specs = parse_attack_specs(self._named(test, kind, k), f"{self.who}.test_attacks", None, k)
        elif per is not None:
            self.test_specs = self.specs

    def _named(self, name: str, kind: Any, k: int | None) -> Any:
        """The suite's attack list, asked of the task object, with :attr:`norm` applied (no task:
        the name, which then fails naming what is missing)."""
        if kind is None:
            return name
        configs = kind.suite_configs(name, k, self.who)
        return configs if self.norm is None else [{**c, "norm": self.norm} for c in configs]

    def name(self, suite: str) -> str | None:
        """The named suite behind ``suite`` (``"per_epoch"``/``"test"``), or ``None``."""
        own = self.names["test" if suite == "test" else "per_epoch"]
        if own is None and suite == "test" and self.test_specs is self.specs:
            return self.names["per_epoch"]
        return own

    def sequential(self, pl_module: Any, suite: str) -> bool:
        kind = _task_object(task_and_classes(pl_module)[0])
        return self.name(suite) is not None and kind is not None and kind.sequential_suite


def _task_object(task: str | None) -> Any:
    """The registry's task object of ``task`` (``None``: no task, or one without a model side)."""
    from lightning_modules.tasks import Task, task_named, task_names

    kind = task_named(task) if task in task_names() else None
    return kind if isinstance(kind, Task) else None


def task_and_classes(pl_module: Any) -> tuple[str | None, int | None]:
    """``(task name, number of classes)`` of the module's robust task (its adapter when it has
    one: :func:`callbacks.adapter.robust_task_of`); ``None`` for what it does not say."""
    from callbacks.adapter import robust_task_of

    task = robust_task_of(pl_module)
    k = getattr(task, "num_classes", None)
    return getattr(task, "task", None), (int(k) if isinstance(k, int) and not isinstance(k, bool) else None)
