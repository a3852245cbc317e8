"""ISIC 2017 / 2018 challenge data in the layout the challenge archives unpack to.

ISIC 2017 (``edition="2017"``), under ``root``::

    ISIC-2017_Training_Data/ISIC_0000000.jpg                (…_superpixels.png files are ignored)
    ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png     0 / 255
    ISIC-2017_Training_Part3_GroundTruth.csv    image_id,melanoma,seborrheic_keratosis
    … the same for Validation and Test_v2

ISIC 2018 (``edition="2018"``): task 3 (classification)
``ISIC2018_Task3_Training_Input/`` + ``ISIC2018_Task3_Training_GroundTruth/…GroundTruth.csv``
(``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one-hot) and task 1 (segmentation)
``ISIC2018_Task1-2_Training_Input/`` + ``ISIC2018_Task1_Training_GroundTruth/`` masks; likewise
Validation and Test.

Every folder and file name can be overridden (``train_images``, ``train_csv``, ``train_masks``, …)
for archives that were renamed. Classes: 2017 → 0 nevus (neither column set), 1 melanoma,
2 seborrheic keratosis; 2018 (and any one-hot CSV) → the CSV's column order.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Literal, get_args

from attacks.options import check_choice
from datamodules.base import BaseDataModule
from datamodules.imagefiles import (
    IMAGE_EXTENSIONS,
    FileRecord,
    ImageFileDataset,
    ImageFileTask,
    require_dir,
    screened_file_dataset,
)
from datamodules.info import DataInfo
from datamodules.paths import resolve_data_path
from datamodules.samples import OnBadSample, check_on_bad_sample
from datamodules.splits import Split, split_by_id
from datamodules.tasks import task_named
from datamodules.transforms import AugmentConfig

_IMAGE_ID = re.compile(r"^ISIC_\d+$")
ISICEdition = Literal["2017", "2018"]
#: the challenge's own train / val / test folders, or a seeded split of its training folder
ISICSplits = Literal["official", "seeded"]
_SPLIT_WORDS = {"2017": {"train": "Training", "val": "Validation", "test": "Test_v2"},
                "2018": {"train": "Training", "val": "Validation", "test": "Test"}}


def default_layout(edition: str, split: str, task: str) -> dict[str, str]:
    """Default ``images`` / ``csv`` / ``masks`` paths (relative to ``root``) of one split."""
    word = _SPLIT_WORDS[edition][split]
    if edition == "2017":
        return {"images": f"ISIC-2017_{word}_Data",
                "csv": f"ISIC-2017_{word}_Part3_GroundTruth.csv",
                "masks": f"ISIC-2017_{word}_Part1_GroundTruth"}
    gt = f"ISIC2018_Task3_{word}_GroundTruth"
    return {"images": (f"ISIC2018_Task1-2_{word}_Input" if task_named(task).has_mask
                       else f"ISIC2018_Task3_{word}_Input"),
            "csv": f"{gt}/{gt}.csv",
            "masks": f"ISIC2018_Task1_{word}_GroundTruth"}


def read_isic_csv(path: Path) -> tuple[list[str], dict[str, int]]:
    """Class names and ``{image id: class index}`` from an ISIC ground-truth CSV.

    2017 (``image_id,melanoma,seborrheic_keratosis``): nevus when neither is set. Otherwise the
    columns after the id are one-hot classes (2018 task 3).

    Raises:
        ValueError: unreadable file, unknown header, or a row that is not one-hot / has a
            non-numeric value — naming the file and line.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise FileNotFoundError(f"ISIC: cannot read ground-truth CSV {path}: {err}") from err
    if not rows or len(rows[0]) < 2:
        raise ValueError(f"ISIC ground-truth CSV {path}: expected a header like "
                         "'image_id,melanoma,seborrheic_keratosis' or 'image,MEL,NV,…'")
    header = [c.strip() for c in rows[0]]
    columns = header[1:]
    is2017 = [c.lower() for c in columns] == ["melanoma", "seborrheic_keratosis"]
    names = ["nevus", "melanoma", "seborrheic_keratosis"] if is2017 else columns
    labels: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        image_id = row[0].strip()
        try:
            values = [float(v) for v in row[1:1 + len(columns)]]
            if len(values) != len(columns):
                raise ValueError("too few columns")
        except ValueError as err:
            raise ValueError(f"ISIC ground-truth CSV {path}, line {lineno} ({image_id}): "
                             f"expected {len(columns)} numbers after the id: {err}") from None
        onehot = [1.0 - sum(values), *values] if is2017 else values
        if sorted(onehot) != [0.0] * (len(onehot) - 1) + [1.0]:
            raise ValueError(f"ISIC ground-truth CSV {path}, line {lineno} ({image_id}): "
                             f"expected exactly one class set among {names}, got {row[1:]}")
        if image_id in labels:
            raise ValueError(f"ISIC ground-truth CSV {path}, line {lineno}: {image_id} "
                             "listed twice")
        labels[image_id] = onehot.index(1.0)
    return names, labels


def _find_image(folder: Path, image_id: str) -> Path:
    for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
        candidate = folder / f"{image_id}{ext}"
        if candidate.exists():
            return candidate
    return folder / f"{image_id}.jpg"  # missing: reported by the screening step


