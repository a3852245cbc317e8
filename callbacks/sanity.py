"""Gradient-masking sanity checks of a robustness evaluation: reported, never repaired.

An evaluation that hides gradient masking reports robustness that is not there (Athalye et al.
2018, "Obfuscated gradients give a false sense of security"; Carlini et al. 2019, "On
evaluating adversarial robustness"; AutoAttack's ``checks.py``, Croce & Hein 2020). Each check
becomes an entry of ``robustness.json["sanity"]`` — ``{"flag": bool, "value", "threshold",
"message"}`` — and a ``UserWarning`` when it fires:

``gradient``        fraction of attacked samples whose input gradient was non-finite at some
                    step or exactly zero at every step, worst gradient attack (``> 5%``)
``monotone``        the ensemble's robust metric gets *better* as ε grows (by more than 0.01)
``large_eps``       APGD-20 at a huge L∞ budget (a quarter of the input range) breaks fewer than 90% of
                    the samples
``black_box``       a gradient-free attack (Square) sets the worst case of more than 1% of the
                    samples that the white-box attacks did not break
``randomness``      two eval-mode clean forwards of the same input differ (on any sample;
                    :func:`outputs_differ`)

A fired flag changes what the numbers mean, so it is not left in a log:
:func:`mark_unreliable` marks the affected robust numbers of the record as *unreliable upper
bounds* (``unreliable: [flag, …]`` on each attack / worst-case entry, and a top-level
``unreliable`` list saying per flag what it means and what to run next); ``report.md`` and the
CLI summary show the marks. :data:`FLAG_EFFECTS` is the one table of which numbers each flag
affects, what it means and what to run next (docs/attacks.md has the same in prose).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from attacks.seeding import seeded_generator
from callbacks.outcome import EvalOutcome


@dataclass
class SanityThresholds:
    """When each flag fires (see the module docstring)."""

    gradient: float = 0.05
    monotone: float = 0.01
    large_eps: float = 0.90
    black_box: float = 0.01
    randomness: float = 0.0


def _entry(flag: bool, value: Any, threshold: Any, message: str) -> dict[str, Any]:
    return {"flag": bool(flag), "value": value, "threshold": threshold, "message": message}


def sanity_report(
    outcome: EvalOutcome,
    monitor: str,
    lower_is_better: bool,
    thresholds: SanityThresholds | None = None,
    warn: bool = True,
) -> dict[str, dict[str, Any]]:
    """The sanity entries of one evaluation (``robustness.json["sanity"]``)."""
    th = thresholds or SanityThresholds()
    out: dict[str, dict[str, Any]] = {}

    # 1. zero / non-finite input gradients (gradient attacks only)
    worst, worst_label = 0.0, None
    for (label, eps), g in outcome.gradients.items():
        desc = outcome.descriptions.get((label, eps), {})
        if desc.get("gradient_free") or not g.get("attacked"):
            continue
        frac = (g["nonfinite"] + g["zero"]) / g["attacked"]
        if frac > worst or worst_label is None:
            worst, worst_label = frac, f"{label} @ eps={eps:g}"
    if worst_label is not None:
        out["gradient"] = _entry(
            worst > th.gradient, worst, th.gradient,
            f"{worst:.1%} of attacked samples had a zero or non-finite input gradient ({worst_label}); "
            "NaN/inf entries were set to 0 — the attack had no information there",
        )

    # 2. robust metric monotone in ε (ensemble curve, ε = 0 is clean)
    if outcome.ensemble and monitor:
        pts = [(0.0, outcome.clean.get(monitor, math.nan))]
        pts += [(e, m.get(monitor, math.nan)) for e, m in sorted(outcome.ensemble.items())]
        sign = -1.0 if lower_is_better else 1.0  # robustness = sign * metric
        rise = max((sign * (b[1] - a[1]) for a, b in zip(pts, pts[1:])
                    if math.isfinite(a[1]) and math.isfinite(b[1])), default=0.0)
        fired = rise > th.monotone
        out["monotone"] = _entry(
            fired, rise, th.monotone,
            f"the ensemble {monitor} improves by {rise:.4g} between consecutive ε: a stronger "
            "budget should never help; the attack is failing at the larger ε" if fired else
            f"the ensemble {monitor} never improves by more than {th.monotone:g} as ε grows "
            f"(largest step {rise:.4g})",
        )

    # 3. a large ε must break (almost) everything
    large = outcome.large_eps
    if large is not None and large.get("decidable") and large.get("samples"):
        rate = large["violated"] / large["samples"]
        fired = rate < th.large_eps
        out["large_eps"] = _entry(
            fired, rate, th.large_eps,
            f"APGD-{large['steps']} at L∞ ε={large['eps']:g} broke "
            f"{'only ' if fired else ''}{rate:.1%} of the samples (expected at least {th.large_eps:.0%})",
        )

    # 4. black box beating white box
    if outcome.blackbox_wins and outcome.num_samples:
        worst_e = max(outcome.blackbox_wins, key=lambda e: outcome.blackbox_wins[e])
        n = outcome.blackbox_wins[worst_e]
        total = max(outcome.total_samples or outcome.num_samples, 1)
        frac = n / total
        fired = frac > th.black_box
        out["black_box"] = _entry(
            fired, frac, th.black_box,
            f"a gradient-free attack set the worst case of {frac:.1%} of the samples at ε={worst_e:g} "
            "that no gradient attack broke" + (": the gradients are not informative (masking)" if fired
                                               else f" (at most {th.black_box:.0%} expected)"),
        )

    # 5. randomness in the model
    out["randomness"] = _entry(
        outcome.clean_randomness > th.randomness, outcome.clean_randomness, th.randomness,
        f"{outcome.clean_randomness:.1%} of the samples got different outputs from two eval-mode "
        "clean forwards: a randomised model needs EOT attacks (Athalye et al. 2018)",
    )
    if warn:
        for name, e in out.items():
            if e["flag"]:
                warnings.warn(f"robustness sanity check '{name}' fired: {e['message']}", stacklevel=2)
    return out


Scope = Literal["gradient_members", "ensemble", "all"]

_AA = ("rerun with `test_attacks: aa_budget` (Square 5000 queries on the margin loss, APGD-T, "
       "FMN)")


@dataclass(frozen=True)
class FlagEffect:
    """What a fired flag does to the reported numbers.

    ``scope``: which robust numbers become unreliable upper bounds — ``"gradient_members"``
    (every gradient attack's entry and the worst case; in a sequential suite every entry, since
    each one is cumulative), ``"ensemble"`` (the worst case only) or ``"all"`` (every attack and
    worst-case entry). ``meaning`` and ``next`` are written into the record and the report.
    """

    scope: Scope
    meaning: str
    next: str


FLAG_EFFECTS: dict[str, FlagEffect] = {
    "gradient": FlagEffect(
        "gradient_members",
        "the gradient attacks had no gradient information on many samples (a quantised or "
        "non-differentiable input, a saturated softmax): their numbers, and the worst case "
        "over them, overstate robustness",
        f"{_AA}; for a non-differentiable layer attack a differentiable approximation of it "
        "(BPDA, Athalye et al. 2018)"),
    "black_box": FlagEffect(
        "gradient_members",
        "a gradient-free attack broke samples that every gradient attack missed: the gradients "
        "are not informative, and the worst case now rests on the gradient-free member's "
        "limited query budget",
        f"{_AA}, or the black-box member alone with a larger budget "
        "(`{name: square, steps: 10000, restarts: 2, loss: margin}`)"),
    "large_eps": FlagEffect(
        "all",
        "a huge budget (a quarter of the input range) did not break the model: the attacks are "
        "failing, so every robust number here may be far above the truth",
        f"look for gradient masking (zero gradients, non-differentiable layers, a loss that does "
        f"not reach the task's output), then {_AA}"),
    "monotone": FlagEffect(
        "ensemble",
        "the worst case improves at a larger ε, which a working attack never allows: the "
        "numbers at the larger ε are too high",
        f"{_AA}, or more restarts of the members"),
    "randomness": FlagEffect(
        "all",
        "the model's output is random in eval mode: one attack run sees one draw, so every "
        "robust number may be too high",
        "attack the expectation over the randomness (EOT, Athalye et al. 2018), or make the "
        "eval-mode model deterministic"),
}


def mark_unreliable(record: Any) -> list[dict[str, Any]]:
    """Mark the robust numbers of ``record`` (a :class:`callbacks.record.RobustnessRecord` whose
    ``sanity`` is filled) that its fired flags make unreliable upper bounds.

    Sets ``unreliable = [flag, …]`` on every affected attack and worst-case entry (by
    :data:`FLAG_EFFECTS`' scope) and ``record.unreliable`` to ``[{flag, message, affects,
    meaning, next}]``; returns that list (empty when no flag fired, and then nothing is set).
    """
    fired = [name for name, entry in (record.sanity or {}).items() if entry.get("flag")]
    out: list[dict[str, Any]] = []
    for name in fired:
        effect = FLAG_EFFECTS.get(name)
        if effect is None:
            continue
        affected: list[str] = []
        for entry in record.attacks:
            gradient_free = bool(entry.extra.get("gradient_free"))
            hit = (effect.scope == "all"
                   or (effect.scope == "gradient_members" and (not gradient_free or record.sequential)))
            if hit and entry.in_ensemble is not False:
                entry.unreliable = [*(entry.unreliable or []), name]
                affected.append(entry.attack)
        for ens in record.ensemble:
            ens.unreliable = [*(ens.unreliable or []), name]
        if record.ensemble:
            affected.append("ensemble")
        out.append({"flag": name, "message": record.sanity[name].get("message", ""),
                    "affects": sorted(set(affected), key=affected.index),
                    "meaning": effect.meaning, "next": effect.next})
    record.unreliable = out or None
    return out


def unreliable_summary(record: Any) -> str:
    """One line for logs and the CLI: the fired flags and what to run next ('' when none)."""
    if not record.unreliable:
        return ""
    flags = ", ".join(u["flag"] for u in record.unreliable)
    nexts = "; ".join(dict.fromkeys(u["next"] for u in record.unreliable))
    return f"UNRELIABLE upper bounds (sanity flags: {flags}); next: {nexts}"


def outputs_differ(a: Any, b: Any, size: int) -> torch.Tensor:
    """``Bool[B]``: two outputs of one input differ (beyond float noise) for each sample."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.ndim == 0 or a.shape[0] != size:
            return torch.zeros(size, dtype=torch.bool, device=a.device)
        d = (a.float() - b.float()).abs().reshape(size, -1)
        scale = a.float().abs().reshape(size, -1).amax(dim=1, keepdim=True).clamp_min(1.0)
        return (d > 1e-4 * scale).any(dim=1)
    if isinstance(a, dict) and isinstance(b, dict):
        out = torch.zeros(size, dtype=torch.bool)
        for k in a:
            if k in b:
                r = outputs_differ(a[k], b[k], size)
                out = out.to(r.device) | r
        return out
    return torch.zeros(size, dtype=torch.bool)


