"""How outputs reach the evaluation's metric collections (the task's own torchmetrics).

:class:`MetricFeed` gives each collection of an evaluation (clean, per attack × ε, worst case
per ε: :class:`callbacks.outcome.EvalMetrics`) its ``(output, batch)`` updates, and does two
things that save work without changing a number (``callbacks.speedups.Speedups``):

* ``merge_updates``: for a task whose metric states do not depend on how the samples are cut
  into updates (``metrics_batch_invariant``: classification's integer counts and lists of
  rows), each collection gets one update over its concatenated batches at :meth:`flush`;
* ``alias_ensemble``: while one member wins every sample at an ε, the worst-case collection
  would get exactly that member's updates; they are deferred, and the ensemble reports the
  member's metrics (:meth:`MetricFeed.alias`), replayed in order when a batch differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from attacks.tree import tree_leaves
from callbacks.outcome import EvalMetrics

#: cap on the outputs kept for a merged update or a deferred ensemble (and on a stacked input)
MAX_STACK_BYTES = 16 * 2**20

Pair = tuple[Any, dict[str, Any]]


def evaluation_metrics(task: Any, attacks: Sequence[tuple[str, float]], eps: Sequence[float], ensemble: bool,
                       device: torch.device, reuse: EvalMetrics | None = None) -> EvalMetrics:
    """One collection for clean, each attack × ε and (with the ensemble) each ε: ``reuse``'s
    (reset) when it has exactly those, else built by ``task.build_metrics()`` on ``device``."""
    if reuse is not None and set(reuse.attacks) == set(attacks) and \
            set(reuse.ensemble) == (set(eps) if ensemble else set()):
        for m in (reuse.clean, *reuse.attacks.values(), *reuse.ensemble.values()):
            m.reset()
        return reuse
    return EvalMetrics(
        clean=task.build_metrics().to(device),
        attacks={k: task.build_metrics().to(device) for k in attacks},
        ensemble={e: task.build_metrics().to(device) for e in eps} if ensemble else {},
    )


class MetricFeed:
    """The updates of one evaluation's collections.

    Args:
        task: gives ``update_metrics(collection, output, batch)`` and, optionally,
            ``metrics_batch_invariant``.
        metrics: the collections.
        merge_updates: merge each collection's updates into one (only for a
            ``metrics_batch_invariant`` task).
        alias_ensemble: defer a worst-case collection's updates while one member wins every
            sample (off under DDP: the ranks must compute the same collections).
    """

    def __init__(self, task: Any, metrics: EvalMetrics, merge_updates: bool = False,
                 alias_ensemble: bool = False) -> None:
        self.task, self.metrics = task, metrics
        self.merge_updates = bool(merge_updates) and bool(getattr(task, "metrics_batch_invariant", False))
        self.alias_ensemble = bool(alias_ensemble)
        #: per ε: (member, deferred (output, batch) pairs) while aliased, False once not
        self.aliases: dict[float, Any] = {}
        #: merge_updates: per collection (by id), the collection and its kept pairs, in order
        self._pending: dict[int, tuple[Any, list[Pair]]] = {}
        self._pending_bytes = 0

    def update(self, collection: Any, output: Any, batch: dict[str, Any]) -> None:
        """``task.update_metrics(collection, output, batch)`` — or, with ``merge_updates``, the
        pair kept for one update over all of the collection's batches (:meth:`flush`). Kept
        only while the outputs are ``[B, …]`` tensors, every batch entry a ``[B, …]`` tensor
        and the kept outputs within :data:`MAX_STACK_BYTES`; otherwise the collection's kept
        pairs are given first, in order, and this one directly."""
        if self.merge_updates:
            size = output.shape[0] if isinstance(output, torch.Tensor) and output.ndim else None
            nbytes = output.element_size() * output.nelement() if size is not None else 0
            if size is not None and self._pending_bytes + nbytes <= MAX_STACK_BYTES and all(
                    isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == size for v in batch.values()):
                entry = self._pending.setdefault(id(collection), (collection, []))
                if not entry[1] or entry[1][0][1].keys() == batch.keys():
                    entry[1].append((output, batch))
                    self._pending_bytes += nbytes
                    return
        self.flush(collection)
        self.task.update_metrics(collection, output, batch)

    def flush(self, collection: Any = None) -> None:
        """Give ``collection`` (``None``: every collection) its kept pairs: one update over the
        concatenated outputs and batches when every output is finite, else one per pair, in
        order (a non-finite output can make a torchmetrics update reformat its whole input,
        e.g. a sigmoid over probabilities that are not all in [0, 1], so per-batch and merged
        updates could differ there)."""
        keys = list(self._pending) if collection is None else [id(collection)]
        for key in keys:
            entry = self._pending.pop(key, None)
            if entry is None:
                continue
            target, pairs = entry
            self._pending_bytes -= sum(o.element_size() * o.nelement() for o, _ in pairs)
            if len(pairs) > 1 and all(bool(torch.isfinite(o).all()) for o, _ in pairs):
                output = torch.cat([o for o, _ in pairs])
                batch = {k: torch.cat([b[k] for _, b in pairs]) for k in pairs[0][1]}
                self.task.update_metrics(target, output, batch)
            else:
                for output, batch in pairs:
                    self.task.update_metrics(target, output, batch)

    def defer_ensemble(self, eps: float, member: int, out: Any, batch: dict[str, Any]) -> bool:
        """``alias_ensemble``: while every counted batch's worst-case update at ``eps`` is
        exactly member ``member``'s own update (it won every sample, so the worst case gets the
        very ``(output, batch)`` its collection got), skip it: the two collections would hold
        equal states. The pairs are kept (up to :data:`MAX_STACK_BYTES` of outputs) for
        :meth:`replay_ensemble`. Returns whether the update was deferred."""
        state = self.aliases.get(eps)
        if not self.alias_ensemble or state is False or (state is not None and state[0] != member):
            return False
        pending = [] if state is None else state[1]
        size = sum(t.element_size() * t.nelement() for o, _ in pending for t in tree_leaves(o))
        if size + sum(t.element_size() * t.nelement() for t in tree_leaves(out)) > MAX_STACK_BYTES:
            return False
        self.aliases[eps] = (member, [*pending, (out, batch)])
        return True

    def replay_ensemble(self, eps: float) -> None:
        """Give the worst-case collection at ``eps`` the updates :meth:`defer_ensemble`
        skipped, in order; from now on it is updated batch by batch."""
        state = self.aliases.get(eps)
        if state:
            for out, batch in state[1]:
                self.update(self.metrics.ensemble[eps], out, batch)
        self.aliases[eps] = False

    def alias(self, eps: float) -> int | None:
        """The member whose metrics the worst case at ``eps`` reports (every update was its
        own), or ``None`` (the worst-case collection has its own updates)."""
        state = self.aliases.get(eps)
        return state[0] if state else None

    # -- rollback (a stopped batch counts for nothing) ------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The deferred and kept pairs now (lists copied; their tensors are never written)."""
        return {"aliases": {e: v if v is False or v is None else (v[0], list(v[1])) for e, v in self.aliases.items()},
                "pending": {k: (c, list(p)) for k, (c, p) in self._pending.items()},
                "pending_bytes": self._pending_bytes}

    def restore(self, snap: dict[str, Any]) -> None:
        self.aliases, self._pending, self._pending_bytes = snap["aliases"], snap["pending"], snap["pending_bytes"]
