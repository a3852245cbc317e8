"""Shortcuts of the attack × ε loop that give the same numbers with fewer or larger passes.

A part of :class:`callbacks.evaluation_loop.RobustnessEvaluator` (its runner switches each on or
off: :class:`callbacks.speedups.Speedups`):

* ε-stacking (:meth:`EvaluationShortcuts._stack_members`): a deterministic member attacks every
  ε of the grid in one call over the batch repeated per ε;
* the shared start (:meth:`EvaluationShortcuts._shared_start`): members that start at ``x``
  take their first gradient from the clean forward's pass;
* early exit (:meth:`EvaluationShortcuts._attack_remaining`): across an ascending ε grid only
  the samples the previous ε left unviolated are attacked (this one changes numbers: see
  ``RobustnessEvaluator``'s ``early_exit``).
"""

from __future__ import annotations

from typing import Any

import torch

from attacks.seeding import seeded_generator
from attacks.spec import AttackSpec
from attacks.start import StartGradient
from attacks.tree import select_rows
from callbacks.metric_feed import MAX_STACK_BYTES

#: ``early_exit`` attacks the unviolated rows of a batch padded to a multiple of this (a few
#: batch sizes, whose CPU kernels are built once, instead of a new size nearly every epoch)
ROW_BUCKET = 4
#: attacks whose result depends only on each sample and its ε when they have no random start
STACKABLE = ("pgd", "bim", "fgsm")
#: attacks whose first step, without a random start, takes the gradient at ``x`` (what
#: :meth:`EvaluationShortcuts._shared_start` computes once for all of them)
SHARES_START = ("pgd", "bim", "fgsm", "mifgsm")



class _Precomputed:
    """Stand-in for an attack whose output on this batch was computed already (ε-stacking):
    calling it returns that output; ``last_gradients`` is the gradient health of its rows."""

    def __init__(self, x_adv: torch.Tensor, gradients: Any) -> None:
        self.x_adv, self.last_gradients = x_adv, gradients

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.x_adv



def _rows_of(outputs: dict[int, torch.Tensor], winner: torch.Tensor) -> torch.Tensor:
    """``[B, …]``: each sample's row of the candidate that won it (``winner[i]`` a key of
    ``outputs``: -1 the clean output, else a member's), i.e. the output of the worst case."""
    out = outputs[-1].clone()
    for key, value in outputs.items():
        if key != -1:
            rows = winner == key
            out[rows] = value[rows]
    return out



