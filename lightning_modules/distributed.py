"""The DDP helpers every layer above uses: world size and rank, an OR over ranks, a sum of named
values over ranks, and gathers of per-rank rows of different lengths and of picklable objects.
Each is the identity without a process group, so the same code runs on one CPU process and on
N GPUs; the rest of the project calls no ``torch.distributed`` collective itself."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_objects", "all_gather_rows", "any_rank", "is_distributed", "rank", "sum_over_ranks",
           "world_size"]


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` OR-reduced over ranks (a one-element all-reduce on ``device``), so that every
    rank takes the same decision (one rank alone raising or skipping would leave the others
    waiting in the next collective)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_rows(rows: Tensor) -> Tensor:
    """Concatenate the ``[n_r, F]`` tensors of all ranks (any ``n_r``, same ``F`` and dtype), in
    rank order: ``[sum_r n_r, F]``."""
    world = world_size()
    if world == 1:
        return rows
    n = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = rows.new_zeros((max(counts), rows.shape[1]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)])


def _collective_device() -> torch.device:
    """Where a tensor for a collective must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each named value summed over ranks, in float64 (counts up to 2**53 stay exact); every
    rank must pass the same keys. A copy of ``values`` (as floats) without a process group."""
    if not is_distributed():
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=_collective_device(), dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (any picklable value), in rank order, on every rank; ``[obj]``
    without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts
