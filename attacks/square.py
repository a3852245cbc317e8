"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"): score-based, no gradients at all.

Random search over perturbations at the vertices of the threat model. Each query proposes a
change of the current perturbation inside one random square window (a cube for 3-D inputs)
per sample, and keeps it only where it raises that sample's loss. The window's share ``p`` of
the image starts at ``p_init`` and is halved on the paper's schedule (iterations 10, 50, 200,
500, 1000, 2000, 4000, 6000, 8000 of 10 000, rescaled to ``steps``).

* **L∞** (the paper's Algorithm 2 with its L∞ sampling distribution): start from vertical
  stripes ``±ε`` (a random sign per channel and column); a proposal picks one window position
  per sample and, in *every* channel, sets the window to ``±ε`` with that channel's own random
  sign (the paper adds ``ρ_c·2ε`` with ``ρ_c`` uniform on ``{−1, +1}`` per channel ``c`` and
  projects onto the ε-ball, which is the same thing). With one channel the window is one sign.
* **L2** (the paper's Algorithm 3): start from a grid of ``5 × 5`` (``5³`` for 3-D) blocks,
  each holding the centred "square" pattern ``η`` with a random sign per channel, rescaled to
  ``‖δ‖₂ = ε``. A proposal draws two windows ``W1``, ``W2`` of the same (odd, ``>= 3``) side;
  per channel it moves the perturbation mass of ``W1 ∪ W2`` — plus an even share of the
  budget not yet used, ``(ε² − ‖δ‖²) / C`` — into ``W1`` as ``ρ·η* + δ_{W1}/‖δ_{W1}‖``
  (``ρ = ±1``, ``η*`` the unit pattern) rescaled to that mass, and sets ``W2`` to zero. The
  total norm is therefore ``ε`` again (the sphere, before the clamp to ``bounds``, which can
  only shorten ``δ``). ``η`` is two centred patterns of opposite sign side by side (split
  along a random spatial axis: the paper transposes with probability 1/2); a centred pattern
  has value ``Σ_{k=m}^{K} 1/(k+1)²`` at Chebyshev distance ``m`` from its centre.

Because it never looks at a gradient, a model that hides its gradient (quantised input,
saturated softmax) does not stop it: Square beating the white-box attacks is a
gradient-masking flag (see :mod:`callbacks.sanity`). It only *compares* loss values, so give it
a loss that does not saturate: the paper (and AutoAttack) use the classification margin, and
the named suites hand each task's Square its margin-type loss (``margin``, ``seg_margin``,
``peak_margin``, ``dag`` without clip; :mod:`attacks.suites`). Cross-entropy on a saturated
softmax is exactly 0 in float32 on every confidently classified sample: nothing to climb.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Attack
from .call import AttackCall, Norm, Scalar
from .checks import check_count, check_restarts
from .mode import Mode
from .projection import linf_box, per_sample_norm, project_l2
from .registry import register_attack

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@register_attack
class Square(Attack):
    """Square attack, L∞ or L2, on any per-sample loss.

    Args:
        eps: budget, float or ``[B]``.
        norm: ``"linf"`` or ``"l2"``.
        steps: queries (no-grad forwards) per restart, after the initial one.
        p_init: initial window area as a fraction of the spatial size (0.8 as in AutoAttack).
        restarts: independent random inits, worst case per sample.
        bounds, bn_mode, dropout_mode: see :class:`attacks.base.Attack`.

    Shape:
        ``x``: ``[B, C, *spatial]`` (any number of spatial dims) → same shape.
    """

    name = "square"
    gradient_free = True  # score-based: the evaluation counts its wins as a masking flag
    needs_norm = True
    needs_eps = True

    def __init__(
        self,
        eps: Scalar = 0.004,
        norm: Norm = "linf",
        steps: int = 1000,
        p_init: float = 0.8,
        restarts: int = 1,
        bounds: tuple[float, float] = (0.0, 1.0),
        bn_mode: Mode = "eval",
        dropout_mode: Mode = "eval",
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, bn_mode=bn_mode, dropout_mode=dropout_mode)
        check_count("steps", steps)
        check_restarts(restarts)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.steps = steps
        self.p_init = float(p_init)
        self.restarts = restarts
        self.random_start = True

    def _n_restarts(self) -> int:
        return self.restarts

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "p_init": self.p_init, "queries": self.steps + 1,
                "gradient_free": True}

    def _p(self, t: int) -> float:
        """Window share at query ``t`` (the paper's schedule, rescaled to ``steps``)."""
        t_paper = int(t / self.steps * 10_000)
        halvings = sum(t_paper > s for s in _SCHEDULE)
        return self.p_init / 2**halvings

    def _window(self, call: AttackCall, side: list[int]) -> Tensor:
        """``Bool[B, 1, *spatial]``: one random axis-aligned window of the given side per sample
        (the same draws, one per spatial axis, as :meth:`_window_starts`)."""
        return self._mask(call, self._window_starts(call, side), side)

    def _window_starts(self, call: AttackCall, side: list[int]) -> Tensor:
        """``Long[B, dims]``: random window origins (uniform over the valid positions)."""
        cols = [(call.rand("uniform", (call.batch,)) * (n - s + 1)).floor().long().clamp_(0, n - s)
                for n, s in zip(call.x.shape[2:], side)]
        return torch.stack(cols, dim=1)

    @staticmethod
    def _mask(call: AttackCall, starts: Tensor, side: list[int]) -> Tensor:
        """``Bool[B, 1, *spatial]`` of the windows at ``starts``."""
        spatial = call.x.shape[2:]
        mask: Tensor | None = None
        for d, (n, s) in enumerate(zip(spatial, side)):
            idx = torch.arange(n, device=call.x.device)
            m = (idx[None] >= starts[:, d:d + 1]) & (idx[None] < starts[:, d:d + 1] + s)
            shape = [call.batch] + [1] * len(spatial)
            shape[1 + d] = n
            m = m.view(shape)
            mask = m if mask is None else mask & m
        assert mask is not None
        return mask.unsqueeze(1)

    @staticmethod
    def _place(call: AttackCall, patch: Tensor, starts: Tensor) -> Tensor:
        """``[B, C, *spatial]`` zeros with ``patch`` (``[B, C, *side]``) at each sample's start."""
        out = call.x.new_zeros(call.x.shape)
        for i in range(call.batch):
            sl = tuple(slice(int(a), int(a) + n) for a, n in zip(starts[i], patch.shape[2:]))
            out[(i, slice(None), *sl)] = patch[i]
        return out

    def _eta(self, call: AttackCall, side: list[int]) -> Tensor:
        """The paper's unit-norm pattern ``η`` on a window of ``side``: a centred pattern on
        each half (split along a random spatial axis), the second half negated."""
        axis = int(call.rand("uniform", (1,)).item() * len(side)) % len(side)
        h1 = side[axis] // 2
        first, second = list(side), list(side)
        first[axis], second[axis] = h1, side[axis] - h1
        eta = torch.cat([_centred(first, call.x), -_centred(second, call.x)], dim=axis)
        return eta / eta.norm().clamp_min(1e-12)

    def _l2_init(self, call: AttackCall, e: Tensor) -> Tensor:
        """A grid of blocks of side ``n // 5`` (centred on each axis), each ``±η`` per sample
        and channel, rescaled to ``‖δ‖₂ = ε`` (the paper's L2 initialisation)."""
        x = call.x
        spatial = list(x.shape[2:])
        side = [max(1, n // 5) for n in spatial]
        offsets = [(n - s * (n // s)) // 2 for n, s in zip(spatial, side)]
        delta = torch.zeros_like(x)
        grid = torch.cartesian_prod(*[torch.arange(n // s) for n, s in zip(spatial, side)])
        for cell in grid.reshape(-1, len(spatial)):
            rho = call.rand("uniform", (x.shape[0], x.shape[1], *([1] * len(spatial))))
            rho = rho.lt(0.5).to(x.dtype).mul_(2).sub_(1)
            sl = tuple(slice(o + int(c) * s, o + (int(c) + 1) * s)
                       for o, c, s in zip(offsets, cell, side))
            delta[(slice(None), slice(None), *sl)] = rho * self._eta(call, side)
        return delta * (e / per_sample_norm(delta, "l2").clamp_min(1e-12).view_as(e))

    def _l2_proposal(self, call: AttackCall, delta: Tensor, eps_t: Tensor, e: Tensor, p: float) -> Tensor:
        """One L2 proposal (the paper's Algorithm 3, see the module docstring): mass of
        ``W1 ∪ W2`` plus the unused budget into ``W1`` as ``ρη* + δ_W1/‖δ_W1‖``, ``W2 = 0``,
        then onto the ε-sphere (``[B, C, *spatial]``; the caller clamps to the bounds)."""
        x, b, c = call.x, call.batch, call.x.shape[1]
        spatial = x.shape[2:]
        dims = tuple(range(2, x.ndim))
        # side ≈ n·p^(1/dims) per axis (the share p of the image), odd and >= 3 as in the paper
        side = []
        for n in spatial:
            s = max(3, round(n * p ** (1 / len(spatial))))
            s += 1 - s % 2
            side.append(min(s, n))
        st1 = self._window_starts(call, side)
        st2 = self._window_starts(call, side)
        w1, w2 = self._mask(call, st1, side), self._mask(call, st2, side)
        union = (w1 | w2).to(x.dtype)
        unused = (eps_t**2 - per_sample_norm(delta, "l2") ** 2).clamp_min(0)  # [B]
        avail = ((delta * union) ** 2).sum(dim=dims) + (unused / c)[:, None]  # [B, C]
        old = delta * w1
        old = old / old.pow(2).sum(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)
        rho = call.rand("uniform", (b, c, *([1] * len(spatial)))).lt(0.5).to(x.dtype).mul_(2).sub_(1)
        eta = self._place(call, rho * self._eta(call, side).expand(b, c, *side), st1)
        new = eta + old
        new = new / new.pow(2).sum(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)
        new = new * avail.sqrt().view(b, c, *([1] * len(spatial)))
        cand = torch.where(w1, new, torch.where(w2, torch.zeros_like(delta), delta))
        # exactly on the sphere (the update preserves the norm up to rounding and overlaps)
        return cand * (eps_t / per_sample_norm(cand, "l2").clamp_min(1e-12)).view_as(e)

    def _run(self, call: AttackCall) -> Tensor:
        x, b = call.x, call.batch
        if x.ndim < 3:
            raise ValueError(f"Square needs [B, C, *spatial] inputs, got {tuple(x.shape)}")
        eps = call.budget(self.eps, "eps")
        eps_t = call.budget_tensor(self.eps, "eps")
        e = call.per_sample(eps_t)
        spatial = x.shape[2:]
        c = x.shape[1]

        def sign(shape: tuple[int, ...]) -> Tensor:
            return call.rand("uniform", shape).lt(0.5).to(x.dtype).mul_(2).sub_(1)

        if self.norm == "linf":
            stripes = sign((b, c, *([1] * (len(spatial) - 1)), spatial[-1]))  # vertical stripes
            lower, upper = linf_box(call, eps)  # type: ignore[arg-type]

            def project(delta: Tensor) -> Tensor:
                return (x + delta).clamp_(lower, upper)

            delta = stripes * e
        else:
            def project(delta: Tensor) -> Tensor:
                return project_l2(call, x + delta, eps)  # type: ignore[arg-type]

            delta = self._l2_init(call, e)
        x_best = project(delta)
        delta = x_best - x
        best_loss, violated = self._evaluate(call, x_best)
        assert best_loss is not None  # Square always has a model
        active = ~violated if violated is not None else torch.ones(b, dtype=torch.bool, device=x.device)

        for t in range(self.steps):
            if not bool(active.any()):
                break
            p = self._p(t)
            if self.norm == "linf":
                # side ≈ n·p^(1/dims) per axis, so the window covers a share p of the image
                side = [max(1, min(max(n - 1, 1), round(n * p ** (1 / len(spatial))))) for n in spatial]
                win = self._window(call, side)  # [B, 1, *spatial]
                new_vals = sign((b, c, *([1] * len(spatial)))) * e  # one sign per channel
                cand = torch.where(win, new_vals.expand_as(x), delta)
            else:
                cand = self._l2_proposal(call, delta, eps_t, e, p)
            x_cand = project(cand)
            loss, violated = self._evaluate(call, x_cand)
            better = (loss > best_loss) & active
            if violated is not None:
                better = better | (violated & active)
                active = active & ~(violated & better)
            x_best = torch.where(call.per_sample(better), x_cand, x_best)
            best_loss = torch.where(better, loss, best_loss)
            delta = x_best - x
        return x_best


def _centred(shape: list[int], like: Tensor) -> Tensor:
    """The paper's centred pattern on a box of ``shape`` (any dims, possibly empty): value
    ``Σ_{k=m}^{K} 1/(k+1)²`` at Chebyshev distance ``m`` from the centre ``shape // 2``,
    ``K = max(shape // 2)``; unit L2 norm (zeros if the box is empty)."""
    if min(shape) == 0:
        return like.new_zeros(shape)
    grids = torch.meshgrid(*[(torch.arange(n, device=like.device) - n // 2).abs() for n in shape],
                           indexing="ij")
    m = torch.stack(grids).amax(dim=0)
    k_max = max(n // 2 for n in shape)
    ring = 1.0 / (torch.arange(k_max + 1, device=like.device, dtype=like.dtype) + 1) ** 2
    tail = ring.flip(0).cumsum(0).flip(0)  # tail[m] = Σ_{k>=m} 1/(k+1)²
    pat = tail[m]
    return pat / pat.norm().clamp_min(1e-12)