class SanityCounts:
    """What the attack × ε loop (:class:`callbacks.evaluation_loop.RobustnessEvaluator`, which
    calls :meth:`_init_sanity`) measures for the checks above: samples whose two clean forwards
    differ (``randomness``), worst cases won by a gradient-free member (``black_box``), samples
    the large-ε APGD violates (``large_eps``). :func:`sanity_report` judges them."""

    specs: list[Any]
    eps: list[float]
    attacks: dict[tuple[str, float], Any]
    modes: tuple[str, str]

    def _init_sanity(self, check_randomness: bool, large_eps: float | None, large_eps_steps: int,
                     bounds: tuple[float, float]) -> None:
        self.check_randomness = bool(check_randomness)
        self._random_clean = 0
        self._gradient_free = {i for i, sp in enumerate(self.specs)
                               if getattr(self.attacks[(sp.label, self.eps[0])], "gradient_free", False)}
        self.blackbox_wins = dict.fromkeys(self.eps, 0)
        # A huge budget must break (almost) everything (Carlini et al. 2019, "On evaluating
        # adversarial robustness"); APGD on the task loss, L∞.
        self.large_eps = large_eps
        self.large_eps_steps = int(large_eps_steps)
        self.large_violated = 0
        if large_eps is not None:
            from attacks import APGD

            # From x, not a random start: at such a budget a uniform start is a noise image,
            # often far from every decision boundary the gradient could follow.
            self._large_attack = APGD(eps=float(large_eps), norm="linf", steps=self.large_eps_steps,
                                      random_start=False, bounds=bounds, bn_mode=self.modes[0],
                                      dropout_mode=self.modes[1])

    def _count_randomness(self, out_clean: Any, x: torch.Tensor, size: int) -> None:
        """AutoAttack's check: a second clean forward of ``x`` must agree with ``out_clean``."""
        if self.check_randomness:
            self._random_clean += int(outputs_differ(out_clean, self.forward(x), size).sum())

    def _count_blackbox_wins(self, eps: float, winner: torch.Tensor, worst_score: torch.Tensor | None,
                             white: torch.Tensor | None) -> None:
        """Samples whose worst case at ``eps`` a gradient-free member won (``winner[B]``: the
        winning member's index, -1 clean) with a metric worse than every gradient member's and
        the clean one's (``white[B]``; classification: it broke a sample no gradient attack broke)."""
        if not self._gradient_free:
            return
        gf = torch.zeros_like(winner, dtype=torch.bool)
        for i in self._gradient_free:
            gf |= winner == i
        if worst_score is not None and white is not None:
            gf &= worst_score.float() > white.float()
        self.blackbox_wins[eps] += int(gf.sum())

    def _large_eps_check(self, batch_no: int, batch: dict[str, Any], counted: bool, task_loss: Any) -> None:
        """APGD at the large ε on the batch; counts the samples it violates."""
        if not counted:
            return
        x = batch["image"]
        gen = seeded_generator(self.seed, batch_no, -1, -1, device=x.device)
        x_big = self._large_attack(self.model, x, batch, loss_fn=task_loss, generator=gen)
        out_big = self.forward(x_big)
        self.large_violated += int(self.task.is_violated(out_big, batch).bool().sum()) if self._violation_ok else 0
