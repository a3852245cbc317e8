"""One walker for batch structures: dicts / lists / tuples (namedtuples too) of tensors.

Batches (``{"image": Tensor[B, C, H, W], "boxes": [Tensor[n_i, 4], …], …}``) and task outputs
(a tensor, a dict of tensors, a detector's list of dicts) are nested containers with tensors at
the leaves. Moving them to a device, detaching, cloning inference tensors and picking samples
are all one walk; it lives here, in the lowest layer (``attacks/`` imports nothing of
Lightning, a task or a dataset), so every layer above may use it.

- :func:`tree_map` — apply a function to every tensor, keep the structure;
- :func:`tree_leaves` — iterate over the tensors;
- :func:`clone_inference` — clone the inference tensors (so autograd can save them);
- :func:`select_rows` — the samples ``idx`` of a batch (per-sample tensors and lists).

Containers: any ``Mapping`` (rebuilt as a ``dict``), ``list``, ``tuple`` and namedtuples (rebuilt
as their own type). Every other leaf (numbers, strings, ``None``, arrays) is returned untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["clone_inference", "select_rows", "tree_leaves", "tree_map"]


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """``tree`` with every tensor ``t`` replaced by ``fn(t)``; same nesting, new containers.

    Example::

        batch = tree_map(lambda t: t.to(device), batch)      # move a batch
        out = tree_map(Tensor.detach, out)                    # detach a task output
    """
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple: positional fields
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def tree_leaves(tree: Any) -> Iterator[Tensor]:
    """Every tensor of ``tree``, depth first, in container order."""
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, Mapping):
        for v in tree.values():
            yield from tree_leaves(v)
    elif isinstance(tree, list | tuple):
        for v in tree:
            yield from tree_leaves(v)


def clone_inference(tree: Any) -> Any:
    """Clone the inference tensors of ``tree`` (e.g. a Lightning batch after leaving
    ``inference_mode``) so autograd can save them; a structure without any is returned as is
    (no copy)."""
    if not any(t.is_inference() for t in tree_leaves(tree)):
        return tree
    return tree_map(lambda t: t.clone() if t.is_inference() else t, tree)


def select_rows(batch: Any, idx: Tensor, size: int) -> Any:
    """The samples ``idx`` (``LongTensor[k]``) of a batch of ``size`` samples.

    Per-sample entries are tensors whose first dim is ``size`` (``image[B, …]``, ``label[B]``)
    and lists of length ``size`` (a detection batch's ``boxes``: one ``Tensor[n_i, 4]`` each);
    they are indexed. Everything else (a scalar, a tensor of another length, metadata) is kept
    as it is, and dicts are walked. Lists are *not* walked: a list of ``size`` items is the
    per-sample axis itself.
    """
    if isinstance(batch, Tensor):
        return batch[idx] if batch.ndim and batch.shape[0] == size else batch
    if isinstance(batch, Mapping):
        return {k: select_rows(v, idx, size) for k, v in batch.items()}
    if isinstance(batch, list) and len(batch) == size:
        return [batch[int(i)] for i in torch.as_tensor(idx).reshape(-1)]
    return batch
