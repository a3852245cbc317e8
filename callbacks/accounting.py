"""Compute accounting of one robustness evaluation: forward and backward passes, and seconds,
per suite member × ε, per part of the evaluator's own work, in total and per sample.

Unit: **sample passes**. A forward of a batch of ``B`` samples counts ``B`` sample-forwards; an
input-gradient backward through that forward counts ``B`` sample-backwards. So the numbers do
not depend on the batch size, and "passes per sample" is the count divided by the number of
evaluated samples (AutoAttack reports its budgets the same way: iterations per sample).

How it counts, without touching any attack: :class:`CountingModel` wraps the model that every
attack and every metric forward of the evaluator receives. Its ``forward`` adds the batch's rows
(``x.shape[0]``, or ``len(x)`` for a list of images) to the forward count and, when the input
requires a gradient, hands the model a view of it with a hook, which autograd calls exactly when a
backward computes the gradient with respect to that view — one call per backward pass through
this forward, whatever the attack does upstream (a leaf ``x_adv``, ``x + delta``, CW's ``tanh``
variable). A forward whose graph is never differentiated (a gradient-free attack, a line search)
counts no backward. The counts are the model's, so they hold for every task — detection's
model returns dicts and lists, which the wrapper never looks at.

:class:`ComputeMeter` charges the counts and the wall time to the part that is running
(``switch(key)``): a suite member at one ε (its attack and the forward that scores its output),
``clean`` (the clean forwards; with the evaluator's ``share_start`` also the one input-gradient
backward at ``x`` that every ε's first step of PGD-like members shares, which those members
are then not charged), ``ensemble`` (forwards of the per-sample worst case), ``sanity``
(the large-ε check) and ``minimal_eps``. Seconds are wall time on this process (synchronised
with the GPU at each switch); under DDP counts and seconds are summed over the processes
(:func:`lightning_modules.distributed.sum_over_ranks`), so seconds are device-seconds. DDP padding copies (a
rank's repeated last batch, discarded from every metric) are not charged: 1 and N processes
report the same passes.

A sequential suite (AutoAttack's rule: later members attack only samples no earlier member
broke) charges each member only what it spent on the samples it attacked; the record states the
samples skipped and an *estimate* of what the member would have spent on every sample (its
attack's passes per attacked sample × all samples, plus the one forward per sample that scores
its output — an estimate because attacks with early stopping spend less on easy samples, and
the skipped samples are the easy ones).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ComputeAccounting", "ComputeMeter", "CountingModel", "PartCost", "UNIT"]

#: what the pass counts mean, written into every record
UNIT = ("sample passes: a forward (backward) of a batch of B samples counts B; seconds are wall "
        "time summed over processes")

Key = Any  # (attack label, ε) for a member, or a part name ("clean", "ensemble", ...)


@dataclass
class _Tally:
    forward: int = 0
    backward: int = 0
    seconds: float = 0.0


class ComputeMeter:
    """Charges sample passes and wall time to the running part (see the module docstring)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.tallies: dict[Key, _Tally] = {}
        self._current: _Tally | None = None
        self._since = 0.0
        self._sync = device is not None and device.type == "cuda"
        self._device = device

    # -- charging --------------------------------------------------------------------------------
    def begin(self, counted: bool, key: Key) -> None:
        """Start a batch: charge ``key`` from now on, or nothing when ``counted`` is false (a
        DDP padding copy)."""
        self.end()
        if counted:
            self._current = self.tallies.setdefault(key, _Tally())
            self._since = time.perf_counter()

    def switch(self, key: Key) -> None:
        """Close the running part's clock and charge ``key`` from now on (no-op between
        :meth:`end` and the next :meth:`begin`, i.e. on uncounted batches)."""
        if self._current is None:
            return
        self._stop()
        self._current = self.tallies.setdefault(key, _Tally())
        self._since = time.perf_counter()

    def end(self) -> None:
        """Close the running part; nothing is charged until the next :meth:`begin`."""
        if self._current is not None:
            self._stop()
        self._current = None

    def _stop(self) -> None:
        if self._sync:
            torch.cuda.synchronize(self._device)
        assert self._current is not None
        self._current.seconds += time.perf_counter() - self._since

    def share(self, source: Key, targets: list[Key]) -> None:
        """Move ``source``'s tally to ``targets`` in equal shares (ε-stacking: one call served
        every ε with the same rows each, so the passes divide exactly) and charge the first
        target from now on."""
        if self._current is None:
            return
        self._stop()
        src = self.tallies.pop(source, _Tally())
        k = len(targets)
        for key in targets:
            t = self.tallies.setdefault(key, _Tally())
            t.forward += src.forward // k
            t.backward += src.backward // k
            t.seconds += src.seconds / k
        self._current = self.tallies.setdefault(targets[0], _Tally())
        self._since = time.perf_counter()

    def add_forward(self, rows: int) -> None:
        if self._current is not None:
            self._current.forward += rows

    def backward_hook(self, rows: int) -> Any:
        """A tensor hook that charges ``rows`` backward passes to the part running *now*
        (the backward belongs to the attack that built the graph)."""
        tally = self._current

        def hook(grad: torch.Tensor) -> None:
            if tally is not None:
                tally.backward += rows

        return hook

    def totals(self) -> dict[Key, dict[str, float]]:
        """``{key: {"forward", "backward", "seconds"}}`` on this process."""
        return {k: {"forward": t.forward, "backward": t.backward, "seconds": t.seconds}
                for k, t in self.tallies.items()}


