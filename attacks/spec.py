"""One vocabulary for attack settings: :class:`AttackSpec` ``{name, label?, loss?, **params}``.

A spec is an attack *without* its budget and range: ``spec.build(eps, bounds, modes)`` makes
the attack. The evaluation callbacks' attack lists and the named suites
(:mod:`attacks.suites`) are lists of specs; ``loss`` names an attack loss
(:mod:`attacks.task_losses`) that the evaluator resolves for the task, instead of the task's
own training loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def _known_attacks() -> list[str]:
    from .registry import ATTACKS

    return sorted(ATTACKS)


def _canonical(name: str, where: str) -> str:
    from .registry import canonical_name

    try:
        return canonical_name(str(name))
    except ValueError:
        raise ValueError(f"{where}.name: unknown attack {name!r}; known attacks: {_known_attacks()}") from None


def _takes_eps(name: str) -> bool:
    from .registry import ATTACKS

    return "eps" in inspect.signature(ATTACKS[name].__init__).parameters


@dataclass
class AttackSpec:
    """One configured attack: ``{name, label?, loss?, **params}`` without ``eps`` / ``bounds``.

    ``label`` names it in logs and files (default: ``name``, or ``name-loss``); two entries of
    the same attack need distinct labels. ``budgeted`` is False for attacks without an ε
    (``salt_pepper``): they run at every grid point with their own parameters, are reported,
    but stay out of the ensemble, whose candidates must lie inside the ε-ball. ``loss`` is the
    name of an attack loss (``None``: the task's per-sample loss).
    """

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    budgeted: bool = True
    loss: str | None = None
    loss_args: dict[str, Any] = field(default_factory=dict)

    def build(
        self,
        eps: Any,
        bounds: tuple[float, float],
        modes: tuple[str, str] | str = ("eval", "eval"),
        dropout_mode: str | None = None,
    ) -> Any:
        """The attack at budget ``eps`` (float or ``[B]``) in ``bounds``, with BatchNorm /
        Dropout ``modes = (bn_mode, dropout_mode)`` (``build(eps, bounds, bn, dropout)`` also
        works)."""
        from .registry import build_attack

        if isinstance(modes, str):
            bn_mode, dropout = modes, dropout_mode or "eval"
        else:
            bn_mode, dropout = modes
        params = {"bn_mode": bn_mode, "dropout_mode": dropout, **self.params}
        if self.budgeted:
            params["eps"] = eps
        return build_attack(self.name, bounds=bounds, **params)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "name": self.name, **self.params}
        if self.loss is not None:
            out["loss"] = self.loss if not self.loss_args else {"name": self.loss, **self.loss_args}
        return out

    @classmethod
    def from_config(cls, cfg: dict[str, Any], where: str = "attack") -> AttackSpec:
        """Check one ``{name, label?, loss?, **params}`` mapping; errors name ``where``."""
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: each attack is a mapping like {{name: pgd, steps: 10}}, got {cfg!r}")
        params = dict(cfg)
        name = params.pop("name", None)
        if name is None:
            raise ValueError(f"{where}.name is missing; known attacks: {_known_attacks()}")
        name = _canonical(name, where)
        if "eps" in params:
            raise ValueError(
                f"{where}.eps: the budget comes from the callback's ε grid (eps / test_eps), "
                "not from the attack entry"
            )
        if "bounds" in params:
            raise ValueError(f"{where}.bounds: taken from the task's data_info, remove it")
        loss = params.pop("loss", None)
        loss_args: dict[str, Any] = {}
        if isinstance(loss, dict):
            loss_args = dict(loss)
            loss = loss_args.pop("name", None)
            if loss is None:
                raise ValueError(f"{where}.loss: a mapping needs a `name`, got {cfg['loss']!r}")
        if loss is not None:
            from .task_losses import ATTACK_LOSSES

            if loss not in ATTACK_LOSSES:
                raise ValueError(f"{where}.loss: unknown attack loss {loss!r}; known: {sorted(ATTACK_LOSSES)}")
        default_label = name if loss is None else f"{name}-{loss}"
        if loss_args:
            default_label += "-" + "-".join(f"{v}" for v in loss_args.values())
        label = str(params.pop("label", default_label))
        spec = cls(label=label, name=name, params=params, budgeted=_takes_eps(name), loss=loss,
                   loss_args=loss_args)
        try:  # fail at configuration time, not at the first evaluation
            spec.build(1e-3, (0.0, 1.0), ("eval", "eval"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {name} does not accept {params}: {err}") from None
        return spec


def parse_attack_specs(
    configs: Sequence[dict[str, Any]] | dict[str, Any] | str | None,
    field_name: str,
    task: str | None = None,
    num_classes: int | None = None,
) -> list[AttackSpec]:
    """Check a YAML attack list (or a named suite such as ``"standard"``) and turn it into
    :class:`AttackSpec` s. Errors name the offending field and list the known attacks."""
    if isinstance(configs, str):
        from .suites import suite_configs

        configs = suite_configs(configs, task, field_name, num_classes)
    if configs is None:
        raise ValueError(f"{field_name}: give a list of attacks, e.g. [{{name: pgd, steps: 10}}]")
    if isinstance(configs, dict):
        configs = [configs]
    if len(configs) == 0:
        raise ValueError(f"{field_name}: the attack list is empty")
    specs = [AttackSpec.from_config(cfg, f"{field_name}[{i}]") for i, cfg in enumerate(configs)]
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"{field_name}: attacks {dupes} appear twice; give each a distinct `label`")
    if "clean" in labels or "ensemble" in labels:
        raise ValueError(f"{field_name}: 'clean' and 'ensemble' are reserved labels")
    return specs
