"""Minimal adversarial budget per sample, by bisection over ε with early-stopping PGD or APGD.

For each sample, the smallest ε in ``[0, eps_max]`` at which PGD (stopping as soon as the task's
``is_violated`` test fires) finds a violating input. It is a threshold-free robustness measure:
its median and distribution do not depend on an ε grid. The estimate is an *upper bound* on the
true minimal ε (PGD may miss closer adversarial points) with resolution
``eps_max / 2**n_bisect``. ``attack: apgd`` uses APGD (Croce & Hein 2020) instead: no step
size to tune for each bisection budget, so the bound is tighter at the same steps.

Samples already violated without perturbation get 0; samples PGD cannot break at ``eps_max``
are *censored* (reported as ``None`` and counted in ``censored_fraction``; the median treats
them as +∞).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class MinimalEpsConfig:
    """``minimal_eps: {enabled, eps_max, steps, n_bisect, norm, attack}`` of the evaluation
    callback (``attack``: ``pgd`` or ``apgd``)."""

    enabled: bool = False
    eps_max: float = 0.03
    steps: int = 10
    n_bisect: int = 6
    norm: str = "linf"
    bins: int = 20
    attack: str = "pgd"

    @classmethod
    def parse(cls, value: dict[str, Any] | bool | None, field_name: str = "minimal_eps") -> MinimalEpsConfig:
        if value is None or value is False:
            return cls(enabled=False)
        if value is True:
            return cls(enabled=True)
        if not isinstance(value, dict):
            raise ValueError(f"{field_name}: expected a mapping {{enabled, eps_max, steps, n_bisect}}, got {value!r}")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{field_name}: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**{"enabled": True, **value})
        if not cfg.eps_max > 0:
            raise ValueError(f"{field_name}.eps_max must be > 0, got {cfg.eps_max}")
        if cfg.attack not in ("pgd", "apgd"):
            raise ValueError(f"{field_name}.attack must be 'pgd' or 'apgd', got {cfg.attack!r}")
        if cfg.steps < 1 or cfg.n_bisect < 1:
            raise ValueError(f"{field_name}.steps and .n_bisect must be >= 1, got {cfg.steps}, {cfg.n_bisect}")
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
    from attacks import APGD, PGD

    x = batch["image"]
    size = x.shape[0]

    def loss_fn(output: Any, target: Any) -> torch.Tensor:
        return task.per_sample_loss(output, target)

    def success_fn(output: Any, target: Any) -> torch.Tensor:
        return task.is_violated(output, target).bool()

    def broken_at(eps: torch.Tensor) -> torch.Tensor:
        cls = APGD if cfg.attack == "apgd" else PGD
        atk = cls(eps=eps, norm=cfg.norm, steps=cfg.steps, random_start=False,
                  bounds=tuple(task.data_info.bounds), bn_mode=bn_mode, dropout_mode=dropout_mode)
        res = atk.perturb(model, x, batch, loss_fn=loss_fn, success_fn=success_fn, generator=generator)
        assert res.success is not None
        return res.success

    with torch.no_grad():
        clean_bad = success_fn(model(x), batch).reshape(size)
    hi = torch.full((size,), float(cfg.eps_max), device=x.device)
    lo = torch.zeros(size, device=x.device)
    broken = broken_at(hi) | clean_bad
    for _ in range(cfg.n_bisect):
        mid = (lo + hi) / 2
        ok = broken_at(mid)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    result = torch.where(broken, hi, torch.full_like(hi, math.inf))
    return torch.where(clean_bad, torch.zeros_like(result), result)


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
        "attack": cfg.attack,
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
