"""What every detector family shares: torchvision's call convention and its checks, the mode
flags that select losses, the seeded RNG of the loss path, and the box-matching rules of the
DAG inputs (:meth:`~lightning_modules.nets.detector_families.DetectorFamily.matched_predictions`).

Functions only; they know nothing of the wrapper or of a family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd
from torchvision.ops import box_iou

from attacks.mode import is_norm_with_stats

Targets = list[dict[str, Tensor]]


def call_detector(det: nn.Module, images: list[Tensor], targets: Targets | None = None) -> Any:
    """``det(images[, targets])`` with a clear error when the detector does not take torchvision's
    call convention (a list of ``[C, H, W]`` images, and the targets in train mode)."""
    try:
        return det(images) if targets is None else det(images, targets)
    except TypeError as err:
        raise ValueError(
            f"detection: {type(det).__name__} must take torchvision's detector call "
            "(`model(images: list[Tensor[C, H, W]], targets)` -> a dict of losses in train mode, "
            f"`model(images)` -> one dict per image in eval mode): {err}") from None


def checked_losses(out: Any) -> dict[str, Tensor]:
    """A generic detector's train-mode output: ``{name: scalar loss}``, else a clear error."""
    if not (isinstance(out, Mapping) and out
            and all(isinstance(v, Tensor) and v.numel() == 1 for v in out.values())):
        got = (f"a dict with {sorted((k, tuple(v.shape)) for k, v in out.items() if isinstance(v, Tensor))}"
               if isinstance(out, Mapping) else type(out).__name__)
        raise ValueError("detection: in train mode, given (images, targets), a detector must return a "
                         f"non-empty dict of scalar loss tensors (torchvision's form); got {got}")
    return {k: v.reshape(()) for k, v in out.items()}


def checked_detections(out: Any, n: int) -> Targets:
    """A generic detector's eval-mode output: ``n`` dicts with ``boxes`` ``[N, 4]``, ``scores``
    ``[N]``, ``labels`` ``[N]`` (and optionally ``logits`` ``[N, K]``), else a clear error."""
    form = ("one dict per image with 'boxes' [N, 4] (xyxy pixels), 'scores' [N], 'labels' [N] "
            "(optional: 'logits' [N, K])")
    if not (isinstance(out, (list, tuple)) and len(out) == n and all(isinstance(d, Mapping) for d in out)):
        got = f"{len(out)} items" if isinstance(out, (list, tuple)) else type(out).__name__
        raise ValueError(f"detection: in eval mode a detector must return {form} for {n} images; got {got}")
    for i, d in enumerate(out):
        missing = [k for k in ("boxes", "scores", "labels") if not isinstance(d.get(k), Tensor)]
        if missing:
            raise ValueError(f"detection: image {i}'s detections lack {missing} (tensors); expected {form}")
        m = d["boxes"].shape[0] if d["boxes"].ndim == 2 else -1
        shapes_ok = (d["boxes"].ndim == 2 and d["boxes"].shape[1] == 4 and d["scores"].shape == (m,)
                     and d["labels"].shape == (m,))
        if "logits" in d:
            z = d["logits"]
            shapes_ok = shapes_ok and isinstance(z, Tensor) and z.ndim == 2 and z.shape[0] == m
        if not shapes_ok:
            shapes = {k: tuple(v.shape) for k, v in d.items() if isinstance(v, Tensor)}
            raise ValueError(f"detection: image {i}'s detections have shapes {shapes}; expected {form}")
    return list(out)


@contextlib.contextmanager
def set_flags(modules: Sequence[nn.Module | None], training: bool) -> Iterator[None]:
    """Set ``.training`` of exactly these modules (not their children) and restore it."""
    saved = [(m, m.training) for m in modules if m is not None]
    try:
        for m, _ in saved:
            m.training = training
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def logic_flags(model: nn.Module, training: bool) -> Iterator[None]:
    """Flags of every module that is not a norm-with-statistics or dropout layer (for the
    generic per-image fallback, where we cannot tell which module selects losses)."""
    chosen = [m for m in model.modules()
              if not is_norm_with_stats(m) and not isinstance(m, _DropoutNd)]
    with set_flags(chosen, training):
        yield


@contextlib.contextmanager
def maybe_fork_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block on a forked RNG seeded with ``seed`` (``None``: the global RNG as is)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def match_by_iou(boxes: Tensor, target: dict[str, Tensor], iou_thresh: float) -> tuple[Tensor, Tensor]:
    """``boxes`` ``[N, 4]`` -> the class ``[N]`` (-1: none) and box ``[N, 4]`` (0: none) of the
    ground-truth object each overlaps most, when that IoU is ``>= iou_thresh``."""
    gt = target["boxes"]
    if not len(gt) or not len(boxes):
        return (torch.full((len(boxes),), -1, dtype=torch.long, device=boxes.device),
                boxes.new_zeros(len(boxes), 4))
    iou, j = box_iou(boxes, gt).max(dim=1)
    ok = iou >= iou_thresh
    cls = torch.where(ok, target["labels"][j], torch.full_like(j, -1))
    return cls, torch.where(ok[:, None], gt[j], torch.zeros_like(gt[j]))


def match_by_centre(boxes: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``boxes`` ``[N, 4]`` -> the class ``[N]`` (-1: none) and box ``[N, 4]`` (0: none) of the
    smallest ground-truth box containing each box's centre (FCOS's assignment without centre
    sampling and scale ranges)."""
    gt = target["boxes"]
    if not len(gt):
        return (torch.full((len(boxes),), -1, dtype=torch.long, device=boxes.device),
                boxes.new_zeros(len(boxes), 4))
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = ((c[:, None, 0] > gt[None, :, 0]) & (c[:, None, 0] < gt[None, :, 2])
              & (c[:, None, 1] > gt[None, :, 1]) & (c[:, None, 1] < gt[None, :, 3]))
    area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    score = torch.where(inside, -area[None, :], torch.full_like(area, float("-inf"))[None, :])
    best, j = score.max(dim=1)
    ok = torch.isfinite(best)
    cls = torch.where(ok, target["labels"][j], torch.full_like(j, -1))
    return cls, torch.where(ok[:, None], gt[j], torch.zeros_like(gt[j]))


def pad_matched(preds: list[Tensor], tgts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image ``[L_i, K + 4]`` predictions and ``[L_i, 5]`` targets -> ``[B, L, K + 4]`` and
    ``[B, L, 5]``, zero-padded (targets: class ``-1``, box 0) to the longest image (at least 1)."""
    n = max([1] + [len(p) for p in preds])
    pred = torch.stack([F.pad(v, (0, 0, 0, n - v.shape[0])) for v in preds])
    target = torch.stack([F.pad(v, (0, 0, 0, n - v.shape[0]), value=-1.0) for v in tgts])
    target[..., 1:] = target[..., 1:].clamp_min(0)
    return pred, target


def matched_row(cls: Tensor, gt: Tensor) -> Tensor:
    """``[N]`` matched classes and ``[N, 4]`` boxes -> the ``[N, 5]`` target rows."""
    return torch.cat([cls[:, None].to(gt.dtype), gt], dim=1)
