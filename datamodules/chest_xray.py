"""Chest X-ray images sorted into class folders (Kermany et al. pneumonia layout).

Layout::

    root/train/NORMAL/*.jpeg     root/train/PNEUMONIA/*.jpeg
    root/val/…                   root/test/…

Class names are the training sub-folder names, sorted (``NORMAL`` = 0, ``PNEUMONIA`` = 1).
Images are read as grey (one channel). Kermany's official ``val`` folder holds only 16 images;
``val_fraction`` draws a seeded, stratified validation set from ``train`` instead.
Files whose extension is not an image extension (``.DS_Store``…) are not samples and are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.base import BaseDataModule
from datamodules.imagefiles import (
    IMAGE_EXTENSIONS,
    FileRecord,
    ImageFileDataset,
    require_dir,
    screened_file_dataset,
)
from datamodules.info import DataInfo
from datamodules.paths import resolve_data_path
from datamodules.samples import OnBadSample, check_on_bad_sample
from datamodules.splits import Split, split_by_id
from datamodules.transforms import AugmentConfig


class ChestXrayFolderDataModule(BaseDataModule):
    """Binary (or any multi-class) chest X-ray classification from class folders.

    Args:
        root: folder holding ``train``, ``val``, ``test``; ``None`` =
            ``$MEDROBUST_DATA/chest_xray``.
        image_size: every image is resized to ``(H, W)``.
        augment: training augmentations.
        val_fraction: if set, the validation split is this stratified fraction of ``train``
            (seeded by ``split_seed``, saved to ``split_file`` if given) and the ``val`` folder
            is not used.
        split_seed / split_file: see ``val_fraction``.
        on_bad_sample: ``"error"`` (default) or ``"skip"`` (decodes every file once at setup and
            leaves unreadable images out with a warning naming them).
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: tuple[int, int] = (224, 224),
        augment: AugmentConfig | None = None,
        val_fraction: float | None = None,
        split_seed: int = 0,
        split_file: str | None = None,
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 32,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.root = root
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.split_file = split_file
        self._classes: list[str] | None = None
        self._folders: dict[str, list[FileRecord]] = {}
        self._carved: dict[str, list[FileRecord]] | None = None

    @property
    def data_root(self) -> Path:
        return resolve_data_path(self.root, "chest_xray", "chest X-ray folders")

    def class_names(self) -> list[str]:
        """Sorted sub-folder names of ``train`` (the class order)."""
        if self._classes is None:
            train = require_dir(self.data_root / "train", "chest X-ray training folder")
            classes = sorted(p.name for p in train.iterdir()
                             if p.is_dir() and not p.name.startswith("."))
            if len(classes) < 2:
                raise ValueError(f"chest X-ray: {train} must hold one sub-folder per class "
                                 f"(e.g. NORMAL, PNEUMONIA), found {classes}")
            self._classes = classes
        return list(self._classes)

    def folder_records(self, folder: str) -> list[FileRecord]:
        """Every image under ``root/<folder>/<class>/`` with its class index."""
        if folder in self._folders:
            return self._folders[folder]
        classes = self.class_names()
        base = require_dir(self.data_root / folder, f"chest X-ray {folder!r} folder")
        found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"chest X-ray: {base} has class folders {unknown} that train "
                             f"does not have (train classes: {classes})")
        records = []
        for label, name in enumerate(classes):
            class_dir = base / name
            if not class_dir.is_dir():
                continue  # a split may lack a class; an empty split is caught below
            for path in sorted(class_dir.iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    records.append(FileRecord(f"{folder}/{name}/{path.name}", path, None, label))
        if not records:
            raise ValueError(f"chest X-ray: no images ({', '.join(IMAGE_EXTENSIONS)}) under "
                             f"{base}/<class>/")
        self._folders[folder] = records
        return records

    def _split_records(self, split: Split) -> list[FileRecord]:
        if self.val_fraction is None or split == "test":
            return self.folder_records(split)
        if self._carved is None:
            self._carved = split_by_id({r.id: r for r in self.folder_records("train")},
                                       (1.0 - self.val_fraction, self.val_fraction, 0.0),
                                       self.split_seed, self.split_file,
                                       stratum=lambda r: r.label)  # type: ignore[arg-type,return-value]
        return self._carved[split]

    def build_info(self) -> DataInfo:
        names = self.class_names()
        return DataInfo(task="classification", in_channels=1, image_size=self.image_size,
                        num_classes=len(names), class_names=names,
                        num_train=len(self._split_records("train")))

    def build_split(self, split: Split) -> ImageFileDataset:
        return screened_file_dataset(
            self._split_records(split), task="classification", channels=1,
            num_classes=len(self.class_names()), image_size=self.image_size,
            augment=self.augment, split=split, on_bad_sample=self.on_bad_sample,
            name="chest X-ray", describe=lambda r: str(r.image))
