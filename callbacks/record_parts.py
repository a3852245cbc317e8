"""The parts of a :class:`callbacks.record.RobustnessRecord`: one attack at one ε, the worst
case at one ε, the robust area, the subset, the minimal-ε summary — each with its validating
``from_dict`` (errors name the file and the key) and its ``to_dict`` (the keys of
``robustness.json``, in the order they have always been written).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["AttackEntry", "EnsembleEntry", "MinimalEpsSummary", "RecordError", "RobustArea", "SubsetInfo",
           "json_safe"]


class RecordError(ValueError):
    """A ``robustness.json`` (or history line) that is not a valid record; the message names
    the file and the offending key."""


def json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats become ``null``, tensors lists, other objects strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


# --- validation helpers -------------------------------------------------------------------------
def _need(data: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str,
          optional: bool = False) -> Any:
    if key not in data:
        if optional:
            return None
        raise RecordError(f"{where}: missing key {key!r}")
    value = data[key]
    if value is None and optional:
        return None
    if types is float:
        types = (int, float)
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise RecordError(f"{where}: key {key!r} must be {want}, got {type(value).__name__} {value!r:.60}")
    return value


def _metrics(data: Mapping[str, Any], key: str, where: str) -> dict[str, float | None]:
    raw = _need(data, key, dict, where)
    out: dict[str, float | None] = {}
    for name, value in raw.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RecordError(f"{where}: metric {key}[{name!r}] must be a number or null, got {value!r:.60}")
        out[str(name)] = None if value is None else float(value)
    return out


def _flag_names(data: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    """An optional list of sanity-flag names (``unreliable``)."""
    value = _need(data, key, list, where, optional=True)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise RecordError(f"{where}: key {key!r} must be a list of flag names, got {value!r:.60}")
    return list(value)


# --- parts -------------------------------------------------------------------------------------
@dataclass
class AttackEntry:
    """One attack at one ε: its settings as run and the task's metrics on the attacked subset."""

    attack: str
    eps: float
    metrics: dict[str, float | None]
    name: str | None = None
    norm: str | None = None
    steps: int | None = None
    step_size: float | None = None
    restarts: int | None = None
    random_start: bool | None = None
    in_ensemble: bool | None = None
    loss: str | None = None
    gradients: dict[str, int] | None = None
    note: str | None = None
    #: sanity flags that make this number an unreliable upper bound (``None``: none fired or
    #: the checks did not run; see :func:`callbacks.sanity.mark_unreliable`)
    unreliable: list[str] | None = None
    #: further settings of the attack (``describe()`` keys beyond the above)
    extra: dict[str, Any] = field(default_factory=dict)

    _ORDER = ("attack", "name", "norm", "eps", "steps", "step_size", "restarts", "random_start",
              "metrics", "in_ensemble", "loss", "gradients", "note", "unreliable")
    #: keys written even when ``None`` (DESIGN's entry, and the settings the tables show)
    _ALWAYS = ("attack", "name", "norm", "eps", "steps", "step_size", "restarts", "random_start", "metrics")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> AttackEntry:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object, got {type(data).__name__}")
        steps = _need(data, "steps", int, where, optional=True)
        return cls(
            attack=_need(data, "attack", str, where),
            eps=float(_need(data, "eps", float, where)),
            metrics=_metrics(data, "metrics", where),
            name=data.get("name"),
            norm=_need(data, "norm", str, where, optional=True),
            steps=steps,
            step_size=data.get("step_size"),
            restarts=data.get("restarts"),
            random_start=data.get("random_start"),
            in_ensemble=data.get("in_ensemble"),
            loss=data.get("loss"),
            gradients=data.get("gradients"),
            note=data.get("note"),
            unreliable=_flag_names(data, "unreliable", where),
            extra={k: v for k, v in data.items() if k not in cls._ORDER},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._ORDER:
            value = getattr(self, key)
            if value is not None or key in self._ALWAYS or (key == "gradients" and "in_ensemble" in out):
                out[key] = value
        out.update(self.extra)
        return out

    def settings(self) -> dict[str, Any]:
        """The attack's settings (everything but ε-dependent values and the metrics)."""
        d = self.to_dict()
        return {k: v for k, v in d.items() if k not in ("metrics", "eps", "attack", "step_size")}


@dataclass
class EnsembleEntry:
    """The per-sample worst case over the budgeted attacks at one ε."""

    eps: float
    metrics: dict[str, float | None]
    attacks: list[str] = field(default_factory=list)
    #: sanity flags that make this worst case an unreliable upper bound (``None``: none)
    unreliable: list[str] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> EnsembleEntry:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object, got {type(data).__name__}")
        members = _need(data, "attacks", list, where, optional=True) or []
        return cls(eps=float(_need(data, "eps", float, where)), metrics=_metrics(data, "metrics", where),
                   attacks=[str(a) for a in members], unreliable=_flag_names(data, "unreliable", where))

    @property
    def attack(self) -> str:
        """The label the worst case goes by in tables and scalars."""
        return "ensemble"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attack": "ensemble", "eps": self.eps, "attacks": list(self.attacks),
                               "metrics": self.metrics}
        if self.unreliable:
            out["unreliable"] = list(self.unreliable)
        return out


