"""Machinery shared by the evaluation callbacks: the fixed subset, its DDP sharding, gradients
inside Lightning's loops, and a guard that hands the model back exactly as it was found.

Nothing here knows a task: a task module is reached only through
:class:`lightning_modules.protocol.RobustTask`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attacks.tree import tree_map
from lightning_modules.protocol import RobustTask

_NO_FALLBACK = object()


def metric_direction(task: RobustTask, metric: str, fallback: Any = _NO_FALLBACK) -> Any:
    """``True`` when larger values of ``metric`` are better, as the task's metric object
    declares it (:meth:`~lightning_modules.protocol.RobustTask.metric_higher_is_better`; never
    guessed from the name). Where the task cannot say (no metric object reports ``metric``, or
    it declares no ``higher_is_better``): ``fallback`` if given, else the task's ``ValueError``."""
    try:
        return bool(task.metric_higher_is_better(metric))
    except ValueError:
        if fallback is _NO_FALLBACK:
            raise
        return fallback


def check_robust_task(pl_module: Any, who: str) -> RobustTask:
    """Fail early, naming what is missing, when ``pl_module`` does not implement the protocol.

    A module of the user's own passes through its ``robust_task`` adapter
    (:class:`callbacks.adapter.RobustTaskAdapter`), which is what is returned then."""
    from callbacks.adapter import robust_task_of

    pl_module = robust_task_of(pl_module)
    needed = ("task", "data_info", "attack_model", "per_sample_loss", "is_violated",
              "build_metrics", "update_metrics", "predict_for_display", "metric_higher_is_better")
    missing = [n for n in needed if not hasattr(pl_module, n)]
    if missing:
        raise TypeError(
            f"{who} needs a LightningModule implementing lightning_modules.protocol.RobustTask "
            f"or a `robust_task = callbacks.RobustTaskAdapter(self, model, per_sample_loss, "
            f"metrics)` attribute; {type(pl_module).__name__} lacks {missing}"
        )
    return pl_module  # type: ignore[return-value]


def method_name(pl_module: Any) -> str:
    """``pl_module.method.name`` (the training method: clean, sat, amat…) or ``"unknown"``."""
    method = getattr(pl_module, "method", None)
    name = getattr(method, "name", None)
    return str(name) if name else "unknown"


def format_eps(eps: float) -> str:
    """Stable, short text for ε in metric keys: ``0.004 -> "0.004"``, ``1/255 -> "0.00392157"``."""
    return f"{float(eps):g}" if abs(eps) >= 1e-4 or eps == 0 else f"{float(eps):.6g}"


# --- the fixed subset -----------------------------------------------------------------------------
def select_subset(num_samples: int, subset: int | float | None, seed: int) -> list[int]:
    """Indices of the evaluation subset: the first ``n`` of a seeded permutation, sorted.

    Args:
        num_samples: size of the split.
        subset: a count (``int >= 1``), a fraction in ``(0, 1]`` (``float``) or ``None`` (all).
        seed: seed of the permutation; the same seed gives the same samples every epoch, on
            every rank and in every run, independent of the loader's shuffling.
    """
    if num_samples < 1:
        raise ValueError("select_subset: the split is empty")
    if subset is None:
        n = num_samples
    elif isinstance(subset, bool):
        raise ValueError(f"subset must be an int count or a float fraction, got {subset!r}")
    elif isinstance(subset, int):
        if subset < 1:
            raise ValueError(f"subset: a count must be >= 1, got {subset}")
        n = min(subset, num_samples)
    else:
        if not 0.0 < float(subset) <= 1.0:
            raise ValueError(f"subset: a fraction must be in (0, 1], got {subset}")
        n = max(1, round(float(subset) * num_samples))
    # The one generator not made by attacks.seeding.seeded_generator: the subset is part of
    # what a record states (``subset``, ``seed``), and a plain ``manual_seed(seed)`` keeps the
    # samples of every earlier record reproducible (and paired comparisons with them possible).
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(num_samples, generator=gen)[:n]
    # Sorted: the subset is a set; its order only fixes the batch composition.
    return sorted(perm.tolist())


def shard_batches(
    indices: Sequence[int], batch_size: int, rank: int, world_size: int
) -> list[tuple[int, list[int], bool]]:
    """This rank's batches of the subset: ``(global batch number, dataset indices, counted)``.

    The subset is cut into the *same* batches whatever the world size, and whole batches are
    dealt round-robin to the ranks. Each batch is therefore computed with identical inputs and
    identical random streams (seeded by its global number) on 1 or N processes, which is what
    makes the numbers equal. Ranks that get one batch fewer run a copy of the last batch with
    ``counted=False`` so every rank makes the same number of forwards (collectives inside the
    model, e.g. SyncBatchNorm, cannot deadlock); such padding never reaches a metric.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    per_rank = math.ceil(len(batches) / world_size)
    mine = [(b, batches[b], True) for b in range(rank, len(batches), world_size)]
    while len(mine) < per_rank:
        mine.append((len(batches) - 1, batches[-1], False))
    return mine


def subset_loader(
    dataset: Dataset, batches: Sequence[Sequence[int]], collate_fn: Callable | None, num_workers: int = 0
) -> DataLoader:
    """A loader yielding exactly ``batches`` (lists of dataset indices) in order."""
    return DataLoader(
        dataset,
        batch_sampler=[list(b) for b in batches],
        collate_fn=collate_fn,
        num_workers=num_workers,
    )


def resolve_dataset(trainer: Any, split: str) -> tuple[Dataset, Callable | None, int | None]:
    """``(dataset, collate_fn, eval batch size)`` of ``split`` for the trainer's data.

    Prefers ``trainer.datamodule.dataset(split)`` (medrobust datamodules); falls back to the
    dataset behind the trainer's own loader for that split.
    """
    dm = getattr(trainer, "datamodule", None)
    if dm is not None and hasattr(dm, "dataset"):
        from datamodules.base import collate_batch

        bs = getattr(dm, "eval_batch_size", None) or getattr(dm, "batch_size", None)
        return dm.dataset(split), collate_batch, bs
    loaders = trainer.val_dataloaders if split == "val" else trainer.test_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    if not isinstance(loaders, DataLoader):
        raise RuntimeError(
            f"cannot find the {split!r} dataset: use a medrobust datamodule (with .dataset(split)) "
            f"or give the trainer a DataLoader for {split!r}"
        )
    return loaders.dataset, loaders.collate_fn, loaders.batch_size


def to_autograd_safe(obj: Any, device: torch.device) -> Any:
    """Move a batch to ``device``, cloning every tensor so none is an inference tensor.

    Tensors created under ``torch.inference_mode()`` cannot be saved for backward; the clone is
    made inside ``inference_mode(False)`` (see :func:`gradients_enabled`), so it is a normal
    tensor whatever mode the caller ran in. Cheap next to an attack.
    """
    return tree_map(lambda t: t.to(device, non_blocking=False).clone(), obj)


@contextmanager
def gradients_enabled() -> Iterator[None]:
    """Gradients on, whatever Lightning's loop set: ``inference_mode(True)`` (the default) or
    ``no_grad`` (``Trainer(inference_mode=False)``). Both are undone on exit."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Evaluation must not shift the training run's random streams (dropout, loader seeds)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=True):
        yield


