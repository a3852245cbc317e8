"""The data :func:`medrobust.evaluate` takes, as a datamodule: tensors ``(x, y)`` as the task
object builds their items (:class:`TensorDataModule`), a manifest file, a data folder or a YAML
datamodule config (:func:`as_datamodule`); a medrobust datamodule as it is."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["FOLDER_MANIFESTS", "TaskTensorDataset", "TensorDataModule", "as_datamodule"]


class TaskTensorDataset(Dataset):
    """Items of a task's batch contract from tensors (``index`` = position; the targets as the
    task object builds them: :meth:`datamodules.tasks.DataTask.tensor_item`)."""

    def __init__(self, x: Tensor, y: Any, task: Any) -> None:
        from datamodules.tasks import task_named

        self.x, self.y, self.task = x, y, task_named(task, "evaluate")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "index": torch.tensor(i), **self.task.tensor_item(self.y[i])}


class TensorDataModule(L.LightningDataModule):
    """Tensors ``(x, y)`` as a datamodule whose ``test`` split (also ``val``) holds them all."""

    def __init__(self, x: Tensor, y: Any, task: Any, info: Any, batch_size: int = 32) -> None:
        super().__init__()
        self._dataset = TaskTensorDataset(x, y, task)
        self.info, self.batch_size, self.eval_batch_size = info, batch_size, batch_size

    def dataset(self, split: str) -> Dataset:
        return self._dataset

    def test_dataloader(self) -> DataLoader:
        from datamodules.base import collate_batch

        return DataLoader(self._dataset, batch_size=self.batch_size, collate_fn=collate_batch)

    val_dataloader = test_dataloader


def as_datamodule(data: Any, task: str, batch_size: int | None = None, split: str = "test") -> Any:
    """A medrobust datamodule (returned as is), a manifest path (a
    :class:`~datamodules.manifest.ManifestDataModule`), a data folder (a manifest in it, or
    segmentation's ``images/`` + ``masks/``: :func:`_datamodule_from_folder`) or a YAML datamodule
    config (``{class_path, init_args}``). Tensors are handled by :func:`evaluate` (they need the model).

    A manifest path is the evaluation set: without a ``split`` column every row is in ``split``
    (no seeded train / val / test split, no split file written beside it); with one, its
    ``split`` rows are evaluated. Images keep their size (the manifest's common size)."""
    if isinstance(data, L.LightningDataModule):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        kwargs: dict[str, Any] = {"eval_batch_size": batch_size} if batch_size else {}
        # the evaluation set: every sample in the evaluated split, no split file written
        kwargs.update(split_fractions=(0.0, 0.0, 1.0) if split == "test" else (0.0, 1.0, 0.0), split_file=None)
        if path.is_dir():
            return _datamodule_from_folder(path, task, kwargs)
        if not path.is_file():
            raise FileNotFoundError(f"evaluate: data file {str(path)!r} does not exist")
        if path.suffix in (".yaml", ".yml"):
            return _datamodule_from_config(path)
        from datamodules.manifest import ManifestDataModule

        return ManifestDataModule(manifest=str(path), task=task, **kwargs)
    raise TypeError(f"evaluate: data must be a datamodule, a manifest / config path or tensors (x, y), "
                    f"got {type(data).__name__}")


#: manifest names :func:`as_datamodule` looks for in a data folder
FOLDER_MANIFESTS = ("manifest.csv", "manifest.tsv", "manifest.json")


def _datamodule_from_folder(path: Path, task: str, kwargs: dict[str, Any]) -> Any:
    """A data folder in a layout medrobust reads: one holding a manifest (``manifest.csv`` /
    ``.tsv`` / ``.json``), or, for segmentation, ``images/`` and ``masks/`` folders paired by
    file stem (:class:`~datamodules.manifest.folders.PairedFoldersDataModule`)."""
    from datamodules.manifest import ManifestDataModule

    for name in FOLDER_MANIFESTS:
        if (path / name).is_file():
            return ManifestDataModule(manifest=str(path / name), task=task, **kwargs)
    from datamodules.tasks import task_named

    found = task_named(task, "evaluate").folder_datamodule(path, kwargs)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"evaluate: data folder {str(path)!r} has no layout medrobust reads: a manifest "
        f"({' / '.join(FOLDER_MANIFESTS)}) or, for segmentation, images/ and masks/ folders paired by "
        "file stem; or give a manifest or datamodule config file")


def _datamodule_from_config(path: Path) -> Any:
    import yaml

    from lightning_modules.nets.builder import import_object

    cfg = yaml.safe_load(path.read_text())
    if isinstance(cfg, Mapping) and "data" in cfg:
        cfg = cfg["data"]
    if not (isinstance(cfg, Mapping) and "class_path" in cfg):
        raise ValueError(f"evaluate: {str(path)!r} is not a datamodule config ({{class_path, init_args}}, "
                         "or a run config with a data: section)")
    return import_object(str(cfg["class_path"]))(**dict(cfg.get("init_args") or {}))
