"""The threat model around a call's clean input ``x``: per-sample norms, the L∞ box and the L2
projection (budget ball ∩ ``bounds``), the random start inside a ball and the steepest-ascent
step direction that PGD and APGD share, and the last step of every L2 attack, which makes the
budget hold as measured in floating point.

Budgets are a float or a per-sample ``[B]`` tensor (checked with
:meth:`attacks.AttackCall.budget`); ``x`` and every result are ``[B, *]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from .call import AttackCall, Norm, Scalar

__all__ = ["fit_l2_budget", "linf_box", "per_sample_norm", "project_l2", "random_start",
           "steepest_direction"]


def per_sample_norm(delta: Tensor, norm: Norm) -> Tensor:
    """``[B, *] -> [B]``: L∞ or L2 norm of each sample."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return torch.linalg.vector_norm(flat, dim=1)


def linf_box(call: AttackCall, eps: Scalar) -> tuple[Tensor, Tensor]:
    """Element-wise ``[lower, upper]`` (each ``[B, *]``) = L∞ ball of radius ``eps`` ∩ bounds,
    computed once per call so each step projects with a single clamp."""
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


def project_l2(call: AttackCall, x_adv: Tensor, eps: Scalar) -> Tensor:
    """Project ``x_adv`` onto the L2 ball of radius ``eps`` around ``x``, then clamp to bounds
    (clamping only shrinks each coordinate of ``x_adv - x``, so the ball still holds).

    In place: ``x_adv`` is overwritten and returned (pass a tensor of your own, e.g. a fresh
    ``x + delta``); attacks that project twice per step allocate nothing."""
    delta = x_adv.sub_(call.x)
    n = per_sample_norm(delta, "l2")
    e = eps if isinstance(eps, Tensor) else torch.full_like(n, eps)
    factor = (e / n.clamp_min(torch.finfo(n.dtype).tiny)).clamp_(max=1.0)
    return delta.mul_(call.per_sample(factor)).add_(call.x).clamp_(call.lo, call.hi)


def random_start(call: AttackCall, norm: Norm, radius: Scalar,
                 distribution: Literal["uniform", "normal"] = "uniform") -> Tensor:
    """``x`` plus a random perturbation of ``radius`` (float or ``[B]``), not yet projected.

    ``"uniform"``: L∞ — uniform in the cube ``[-r, r]^n``; L2 — a uniformly random direction
    scaled to norm *exactly* ``r`` (in high dimension the uniform distribution on the ball
    concentrates at its surface anyway, and AMAT needs a start of a prescribed norm).
    ``"normal"``: ``r·N(0, 1)`` per coordinate (TRADES' start, Zhang et al. 2019). Draws from
    the call's generator."""
    r = call.per_sample(radius)
    if distribution == "normal":
        return call.x + call.rand("normal") * r
    if norm == "linf":
        noise = call.rand("uniform").mul_(2).sub_(1)
    else:
        noise = call.rand("normal")
        n = per_sample_norm(noise, "l2").clamp_min(torch.finfo(noise.dtype).tiny)
        noise.div_(call.per_sample(n))
    return call.x + noise * r


def steepest_direction(norm: Norm) -> Callable[[Tensor], Tensor]:
    """The steepest-ascent step direction of a raw input gradient ``[B, *]`` for ``norm``: its
    sign (L∞) or its per-sample L2-normalised version (L2). In place on the gradient (a fresh
    tensor from :func:`attacks.start.gradient_pass`)."""
    return _sign if norm == "linf" else _l2_normalise


def _sign(grad: Tensor) -> Tensor:
    return grad.sign_()


def _l2_normalise(grad: Tensor) -> Tensor:
    n = per_sample_norm(grad, "l2").clamp_min(torch.finfo(grad.dtype).tiny)
    return grad.div_(n.view(-1, *([1] * (grad.ndim - 1))))


def fit_l2_budget(call: AttackCall, x_adv: Tensor, eps: Scalar) -> Tensor:
    """Make the L2 budget ``eps`` hold *as measured* in floating point.

    ``x + delta`` is rounded per coordinate to the float grid around ``x``; for a small
    ``eps`` spread over many pixels of large magnitude (z-scored MRI, CT units) the rounding
    adds up to more than the 1e-6 tolerance, and rescaling ``delta`` by less than an ulp
    changes nothing. For samples measured outside the ball, rescale to radius
    ``eps - ‖u‖``, where ``u_i >= |rounding error of coordinate i|``; by the triangle
    inequality the rounded result is then inside. No-op (one norm) in the usual case.
    """
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
