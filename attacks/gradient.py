"""Gradient attacks inside an L∞ or L2 ball: FGSM / fast gradient method, BIM, PGD, MI-FGSM.

All four are one loop (:meth:`PGD._run`) with different defaults:

=========  ==========================  =======================  ==============  ============
attack     paper                       default step_size        random start    steps
=========  ==========================  =======================  ==============  ============
FGSM       Goodfellow et al. 2015      eps (1.25·eps with       off (optional,  1
                                       random start)            Wong et al.
                                                                2020 "fast")
BIM        Kurakin et al. 2017         max(2.5/steps, 1/4)·eps  never           10
PGD        Madry et al. 2018           max(2.5/steps, 1/4)·eps  on              10
MI-FGSM    Dong et al. 2018            eps/steps                never           10
=========  ==========================  =======================  ==============  ============

The PGD / BIM default step is Madry et al.'s ``2.5·eps/steps`` (enough to cross the ball and
back) up to 10 steps and ``eps/4`` beyond: a step that shrank with ``steps`` made PGD-50 no
stronger than PGD-10 (smaller steps from the same start get stuck in the same local maximum).
With the floor, PGD-k for every ``k >= 10`` uses the same step, so for the same seed its first
10 iterates *are* PGD-10's; with an ``is_violated`` (the evaluation passes one) a sample that
PGD-10 breaks is frozen at that iterate, so PGD-50 breaks every sample PGD-10 breaks. Up to 10
steps nothing changed; a configuration that sets ``step_size`` / ``rel_step_size`` keeps it.

L∞ steps move by ``step_size·sign(g)``; L2 steps by ``step_size·g/‖g‖₂`` (per sample). After
every step the iterate is projected onto the ``eps`` ball around ``x`` and clamped to
``bounds``. A per-sample ``eps``/``step_size`` (tensor ``[B]``) gives each sample its own ball.

PGD's random start (``init_radius`` defaults to ``eps``): L∞ — uniform in the cube
``[-r, r]^n``; L2 — a uniformly random direction scaled to norm *exactly* ``r`` (in high
dimension the uniform distribution on the ball concentrates at its surface anyway, and AMAT
needs a start of a prescribed norm). ``init_distribution="normal"`` instead adds
``r·N(0, 1)`` per coordinate (TRADES' ``x + 0.001·N(0, 1)``, Zhang et al. 2019). The start is
then projected onto the ``eps`` ball and clamped to ``bounds``, which can only shorten it.

``project=False`` (N-FGSM, de Jorge et al. 2022) turns the projection onto the ``eps`` ball
off — for the start and for every step; the valid range ``bounds`` still holds. The
perturbation is then bounded only by construction: ``‖x_adv − x‖ ≤ init_radius +
steps·step_size`` (L∞: per coordinate), and the ``eps``-ball guarantee of the attack API does
not hold — which is why evaluation suites refuse ``project: false``
(:func:`attacks.spec.parse_attack_specs`). ``eps`` still sets the default step and start radius.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from .base import Attack, describe_value
from .call import AttackCall, Norm, Scalar
from .checks import check_count, check_restarts, check_scalar
from .mode import Mode
from .options import check_choice
from .projection import linf_box, project_l2, random_start, steepest_direction
from .registry import register_attack

#: the smallest default step of PGD / BIM, as a fraction of ``eps`` (see the module docstring)
MIN_REL_STEP = 0.25
#: random-start distributions of :class:`PGD` (see :func:`attacks.projection.random_start`)
InitDistribution = Literal["uniform", "normal"]
INIT_DISTRIBUTIONS: tuple[InitDistribution, ...] = ("uniform", "normal")


@register_attack
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant
    to Adversarial Attacks"): ``steps`` projected gradient-ascent steps on the per-sample loss
    from a random start, best of ``restarts`` random starts per sample.

    Args:
        eps: budget, float or ``[B]`` tensor, ``>= 0``, in input units (``bounds``' scale).
        norm: ``"linf"`` or ``"l2"``.
        steps: number of gradient steps (forward + input-gradient backward each), ``>= 1``.
        step_size: float or ``[B]``; ``None`` → ``max(2.5/steps, 1/4)·eps`` (Madry et al.'s
            ``2.5·eps/steps``, enough to cross the ball and back, floored at ``eps/4`` so that
            more steps are never weaker; see the module docstring).
        random_start: start from a random point of the ball (see module docstring).
        restarts: independent random starts; each sample keeps its worst case (higher loss
            wins; with an ``is_violated``, a violating restart beats a non-violating one, and
            the remaining restarts are skipped once every sample is adversarial). Needs
            ``random_start=True`` when ``> 1``. Within a restart the last iterate is kept.
        init_radius: radius of the random start, float or ``[B]``; ``None`` → ``eps``.
            AMAT starts at ``max(E - δ, δ)``.
        bounds, bn_mode, dropout_mode: see :class:`attacks.base.Attack`.
        init_distribution: ``"uniform"`` (the cube / sphere of radius ``init_radius``) or
            ``"normal"`` (``init_radius·N(0, 1)`` per coordinate, TRADES' start).
        project: project onto the ``eps`` ball (default); ``False``: only clamp to
            ``bounds`` (N-FGSM's unclipped step; see the module docstring).

    Cost: ``steps`` × (forward + backward) per restart, plus one no-grad forward per restart
    when ``restarts > 1`` or when called through :meth:`perturb` (to report loss/violation).
    """

    name = "pgd"
    needs_norm = True
    needs_eps = True

    def __init__(
        self,
        eps: Scalar = 0.004,
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Scalar | None = None,
        random_start: bool = True,
        restarts: int = 1,
        init_radius: Scalar | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
        init_distribution: InitDistribution = "uniform",
        project: bool = True,
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        check_count("steps", steps)
        check_restarts(restarts, bool(random_start))
        self.steps = steps
        self.step_size = check_scalar("step_size", step_size, allow_none=True)
        self.random_start = bool(random_start)
        self.restarts = restarts
        self.init_radius = check_scalar("init_radius", init_radius, allow_none=True)
        check_choice("init_distribution", init_distribution, INIT_DISTRIBUTIONS)
        self.init_distribution = init_distribution
        if not isinstance(project, bool):
            raise ValueError(f"project must be true or false, got {project!r}")
        self.project = project

    # -------------------------------------------------------------- defaults
    def default_step_size(self, eps: Scalar) -> Scalar:
        """Step size used when ``step_size=None`` (``eps`` float or ``[B]``):
        ``max(2.5/steps, 1/4)·eps`` — never below ``eps/4``, so more steps are never weaker."""
        return eps * max(2.5 / self.steps, MIN_REL_STEP)

    def _resolved_step_size_for_report(self) -> Scalar | None:
        if self.step_size is not None:
            return self.step_size
        return self.default_step_size(self.eps)  # type: ignore[arg-type]

    def _n_restarts(self) -> int:
        return self.restarts

    def _validate_call(self, call: AttackCall) -> None:
        super()._validate_call(call)
        for name in ("step_size", "init_radius"):
            call.budget(getattr(self, name), name)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.init_radius is not None:
            d["init_radius"] = describe_value(self.init_radius)
        if self.init_distribution != "uniform":
            d["init_distribution"] = self.init_distribution
        if not self.project:
            d["project"] = False
        return d

    # -------------------------------------------------------------- the loop
    def _run(self, call: AttackCall) -> Tensor:
        eps = call.budget(self.eps, "eps")
        alpha = call.budget(self.step_size, "step_size")
        if alpha is None:
            alpha = self.default_step_size(eps)  # type: ignore[arg-type]
        alpha_b = call.per_sample(alpha)
        if self.random_start:
            radius = call.budget(self.init_radius, "init_radius")
            x_adv = random_start(call, self.norm, eps if radius is None else radius,  # type: ignore[arg-type]
                                 self.init_distribution)
        else:
            x_adv = call.x.clone()

        direction = self._direction(call)
        if not self.project:  # N-FGSM: the valid range only
            lo, hi = call.lo, call.hi
            x_adv.clamp_(lo, hi)

            def project(xa: Tensor) -> Tensor:
                return xa.clamp_(lo, hi)

        elif self.norm == "linf":
            lower, upper = linf_box(call, eps)  # type: ignore[arg-type]
            x_adv.clamp_(lower, upper)

            def project(xa: Tensor) -> Tensor:
                # One clamp against the precomputed (eps ball ∩ bounds) box.
                return xa.clamp_(lower, upper)

        else:
            x_adv = project_l2(call, x_adv, eps)  # type: ignore[arg-type]

            def project(xa: Tensor) -> Tensor:
                return project_l2(call, xa, eps)  # type: ignore[arg-type]

        def step(xa: Tensor, grad: Tensor, t: int) -> Tensor:
            d = direction(grad)
            if isinstance(alpha_b, Tensor):
                xa.addcmul_(d, alpha_b)
            else:
                xa.add_(d, alpha=alpha_b)
            return project(xa)

        return self._iterate(call, x_adv, self.steps, step)

    def _direction(self, call: AttackCall) -> Callable[[Tensor], Tensor]:
        """Map a raw input gradient (a fresh tensor, safe to modify in place) to the step
        direction: its sign (L∞) or its per-sample L2-normalised version (L2)."""
        return steepest_direction(self.norm)  # type: ignore[arg-type]


@register_attack
class BIM(PGD):
    """Basic iterative method / I-FGSM (Kurakin et al. 2017, "Adversarial examples in the
    physical world"): PGD without random start, so it starts at ``x`` and is deterministic.
    Default ``step_size`` ``2.5·eps/steps``; L∞ (as in the paper) or L2."""

    name = "bim"

    def __init__(
        self,
        eps: Scalar = 0.004,
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Scalar | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=False,
                         bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)


@register_attack
class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples"): one step ``x + eps·sign(∇x L)`` (L∞), or the fast gradient
    method ``x + eps·∇x L/‖∇x L‖₂`` (L2), then clamped to ``bounds``.

    ``random_start=True`` gives the "fast adversarial training" variant (Wong et al. 2020,
    FGSM-RS): uniform start in the ball and default ``step_size = 1.25·eps``, projected back
    onto the ball. N-FGSM (de Jorge et al. 2022) is ``random_start=True,
    init_radius=2·eps, step_size=eps, project=False``: a larger noise and no projection back
    (``‖x_adv − x‖∞ ≤ 3·eps``), still inside ``bounds``.
    """

    name = "fgsm"

    def __init__(
        self,
        eps: Scalar = 0.004,
        norm: Norm = "linf",
        step_size: Scalar | None = None,
        random_start: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
        steps: int = 1,
        init_radius: Scalar | None = None,
        init_distribution: InitDistribution = "uniform",
        project: bool = True,
    ) -> None:
        if steps != 1:  # accepted so configs can state steps uniformly for every attack
            raise ValueError(f"FGSM takes exactly one step, got steps={steps!r}; use BIM/PGD")
        super().__init__(eps=eps, norm=norm, steps=1, step_size=step_size, random_start=random_start,
                         init_radius=init_radius, bounds=bounds, bn_mode=bn_mode,
                         dropout_mode=dropout_mode, init_distribution=init_distribution, project=project)

    def default_step_size(self, eps: Scalar) -> Scalar:
        return eps * (1.25 if self.random_start else 1.0)


@register_attack
class MIFGSM(PGD):
    """Momentum iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with
    Momentum"): ``g ← μ·g + ∇/‖∇‖₁``, step ``step_size·sign(g)`` (L∞) or
    ``step_size·g/‖g‖₂`` (L2), from ``x`` (no random start). Default ``step_size = eps/steps``
    as in the paper (the accumulated direction rarely turns, so it need not overshoot), decay
    ``μ = 1``."""

    name = "mifgsm"

    def __init__(
        self,
        eps: Scalar = 0.004,
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Scalar | None = None,
        decay: float = 1.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=False,
                         bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        if not decay >= 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.decay = float(decay)

    def default_step_size(self, eps: Scalar) -> Scalar:
        return eps * (1.0 / self.steps)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "decay": self.decay}

    def _direction(self, call: AttackCall) -> Callable[[Tensor], Tensor]:
        momentum = torch.zeros_like(call.x)  # per call, so the attack object stays stateless
        base = super()._direction(call)
        decay = self.decay

        def direction(grad: Tensor) -> Tensor:
            # L1-normalise per sample (a mean instead of a sum: equal up to a constant factor,
            # which cancels in the sign / L2 normalisation of the accumulated direction).
            l1 = grad.abs().reshape(grad.shape[0], -1).mean(dim=1)
            l1 = l1.clamp_min(torch.finfo(grad.dtype).tiny).view(-1, *([1] * (grad.ndim - 1)))
            momentum.mul_(decay).add_(grad.div_(l1))
            return base(momentum.clone())

        return direction