class EvaluationShortcuts:
    """ε-stacking, the shared start and early exit's row selection (module docstring); the
    evaluator provides ``task``, ``model``, ``specs``, ``eps``, ``attacks``, ``meter``,
    ``modes``, ``sequential``, ``stack_eps``, ``share_start``, ``seed``, ``forward`` and
    ``_loss_fn``."""

    _scored: dict[int, tuple[torch.Tensor, Any]]
    _starts_at_x: bool | None

    def _stack_members(self, batch_no: int, batch: dict[str, Any], x: torch.Tensor, size: int,
                       loss_fn: Any, start: StartGradient | None = None) -> dict[tuple[str, float], _Precomputed]:
        """ε-stacking: run each deterministic member once over the batch repeated for every ε
        (``[len(eps)·B, *]``, budget ``ε_i`` on the ``i``-th copy) and score the result with one
        forward; return stand-ins that hand each ε its rows.

        Exact: a member qualifies only when its output depends on nothing but each sample and
        its own ε — an attack without randomness (:data:`STACKABLE`, no random start, one
        restart, the task loss), eval-mode BatchNorm / Dropout (per-sample forwards), not in a
        sequential suite (no early stop), a batch of per-sample tensors only — so every row
        takes the same steps as in its own call.
        On the CPU the results are bit-identical (``benchmarks/eval_cost.py --compare`` checks
        the metrics); a GPU may round batched kernels differently. Skipped when the stacked input
        would exceed :data:`MAX_STACK_BYTES` (its activations scale with it). Passes are charged
        to each ε by its rows (equal: no early stop); seconds are shared equally. ``start``: the
        gradient at ``x`` (:meth:`_shared_start`), repeated for the stacked call.
        """
        k = len(self.eps)
        if not self.stack_eps or k < 2 or self.sequential or self.modes != ("eval", "eval") \
                or k * x.element_size() * x.nelement() > MAX_STACK_BYTES:
            return {}
        # only batches whose every entry is a per-sample tensor can be repeated per ε (detection's
        # lists of boxes, or metadata, keep the ordinary path)
        if not all(isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == size for v in batch.values()):
            return {}
        out: dict[tuple[str, float], _Precomputed] = {}
        for a_i, spec in enumerate(self.specs):
            desc = self.attacks[(spec.label, self.eps[0])].describe()
            if not (spec.budgeted and spec.loss is None and desc.get("name") in STACKABLE
                    and not desc.get("random_start") and (desc.get("restarts") or 1) == 1):
                continue
            keys = [(spec.label, e) for e in self.eps]
            self.meter.switch(("stacked", spec.label))
            eps = torch.tensor(self.eps, dtype=x.dtype, device=x.device).repeat_interleave(size)
            attack = spec.build(eps, tuple(self.task.data_info.bounds), self.modes)
            # each row's step exactly as its own ε's attack rounds it (a float step is rounded
            # to x's dtype once; rel·ε computed on the float32 ε tensor may differ by an ulp)
            own = [self.attacks[key] for key in keys]
            steps = [a.step_size if a.step_size is not None else a.default_step_size(a.eps) for a in own]
            if all(isinstance(v, float) for v in steps):
                attack.step_size = torch.tensor(steps, dtype=torch.float64, device=x.device).repeat_interleave(size)
            many = {key: torch.cat([v] * k) for key, v in batch.items()}
            gen = seeded_generator(self.seed, batch_no, a_i, 0, device=x.device)
            x_adv = attack(self.model, torch.cat([x] * k), many, loss_fn=loss_fn, generator=gen,
                           start=None if start is None else start.repeat(k))
            with torch.no_grad():
                scored = self.model(x_adv)
            self.meter.share(("stacked", spec.label), keys)
            if not (isinstance(scored, torch.Tensor) and scored.shape[0] == k * size):
                continue  # an output we cannot cut by rows: the ordinary path
            stats = attack.last_gradients
            for i, key in enumerate(keys):
                rows = slice(i * size, (i + 1) * size)
                grads = None if stats is None else type(stats)(stats.nonfinite[rows], stats.zero[rows], stats.evaluations)
                pre = _Precomputed(x_adv[rows], grads)
                self._scored[id(pre.x_adv)] = (pre.x_adv, scored[rows])
                out[key] = pre
        return out

    def _shared_start(self, x: torch.Tensor) -> bool:
        """Whether to take the clean output and the gradient at ``x`` from one pass
        (``share_start``): some member starts at ``x`` with the task loss (so it would take that
        very gradient first: :data:`SHARES_START`, no random start), every attack and metric
        forward sees the whole model in eval mode (the attacks' modes and the model's own, so
        the pass's output *is* the clean output), not sequential (members attack subsets),
        and ``x`` is float32 / float64 (the attacks' work dtype: the same forward)."""
        if not (self.share_start and not self.sequential and self.modes == ("eval", "eval")
                and x.dtype in (torch.float32, torch.float64)):
            return False
        if self._starts_at_x is None:
            self._starts_at_x = any(
                spec.budgeted and spec.loss is None and desc.get("name") in SHARES_START
                and not desc.get("random_start") and (desc.get("restarts") or 1) == 1
                for spec in self.specs for desc in [self.attacks[(spec.label, self.eps[0])].describe()])
        model = getattr(self.model, "model", self.model)  # inside the counting wrapper
        return self._starts_at_x and not any(m.training for m in model.modules())


    def _attack_remaining(self, attack: Any, spec: AttackSpec, batch: dict[str, Any], x: torch.Tensor,
                          size: int, todo: torch.Tensor, carried: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                          out_clean: Any, task_loss: Any, gen: torch.Generator,
                          start: StartGradient | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``early_exit``: ``(x_adv [B, *], output [B, …])`` of one member at one ε, attacking and
        forwarding only the samples ``todo`` (``LongTensor[k]``) that the previous ε left
        unviolated; the others keep the previous ε's worst case ``carried = (x, output, violated)``.

        The ``k`` rows are padded to a multiple of :data:`ROW_BUCKET` (repeats of the first one,
        whose results are dropped, gradient health included): the first pass at a new batch
        size builds the CPU kernels for that shape (≈ 2 ms for the quickstart CNN), and with
        ``k`` free every epoch would meet new sizes. The padding rows are passes the meter
        counts."""
        x_adv, out = carried[0].clone(), carried[1].clone()
        k = todo.numel()
        if k == 0:
            return x_adv, out
        every = k == size
        padded = min(size, -(-k // ROW_BUCKET) * ROW_BUCKET)
        rows = torch.cat([todo, todo[:1].expand(padded - k)]) if padded > k else todo
        sub = batch if every else select_rows(batch, rows, size)
        result = attack(self.model, x if every else x[rows], sub,
                        loss_fn=self._loss_fn(spec, out_clean, None if every else rows, size, task_loss),
                        generator=gen, start=start if every or start is None else start.rows(rows))
        stats = getattr(attack, "last_gradients", None)
        if stats is not None and rows.numel() > k:  # the padding rows' gradient health is not a sample's
            stats.nonfinite, stats.zero = stats.nonfinite[:k], stats.zero[:k]
        x_adv[todo] = result[:k]
        out[todo] = self.forward(result)[:k]
        return x_adv, out

