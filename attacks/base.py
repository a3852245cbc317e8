"""The attack base class: the loop every attack shares.

A concrete attack only says how to produce ``x_adv`` from the clean input (``_run``); the base
owns the call: argument checks (:func:`attacks.call.prepare_call`), the train/eval policy
(:func:`attacks.mode.attack_mode`), input gradients (:mod:`attacks.start`), per-sample early
stopping, random restarts with the worst case kept per sample (:mod:`attacks.worst_case`) and
the final evaluation. The geometry of the threat model (norms, projections, random starts) is
in :mod:`attacks.projection`.

Calling contexts:

* inside ``torch.no_grad()`` the attack enables gradients itself;
* inside ``torch.inference_mode()`` (Lightning's default validation/test loops) it raises a
  ``RuntimeError`` saying what to do: wrap the call in ``torch.inference_mode(False)`` +
  ``torch.enable_grad()``. Inference *tensors* handed over outside inference mode (a batch
  produced by such a loop) are cloned here — ``x`` and every tensor inside ``target`` —
  so the caller cannot forget it;
* under ``torch.autocast`` the model runs in reduced precision but the input gradient is taken
  wrt a float32 ``x`` and is float32; bfloat16 autocast is the supported mixed precision,
  float16 autocast warns (:class:`attacks.precision.HalfPrecisionAttackWarning`: its input
  gradients underflow without loss scaling);
* half-precision ``x`` is attacked in float32 and cast back at the end, so the budget then
  holds only up to half-precision rounding;
* prefer the inner module (``ddp.module``) to a ``DistributedDataParallel`` wrapper: the
  attack needs no gradient synchronisation, and DDP's forward bookkeeping (buffer broadcast,
  reducer preparation) is at best wasted on an input-only backward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import losses
from .call import (
    NORMS,
    AttackCall,
    AttackResult,
    LossFn,
    Model,
    Norm,
    Scalar,
    ViolationFn,
    prepare_call,
)
from .checks import check_bounds, check_scalar
from .mode import Mode, attack_mode, check_mode
from .projection import fit_l2_budget, per_sample_norm
from .seeding import forked_global_rng
from .start import GradientStats, StartGradient, gradient_pass
from .worst_case import Worst, keep_worst


def describe_value(value: Scalar | None) -> Any:
    """A budget-like setting for reports: a float, or a summary of a per-sample tensor."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return float(value)
        v = value.detach().float()
        return {"per_sample": True, "mean": float(v.mean()), "min": float(v.min()),
                "max": float(v.max())}
    return float(value)