@dataclass
class RobustArea:
    """``adv/robust_area``: the normalised area under the ensemble curve of ``metric``
    (negated for a lower-is-better metric, so higher is always more robust)."""

    value: float | None
    metric: str
    metric_lower_is_better: bool
    definition: str = ""
    higher_is_better: bool = True  # of the area itself, always

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> RobustArea:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object, got {type(data).__name__}")
        value = _need(data, "value", float, where, optional=True)
        return cls(value=None if value is None else float(value), metric=_need(data, "metric", str, where),
                   metric_lower_is_better=bool(_need(data, "metric_lower_is_better", bool, where)),
                   definition=str(data.get("definition", "")),
                   higher_is_better=bool(data.get("higher_is_better", True)))

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "metric_lower_is_better": self.metric_lower_is_better, "definition": self.definition}


@dataclass
class SubsetInfo:
    """Which samples were evaluated: ``indices`` of a split of ``of`` samples."""

    size: int
    of: int | None = None
    requested: Any = None
    seed: int | None = None
    selection: str = ""
    indices: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> SubsetInfo:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object, got {type(data).__name__}")
        return cls(size=_need(data, "size", int, where), of=_need(data, "of", int, where, optional=True),
                   requested=data.get("requested"), seed=data.get("seed"),
                   selection=str(data.get("selection", "")), indices=list(data.get("indices") or []))

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "of": self.of, "requested": self.requested, "seed": self.seed,
                "selection": self.selection, "indices": list(self.indices)}


@dataclass
class MinimalEpsSummary:
    """Per-sample minimal ε by bisection (:func:`callbacks.minimal_eps.summarise`).

    ``per_sample`` holds one value per subset sample (``None``: not violated at ``eps_max``,
    censored); ``median`` is ``None`` when more than half are censored.
    """

    eps_max: float
    steps: int
    n_bisect: int
    norm: str
    attack: str = "pgd"
    resolution: float | None = None
    num_samples: int = 0
    median: float | None = None
    mean_of_uncensored: float | None = None
    censored_fraction: float = 0.0
    histogram: dict[str, Any] = field(default_factory=dict)
    per_sample: list[float | None] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> MinimalEpsSummary:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object, got {type(data).__name__}")
        return cls(
            eps_max=float(_need(data, "eps_max", float, where)), steps=_need(data, "steps", int, where),
            n_bisect=_need(data, "n_bisect", int, where), norm=_need(data, "norm", str, where),
            attack=str(data.get("attack", "pgd")), resolution=data.get("resolution"),
            num_samples=int(data.get("num_samples", 0)), median=_need(data, "median", float, where, optional=True),
            mean_of_uncensored=data.get("mean_of_uncensored"),
            censored_fraction=float(data.get("censored_fraction", 0.0)),
            histogram=dict(data.get("histogram") or {}), per_sample=list(data.get("per_sample") or []),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"eps_max": self.eps_max, "steps": self.steps, "n_bisect": self.n_bisect, "norm": self.norm,
                "attack": self.attack, "resolution": self.resolution, "num_samples": self.num_samples,
                "median": self.median, "mean_of_uncensored": self.mean_of_uncensored,
                "censored_fraction": self.censored_fraction, "histogram": self.histogram,
                "per_sample": list(self.per_sample)}