class ModelStateGuard:
    """Snapshot of everything evaluation could disturb; :meth:`restore` puts it back.

    Covers the ``training`` flag of every submodule, ``requires_grad`` and ``.grad`` of every
    parameter, and the values of every buffer (BatchNorm statistics, AMAT margins…).

    While guarded, parameters are frozen (``requires_grad=False``) and their ``.grad`` detached
    (set to ``None``): attacks then build no graph towards the weights (less memory, faster),
    and even a misbehaving ``.backward()`` cannot accumulate into a gradient the optimiser will
    use. The saved ``.grad`` *objects* are re-attached, so optimiser state keyed on them is intact.
    """

    def __init__(self, *modules: nn.Module) -> None:
        seen_m: set[int] = set()
        self._modes: list[tuple[nn.Module, bool]] = []
        self._params: list[tuple[nn.Parameter, bool, torch.Tensor | None]] = []
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen_p: set[int] = set()
        seen_b: set[int] = set()
        for root in modules:
            for m in root.modules():
                if id(m) in seen_m:
                    continue
                seen_m.add(id(m))
                self._modes.append((m, m.training))
            for p in root.parameters():
                if id(p) not in seen_p:
                    seen_p.add(id(p))
                    self._params.append((p, p.requires_grad, p.grad))
            for b in root.buffers():
                if id(b) not in seen_b:
                    seen_b.add(id(b))
                    self._buffers.append((b, b.detach().clone()))

    def freeze(self) -> None:
        """Parameters without gradients and without ``.grad`` for the evaluation."""
        for p, _, _ in self._params:
            p.requires_grad_(False)
            p.grad = None

    def restore(self) -> None:
        with torch.no_grad():
            for buf, saved in self._buffers:
                if buf.shape == saved.shape:
                    buf.copy_(saved)
        for p, flag, grad in self._params:
            p.grad = grad
            p.requires_grad_(flag)
        for m, flag in self._modes:
            if m.training != flag:
                m.training = flag


@contextmanager
def guarded_model(*modules: nn.Module) -> Iterator[ModelStateGuard]:
    """Freeze ``modules`` for evaluation and restore them exactly on exit (even on error)."""
    guard = ModelStateGuard(*modules)
    with ExitStack() as stack:
        stack.callback(guard.restore)
        guard.freeze()
        yield guard


def set_eval_mode(*modules: nn.Module) -> None:
    """Every submodule in eval mode (metric forwards); :class:`ModelStateGuard` restores it."""
    for root in modules:
        for m in root.modules():
            if m.training:  # (Module.__setattr__ is slow; skip flags that are right already)
                m.training = False



@contextmanager
def attack_ready(device: torch.device, *modules: nn.Module) -> Iterator[ModelStateGuard]:
    """What an evaluation callback attacks in: the training run's random streams kept
    (:func:`preserved_rng`), gradients on inside Lightning's loops (:func:`gradients_enabled`),
    ``modules`` frozen and in eval mode (:func:`guarded_model`, :func:`set_eval_mode`), and all
    of it restored exactly on exit."""
    with preserved_rng(device), gradients_enabled(), guarded_model(*modules) as guard:
        set_eval_mode(*modules)
        yield guard

def scalar_metrics(values: dict[str, Any], prefix: str = "", postfix: str = "") -> dict[str, float]:
    """Plain ``{name: float}`` from a ``MetricCollection.compute()`` result.

    Drops the collection's prefix/postfix (names in ``robustness.json`` are the task's metric
    names), and keeps only scalars (``MeanAveragePrecision`` also returns per-class tensors).
    """
    out: dict[str, float] = {}
    for key, value in values.items():
        name = key
        if prefix and name.startswith(prefix):
            name = name[len(prefix) :]
        if postfix and name.endswith(postfix):
            name = name[: -len(postfix)]
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.detach().float().cpu().item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def compute_metrics(metrics: Any) -> dict[str, float]:
    """``compute()`` a task's ``MetricCollection`` (synchronised across ranks by torchmetrics)."""
    return scalar_metrics(
        metrics.compute(), getattr(metrics, "prefix", "") or "", getattr(metrics, "postfix", "") or ""
    )


def world(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of the trainer (``(0, 1)`` without a trainer)."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)
