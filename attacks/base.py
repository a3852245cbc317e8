"""The attack base class: everything that is the same for every attack.

A concrete attack only says how to produce ``x_adv`` from the clean input (``_run``); the base
owns argument checking, the train/eval policy (:func:`attacks.mode.attack_mode`), input
gradients (``torch.autograd.grad`` wrt the input only, so parameter ``.grad`` is never
touched), projection onto the threat model and the valid range, per-sample early stopping,
random restarts and the final evaluation.

Conventions (shapes): ``x`` is ``[B, *]`` with the batch first (``[B, C, H, W]`` or
``[B, C, D, H, W]``); per-sample quantities (``eps``, ``step_size``, losses, violation flags) are
``[B]``; values of ``x`` and ``x_adv`` lie in ``bounds = (lo, hi)``, which are arbitrary (e.g.
``(-3, 5)`` for z-scored MRI) and never silently replaced by ``[0, 1]``.

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

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import losses
from .mode import attack_mode, check_mode
from .precision import warn_if_fp16_autocast
from .tree import tree_leaves, tree_map
from .worst_case import Worst, keep_worst

LossFn = Callable[[Any, Any], Tensor]
ViolationFn = Callable[[Any, Any], Tensor]
Model = Callable[[Tensor], Any]
Scalar = float | Tensor

NORMS = ("linf", "l2")


@dataclass
class AttackResult:
    """What :meth:`Attack.perturb` returns.

    Attributes:
        x_adv: ``[B, *]`` adversarial (or noisy) input, detached, same dtype/device as ``x``.
        violated: ``Bool[B]``, whether each sample is adversarial at ``x_adv`` by ``is_violated``
            (``None`` when no ``is_violated`` was given).
        loss: ``[B]`` float32 per-sample ``loss_fn`` at ``x_adv``, detached (``None`` only for a
            noise called without a model).
        delta_norm: ``[B]`` norm of ``x_adv - x`` in the attack's norm (L∞ for noises and
            for attacks without a norm, L2 for CW).
        gradients: per-sample input-gradient health over the call, see
            :class:`GradientStats` (``None`` for attacks that never took a gradient).
    """

    x_adv: Tensor
    violated: Tensor | None
    loss: Tensor | None
    delta_norm: Tensor
    gradients: GradientStats | None = None


@dataclass
class GradientStats:
    """Input-gradient health of one attack call, per sample (a gradient-masking check in the
    spirit of AutoAttack's ``checks.py``: reported, never repaired silently).

    Attributes:
        nonfinite: ``Bool[B]``, some step's gradient had a NaN/inf entry (those entries were
            replaced by 0 so the iterate stays finite — the attack then had no information).
        zero: ``Bool[B]``, every gradient the attack took for this sample was exactly zero
            (e.g. a quantising first layer or a saturated softmax: the attack cannot move).
        evaluations: number of input-gradient evaluations of the call (forward + backward).
    """

    nonfinite: Tensor
    zero: Tensor
    evaluations: int = 0

    def merge(self, nonfinite: Tensor, zero: Tensor) -> None:
        self.nonfinite |= nonfinite
        self.zero &= zero
        self.evaluations += 1


@dataclass
class AttackCall:
    """Everything one call needs, checked and converted once: what :meth:`Attack._run` of
    every attack receives (``x`` the clean input ``[B, *]``, ``lo``/``hi`` the bounds, the
    loss / violation callables and the generator)."""

    model: Model | None
    x: Tensor  # clean input, detached, work dtype (float32/float64)
    target: Any
    loss_fn: LossFn
    is_violated: ViolationFn | None
    generator: torch.Generator | None
    lo: float
    hi: float
    gradients: GradientStats | None = None
    #: the input gradient at ``x`` computed already (:class:`StartGradient`), when it applies
    start: StartGradient | None = None

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def per_sample(self, value: Scalar) -> Scalar:
        """A float stays a float; a ``[B]`` tensor becomes ``[B, 1, ..., 1]`` to broadcast."""
        if isinstance(value, Tensor):
            return value.view(-1, *([1] * (self.x.ndim - 1)))
        return value


_Call = AttackCall  # the name the attacks used before it was public


@dataclass
class StartGradient:
    """The input gradient at a clean batch ``x``, computed once (:func:`start_gradient`) and
    handed to attack calls on the same ``x`` (``atk(..., start=...)``), which then skip that
    forward + backward: the first step of every attack that starts at ``x`` itself (PGD / BIM /
    FGSM / MI-FGSM / APGD without random start) takes the gradient at ``x``, and for a fixed
    model, loss and input it is the same whatever the budget. An evaluation at several ε
    computes it once, from the same forward that gives the clean output.

    A call uses it only where it computes exactly the same thing: the same ``model`` object and
    ``loss_fn`` object (and ``is_violated``, when the call has one), eval-mode BatchNorm and
    Dropout for both (deterministic, per-sample forwards), an iterate equal to ``x`` element by
    element, and the same shape and dtype. Otherwise the attack ignores it and computes the
    gradient itself, so the result never depends on it — only the cost does.

    Attributes (``B`` the batch): ``x`` ``[B, *]`` the point (work dtype, as the attacks see
    it); ``grad`` ``[B, *]`` the gradient of ``sum_i loss_i`` wrt ``x`` (non-finite entries
    already replaced by 0, as :meth:`Attack.input_gradient` does); ``loss`` ``[B]``;
    ``nonfinite`` / ``zero`` ``Bool[B]`` its gradient health; ``violated`` ``Bool[B]`` (only when
    computed with an ``is_violated``); ``model``, ``loss_fn``, ``is_violated`` what it was computed
    with.
    """

    x: Tensor
    grad: Tensor
    loss: Tensor
    nonfinite: Tensor
    zero: Tensor
    model: Any
    loss_fn: LossFn
    is_violated: ViolationFn | None = None
    violated: Tensor | None = None

    def repeat(self, k: int) -> StartGradient:
        """The start of ``x`` repeated ``k`` times along the batch (``[k·B, *]``): for one call
        over ``torch.cat([x] * k)``."""
        def cat(t: Tensor | None) -> Tensor | None:
            return None if t is None else torch.cat([t] * k)

        return StartGradient(cat(self.x), cat(self.grad), cat(self.loss), cat(self.nonfinite),  # type: ignore[arg-type]
                             cat(self.zero), self.model, self.loss_fn, self.is_violated,  # type: ignore[arg-type]
                             cat(self.violated))

    def rows(self, idx: Tensor) -> StartGradient:
        """The start of the samples ``idx`` (``LongTensor[k]``) only (``[k, *]``): for a call
        over ``x[idx]`` (a per-sample forward makes each row's gradient its own)."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return StartGradient(pick(self.x), pick(self.grad), pick(self.loss), pick(self.nonfinite),  # type: ignore[arg-type]
                             pick(self.zero), self.model, self.loss_fn, self.is_violated,  # type: ignore[arg-type]
                             pick(self.violated))

    def applies_to(self, call: AttackCall, bn_mode: str, dropout_mode: str) -> bool:
        """Whether a call (of an attack with these modes) computes exactly this gradient at
        ``x`` (the values of its iterate are compared when it takes the gradient)."""
        return (self.model is call.model and self.loss_fn is call.loss_fn
                and (call.is_violated is None or (self.violated is not None and self.is_violated is call.is_violated))
                and (bn_mode, dropout_mode) == ("eval", "eval")
                and self.x.shape == call.x.shape and self.x.dtype == call.x.dtype
                and self.x.device == call.x.device)