class ISICDataModule(BaseDataModule):
    """ISIC 2017 / 2018 skin-lesion classification or segmentation.

    Args:
        root: folder holding the unpacked challenge archives; ``None`` = ``$MEDROBUST_DATA/isic``.
        edition: ``"2017"`` or ``"2018"`` (picks default folder and file names).
        task: ``"classification"`` (labels from the ground-truth CSV) or ``"segmentation"``
            (``<id>_segmentation.png`` masks: 0 background, 1 lesion).
        splits: ``"official"`` reads the challenge's train / val / test folders; ``"seeded"``
            splits the training folder by ``split_fractions`` / ``split_seed`` (stratified by
            class for classification), saved to ``split_file`` if given.
        train_images / train_csv / train_masks / val_* / test_*: override the default paths
            (relative to ``root`` or absolute).
        image_size: every image (and mask) is resized to ``(H, W)``.
        augment: training augmentations.
        on_bad_sample: ``"error"`` (default) or ``"skip"`` (decodes every file once at setup and
            leaves unusable samples out with a warning naming them).
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        edition: ISICEdition = "2017",
        task: ImageFileTask = "classification",
        splits: ISICSplits = "official",
        train_images: str | None = None,
        train_csv: str | None = None,
        train_masks: str | None = None,
        val_images: str | None = None,
        val_csv: str | None = None,
        val_masks: str | None = None,
        test_images: str | None = None,
        test_csv: str | None = None,
        test_masks: str | None = None,
        image_size: tuple[int, int] = (224, 224),
        augment: AugmentConfig | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        split_file: str | None = None,
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 32,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        edition = str(edition)
        check_choice("ISIC edition", edition, get_args(ISICEdition))
        check_choice("ISIC task", task, get_args(ImageFileTask))
        check_choice("ISIC splits", splits, get_args(ISICSplits))
        self.root = root
        self.edition = edition
        self.task = task
        self.splits = splits
        given = {
            "train": {"images": train_images, "csv": train_csv, "masks": train_masks},
            "val": {"images": val_images, "csv": val_csv, "masks": val_masks},
            "test": {"images": test_images, "csv": test_csv, "masks": test_masks},
        }
        self.layout = {
            split: {key: value if value is not None else default_layout(edition, split, task)[key]
                    for key, value in paths.items()}
            for split, paths in given.items()
        }
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.split_file = split_file
        self._records: dict[str, list[FileRecord]] = {}
        self._class_names: list[str] | None = None
        self._seeded: dict[str, list[FileRecord]] | None = None

    @property
    def data_root(self) -> Path:
        return resolve_data_path(self.root, "isic", f"ISIC {self.edition}")

    def _path(self, split: str, key: str) -> Path:
        return self.data_root / self.layout[split][key]  # an absolute override wins in `/`

    def records(self, split: str) -> list[FileRecord]:
        """All samples listed for ``split``'s folders (official layout), before screening."""
        if split in self._records:
            return self._records[split]
        seg = task_named(self.task).has_mask
        images_dir = require_dir(self._path(split, "images"), f"ISIC {self.edition} {split} images")
        if seg:
            masks_dir = require_dir(self._path(split, "masks"),
                                    f"ISIC {self.edition} {split} segmentation masks")
            image_ids = {p.stem for p in images_dir.iterdir()
                         if p.suffix.lower() in IMAGE_EXTENSIONS and _IMAGE_ID.match(p.stem)}
            # Masks without an image are samples too (reported as missing an image, not dropped).
            mask_ids = {p.name[: -len("_segmentation.png")] for p in masks_dir.iterdir()
                        if p.name.endswith("_segmentation.png")}
            ids = sorted(image_ids | {i for i in mask_ids if _IMAGE_ID.match(i)})
            if not ids:
                raise FileNotFoundError(f"ISIC: no images named like ISIC_0000000.jpg in "
                                        f"{images_dir}")
            records = [FileRecord(i, _find_image(images_dir, i),
                                  masks_dir / f"{i}_segmentation.png") for i in ids]
        else:
            csv_path = self._path(split, "csv")
            if not csv_path.is_file():
                raise FileNotFoundError(f"ISIC {self.edition} {split}: ground-truth CSV "
                                        f"{csv_path} not found")
            names, labels = read_isic_csv(csv_path)
            if self._class_names is None:
                self._class_names = names
            elif names != self._class_names:
                raise ValueError(f"ISIC: {csv_path} has classes {names} but the training CSV "
                                 f"has {self._class_names}")
            records = [FileRecord(i, _find_image(images_dir, i), None, labels[i])
                       for i in sorted(labels)]
        self._records[split] = records
        return records

    def class_names(self) -> list[str]:
        if task_named(self.task).has_mask:
            return ["background", "lesion"]
        if self._class_names is None:
            self.records("train")
        assert self._class_names is not None
        return list(self._class_names)

    def _split_records(self, split: Split) -> list[FileRecord]:
        if self.splits == "official":
            return self.records(split)
        if self._seeded is None:
            self._seeded = split_by_id({r.id: r for r in self.records("train")},
                                       self.split_fractions, self.split_seed, self.split_file,
                                       stratum=lambda r: r.label if r.label is not None else 0)
        return self._seeded[split]

    def build_info(self) -> DataInfo:
        names = self.class_names()
        return DataInfo(task=self.task, in_channels=3, image_size=self.image_size,
                        num_classes=len(names), class_names=names,
                        num_train=len(self._split_records("train")))

    def build_split(self, split: Split) -> ImageFileDataset:
        seg = task_named(self.task).has_mask
        return screened_file_dataset(
            self._split_records(split), task=self.task, channels=3,
            num_classes=None if seg else len(self.class_names()), image_size=self.image_size,
            augment=self.augment, split=split, on_bad_sample=self.on_bad_sample,
            name=f"ISIC {self.edition}")
