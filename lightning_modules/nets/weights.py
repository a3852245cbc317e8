"""Local pretrained weights for any network: ``net.weights_path`` (never a download).

An ImageNet-pretrained ResNet is a standard medical-imaging baseline; medrobust never downloads,
so the weights come from a local file, e.g. one saved once with
``torch.save(torchvision.models.resnet18(weights="DEFAULT").state_dict(), "resnet18.pth")``::

    net:
      class_path: torchvision.models.resnet18
      weights_path: /data/weights/resnet18.pth
      weights_skip: [fc.]        # the 1000-class head stays at its fresh init (2 classes here)

The file is read with ``torch.load(..., weights_only=True)`` (tensors only, no pickled code). It
may hold a plain ``state_dict``, or a Lightning checkpoint / ``{"state_dict": …}`` /
``{"model": …}`` mapping whose keys carry a ``net.`` prefix (ours) or none. Every key must match
the network's, in name and shape, except those starting with a ``weights_skip`` prefix; a
mismatch is an error naming the layers and both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def pop_weight_options(init_args: dict[str, Any], params: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """Remove ``weights_path`` / ``weights_skip`` from ``init_args`` (unless the constructor
    itself takes them) and return them."""
    path = init_args.pop("weights_path", None) if "weights_path" not in params else None
    skip = init_args.pop("weights_skip", None) if "weights_skip" not in params else None
    if isinstance(skip, str):
        skip = [skip]
    return (str(path) if path not in (None, "") else None), [str(s) for s in (skip or [])]


def _state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights_path={path!r}: expected a state_dict (name → tensor), got "
                         f"{type(obj).__name__}")
    return dict(obj)


def _strip_to(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Drop a common prefix (``net.``, ``model.``, ``module.``) when that makes keys match."""
    if set(state) & wanted:
        return state
    for prefix in ("net.", "model.", "module.", "net.net."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(stripped) & wanted:
            return stripped
    return state


def load_weights(net: nn.Module, path: str, skip: Sequence[str] = (), field: str = "net") -> nn.Module:
    """Load ``path`` into ``net`` in place (see the module docstring); returns ``net``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: shapes or names differ (the message lists the layers).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{field}.weights_path={path!r}: no such file")
    raw = torch.load(file, map_location="cpu", weights_only=True)
    own = net.state_dict()
    state = _strip_to(_state_dict(raw, path), set(own))
    skipped = tuple(skip)

    def kept(k: str) -> bool:
        return not k.startswith(skipped) if skipped else True

    shape = [f"{k}: file {list(v.shape)} vs net {list(own[k].shape)}"
             for k, v in state.items() if k in own and kept(k) and v.shape != own[k].shape]
    missing = [k for k in own if kept(k) and k not in state]
    unexpected = [k for k in state if kept(k) and k not in own]
    if shape or missing or unexpected:
        lines = []
        if shape:
            lines.append(f"shape mismatch in {len(shape)} layer(s): " + "; ".join(shape[:10]))
        if missing:
            lines.append(f"{len(missing)} layer(s) of the net not in the file: {missing[:10]}")
        if unexpected:
            lines.append(f"{len(unexpected)} layer(s) in the file not in the net: {unexpected[:10]}")
        hint = sorted({k.split(".")[0] + "." for k in [s.split(":")[0] for s in shape] + missing})
        raise ValueError(
            f"{field}.weights_path={path!r} does not fit {type(net).__name__}: " + " | ".join(lines)
            + (f". To keep layers at their fresh init (e.g. a new classification head) set "
               f"{field}.weights_skip: {hint}" if hint else "")
        )
    net.load_state_dict({k: v for k, v in state.items() if kept(k)}, strict=not skipped)
    return net