def _rows(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.ndim else 1
    if isinstance(x, (list, tuple)):
        return len(x)
    return 1


class CountingModel(nn.Module):
    """``model`` with its sample forwards and input-gradient backwards charged to ``meter``.

    Shape: whatever ``model`` takes and returns; ``x`` is ``[B, *]`` (``B`` rows counted) or a
    list of ``B`` images. The wrapped model is a child module, so :func:`attacks.mode.attack_mode`
    sets the modes of its layers as it would on the model itself; the wrapper adds no
    parameters or buffers.
    """

    def __init__(self, model: nn.Module, meter: ComputeMeter) -> None:
        super().__init__()
        self.model = model
        # not a child: the meter is no module state
        object.__setattr__(self, "meter", meter)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        meter: ComputeMeter = self.meter  # type: ignore[assignment]
        meter.add_forward(_rows(x))
        if torch.is_grad_enabled():
            if isinstance(x, torch.Tensor):
                x = _watched(x, meter, _rows(x))
            elif isinstance(x, (list, tuple)):
                x = type(x)(_watched(t, meter, 1) if isinstance(t, torch.Tensor) else t for t in x)
        return self.model(x, *args, **kwargs)


def _watched(t: torch.Tensor, meter: ComputeMeter, rows: int) -> torch.Tensor:
    """``t`` itself, or (when it requires a gradient) a fresh view of it whose hook charges
    ``rows`` backward passes: the view is a node of *this* forward only, so its hook runs once
    per backward through this forward — also when one tensor enters several forwards."""
    if not t.requires_grad:
        return t
    view = t.view_as(t)
    view.register_hook(meter.backward_hook(rows))
    return view


# --- the record's part ---------------------------------------------------------------------------
@dataclass
class PartCost:
    """Passes and seconds of one suite member at one ε (``attack``, ``eps``) or of one part of
    the evaluator's own work (``part``: clean, ensemble, sanity, minimal_eps)."""

    forward: int
    backward: int
    seconds: float
    attack: str | None = None
    eps: float | None = None
    part: str | None = None
    #: samples this member attacked (a sequential suite skips samples already violated)
    samples_attacked: int | None = None
    samples_skipped: int | None = None
    #: estimate for a sequential member: its attack's passes per attacked sample × every
    #: sample, plus the scoring forward (one per sample)
    forward_if_all: float | None = None
    backward_if_all: float | None = None

    def to_dict(self, samples: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.attack is not None:
            out.update(attack=self.attack, eps=self.eps)
        else:
            out["part"] = self.part
        out.update(forward=self.forward, backward=self.backward, seconds=self.seconds,
                   **_per_sample(self.forward, self.backward, self.seconds, samples))
        for k in ("samples_attacked", "samples_skipped", "forward_if_all", "backward_if_all"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartCost:
        return cls(forward=int(data["forward"]), backward=int(data["backward"]),
                   seconds=float(data["seconds"]), attack=data.get("attack"),
                   eps=None if data.get("eps") is None else float(data["eps"]), part=data.get("part"),
                   samples_attacked=data.get("samples_attacked"), samples_skipped=data.get("samples_skipped"),
                   forward_if_all=data.get("forward_if_all"), backward_if_all=data.get("backward_if_all"))


def _per_sample(forward: float, backward: float, seconds: float, samples: int) -> dict[str, float | None]:
    n = max(int(samples), 0)
    return {"forward_per_sample": forward / n if n else None,
            "backward_per_sample": backward / n if n else None,
            "seconds_per_sample": seconds / n if n else None}


@dataclass
class ComputeAccounting:
    """``robustness.json["compute"]``: what the evaluation cost (see the module docstring).

    ``members``: one entry per suite member × ε; ``parts``: the evaluator's own work; ``total``
    is their sum. ``saved_by_skipping`` (sequential suites only): the estimated passes the
    skipped samples would have cost, summed over members.
    """

    samples: int
    members: list[PartCost] = field(default_factory=list)
    parts: list[PartCost] = field(default_factory=list)
    sequential: bool = False
    unit: str = UNIT

    def total(self) -> dict[str, float]:
        every = [*self.members, *self.parts]
        return {"forward": sum(p.forward for p in every), "backward": sum(p.backward for p in every),
                "seconds": sum(p.seconds for p in every)}

    def saved_by_skipping(self) -> dict[str, float] | None:
        """Estimated passes a sequential suite did not spend on samples already violated."""
        if not self.sequential:
            return None
        fwd = sum((p.forward_if_all or p.forward) - p.forward for p in self.members)
        bwd = sum((p.backward_if_all or p.backward) - p.backward for p in self.members)
        return {"forward": fwd, "backward": bwd, "estimate": True}

    def to_dict(self) -> dict[str, Any]:
        t = self.total()
        out: dict[str, Any] = {
            "unit": self.unit, "samples": self.samples,
            "total": {**t, **_per_sample(t["forward"], t["backward"], t["seconds"], self.samples)},
            "members": [p.to_dict(self.samples) for p in self.members],
            "parts": [p.to_dict(self.samples) for p in self.parts],
        }
        saved = self.saved_by_skipping()
        if saved is not None:
            out["saved_by_skipping"] = saved
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "compute") -> ComputeAccounting:
        from callbacks.record_parts import RecordError

        if not isinstance(data, Mapping) or "samples" not in data:
            raise RecordError(f"{where}: must be an object with 'samples', 'members' and 'parts'")
        try:
            return cls(samples=int(data["samples"]),
                       members=[PartCost.from_dict(p) for p in data.get("members") or []],
                       parts=[PartCost.from_dict(p) for p in data.get("parts") or []],
                       sequential="saved_by_skipping" in data, unit=str(data.get("unit", UNIT)))
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"{where}: a member or part lacks forward/backward/seconds ({err})") from None

    @classmethod
    def build(cls, totals: Mapping[Key, Mapping[str, float]], samples: int,
              attacked: Mapping[tuple[str, float], int], sequential: bool,
              member_keys: list[tuple[str, float]]) -> ComputeAccounting:
        """From :meth:`ComputeMeter.totals` (summed over ranks), in suite order.

        ``attacked``: per member × ε, the samples it attacked (the gradient health counts)."""
        members: list[PartCost] = []
        for key in member_keys:
            t = totals.get(key, {"forward": 0, "backward": 0, "seconds": 0.0})
            cost = PartCost(int(t["forward"]), int(t["backward"]), float(t["seconds"]),
                            attack=key[0], eps=float(key[1]))
            if sequential and key in attacked:
                n = int(attacked[key])
                cost.samples_attacked, cost.samples_skipped = n, max(samples - n, 0)
                if n:  # the attack's passes scale with the samples; the scoring forward is one each
                    cost.forward_if_all = max(cost.forward - samples, 0) * samples / n + min(cost.forward, samples)
                    cost.backward_if_all = cost.backward * samples / n
            members.append(cost)
        parts = [PartCost(int(t["forward"]), int(t["backward"]), float(t["seconds"]), part=str(k))
                 for k, t in totals.items() if not isinstance(k, tuple)]
        return cls(samples=samples, members=members, parts=parts, sequential=sequential)

    def markdown(self) -> str:
        """The cost table of ``report.md``."""
        def row(name: str, eps: Any, f: float, b: float, s: float, extra: str = "") -> str:
            n = self.samples or 1
            return (f"| {name} | {'' if eps is None else f'{eps:g}'} | {f:.0f} | {b:.0f} | {s:.3f} | "
                    f"{f / n:.1f} | {b / n:.1f} | {1000 * s / n:.2f} | {extra} |")

        lines = [f"{self.samples} samples; {self.unit}.", "",
                 "| member / part | ε | forward | backward | seconds | fwd / sample | bwd / sample | "
                 "ms / sample | skipped (sequential) |", "|---|---|---|---|---|---|---|---|---|"]
        for p in self.members:
            extra = ""
            if p.samples_skipped is not None:
                extra = f"{p.samples_skipped} skipped"
                if p.forward_if_all is not None:
                    extra += f"; ≈{p.forward_if_all:.0f} fwd / {p.backward_if_all:.0f} bwd on all"
            lines.append(row(str(p.attack), p.eps, p.forward, p.backward, p.seconds, extra))
        for p in self.parts:
            lines.append(row(f"({p.part})", None, p.forward, p.backward, p.seconds))
        t = self.total()
        lines.append(row("**total**", None, t["forward"], t["backward"], t["seconds"]))
        saved = self.saved_by_skipping()
        if saved is not None:
            lines += ["", f"Skipping samples already violated saved about {saved['forward']:.0f} forward and "
                          f"{saved['backward']:.0f} backward sample passes (estimate: each member's attack "
                          "passes per attacked sample × the samples it skipped)."]
        return "\n".join(lines)
