"""Minimal adversarial budget per sample, by bisection over ε with an early-stopping attack.

For each sample, the smallest ε in ``[0, eps_max]`` at which the attack (default PGD-10 L∞
from ``x``, stopping as soon as the task's ``is_violated`` test fires) finds a violating input.
It is a threshold-free robustness measure: its median and distribution do not depend on an ε
grid. The estimate is an *upper bound* on the true minimal ε (the attack may miss closer
adversarial points) with resolution ``eps_max / 2**n_bisect``. The attack is an
:class:`attacks.AttackSpec`, as everywhere else: ``attack: apgd`` (or ``{name: apgd, steps:
20}``) uses APGD (Croce & Hein 2020) instead — no step size to tune for each bisection budget,
so the bound is tighter at the same steps. A minimum-norm attack (``attack: {name: fmn,
steps: 100, loss: margin}``, Pintor et al. 2021) replaces the bisection: one run gives each
sample's smallest adversarial norm directly (``n_bisect`` is then unused).

Samples already violated without perturbation get 0; samples PGD cannot break at ``eps_max``
are *censored* (reported as ``None`` and counted in ``censored_fraction``; the median treats
them as +∞).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from attacks import ATTACKS, AttackSpec
from attacks.registry import canonical_name

#: PGD-10 L∞ from ``x`` (deterministic, so the bisection is monotone in ε for a fixed model)
DEFAULT_ATTACK: dict[str, Any] = {"name": "pgd", "norm": "linf", "steps": 10, "random_start": False}


@dataclass
class MinimalEpsConfig:
    """``minimal_eps: {enabled, eps_max, n_bisect, bins, attack}`` of the evaluation callback.

    ``attack`` is an attack spec (:class:`attacks.AttackSpec`: ``{name, norm?, steps?, …}``,
    or just a name such as ``apgd``, which keeps the default's norm, steps and start); a
    mapping without ``name`` or naming ``pgd`` changes :data:`DEFAULT_ATTACK`. The attack starts
    at ``x`` unless the spec says ``random_start: true``.
    """

    enabled: bool = False
    eps_max: float = 0.03
    n_bisect: int = 6
    bins: int = 20
    attack: AttackSpec = field(default_factory=lambda: AttackSpec.parse(None, "minimal_eps.attack",
                                                                        DEFAULT_ATTACK))

    @property
    def steps(self) -> int:
        """The attack's steps (for reports)."""
        return int(self.attack.setting("steps") or 1)

    @property
    def norm(self) -> str:
        """The attack's norm (for reports)."""
        return str(self.attack.setting("norm"))

    @classmethod
    def parse(cls, value: dict[str, Any] | bool | None, field_name: str = "minimal_eps") -> MinimalEpsConfig:
        if value is None or value is False:
            return cls(enabled=False)
        if value is True:
            return cls(enabled=True)
        if not isinstance(value, dict):
            raise ValueError(f"{field_name}: expected a mapping {{enabled, eps_max, n_bisect, attack}}, "
                             f"got {value!r}")
        value = dict(value)
        moved = sorted({"steps", "norm"} & set(value))
        if moved:
            raise ValueError(f"{field_name}: {moved} belong to the attack spec, e.g. "
                             f"attack: {{name: pgd, steps: 10, norm: linf}}")
        known = set(cls.__dataclass_fields__)
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"{field_name}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        attack = value.get("attack")
        name = attack if isinstance(attack, str) else (
            attack.get("name") if isinstance(attack, dict) else None)
        if name is not None:  # before the spec check: the default's norm/steps may not apply
            key = canonical_name(str(name))
            takes = inspect.signature(ATTACKS[key].__init__).parameters
            if not ("eps" in takes and "norm" in takes and ATTACKS[key].uses_model):
                raise ValueError(f"{field_name}.attack must be an attack of the model inside an "
                                 f"eps-ball of a chosen norm (pgd, apgd, …), got {name!r}")
        value["attack"] = spec = AttackSpec.parse(attack, f"{field_name}.attack", DEFAULT_ATTACK)
        if spec.random_start is None and spec.setting("random_start") is not None:
            spec.random_start = False  # start at x unless asked: a deterministic bisection
        minimal_norm = bool(getattr(ATTACKS[spec.name], "minimal_norm", False))
        if spec.loss is not None and not minimal_norm:
            raise ValueError(f"{field_name}.attack.loss: the bisection attacks the task's loss; "
                             f"remove loss={spec.loss!r} (only a minimum-norm attack such as fmn "
                             "takes a loss here: its margin)")
        cfg = cls(**{"enabled": True, **value})
        if not cfg.eps_max > 0:
            raise ValueError(f"{field_name}.eps_max must be > 0, got {cfg.eps_max}")
        if cfg.n_bisect < 1:
            raise ValueError(f"{field_name}.n_bisect must be >= 1, got {cfg.n_bisect}")
        return cfg


def minimal_eps_batch(
    task: Any,
    model: Any,
    batch: dict[str, Any],
    cfg: MinimalEpsConfig,
    bn_mode: str = "eval",
    dropout_mode: str = "eval",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample minimal ε ``[B]`` (float32; ``inf`` where censored) for one batch.

    Cost: ``(n_bisect + 1) × steps`` forward/backward passes at most (fewer with early stop).
    """
    x = batch["image"]
    size = x.shape[0]

    def loss_fn(output: Any, target: Any) -> torch.Tensor:
        return task.per_sample_loss(output, target)

    def is_violated(output: Any, target: Any) -> torch.Tensor:
        return task.is_violated(output, target).bool()

    if getattr(ATTACKS[cfg.attack.name], "minimal_norm", False):
        return _minimal_norm_batch(task, model, batch, cfg, bn_mode, dropout_mode, generator)

    def violated_at(eps: torch.Tensor) -> torch.Tensor:
        atk = cfg.attack.build(eps, tuple(task.data_info.bounds), (bn_mode, dropout_mode))
        res = atk.perturb(model, x, batch, loss_fn=loss_fn, is_violated=is_violated, generator=generator)
        assert res.violated is not None
        return res.violated

    with torch.no_grad():
        clean_bad = is_violated(model(x), batch).reshape(size)
    hi = torch.full((size,), float(cfg.eps_max), device=x.device)
    lo = torch.zeros(size, device=x.device)
    violated = violated_at(hi) | clean_bad
    for _ in range(cfg.n_bisect):
        mid = (lo + hi) / 2
        ok = violated_at(mid)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    result = torch.where(violated, hi, torch.full_like(hi, math.inf))
    return torch.where(clean_bad, torch.zeros_like(result), result)


def _minimal_norm_batch(task: Any, model: Any, batch: dict[str, Any], cfg: MinimalEpsConfig,
                        bn_mode: str, dropout_mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """Per-sample minimal ε ``[B]`` from one run of a minimum-norm attack (FMN, Pintor et al.
    2021) instead of a bisection: its own smallest adversarial norm, censored (``inf``) beyond
    ``eps_max``; 0 for samples violated without perturbation. Cost: ``steps`` forward/backward
    passes. The attack ascends the spec's ``loss`` (a margin, e.g. ``margin`` for
    classification) on the task's ``attack_loss_inputs``, else the task's per-sample loss."""
    x = batch["image"]
    spec = cfg.attack

    def is_violated(output: Any, target: Any) -> torch.Tensor:
        return task.is_violated(output, target).bool().reshape(-1)

    loss_fn: Any = task.per_sample_loss
    if spec.loss is not None:
        from attacks.task_losses import make_attack_loss
        from callbacks.attack_loss import task_loss_tensors

        margin = make_attack_loss(spec.loss, None, int(spec.setting("steps") or 1), **spec.loss_args)

        def loss_fn(output: Any, target: Any) -> torch.Tensor:
            return margin(*task_loss_tensors(task, output, target))

    atk = spec.build(float(cfg.eps_max), tuple(task.data_info.bounds), (bn_mode, dropout_mode))
    atk(model, x, batch, loss_fn=loss_fn, is_violated=is_violated, generator=generator)
    found = atk.last_min_eps.to(x.device)
    with torch.no_grad():
        clean_bad = is_violated(model(x), batch)
    found = torch.where(found <= cfg.eps_max, found, torch.full_like(found, math.inf))
    return torch.where(clean_bad, torch.zeros_like(found), found)


def summarise(values: list[float], cfg: MinimalEpsConfig) -> dict[str, Any]:
    """``minimal_eps`` entry of ``robustness.json`` from per-sample values (``inf`` = censored)."""
    n = len(values)
    finite = sorted(v for v in values if math.isfinite(v))
    censored = n - len(finite)
    ordered = finite + [math.inf] * censored
    median = _median(ordered)
    edges = [cfg.eps_max * i / cfg.bins for i in range(cfg.bins + 1)]
    counts = [0] * cfg.bins
    for v in finite:
        counts[min(int(v / cfg.eps_max * cfg.bins), cfg.bins - 1)] += 1
    return {
        "eps_max": cfg.eps_max,
        "steps": cfg.steps,
        "n_bisect": cfg.n_bisect,
        "norm": cfg.norm,
        "attack": cfg.attack.name,
        "resolution": cfg.eps_max / 2**cfg.n_bisect,
        "num_samples": n,
        "median": median if math.isfinite(median) else None,
        "mean_of_uncensored": sum(finite) / len(finite) if finite else None,
        "censored_fraction": censored / n if n else 0.0,
        "histogram": {"bin_edges": edges, "counts": counts, "censored": censored},
        "per_sample": [v if math.isfinite(v) else None for v in values],
    }


def _median(ordered: list[float]) -> float:
    if not ordered:
        return math.nan
    m = len(ordered)
    if m % 2:
        return ordered[m // 2]
    return (ordered[m // 2 - 1] + ordered[m // 2]) / 2
