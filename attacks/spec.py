"""One vocabulary for attack settings, for training and evaluation alike: :class:`AttackSpec`.

A spec is an attack *without* its budget and range — ``{name, norm?, steps?, step_size? |
rel_step_size?, restarts?, random_start?, init_radius? | rel_init_radius?, label?, loss?,
**extras}`` — and ``spec.build(eps, bounds, (bn_mode, dropout_mode))`` makes the attack. The
budget belongs to whoever uses the spec: the ε grid of an evaluation callback, the ε (and
schedule) of a training method, AMAT's per-sample margins. So the same mapping can stand in a method's
``attack:`` field (``SAT(attack={"name": "mifgsm", "steps": 5})``), in an evaluation callback's
attack list and in a named suite (:mod:`attacks.suites`).

Fields (``None`` / absent: the attack class's own default):

=================  ===========================================================================
``name``           registry key (:mod:`attacks.registry`), an alias, or the dotted class path
                   of an :class:`attacks.Attack` subclass defined anywhere (imported and
                   registered on first use, so a new attack is one file)
``norm``           ``"linf"`` or ``"l2"``
``steps``          iterations (gradient evaluations, queries for Square)
``step_size``      absolute step, in input units
``rel_step_size``  step as a fraction of the budget: ``rel_step_size·eps`` (Joel et al. 2022:
                   ``0.25``), so it follows a schedule or per-sample budgets
``restarts``       random restarts, worst case per sample
``random_start``   start from a random point of the ball
``init_radius``    radius of the random start (absolute); ``rel_init_radius``: a fraction of
                   the budget (TRADES starts close to ``x``)
``label``          name in logs and files (evaluation; default ``name`` or ``name-loss``)
``loss``           an attack loss of :mod:`attacks.task_losses` (evaluation only)
anything else      ``extras``: passed to the attack's constructor (``decay`` of MI-FGSM…)
=================  ===========================================================================

Every field is checked when the spec is made (a trial build), so a bad config fails at
configuration time with the field named, not at the first attacked batch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .call import NORMS, Norm
from .mode import Mode

if TYPE_CHECKING:
    from .base import Attack

#: typed settings of a spec, in the order they are described
SETTINGS = ("norm", "steps", "step_size", "rel_step_size", "restarts", "random_start",
            "init_radius", "rel_init_radius")
#: pairs of which a spec may give one (absolute, relative to the budget)
_EXCLUSIVE = (("step_size", "rel_step_size"), ("init_radius", "rel_init_radius"))


def _known_attacks() -> list[str]:
    from .registry import ATTACKS

    return sorted(ATTACKS)


def _canonical(name: Any, where: str) -> str:
    from .registry import canonical_name

    if not isinstance(name, str):
        raise ValueError(f"{where}.name must be a string, got {name!r}; known attacks: {_known_attacks()}")
    try:
        return canonical_name(name)
    except ValueError as err:
        if str(err).startswith("unknown attack"):
            raise ValueError(f"{where}.name: unknown attack {name!r}; known attacks: {_known_attacks()} "
                             "(or the dotted class path of an attacks.Attack subclass)") from None
        raise ValueError(f"{where}.name: {err}") from None


def _init_parameters(name: str) -> Mapping[str, inspect.Parameter]:
    from .registry import ATTACKS

    return inspect.signature(ATTACKS[name].__init__).parameters


def _check_setting(key: str, value: Any, where: str) -> Any:
    """Type/range check of one typed setting; returns it normalised (``None`` passes)."""
    if value is None:
        return None
    bad = f"{where}.{key}"
    if key == "norm":
        if value not in NORMS:
            raise ValueError(f"{bad} must be 'linf' or 'l2', got {value!r}")
        return value
    if key in ("steps", "restarts"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{bad} must be an int >= 1, got {value!r}")
        return value
    if key == "random_start":
        if not isinstance(value, bool):
            raise ValueError(f"{bad} must be true or false, got {value!r}")
        return value
    # step sizes and radii: positive finite numbers
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{bad} must be a number > 0, got {value!r}")
    return float(value)


@dataclass
class AttackSpec:
    """One configured attack without ``eps`` / ``bounds`` (see the module docstring).

    Make one with :meth:`from_config` (or :meth:`parse`), which checks every field; the
    dataclass constructor does not. ``budgeted`` is False for attacks without an ε
    (``salt_pepper``): they run at every grid point with their own parameters, are reported,
    but stay out of the ensemble, whose candidates must lie inside the ε-ball. ``loss`` names an
    attack loss (``None``: the per-sample loss the caller hands over — the task's loss in
    evaluation, the method's loss in training).
    """

    name: str
    norm: Norm | None = None
    steps: int | None = None
    step_size: float | None = None
    rel_step_size: float | None = None
    restarts: int | None = None
    random_start: bool | None = None
    init_radius: float | None = None
    rel_init_radius: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    loss: str | None = None
    loss_args: dict[str, Any] = field(default_factory=dict)
    budgeted: bool = True

    # ------------------------------------------------------------------ views
    @property
    def params(self) -> dict[str, Any]:
        """Every attack setting given (typed ones first, then ``extras``), as in a config."""
        out = {k: getattr(self, k) for k in SETTINGS if getattr(self, k) is not None}
        return {**out, **self.extras}

    def setting(self, key: str) -> Any:
        """The value ``key`` will have in the built attack: the spec's, else the attack class's
        constructor default (``None`` when it takes no such parameter)."""
        value = self.params.get(key)
        if value is not None:
            return value
        p = _init_parameters(self.name).get(key)
        return None if p is None or p.default is inspect.Parameter.empty else p.default

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "name": self.name, **self.params}
        if self.loss is not None:
            out["loss"] = self.loss if not self.loss_args else {"name": self.loss, **self.loss_args}
        return out

    def to_config(self) -> dict[str, Any]:
        """The ``{name, **params}`` mapping that :meth:`from_config` turns back into this spec
        (``label`` only when it is not the default one)."""
        out = self.describe()
        if out["label"] == _default_label(self.name, self.loss, self.loss_args):
            del out["label"]
        return {"name": out.pop("name"), **out}

    # ------------------------------------------------------------------ build
    def build(
        self,
        eps: Any,
        bounds: tuple[float, float],
        modes: tuple[Mode, Mode] = ("eval", "eval"),
        overrides: Mapping[str, Any] | None = None,
    ) -> Attack:
        """The attack at budget ``eps`` (float or ``[B]`` tensor) in ``bounds``, with BatchNorm
        / Dropout ``modes = (bn_mode, dropout_mode)``.

        ``rel_step_size`` / ``rel_init_radius`` become ``rel·eps`` (per sample for a tensor
        ``eps``). ``overrides`` are per-call settings that the *caller* owns and that replace
        the spec's (AMAT's per-sample step size and start radius, ``[B]`` tensors); each is
        applied only where the attack takes that parameter (APGD has no step size to set).
        """
        from .registry import build_attack

        if isinstance(modes, str) or len(modes) != 2:
            raise TypeError(f"modes must be a pair (bn_mode, dropout_mode), got {modes!r}")
        bn_mode, dropout = modes
        params: dict[str, Any] = {"bn_mode": bn_mode, "dropout_mode": dropout, **self.params}
        for absolute in ("step_size", "init_radius"):
            rel = params.pop(f"rel_{absolute}", None)
            if rel is not None:
                params[absolute] = rel * eps
        if overrides:
            takes = _init_parameters(self.name)
            params.update({k: v for k, v in overrides.items() if k in takes})
        if self.budgeted:
            params["eps"] = eps
        return build_attack(self.name, bounds=bounds, **params)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "attack") -> AttackSpec:
        """Check one ``{name, label?, loss?, **params}`` mapping; errors name ``where``."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{where}: an attack is a mapping like {{name: pgd, steps: 10}}, got {cfg!r}")
        params = dict(cfg)
        name = params.pop("name", None)
        if name is None:
            raise ValueError(f"{where}.name is missing; known attacks: {_known_attacks()}")
        name = _canonical(name, where)
        if "eps" in params:
            raise ValueError(
                f"{where}.eps: the budget is not part of an attack spec; it comes from whoever "
                "uses it (an evaluation callback's eps / test_eps grid, a training method's eps)"
            )
        if "bounds" in params:
            raise ValueError(f"{where}.bounds: taken from the task's data_info, remove it")
        for a, b in _EXCLUSIVE:
            if params.get(a) is not None and params.get(b) is not None:
                raise ValueError(f"{where}: give {a} or {b}, not both")
        loss = params.pop("loss", None)
        loss_args: dict[str, Any] = {}
        if isinstance(loss, Mapping):
            loss_args = dict(loss)
            loss = loss_args.pop("name", None)
            if loss is None:
                raise ValueError(f"{where}.loss: a mapping needs a `name`, got {cfg['loss']!r}")
        if loss is not None:
            from .task_losses import ATTACK_LOSSES

            if loss not in ATTACK_LOSSES:
                raise ValueError(f"{where}.loss: unknown attack loss {loss!r}; known: {sorted(ATTACK_LOSSES)}")
        label = str(params.pop("label", _default_label(name, loss, loss_args)))
        typed = {k: _check_setting(k, params.pop(k, None), where) for k in SETTINGS}
        takes = _init_parameters(name)
        for key in ("rel_step_size", "rel_init_radius"):
            if typed[key] is not None and key[4:] not in takes:
                raise ValueError(f"{where}.{key}: {name} has no {key[4:]} to set")
        spec = cls(name=name, **typed, extras=params, label=label, loss=loss, loss_args=loss_args,
                   budgeted="eps" in takes)
        try:  # fail at configuration time, not at the first evaluation
            spec.build(1e-3, (0.0, 1.0), ("eval", "eval"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {name} does not accept {spec.params}: {err}") from None
        return spec

    @classmethod
    def parse(
        cls,
        value: AttackSpec | Mapping[str, Any] | str | None,
        where: str,
        default: Mapping[str, Any] | None = None,
    ) -> AttackSpec:
        """An :class:`AttackSpec` from a spec, a mapping or an attack name, checked, with
        errors naming ``where`` (e.g. ``"SAT.attack"``).

        With a ``default`` mapping (a training method's own attack), a mapping that leaves out
        ``name`` or names the default's attack *changes* the default — ``{steps: 3}`` or
        ``{name: pgd, restarts: 2}`` keep the default's other settings (giving ``step_size``
        drops the default's ``rel_step_size`` and vice versa). A mapping that names another
        attack stands on its own (that attack's defaults). A string is the default with only the
        attack replaced (keeping the default's settings that attack takes). ``None`` is the
        default.
        """
        if isinstance(value, AttackSpec):
            return cls.from_config(value.to_config(), where)
        if value is None:
            if default is None:
                raise ValueError(f"{where}: give an attack, e.g. {{name: pgd, steps: 10}}")
            return cls.from_config(default, where)
        if isinstance(value, str):
            # the default's settings that this attack takes (norm, steps…), with its name
            takes = _init_parameters(_canonical(value, where))
            value = {**{k: v for k, v in (default or {}).items()
                        if k in takes or (k.startswith("rel_") and k[4:] in takes)}, "name": value}
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: an attack is a mapping like {{name: pgd, steps: 10}} or an "
                             f"attack name, got {value!r}")
        if default is not None:
            same = "name" not in value or (
                "name" in default and _canonical(value["name"], where) == _canonical(default["name"], where))
            if same:
                base = dict(default)
                for a, b in _EXCLUSIVE:
                    if a in value:
                        base.pop(b, None)
                    if b in value:
                        base.pop(a, None)
                value = {**base, **value}
        return cls.from_config(value, where)


def _default_label(name: str, loss: str | None, loss_args: Mapping[str, Any]) -> str:
    label = name if loss is None else f"{name}-{loss}"
    if loss_args:
        label += "-" + "-".join(f"{v}" for v in loss_args.values())
    return label


def parse_attack_specs(
    configs: Sequence[Mapping[str, Any] | AttackSpec] | Mapping[str, Any] | AttackSpec | str | None,
    field_name: str,
    suite: Any = None,
    num_classes: int | None = None,
) -> list[AttackSpec]:
    """Check a YAML attack list (or a named suite such as ``"standard"``, built by ``suite``, the
    task's :class:`~attacks.suites.SuiteRecipe`) and turn it into :class:`AttackSpec` s. Errors
    name the offending field and list the known attacks."""
    if isinstance(configs, str):
        from .suites import suite_configs

        configs = suite_configs(configs, suite, field_name, num_classes)
    if configs is None:
        raise ValueError(f"{field_name}: give a list of attacks, e.g. [{{name: pgd, steps: 10}}]")
    if isinstance(configs, Mapping | AttackSpec):
        configs = [configs]
    if len(configs) == 0:
        raise ValueError(f"{field_name}: the attack list is empty")
    specs = [AttackSpec.parse(cfg, f"{field_name}[{i}]") for i, cfg in enumerate(configs)]
    for i, spec in enumerate(specs):
        if spec.extras.get("project") is False:
            raise ValueError(f"{field_name}[{i}].project: an evaluation attack must stay inside "
                             "its eps-ball (project: false is N-FGSM's training perturbation); "
                             "remove it")
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"{field_name}: attacks {dupes} appear twice; give each a distinct `label`")
    if "clean" in labels or "ensemble" in labels:
        raise ValueError(f"{field_name}: 'clean' and 'ensemble' are reserved labels")
    return specs
