"""One configured corruption: :class:`Corruption` (a kind, its five per-severity parameters,
the image size they were published for) — the corruption counterpart of ``attacks.AttackSpec``.

``corruption(x, severity, generator=None, seeds=None, bounds=(0, 1)) -> x_corrupted``:

* ``x``: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` float images in ``bounds`` (the data's
  ``data_info.bounds``; mapped to ``[0, 1]`` for the corruption and back, result clamped);
  the output has ``x``'s shape, dtype and device;
* ``severity``: ``0`` (the identity: ``x`` is returned unchanged, as a copy) or ``1 … 5``;
* randomness only from ``generator`` (one for the batch) or ``seeds`` (``[B]``, one per
  sample; see :class:`corruptions.draw.Draw`); never the global RNG;
* targets are never needed and never changed (no corruption of the family moves content).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from corruptions.artefacts import FUNCTIONS_ARTEFACTS
from corruptions.draw import Draw
from corruptions.functional import FUNCTIONS_BASIC

__all__ = ["KINDS", "SEVERITIES", "Corruption", "CorruptionKind"]

#: the severities of every corruption (0 is the identity)
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CorruptionKind:
    """What a corruption function accepts: ``ndims`` the image ranks (4: 2-D, 5: 3-D),
    ``channels`` a required channel count (``None``: any) and whether it is random."""

    fn: Any
    ndims: tuple[int, ...] = (4, 5)
    channels: int | None = None
    random: bool = True


_DETERMINISTIC = {"gaussian_blur", "defocus_blur", "zoom_blur", "brightness", "contrast", "gamma",
                  "saturate", "pixelate", "jpeg_compression", "black_corner"}
_ONLY_2D = {"saturate", "jpeg_compression"}

#: corruption kinds by name
KINDS: dict[str, CorruptionKind] = {
    name: CorruptionKind(fn, (4,) if name in _ONLY_2D else (4, 5), 3 if name == "saturate" else None,
                         name not in _DETERMINISTIC)
    for name, fn in {**FUNCTIONS_BASIC, **FUNCTIONS_ARTEFACTS}.items()
}


@dataclass(frozen=True)
class Corruption:
    """A corruption of a suite: ``name`` (its label in records, e.g. ``brightness_down``),
    ``kind`` (a key of :data:`KINDS`), ``params`` (one per severity 1–5) and
    ``reference_size`` (the image side the lengths in ``params`` are given for; ``None``:
    lengths in pixels of the image as it is). ``source`` cites where the values come from."""

    name: str
    kind: str
    params: tuple[Any, ...]
    reference_size: int | None = 224
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corruption {self.name!r}: unknown kind {self.kind!r}; known: {sorted(KINDS)}")
        if len(self.params) != len(SEVERITIES):
            raise ValueError(f"corruption {self.name!r}: give {len(SEVERITIES)} parameters (one per "
                             f"severity 1–5), got {len(self.params)}")
        if "/" in self.name or "," in self.name or not self.name:
            raise ValueError(f"corruption name {self.name!r} must be non-empty, without '/' or ','")

    @property
    def random(self) -> bool:
        return KINDS[self.kind].random

    def param(self, severity: int) -> Any:
        """The parameter at ``severity`` (1–5)."""
        return self.params[_check_severity(severity, self.name) - 1]

    def describe(self) -> dict[str, Any]:
        return {"corruption": self.name, "kind": self.kind,
                "params": [_plain(p) for p in self.params], "reference_size": self.reference_size,
                "source": self.source}

    def scale_for(self, x: Tensor) -> float:
        """Lengths scale: the image's smallest in-plane side over :attr:`reference_size`."""
        if self.reference_size is None:
            return 1.0
        return min(int(s) for s in x.shape[-2:]) / float(self.reference_size)

    def __call__(self, x: Tensor, severity: int, generator: torch.Generator | None = None,
                 seeds: Sequence[int] | Tensor | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        severity = _check_severity(severity, self.name, allow_zero=True)
        kind = KINDS[self.kind]
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"corruption {self.name!r}: x must be a float tensor, got "
                             f"{type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
        if x.ndim not in kind.ndims:
            want = " or ".join({4: "[B, C, H, W]", 5: "[B, C, D, H, W]"}[n] for n in kind.ndims)
            raise ValueError(f"corruption {self.name!r} ({self.kind}) takes {want}; x has shape {tuple(x.shape)}")
        if kind.channels is not None and x.shape[1] != kind.channels:
            raise ValueError(f"corruption {self.name!r} ({self.kind}) needs {kind.channels} channels; "
                             f"x has shape {tuple(x.shape)}")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not (hi > lo) or hi - lo == float("inf"):
            raise ValueError(f"corruption {self.name!r}: bounds must be finite with lo < hi, got {bounds}")
        if severity == 0:
            return x.clone()
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        unit = (work - lo) / (hi - lo)
        draw = Draw(x.shape[0], x.device, generator, seeds)
        with torch.no_grad():
            out = kind.fn(unit, self.param(severity), draw, self.scale_for(x))
        return (out.clamp(0.0, 1.0) * (hi - lo) + lo).to(x.dtype)

    # -- configs ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Corruption, where: str = "corruption") -> Corruption:
        """``{name, kind?, params, reference_size?, source?}`` (``kind`` defaults to ``name``)."""
        if isinstance(cfg, Corruption):
            return cfg
        if not isinstance(cfg, Mapping) or "name" not in cfg or "params" not in cfg:
            raise ValueError(f"{where}: a corruption is a mapping {{name, params: [5 values], kind?, "
                             f"reference_size?}}, got {cfg!r}")
        unknown = set(cfg) - {"name", "kind", "params", "reference_size", "source"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            params = tuple(tuple(p) if isinstance(p, list) else p for p in cfg["params"])
            return cls(str(cfg["name"]), str(cfg.get("kind", cfg["name"])), params,
                       cfg.get("reference_size", 224), str(cfg.get("source", "")))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def _check_severity(severity: Any, name: str, allow_zero: bool = False) -> int:
    lowest = 0 if allow_zero else 1
    if isinstance(severity, bool) or not isinstance(severity, int) or not lowest <= severity <= 5:
        raise ValueError(f"corruption {name!r}: severity must be an int in {lowest}…5, got {severity!r}")
    return severity


def _plain(p: Any) -> Any:
    if isinstance(p, tuple | list):
        return [_plain(v) for v in p]
    if hasattr(p, "item"):
        return p.item()
    return round(p, 6) if isinstance(p, float) else p