class Attack(ABC):
    """Base of every attack and noise. Subclasses set ``name`` and implement :meth:`_run`.

    Args:
        eps: budget, a float or a ``[B]`` tensor (per-sample budgets, as AMAT uses), ``>= 0``;
            ``None`` for attacks without one (CW, unbounded noises). May be reassigned between
            calls (``atk.eps = margins[idx]``); it is checked at each call.
        norm: ``"linf"`` or ``"l2"`` — the threat model of ``eps``.
        bounds: ``(lo, hi)``, the valid input range; ``x`` must lie inside it (1e-6 slack) and
            every output does. ``±inf`` means unbounded on that side (not for CW or
            salt-and-pepper noise, which need finite bounds).
        bn_mode, dropout_mode: train/eval mode of BatchNorm / Dropout during the attack
            (``"eval"``, ``"train"`` or ``"keep"``); every other module is put in eval mode.
            See :func:`attacks.mode.attack_mode` — with ``bn_mode="train"`` the running stats
            are saved and restored, so they never change.
    """

    name: ClassVar[str] = "attack"
    uses_model: ClassVar[bool] = True  # noises set False: __call__ then never runs the model
    #: the attack refuses ``norm=None`` (every gradient and search attack) / ``eps=None``
    #: (those with a fixed budget; FMN and CW may run without one)
    needs_norm: ClassVar[bool] = False
    needs_eps: ClassVar[bool] = False
    last_gradients: GradientStats | None = None

    def __init__(
        self,
        eps: Scalar | None,
        norm: Norm | None = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        if norm is None and self.needs_norm:
            raise ValueError(f"norm must be 'linf' or 'l2' for {type(self).__name__}, got None")
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.eps = eps
        check_scalar("eps", eps, allow_none=not self.needs_eps)
        self.bounds = check_bounds(bounds)
        self.bn_mode = check_mode(bn_mode, "bn_mode")
        self.dropout_mode = check_mode(dropout_mode, "dropout_mode")

    # ------------------------------------------------------------------ public API
    def perturb(
        self,
        model: Model | None,
        x: Tensor,
        target: Any = None,
        loss_fn: LossFn | None = None,
        is_violated: ViolationFn | None = None,
        generator: torch.Generator | None = None,
        *,
        start: StartGradient | None = None,
        evaluate: bool = True,
    ) -> AttackResult:
        """Attack a batch and report per-sample loss and violation at the result.

        Args:
            model: any callable ``model(x) -> output``; the output may be logits, a dense map
                or any structure — only ``loss_fn``/``is_violated`` look at it.
            x: ``[B, *]`` floating input within ``bounds``.
            target: opaque; only passed to ``loss_fn`` / ``is_violated``.
            loss_fn: ``(output, target) -> [B]`` per-sample loss that the attack *increases*.
                Default :func:`attacks.losses.cross_entropy`.
            is_violated: ``(output, target) -> Bool[B]``. When given, a sample stops moving at
                the first iterate where it is adversarial, and the attack ends once all are.
            generator: ``torch.Generator`` for all randomness (random start, noise, and — when
                ``dropout_mode`` is not ``"eval"`` — the model's own dropout, through a forked
                and seeded global RNG); ``None`` uses the global RNG.
            start: the input gradient at ``x`` computed already (:class:`StartGradient`,
                from :func:`attacks.start_gradient`); used where it is exactly what the attack
                would compute (see there), ignored otherwise. Changes the cost, never the result.
            evaluate: report ``loss`` / ``violated`` at ``x_adv`` (one no-grad forward);
                ``False`` skips that forward (they are then ``None`` unless restarts ranked
                them), as calling the attack does.
        """
        call = prepare_call(model, x, target, self._default_loss() if loss_fn is None else loss_fn,
                            is_violated, generator, self.bounds, type(self).__name__, self.uses_model)
        self._validate_call(call)
        if start is not None:
            if not isinstance(start, StartGradient):
                raise TypeError(f"start must be a StartGradient (attacks.start_gradient) or None, got {type(start)}")
            if start.applies_to(call, self.bn_mode, self.dropout_mode):
                call.start = start
        restarts = self._n_restarts()
        # The final forward is only needed to rank restarts or to report loss / violation.
        evaluate = evaluate or restarts > 1
        model_rng = self.dropout_mode != "eval" and self.uses_model
        worst: Worst | None = None
        with (
            attack_mode(model, bn=self.bn_mode, dropout=self.dropout_mode),
            forked_global_rng(call.generator, call.x.device) if model_rng else nullcontext(),
            torch.enable_grad(),
        ):
            for _ in range(restarts):
                x_adv = self._finalize(call, self._run(call))
                loss, violated = self._evaluate(call, x_adv) if evaluate else (None, None)
                if worst is None:
                    worst = Worst(x_adv, loss, violated)  # type: ignore[arg-type]
                    continue
                # Worst case per sample: violation first (when an is_violated is given), then loss.
                worst, _ = keep_worst(worst, x_adv, loss, violated)  # type: ignore[arg-type]
                if worst.score is not None and bool(worst.score.all()):
                    break
        assert worst is not None
        x_adv = worst.x.detach()
        if x_adv.dtype != x.dtype:
            x_adv = x_adv.to(x.dtype).clamp_(call.lo, call.hi)
        delta_norm = per_sample_norm(x_adv.float() - call.x.float(), self.norm or "linf")
        #: the last call's gradient health (also on the result): the evaluation's sanity
        #: checks read it after ``atk(...)``, which returns only ``x_adv``.
        self.last_gradients = call.gradients
        return AttackResult(
            x_adv=x_adv,
            violated=worst.score.detach() if worst.score is not None else None,
            loss=worst.loss.detach() if worst.loss is not None else None,
            delta_norm=delta_norm,
            gradients=call.gradients,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        """``x_adv`` (``[B, *]``, detached, like ``x``): :meth:`perturb` with the same arguments,
        without its final evaluation forward."""
        return self.perturb(*args, evaluate=False, **kwargs).x_adv

    def describe(self) -> dict[str, Any]:
        """Settings for reports (every result should say its steps)."""
        return {
            "name": self.name,
            "norm": self.norm,
            "eps": describe_value(self.eps),
            "steps": getattr(self, "steps", 1),
            "step_size": describe_value(self._resolved_step_size_for_report()),
            "restarts": getattr(self, "restarts", 1),
            "random_start": getattr(self, "random_start", False),
            "bounds": list(self.bounds),
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _run(self, call: AttackCall) -> Tensor:
        """Produce one candidate ``x_adv`` (one restart). Must respect budget and bounds."""

    def _n_restarts(self) -> int:
        return 1

    def _default_loss(self) -> LossFn:
        """The loss when the caller gives none: per-sample cross-entropy (a margin attack such
        as FMN overrides it)."""
        return losses.cross_entropy

    def _resolved_step_size_for_report(self) -> Scalar | None:
        return None

    def _validate_call(self, call: AttackCall) -> None:
        """Per-call checks of budgets against the batch (per-sample tensors need ``[B]``)."""
        if self.needs_eps and self.eps is None:
            raise ValueError("eps must be a float or a tensor of shape [B], got None")
        call.budget(self.eps, "eps")

    def input_gradient(self, call: AttackCall, x_adv: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """One forward and one input-gradient backward at ``x_adv`` (:func:`attacks.start.gradient_pass`),
        counted in the call's :class:`GradientStats`.

        Returns ``(grad, loss, violated)``: ``grad`` ``[B, *]`` float (dtype of ``x``, float32
        at least, also under autocast) of ``sum_i loss_i`` wrt ``x_adv``; ``loss`` ``[B]``
        detached; ``violated`` ``Bool[B]`` from the *same* forward (no extra pass), or ``None``.
        With the call's :class:`StartGradient` and ``x_adv`` equal to its point, that gradient
        is returned (a copy) instead of a new pass — the same values.
        """
        start = call.start
        if start is not None and torch.equal(x_adv, start.x):
            grad, loss, nonfinite, zero = start.grad.clone(), start.loss.clone(), start.nonfinite, start.zero
            violated = None if call.is_violated is None else start.violated.clone()  # type: ignore[union-attr]
        else:
            grad, loss, violated, nonfinite, zero, _ = gradient_pass(call, x_adv)
        if call.gradients is None:
            call.gradients = GradientStats(nonfinite.clone(), zero.clone(), 0)
        call.gradients.merge(nonfinite, zero)
        return grad, loss, violated

    def _evaluate(self, call: AttackCall, x_adv: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Loss ``[B]`` (float32) and violation ``Bool[B]`` at ``x_adv`` from one no-grad forward."""
        if call.model is None:
            return None, None
        with torch.no_grad():
            output = call.model(x_adv)
            return call.loss(output).float(), call.violated(output)

    def _iterate(
        self,
        call: AttackCall,
        x_adv: Tensor,
        steps: int,
        step: Callable[[Tensor, Tensor, int], Tensor],
    ) -> Tensor:
        """Run ``steps`` gradient steps from ``x_adv`` with per-sample early stopping.

        ``step(x_adv, grad, t) -> new x_adv`` must return a point inside the threat model and
        the bounds (it may update ``x_adv`` in place). With an ``is_violated``, a sample found
        adversarial by the forward at iterate ``t`` keeps that iterate exactly (its updates are
        masked out), and the loop ends early once every sample is adversarial.
        """
        active: Tensor | None = None
        for t in range(steps):
            grad, _, violated = self.input_gradient(call, x_adv)
            if violated is not None:
                active = ~violated if active is None else active & ~violated
                if not bool(active.any()):
                    break
                frozen = x_adv.clone() if not bool(active.all()) else None
                x_adv = step(x_adv, grad, t)
                if frozen is not None:
                    x_adv = torch.where(call.per_sample(active), x_adv, frozen)
            else:
                x_adv = step(x_adv, grad, t)
        return x_adv

    def _finalize(self, call: AttackCall, x_adv: Tensor) -> Tensor:
        """The L2 budget as measured in floating point (:func:`attacks.projection.fit_l2_budget`);
        nothing to do for L∞, without a budget, or without projection (N-FGSM has no ball)."""
        if self.norm != "l2" or self.eps is None or not getattr(self, "project", True):
            return x_adv
        return fit_l2_budget(call, x_adv, call.budget(self.eps, "eps"))  # type: ignore[arg-type]
