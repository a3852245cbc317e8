"""The model an attacker faces, ``net(embedded(normalizer(x)))``, and the joint forward of
several batches through it (one BatchNorm batch for clean and adversarial images)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


class Pipeline(nn.Module):
    """``net(embedded(normalizer(x)))``: the model an attacker faces. Holds references to the
    task's own modules (no copies), so it is always the current model."""

    def __init__(self, normalizer: nn.Module, embedded: nn.Module | None, net: nn.Module) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.embedded = embedded if embedded is not None else nn.Identity()
        self.net = net
        object.__setattr__(self, "parts", (normalizer, embedded, net))

    def forward(self, x: Tensor) -> Any:
        return self.net(self.embedded(self.normalizer(x)))


def forward_joint(model: nn.Module, xs: Sequence[Tensor]) -> list[Any]:
    """``[model(x) for x in xs]`` as one forward over ``torch.cat(xs)`` split back along the
    batch (:func:`split_output`); separate forwards when the output cannot be split."""
    if len(xs) == 1:
        return [model(xs[0])]
    sizes = [int(x.shape[0]) for x in xs]
    parts = split_output(model(torch.cat(list(xs), dim=0)), sizes)
    if parts is None:
        return [model(x) for x in xs]
    return parts


def split_output(out: Any, sizes: list[int]) -> list[Any] | None:
    """Split a batched output (tensor, dict / list / tuple of tensors) into chunks of ``sizes``
    along dim 0; ``None`` when its structure does not allow it. An output object may split
    itself: ``out.split_batch(sizes) -> list`` (e.g. the detection output)."""
    total = sum(sizes)
    if callable(getattr(out, "split_batch", None)):
        return out.split_batch(sizes)
    if isinstance(out, Tensor):
        return list(out.split(sizes)) if out.ndim and out.shape[0] == total else None
    if isinstance(out, Mapping):
        pieces = {k: split_output(v, sizes) for k, v in out.items()}
        if any(p is None for p in pieces.values()):
            return None
        return [{k: p[i] for k, p in pieces.items()} for i in range(len(sizes))]  # type: ignore[index]
    if isinstance(out, list | tuple) and not hasattr(out, "_fields"):
        elems = [split_output(v, sizes) for v in out]
        if any(e is None for e in elems):
            return None
        return [type(out)(e[i] for e in elems) for i in range(len(sizes))]  # type: ignore[index]
    return None
