"""The robustness evaluation itself, independent of when a callback triggers it.

:func:`evaluate_batches` runs every attack at every ε on a stream of batches and feeds the
task's own torchmetrics: clean, per attack × ε, and the per-sample worst case over attacks
("ensemble"). It talks to the task only through the ``RobustTask`` protocol.

Ensemble rule (per sample, per ε). Candidates are the clean input (δ = 0 lies in every ball)
and each attack's output. The worst candidate is the one that *violates* (``is_violated``:
misclassified for classification, the task's loss-defined test otherwise) — among several
violating or several non-violating candidates, the one with the highest per-sample task loss.
The metric is then updated with the model's output *at that sample's chosen input*, so metrics
that need every sample at once (AUROC, mAP) see one coherent prediction per sample, and the
ensemble is never better than any single attack on a sample-wise basis.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from callbacks.common import compute_metrics


def _known_attacks() -> list[str]:
    from attacks import ATTACKS

    return sorted(ATTACKS)


def _canonical(name: str, where: str) -> str:
    """Registry key of ``name`` (aliases such as ``ifgsm`` allowed); the error names the field."""
    from attacks.registry import canonical_name

    try:
        return canonical_name(str(name))
    except ValueError:
        raise ValueError(f"{where}.name: unknown attack {name!r}; known attacks: {_known_attacks()}") from None


@dataclass
class AttackSpec:
    """One configured attack of a suite: ``{name, label?, **params}`` without ``eps``.

    ``label`` names it in logs and files (default: ``name``); two entries of the same attack
    with different settings need distinct labels. ``budgeted`` is False for attacks without an
    ε (``salt_pepper``): they are run at every grid point with their own parameters, reported,
    but kept out of the ensemble, whose candidates must lie inside the ε-ball.
    """

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    budgeted: bool = True

    def build(self, eps: float, bounds: tuple[float, float], bn_mode: str, dropout_mode: str) -> Any:
        from attacks import build_attack

        params = {"bn_mode": bn_mode, "dropout_mode": dropout_mode, **self.params}
        if self.budgeted:
            params["eps"] = eps
        return build_attack(self.name, bounds=bounds, **params)


def _takes_eps(name: str) -> bool:
    from attacks import ATTACKS

    return "eps" in inspect.signature(ATTACKS[name].__init__).parameters


def parse_attack_specs(configs: Sequence[dict[str, Any]] | None, field_name: str) -> list[AttackSpec]:
    """Check a YAML attack list and turn it into :class:`AttackSpec` s.

    Errors name the offending field (``attacks[1].name`` …) and list the known attacks.
    """
    if configs is None:
        raise ValueError(f"{field_name}: give a list of attacks, e.g. [{{name: pgd, steps: 10}}]")
    if isinstance(configs, dict):
        configs = [configs]
    if len(configs) == 0:
        raise ValueError(f"{field_name}: the attack list is empty")
    known = _known_attacks()
    specs: list[AttackSpec] = []
    for i, cfg in enumerate(configs):
        where = f"{field_name}[{i}]"
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: each attack is a mapping like {{name: pgd, steps: 10}}, got {cfg!r}")
        params = dict(cfg)
        name = params.pop("name", None)
        if name is None:
            raise ValueError(f"{where}.name is missing; known attacks: {known}")
        name = _canonical(name, where)
        if "eps" in params:
            raise ValueError(
                f"{where}.eps: the budget comes from the callback's ε grid (eps / test_eps), "
                "not from the attack entry"
            )
        for forbidden in ("bounds",):
            if forbidden in params:
                raise ValueError(f"{where}.{forbidden}: taken from the task's data_info, remove it")
        label = str(params.pop("label", name))
        spec = AttackSpec(label=label, name=name, params=params, budgeted=_takes_eps(name))
        try:  # fail at configuration time, not at the first evaluation
            spec.build(1e-3, (0.0, 1.0), "eval", "eval")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {name} does not accept {params}: {err}") from None
        specs.append(spec)
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"{field_name}: attacks {dupes} appear twice; give each a distinct `label`")
    if "clean" in labels or "ensemble" in labels:
        raise ValueError(f"{field_name}: 'clean' and 'ensemble' are reserved labels")
    return specs


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


def _seed_for(seed: int, batch_no: int, attack_i: int, eps_i: int) -> int:
    """Seed of one (batch, attack, ε): depends on the global batch number, never on the rank."""
    return hash((int(seed), int(batch_no), int(attack_i), int(eps_i))) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class EvalMetrics:
    """Fresh metric collections for one evaluation (moved to the model's device)."""

    clean: Any
    attacks: dict[tuple[str, float], Any]
    ensemble: dict[float, Any]


@dataclass
class EvalOutcome:
    """Computed (rank-synchronised) metrics of one evaluation."""

    clean: dict[str, float]
    attacks: dict[tuple[str, float], dict[str, float]]
    ensemble: dict[float, dict[str, float]]
    descriptions: dict[tuple[str, float], dict[str, Any]]
    ensemble_rule: str
    num_samples: int


class RobustnessEvaluator:
    """Runs a suite of attacks × ε on batches and accumulates the task's metrics.

    Args:
        task: the LightningModule implementing ``RobustTask``.
        specs: the attack suite.
        eps: the ε grid (``> 0``; the clean metric is ε = 0).
        bn_mode, dropout_mode: BatchNorm / Dropout mode *during attack forwards*. Metric forwards
            always run with the whole model in eval mode.
        seed: base seed of the attacks' random streams (random starts, noises), combined with
            the global batch number so results do not depend on the number of ranks.
        ensemble: also compute the per-sample worst case over attacks.
    """

    def __init__(
        self,
        task: Any,
        specs: Sequence[AttackSpec],
        eps: Sequence[float],
        bn_mode: str = "eval",
        dropout_mode: str = "eval",
        seed: int = 0,
        ensemble: bool = True,
    ) -> None:
        self.task = task
        self.specs = list(specs)
        self.eps = list(eps)
        self.seed = int(seed)
        self.ensemble = ensemble
        self.model: nn.Module = task.attack_model()
        bounds = tuple(task.data_info.bounds)
        self.attacks = {
            (s.label, e): s.build(e, bounds, bn_mode, dropout_mode) for s in self.specs for e in self.eps
        }
        self._violation_ok = True
        self.num_samples = 0
        device = next((p.device for p in task.parameters()), torch.device("cpu"))
        self.device = device
        self.metrics = EvalMetrics(
            clean=task.build_metrics().to(device),
            attacks={k: task.build_metrics().to(device) for k in self.attacks},
            ensemble={e: task.build_metrics().to(device) for e in self.eps} if ensemble else {},
        )

    # -- per-sample ranking -------------------------------------------------------------------
    def _loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        return self.task.per_sample_loss(output, batch).detach().float()

    def _violated(self, output: Any, batch: dict[str, Any], size: int) -> torch.Tensor:
        """``is_violated`` with the task's default threshold; all-False (rank by loss only)
        for a task that cannot decide without an explicit threshold."""
        if self._violation_ok:
            try:
                return self.task.is_violated(output, batch).detach().bool().reshape(size)
            except (NotImplementedError, TypeError, ValueError) as err:
                warnings.warn(
                    f"{type(self.task).__name__}.is_violated(output, batch) failed ({err}); the "
                    "ensemble ranks candidates by per-sample loss only",
                    stacklevel=2,
                )
                self._violation_ok = False
        return torch.zeros(size, dtype=torch.bool, device=self.device)

    def forward(self, x: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.model(x)

    # -- the loop -------------------------------------------------------------------------------
    def run_batch(self, batch_no: int, batch: dict[str, Any], counted: bool = True) -> None:
        """Clean + every attack × ε on one batch (already on the device, autograd-safe).

        ``counted=False`` (a DDP padding copy) runs the same computation but updates nothing.
        """
        task = self.task
        x = batch["image"]
        size = x.shape[0]
        out_clean = self.forward(x)
        if counted:
            task.update_metrics(self.metrics.clean, out_clean, batch)
            self.num_samples += size
        if self.ensemble:
            loss_clean = self._loss(out_clean, batch)
            viol_clean = self._violated(out_clean, batch, size)

        def loss_fn(output: Any, target: Any) -> torch.Tensor:
            return task.per_sample_loss(output, target)

        for e_i, eps in enumerate(self.eps):
            if self.ensemble:
                best_x, best_loss, best_viol = x, loss_clean, viol_clean
                winner = torch.full((size,), -1, dtype=torch.long, device=x.device)
                outputs: dict[int, Any] = {-1: out_clean}
            for a_i, spec in enumerate(self.specs):
                attack = self.attacks[(spec.label, eps)]
                gen = torch.Generator(device=x.device).manual_seed(_seed_for(self.seed, batch_no, a_i, e_i))
                x_adv = attack(self.model, x, batch, loss_fn=loss_fn, generator=gen)
                out = self.forward(x_adv)
                if counted:
                    task.update_metrics(self.metrics.attacks[(spec.label, eps)], out, batch)
                if not (self.ensemble and spec.budgeted):
                    continue
                loss = self._loss(out, batch)
                viol = self._violated(out, batch, size)
                better = (viol & ~best_viol) | ((viol == best_viol) & (loss > best_loss))
                if bool(better.any()):
                    mask = better.view(-1, *([1] * (x.ndim - 1)))
                    best_x = torch.where(mask, x_adv, best_x)
                    best_loss = torch.where(better, loss, best_loss)
                    best_viol = best_viol | viol & better
                    winner = torch.where(better, torch.full_like(winner, a_i), winner)
                    outputs[a_i] = out
            if not (self.ensemble and counted):
                continue
            # One candidate won every sample: reuse its output; otherwise forward the mix once.
            first = int(winner[0])
            if bool((winner == first).all()) and first in outputs:
                ens_out = outputs[first]
            else:
                ens_out = self.forward(best_x)
            task.update_metrics(self.metrics.ensemble[eps], ens_out, batch)

    def run(self, batches: Iterable[tuple[int, dict[str, Any], bool]]) -> None:
        for batch_no, batch, counted in batches:
            self.run_batch(batch_no, batch, counted)

    def compute(self) -> EvalOutcome:
        """Compute every collection; a collective under DDP (call on every rank, same order)."""
        clean = compute_metrics(self.metrics.clean)
        attacks = {k: compute_metrics(m) for k, m in self.metrics.attacks.items()}
        ensemble = {e: compute_metrics(m) for e, m in self.metrics.ensemble.items()}
        descriptions = {k: dict(a.describe()) for k, a in self.attacks.items()}
        rule = "violation_then_loss" if self._violation_ok else "loss"
        return EvalOutcome(clean, attacks, ensemble, descriptions, rule, self.num_samples)
