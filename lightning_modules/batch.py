"""The batch contract at the module boundary: a dict with the task's keys.

Every medrobust datamodule yields ``{"image": [B, C, *spatial], <targets>, "index": [B]}``. A
user's own data often comes as tuples (``TensorDataset`` gives ``(x, y)``); without a check it
fails deep inside a loss with a ``TypeError`` about tuple indices. :func:`check_batch` runs in
the ``on_*_batch_start`` hooks of ``TaskModule`` and names the expected keys instead, and
:class:`DictDataset` is the one-line fix::

    train = DictDataset(TensorDataset(x, y), keys=("image", "label"))   # adds "index"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


def _describe(batch: Any) -> str:
    if isinstance(batch, (tuple, list)):
        parts = [
            f"Tensor{list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__ for x in batch
        ]
        return f"a {type(batch).__name__} of {len(batch)} ({', '.join(parts)})"
    if isinstance(batch, torch.Tensor):
        return f"a Tensor{list(batch.shape)}"
    return f"a {type(batch).__name__}"


def check_batch(batch: Any, task: str, owner: str) -> Any:
    """Return ``batch`` if it is a mapping with the task's keys (``DataTask.batch_keys``: a
    task name the registry does not know needs only ``image``); raise otherwise.

    Raises:
        TypeError: ``batch`` is not a mapping (e.g. a ``TensorDataset`` tuple).
        KeyError: keys are missing (the message lists them and the keys found).
    """
    from datamodules.tasks import task_named, task_names

    keys = task_named(task).batch_keys if task in task_names() else ("image",)
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"{owner} expects each batch to be a dict with keys {list(keys)} (+ 'index' for AMAT); "
            f"got {_describe(batch)}. Tuple datasets such as TensorDataset: wrap them, e.g. "
            f"lightning_modules.batch.DictDataset(dataset, keys={tuple(keys)!r})"
        )
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(
            f"{owner}: the batch lacks {missing}; a {task} batch needs {list(keys)}, got keys "
            f"{sorted(map(str, batch))}"
        )
    return batch


class DictDataset(Dataset):
    """A tuple dataset as a dict dataset: item ``i`` ``(a, b, …)`` → ``{keys[0]: a, keys[1]: b,
    …, "index": i}`` (``index`` is what AMAT keys its per-sample margins by)."""

    def __init__(self, dataset: Dataset, keys: Sequence[str] = ("image", "label")) -> None:
        self.dataset = dataset
        self.keys = tuple(keys)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != len(self.keys):
            raise ValueError(
                f"DictDataset: item {i} is {_describe(item)}, expected a tuple of {len(self.keys)} "
                f"for keys {list(self.keys)}"
            )
        out = dict(zip(self.keys, item))
        out.setdefault("index", torch.tensor(i))
        return out
