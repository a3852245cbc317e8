"""One attack call: what every attack's ``_run`` receives (:class:`AttackCall`: the clean input,
bounds, loss and violation test, generator, checked once), what a call returns
(:class:`AttackResult`), and :func:`prepare_call`, the checks that turn a caller's arguments
into a call.

Conventions (shapes): ``x`` is ``[B, *]`` with the batch first (``[B, C, H, W]`` or
``[B, C, D, H, W]``); per-sample quantities (``eps``, ``step_size``, losses, violation flags) are
``[B]``; values of ``x`` and ``x_adv`` lie in ``bounds = (lo, hi)``, which are arbitrary (e.g.
``(-3, 5)`` for z-scored MRI) and never silently replaced by ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from .checks import check_loss, check_scalar, check_violated
from .precision import warn_if_fp16_autocast
from .tree import clone_inference

if TYPE_CHECKING:
    from .start import GradientStats, StartGradient

LossFn = Callable[[Any, Any], Tensor]
ViolationFn = Callable[[Any, Any], Tensor]
Model = Callable[[Tensor], Any]
Scalar = float | Tensor
#: the threat model of a budget: L∞ or L2 ball
Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")


@dataclass
class AttackResult:
    """What :meth:`attacks.Attack.perturb` returns.

    Attributes:
        x_adv: ``[B, *]`` adversarial (or noisy) input, detached, same dtype/device as ``x``.
        violated: ``Bool[B]``, whether each sample is adversarial at ``x_adv`` by ``is_violated``
            (``None`` when no ``is_violated`` was given).
        loss: ``[B]`` float32 per-sample ``loss_fn`` at ``x_adv``, detached (``None`` only for a
            noise called without a model).
        delta_norm: ``[B]`` norm of ``x_adv - x`` in the attack's norm (L∞ for noises and
            for attacks without a norm, L2 for CW).
        gradients: per-sample input-gradient health over the call, see
            :class:`attacks.start.GradientStats` (``None`` for attacks that never took a gradient).
    """

    x_adv: Tensor
    violated: Tensor | None
    loss: Tensor | None
    delta_norm: Tensor
    gradients: GradientStats | None = None


@dataclass
class AttackCall:
    """Everything one call needs, checked and converted once: what :meth:`attacks.Attack._run`
    of every attack receives (``x`` the clean input ``[B, *]``, ``lo``/``hi`` the bounds, the
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
    #: the input gradient at ``x`` computed already (:class:`attacks.StartGradient`), when it applies
    start: StartGradient | None = None

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def per_sample(self, value: Scalar) -> Scalar:
        """A float stays a float; a ``[B]`` tensor becomes ``[B, 1, ..., 1]`` to broadcast."""
        if isinstance(value, Tensor):
            return value.view(-1, *([1] * (self.x.ndim - 1)))
        return value

    def budget(self, value: Scalar | None, name: str) -> Scalar | None:
        """A float / ``[B]`` budget-like setting (``eps``, ``step_size``…) checked against this
        batch; a tensor moves to ``x``'s device and dtype; ``None`` stays ``None``."""
        return check_scalar(name, value, batch=self.batch, like=self.x, allow_none=True)

    def budget_tensor(self, value: Scalar, name: str) -> Tensor:
        """:meth:`budget` as a ``[B]`` tensor in ``x``'s dtype (a float repeated per sample)."""
        v = self.budget(value, name)
        if v is None:
            raise ValueError(f"{name} must be a float or a tensor of shape [B], got None")
        if isinstance(v, Tensor):
            return v
        return torch.full((self.batch,), v, device=self.x.device, dtype=self.x.dtype)

    def rand(self, kind: Literal["uniform", "normal"], shape: Sequence[int] | None = None) -> Tensor:
        """``torch.rand`` / ``randn`` of ``shape`` (default ``x.shape``) from the call's
        generator, sampled on the generator's device and moved to ``x``'s."""
        fn = torch.rand if kind == "uniform" else torch.randn
        size = tuple(self.x.shape if shape is None else shape)
        g = self.generator
        if g is None:
            return fn(size, device=self.x.device, dtype=self.x.dtype)
        return fn(size, generator=g, device=g.device, dtype=self.x.dtype).to(self.x.device)

    def loss(self, output: Any) -> Tensor:
        """``loss_fn(output, target)``, checked to be ``[B]``."""
        return check_loss(self.loss_fn(output, self.target), self.batch)

    def violated(self, output: Any) -> Tensor | None:
        """``is_violated(output, target)`` as ``Bool[B]``, or ``None`` without a test."""
        if self.is_violated is None:
            return None
        return check_violated(self.is_violated(output, self.target), self.batch, self.x.device)


def prepare_call(
    model: Model | None,
    x: Tensor,
    target: Any,
    loss_fn: LossFn,
    is_violated: ViolationFn | None,
    generator: torch.Generator | None,
    bounds: tuple[float, float],
    who: str,
    needs_model: bool = True,
) -> AttackCall:
    """Check a caller's arguments and make the :class:`AttackCall` (``who`` names the attack in
    errors).

    Calling contexts: inside ``torch.inference_mode()`` it raises, saying what to do; inference
    *tensors* handed over outside it (a batch from such a loop) are cloned — ``x`` and every
    tensor inside ``target``; half-precision ``x`` is attacked in float32 (the caller casts
    back); under float16 autocast it warns (:mod:`attacks.precision`).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{who} needs gradients but was called inside "
            "torch.inference_mode() (Lightning's validation/test loops use it). Wrap the "
            "call in `with torch.inference_mode(False), torch.enable_grad():` and pass "
            "x.clone() (and cloned targets), or build the Trainer with inference_mode=False."
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    warn_if_fp16_autocast(x, who)  # bf16 is fine, fp16 underflows
    if x.ndim < 2:
        raise ValueError(f"x must be batched, [B, *] with ndim >= 2, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    if model is None and needs_model:
        raise ValueError(f"{who} needs a model, got model=None")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    lo, hi = bounds
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
    return AttackCall(model=model, x=work, target=clone_inference(target), loss_fn=loss_fn,
                      is_violated=is_violated, generator=generator, lo=lo, hi=hi)
