"""Shared machinery for every medrobust datamodule: splits, loaders, collation.

A concrete datamodule implements :meth:`BaseDataModule.build_split` (returning a map-style
``Dataset`` whose items are dicts following the batch contract in :mod:`datamodules.info`) and
:meth:`BaseDataModule.build_info`. Everything else — batch size, workers, DDP sharding (left to
Lightning's distributed sampler), collation of ragged detection targets, the training
augmentations every datamodule stores — lives here once.

The loader options are declared once, here: a datamodule names its own ``batch_size`` default
and forwards the rest as ``**loader`` to ``super().__init__``; LightningCLI (jsonargparse)
follows that call and offers ``num_workers`` / ``pin_memory`` / ``eval_batch_size`` with this
class's defaults and docs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.info import DataInfo
from datamodules.resumable import EpochRandomSampler, ResumableDataLoader
from datamodules.splits import SPLITS, Split
from datamodules.transforms import AugmentConfig, as_augment_config


def collate_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts into a batch dict.

    Tensors of equal shape are stacked; ``boxes`` and ``labels`` of detection samples (ragged:
    one ``[N_i, 4]`` / ``[N_i]`` per image) stay lists; strings and other objects become lists.
    """
    if not items:
        raise ValueError("collate_batch got an empty list of samples")
    batch: dict[str, Any] = {}
    ragged = {"boxes", "labels"} if "boxes" in items[0] else set()
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ragged or not isinstance(values[0], torch.Tensor):
            batch[key] = values
        else:
            try:
                batch[key] = torch.stack(values)
            except RuntimeError as err:
                shapes = sorted({tuple(v.shape) for v in values})
                raise ValueError(
                    f"cannot stack batch field {key!r}: samples have shapes {shapes}; "
                    "resize images to a common size (image_size) in the datamodule"
                ) from err
    return batch


def delivered_size(wanted: Sequence[int] | None,
                   sizes: Iterable[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The size images are delivered at: ``wanted`` (a datamodule's resize option) when given,
    else the one size all ``sizes`` (the images' sizes on disk) share, else ``None``."""
    if wanted is not None:
        return tuple(int(s) for s in wanted)
    found = set(sizes)
    return next(iter(found)) if len(found) == 1 else None


class BaseDataModule(L.LightningDataModule):
    """Base of all medrobust datamodules.

    Args:
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster GPU transfer.
        eval_batch_size: batch size for val/test/predict (defaults to ``batch_size``).
        augment: training augmentations (an :class:`AugmentConfig` or a dict of its fields),
            kept as :attr:`augment` (``None`` = none).
    """

    def __init__(
        self,
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = as_augment_config(augment) if augment is not None else None
        self._datasets: dict[str, Dataset] = {}
        self._info: DataInfo | None = None

    # --- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def build_split(self, split: Split) -> Dataset:
        """Return the map-style dataset of ``split`` (one of ``train``, ``val``, ``test``)."""

    @abstractmethod
    def build_info(self) -> DataInfo:
        """Describe the data (task, channels, classes…). Must be cheap: called before setup."""

    # --- shared ------------------------------------------------------------------------------
    @property
    def info(self) -> DataInfo:
        """The :class:`DataInfo` the model is built from (computed once)."""
        if self._info is None:
            self._info = self.build_info()
        return self._info

    def dataset(self, split: Split) -> Dataset:
        """The dataset of ``split``, built on first use and cached."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._datasets:
            ds = self.build_split(split)
            if len(ds) == 0:
                raise ValueError(f"{type(self).__name__}: the {split!r} split is empty")
            self._datasets[split] = ds
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",)}.get(stage or "", SPLITS)
        for split in wanted:
            self.dataset(split)

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        dataset, cls, order = self.dataset(split), DataLoader, {"shuffle": shuffle}
        if split == "train":  # order fixed by (seed, epoch), resumable mid-epoch: resumable.py
            cls = ResumableDataLoader
            order = {"sampler": EpochRandomSampler(dataset)} if shuffle else {"shuffle": False}
        return cls(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            **order,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