def per_sample_norm(delta: Tensor, norm: str) -> Tensor:
    """``[B, *] -> [B]``: L∞ or L2 norm of each sample."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return torch.linalg.vector_norm(flat, dim=1)


def _fmt(value: Scalar | None) -> Any:
    """A scalar budget for reports: float, or summary of a per-sample tensor."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return float(value)
        v = value.detach().float()
        return {"per_sample": True, "mean": float(v.mean()), "min": float(v.min()),
                "max": float(v.max())}
    return float(value)


def _clone_inference(obj: Any) -> Any:
    """Clone inference tensors (e.g. a Lightning batch after leaving ``inference_mode``) so
    autograd can save them; a structure without any is returned as is (no copy)."""
    if not any(t.is_inference() for t in tree_leaves(obj)):
        return obj
    return tree_map(lambda t: t.clone() if t.is_inference() else t, obj)


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
    last_gradients: GradientStats | None = None

    def __init__(
        self,
        eps: Scalar | None,
        norm: str | None = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: str = "eval",
        dropout_mode: str = "eval",
    ) -> None:
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.eps = eps
        _check_scalar("eps", eps, allow_none=True)
        self.bounds = _check_bounds(bounds)
        self.bn_mode = check_mode(bn_mode, "bn_mode")
        self.dropout_mode = check_mode(dropout_mode, "dropout_mode")

    # ------------------------------------------------------------------ public API
    def __call__(
        self,
        model: Model | None,
        x: Tensor,
        target: Any = None,
        loss_fn: LossFn | None = None,
        is_violated: ViolationFn | None = None,
        generator: torch.Generator | None = None,
        *,
        start: StartGradient | None = None,
    ) -> Tensor:
        """Return ``x_adv`` (``[B, *]``, detached, like ``x``). See :meth:`perturb`."""
        return self._perturb(model, x, target, loss_fn, is_violated, generator, evaluate=False,
                             start=start).x_adv

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
                from :func:`start_gradient`); used where it is exactly what the attack would
                compute (see there), ignored otherwise. Changes the cost, never the result.
        """
        return self._perturb(model, x, target, loss_fn, is_violated, generator, evaluate=True, start=start)

    def describe(self) -> dict[str, Any]:
        """Settings for reports (every result should say its steps)."""
        return {
            "name": self.name,
            "norm": self.norm,
            "eps": _fmt(self.eps),
            "steps": getattr(self, "steps", 1),
            "step_size": _fmt(self._resolved_step_size_for_report()),
            "restarts": getattr(self, "restarts", 1),
            "random_start": getattr(self, "random_start", False),
            "bounds": list(self.bounds),
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _run(self, call: _Call) -> Tensor:
        """Produce one candidate ``x_adv`` (one restart). Must respect budget and bounds."""

    def _n_restarts(self) -> int:
        return 1

    def _default_loss(self) -> LossFn:
        """The loss when the caller gives none: per-sample cross-entropy (a margin attack such
        as FMN overrides it)."""
        return losses.cross_entropy

    def _resolved_step_size_for_report(self) -> Scalar | None:
        return None

    def input_gradient(
        self, call: _Call, x_adv: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One forward and one input-gradient backward at ``x_adv``.

        Returns ``(grad, loss, violated)``: ``grad`` ``[B, *]`` float (dtype of ``x``, float32
        at least, also under autocast) of ``sum_i loss_i`` wrt ``x_adv``; ``loss`` ``[B]``
        detached; ``violated`` ``Bool[B]`` from the *same* forward (no extra pass), or ``None``.
        Parameter gradients are never computed: ``torch.autograd.grad`` wrt the input only.
        With the call's :class:`StartGradient` and ``x_adv`` equal to its point, that gradient
        is returned (a copy) instead of a new pass — the same values.
        """
        start = call.start
        if start is not None and torch.equal(x_adv, start.x):
            grad, loss, nonfinite, zero = start.grad.clone(), start.loss.clone(), start.nonfinite, start.zero
            violated = None if call.is_violated is None else start.violated.clone()  # type: ignore[union-attr]
        else:
            grad, loss, violated, nonfinite, zero, _ = self._gradient_pass(call, x_adv)
        if call.gradients is None:
            call.gradients = GradientStats(nonfinite.clone(), zero.clone(), 0)
        call.gradients.merge(nonfinite, zero)
        return grad, loss, violated

    def _gradient_pass(self, call: _Call, x_adv: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Any]:
        """The forward + input-gradient backward of :meth:`input_gradient`: ``(grad, loss,
        violated, nonfinite, zero, output)`` with ``nonfinite`` / ``zero`` ``Bool[B]`` the
        gradient health and ``output`` the model's output, detached."""
        xv = x_adv.detach().requires_grad_(True)
        output = call.model(xv)  # type: ignore[misc]
        loss = self._check_loss(call.loss_fn(output, call.target), call.batch)
        (grad,) = torch.autograd.grad(loss.float().sum(), xv)
        output = tree_map(Tensor.detach, output)
        violated = None
        if call.is_violated is not None:
            with torch.no_grad():
                violated = self._check_violated(call.is_violated(output, call.target), call)
        if grad.dtype != xv.dtype:  # autograd already matches x's dtype; guard, never bf16
            grad = grad.to(xv.dtype)
        # A NaN/inf gradient would poison x_adv; treat it as "no information" instead — but
        # count it (and all-zero gradients) per sample, so gradient masking is reported.
        flat = grad.detach().reshape(grad.shape[0], -1)
        nonfinite = ~torch.isfinite(flat).all(dim=1)
        if bool(nonfinite.any()):
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            flat = grad.reshape(grad.shape[0], -1)
        zero = ~(flat != 0).any(dim=1) if flat.shape[1] else torch.ones_like(nonfinite)
        return grad, loss.detach().float(), violated, nonfinite, zero, output

    def _evaluate(self, call: _Call, x_adv: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Loss ``[B]`` and violation ``Bool[B]`` at ``x_adv`` from one no-grad forward."""
        if call.model is None:
            return None, None
        with torch.no_grad():
            output = call.model(x_adv)
            loss = self._check_loss(call.loss_fn(output, call.target), call.batch).float()
            violated = None
            if call.is_violated is not None:
                violated = self._check_violated(call.is_violated(output, call.target), call)
        return loss, violated

    def _iterate(
        self,
        call: _Call,
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

    # ------------------------------------------------------------------ projection helpers
    def _eps_tensor(self, call: _Call, value: Scalar | None, name: str) -> Scalar | None:
        """Check a float / ``[B]`` budget against this batch; tensors move to ``x``'s device."""
        return _check_scalar(name, value, batch=call.batch, like=call.x, allow_none=True)

    def _linf_box(self, call: _Call, eps: Scalar) -> tuple[Tensor, Tensor]:
        """Element-wise ``[lower, upper]`` = L∞ ball ∩ bounds, computed once per call so each
        step projects with a single clamp."""
        e = call.per_sample(eps)
        x = call.x
        lower = (x - e).clamp_(min=call.lo)
        upper = (x + e).clamp_(max=call.hi)
        # x ± eps is rounded to the float grid and may land half an ulp outside the ball (up to
        # ~5e-7 at |x| = 8, more for larger intensities): step such corners one ulp inwards,
        # so |x_adv - x| <= eps exactly as the caller will compute it.
        upper = torch.where(upper - x > e, torch.nextafter(upper, x), upper)
        lower = torch.where(x - lower > e, torch.nextafter(lower, x), lower)
        return lower, upper

    @staticmethod
    def _project_l2(call: _Call, x_adv: Tensor, eps: Scalar) -> Tensor:
        """Project onto the L2 ball of radius ``eps`` around ``x``, then clamp to bounds
        (clamping only shrinks each coordinate of ``x_adv - x``, so the ball still holds)."""
        delta = x_adv - call.x
        n = per_sample_norm(delta, "l2")
        e = eps if isinstance(eps, Tensor) else torch.full_like(n, eps)
        factor = (e / n.clamp_min(torch.finfo(n.dtype).tiny)).clamp_(max=1.0)
        return (call.x + delta * call.per_sample(factor)).clamp_(call.lo, call.hi)

    def _finalize(self, call: _Call, x_adv: Tensor) -> Tensor:
        """Make the L2 budget hold *as measured* in floating point.

        ``x + delta`` is rounded per coordinate to the float grid around ``x``; for a small
        ``eps`` spread over many pixels of large magnitude (z-scored MRI, CT units) the rounding
        adds up to more than the 1e-6 tolerance, and rescaling ``delta`` by less than an ulp
        changes nothing. For samples measured outside the ball, rescale to radius
        ``eps - ‖u‖``, where ``u_i >= |rounding error of coordinate i|``; by the triangle
        inequality the rounded result is then inside. No-op (one norm) in the usual case.
        """
        if self.norm != "l2" or self.eps is None or not getattr(self, "project", True):
            return x_adv  # (an attack without projection, N-FGSM, has no ball to hold)
        eps = self._eps_tensor(call, self.eps, "eps")
        d = x_adv - call.x
        n = per_sample_norm(d, "l2")
        e = eps if isinstance(eps, Tensor) else torch.full_like(n, eps)
        over = n > e
        if not bool(over.any()):
            return x_adv
        unit = torch.finfo(d.dtype).eps / 2  # relative rounding bound of one float op
        rounding = per_sample_norm(call.x.abs() + d.abs(), "l2") * (2 * unit)
        radius = (e - rounding).clamp_(min=0)
        factor = (radius / n.clamp_min(torch.finfo(n.dtype).tiny)).clamp_(max=1.0)
        fixed = (call.x + d * call.per_sample(factor)).clamp_(call.lo, call.hi)
        return torch.where(call.per_sample(over), fixed, x_adv)

    def _rand(self, call: _Call, kind: str, shape: Sequence[int] | None = None) -> Tensor:
        """``torch.rand``/``randn`` of ``shape`` (default ``x.shape``) from the call's
        generator, sampled on the generator's device and moved to ``x``'s."""
        fn = torch.rand if kind == "uniform" else torch.randn
        shape = tuple(call.x.shape if shape is None else shape)
        g = call.generator
        if g is None:
            return fn(shape, device=call.x.device, dtype=call.x.dtype)
        return fn(shape, generator=g, device=g.device, dtype=call.x.dtype).to(call.x.device)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_loss(loss: Any, batch: int) -> Tensor:
        if not isinstance(loss, Tensor) or loss.shape != (batch,):
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a per-sample loss of shape [B]=[{batch}], got {got}; "
                "do not reduce over the batch (see attacks.losses)"
            )
        return loss

    @staticmethod
    def _check_violated(violated: Any, call: _Call) -> Tensor:
        if not isinstance(violated, Tensor) or violated.shape != (call.batch,):
            got = tuple(violated.shape) if isinstance(violated, Tensor) else type(violated).__name__
            raise ValueError(
                f"is_violated must return a bool tensor of shape [B]=[{call.batch}], got {got}"
            )
        return violated.to(device=call.x.device, dtype=torch.bool)

    def _prepare(
        self,
        model: Model | None,
        x: Tensor,
        target: Any,
        loss_fn: LossFn | None,
        is_violated: ViolationFn | None,
        generator: torch.Generator | None,
    ) -> _Call:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs gradients but was called inside "
                "torch.inference_mode() (Lightning's validation/test loops use it). Wrap the "
                "call in `with torch.inference_mode(False), torch.enable_grad():` and pass "
                "x.clone() (and cloned targets), or build the Trainer with inference_mode=False."
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        warn_if_fp16_autocast(x, type(self).__name__)  # bf16 is fine, fp16 underflows
        if x.ndim < 2:
            raise ValueError(f"x must be batched, [B, *] with ndim >= 2, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        if model is None and self.uses_model:
            raise ValueError(f"{type(self).__name__} needs a model, got model=None")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
        lo, hi = self.bounds
        if x.numel():
            xmin, xmax = torch.aminmax(x.detach())
            xmin, xmax = float(xmin), float(xmax)
            if not (xmin >= lo - 1e-6 and xmax <= hi + 1e-6):  # also catches NaN
                raise ValueError(
                    f"x has values in [{xmin:.6g}, {xmax:.6g}], outside bounds=({lo}, {hi}); "
                    "pass the attack the bounds of your data (e.g. bounds=(-3, 5) for z-scored "
                    "images) — normalization belongs inside the model"
                )
        # Gradients wrt half-precision inputs lose most of a small step: work in float32.
        work = x.detach()
        if work.dtype in (torch.float16, torch.bfloat16):
            work = work.float()
        elif work.is_inference():
            work = work.clone()
        return _Call(
            model=model,
            x=work,
            target=_clone_inference(target),
            loss_fn=self._default_loss() if loss_fn is None else loss_fn,
            is_violated=is_violated,
            generator=generator,
            lo=lo,
            hi=hi,
        )

    # ------------------------------------------------------------------ driver
    def _perturb(
        self,
        model: Model | None,
        x: Tensor,
        target: Any,
        loss_fn: LossFn | None,
        is_violated: ViolationFn | None,
        generator: torch.Generator | None,
        evaluate: bool,
        start: StartGradient | None = None,
    ) -> AttackResult:
        call = self._prepare(model, x, target, loss_fn, is_violated, generator)
        self._validate_call(call)
        if start is not None:
            if not isinstance(start, StartGradient):
                raise TypeError(f"start must be a StartGradient (attacks.start_gradient) or None, got {type(start)}")
            if start.applies_to(call, self.bn_mode, self.dropout_mode):
                call.start = start
        restarts = self._n_restarts()
        # The final forward is only needed to rank restarts or to report loss/violation.
        evaluate = evaluate or restarts > 1
        best_x: Tensor | None = None
        best_loss: Tensor | None = None
        best_violated: Tensor | None = None
        with (
            attack_mode(model, bn=self.bn_mode, dropout=self.dropout_mode),
            _model_rng(call, self.dropout_mode != "eval" and self.uses_model),
            torch.enable_grad(),
        ):
            for r in range(restarts):
                x_adv = self._finalize(call, self._run(call))
                loss, violated = self._evaluate(call, x_adv) if evaluate else (None, None)
                if r == 0:
                    best_x, best_loss, best_violated = x_adv, loss, violated
                    continue
                # Worst case per sample: violation first (when an is_violated is given), then loss.
                worst, _ = keep_worst(Worst(best_x, best_loss, best_violated), x_adv, loss, violated)  # type: ignore[arg-type]
                best_x, best_loss, best_violated = worst
                if best_violated is not None and bool(best_violated.all()):
                    break
        assert best_x is not None
        x_adv = best_x.detach()
        if x_adv.dtype != x.dtype:
            x_adv = x_adv.to(x.dtype).clamp_(call.lo, call.hi)
        delta_norm = per_sample_norm(x_adv.float() - call.x.float(), self.norm or "linf")
        #: the last call's gradient health (also on the result): the evaluation's sanity
        #: checks read it after ``atk(...)``, which returns only ``x_adv``.
        self.last_gradients = call.gradients
        return AttackResult(
            x_adv=x_adv,
            violated=best_violated.detach() if best_violated is not None else None,
            loss=best_loss.detach() if best_loss is not None else None,
            delta_norm=delta_norm,
            gradients=call.gradients,
        )

    def _validate_call(self, call: _Call) -> None:
        """Per-call checks of budgets against the batch (per-sample tensors need ``[B]``)."""
        self._eps_tensor(call, self.eps, "eps")


class _GradientProbe(Attack):
    """The base machinery without an attack: lets :func:`input_gradient` reuse its checks."""

    name = "gradient_probe"

    def _run(self, call: _Call) -> Tensor:
        return call.x


def input_gradient(
    model: Model,
    x: Tensor,
    target: Any = None,
    loss_fn: LossFn | None = None,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[Tensor, Tensor]:
    """Gradient of ``sum_i loss_fn(model(x), target)_i`` wrt ``x`` alone, and the loss ``[B]``.

    ``x``: ``[B, *]``; ``bounds`` only checks that ``x`` lies inside them. The same primitive the
    attacks use (``torch.autograd.grad`` wrt the input, so parameter
    ``.grad`` stays untouched; grad in ``x``'s dtype — float32 for float32 ``x`` even under
    autocast). Runs in the model's current mode; wrap in :func:`attack_mode` to choose one.
    """
    atk = _GradientProbe(eps=None, norm=None, bounds=bounds)  # bounds: only range-checks x
    call = atk._prepare(model, x, target, loss_fn, None, None)
    with torch.enable_grad():
        grad, loss, _ = atk.input_gradient(call, call.x)
    return grad, loss


def start_gradient(
    model: Model,
    x: Tensor,
    target: Any = None,
    loss_fn: LossFn | None = None,
    is_violated: ViolationFn | None = None,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[StartGradient, Any]:
    """One forward of ``x`` (``[B, *]``) with its input-gradient backward, exactly as an attack
    takes it at ``x`` (eval-mode BatchNorm / Dropout, :func:`attack_mode`): the
    :class:`StartGradient` to hand to attack calls on the same ``x`` (``atk(model, x, target,
    loss_fn, start=...)``), and the model's output at ``x``, detached (the clean output: a
    caller that needs it anyway gets it from the same forward; containers come back as
    :func:`attacks.tree.tree_map` rebuilds them — plain dict / list / tuple — as a
    ``is_violated`` sees them during an attack).

    ``loss_fn`` default: per-sample cross-entropy, as the attacks'; give the very object the
    attack calls will get (the calls compare it by identity). ``bounds`` only range-checks
    ``x``. Parameter ``.grad`` stays untouched.
    """
    atk = _GradientProbe(eps=None, norm=None, bounds=bounds)
    call = atk._prepare(model, x, target, loss_fn, is_violated, None)
    with attack_mode(model, bn="eval", dropout="eval"), torch.enable_grad():  # type: ignore[arg-type]
        grad, loss, violated, nonfinite, zero, output = atk._gradient_pass(call, call.x)
    start = StartGradient(call.x, grad, loss, nonfinite, zero, model, call.loss_fn, is_violated, violated)
    return start, output


@contextmanager
def _model_rng(call: _Call, needed: bool) -> Iterator[None]:
    """Make the model's own randomness (train-mode Dropout draws from the global RNG)
    reproducible from the call's generator: inside, the global RNG of ``x``'s device is seeded
    from ``generator``; outside, its state is exactly as before (``fork_rng``), so the attack
    neither depends on nor advances the caller's global stream. No-op without a generator."""
    if not needed or call.generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=call.generator))
    dev = call.x.device
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if (
        dev.type == "cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)
        yield


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bounds must be a pair (lo, hi) of floats, got {bounds!r}") from err
    if not lo < hi:  # also rejects NaN; ±inf is allowed (no clamp on that side)
        raise ValueError(f"bounds must satisfy lo < hi, got bounds=({lo}, {hi})")
    return lo, hi


def _check_count(name: str, value: Any) -> int:
    """An iteration or restart count: an ``int >= 1`` (``bool`` is refused, though it is an int)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_scalar(
    name: str,
    value: Any,
    batch: int | None = None,
    like: Tensor | None = None,
    allow_none: bool = False,
) -> Any:
    """Check a budget-like argument: a non-negative finite float, or a ``[B]`` tensor of them.

    With ``batch``/``like`` (at call time) a tensor is checked against the batch size and moved
    to ``like``'s device and dtype; a 0-d tensor becomes a float.
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a float or a tensor of shape [B], got None")
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return _check_scalar(name, float(value), batch, like, allow_none)
        if value.ndim != 1 or (batch is not None and value.shape[0] != batch):
            want = f"[B]=[{batch}]" if batch is not None else "[B]"
            raise ValueError(
                f"{name} must be a float or a per-sample tensor of shape {want}, "
                f"got shape {tuple(value.shape)}"
            )
        v = value.detach() if value.is_floating_point() else value.detach().float()
        if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0 per sample, got {v.tolist()}")
        if like is not None:
            v = v.to(device=like.device, dtype=like.dtype)
        return v
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float or a tensor of shape [B], got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def scale(value: Scalar, factor: float) -> Scalar:
    """``factor * value`` for a float or a ``[B]`` tensor (for step-size defaults)."""
    return value * factor


# Public names of the argument checks, for attacks defined outside this package.
check_count = _check_count
check_scalar = _check_scalar
