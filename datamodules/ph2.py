"""PH2 dermoscopy database in its published layout: 3 diagnoses and binary lesion masks.

Layout (``root`` = the folder holding ``PH2 Dataset images``)::

    PH2 Dataset images/IMD003/IMD003_Dermoscopic_Image/IMD003.bmp     RGB dermoscopy image
    PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.bmp         lesion mask, 0 / 255
    PH2_dataset.csv  (or PH2_dataset.txt)                             Name, Clinical Diagnosis…

Diagnoses: 0 common nevus, 1 atypical nevus, 2 melanoma — read from a ``Clinical Diagnosis``
column (0/1/2), or from the release's ``Common Nevus`` / ``Atypical Nevus`` / ``Melanoma``
columns marked with ``X``. PH2 publishes no split: a seeded split stratified by diagnosis is made
(the same for both tasks) and, with ``split_file``, saved and reused.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, get_args

from attacks.options import check_choice
from datamodules.base import BaseDataModule
from datamodules.imagefiles import (
    FileRecord,
    ImageFileDataset,
    ImageFileTask,
    require_dir,
    screened_file_dataset,
)
from datamodules.info import DataInfo
from datamodules.paths import resolve_data_path
from datamodules.samples import OnBadSample, check_on_bad_sample
from datamodules.splits import Split, load_or_create_split
from datamodules.tasks import task_named
from datamodules.transforms import AugmentConfig

PH2_CLASSES = ["common_nevus", "atypical_nevus", "melanoma"]
IMAGES_DIR = "PH2 Dataset images"
LABEL_FILES = ("PH2_dataset.csv", "PH2_dataset.txt")
_CASE = re.compile(r"^IMD\d+$")
_ONE_HOT_COLUMNS = ("common nevus", "atypical nevus", "melanoma")


def _split_cells(line: str) -> list[str]:
    """Cells of one table row: tab-, ``||``/``|``- or comma-separated."""
    if "\t" in line:
        cells = line.split("\t")
    elif "|" in line:
        cells = [c for c in re.split(r"\|\|?", line)]
        # "|| a || b ||" has empty cells at both ends.
        cells = cells[1:] if cells and not cells[0].strip() else cells
        cells = cells[:-1] if cells and not cells[-1].strip() else cells
    else:
        cells = next(csv.reader(io.StringIO(line)), [])
    return [c.strip() for c in cells]


def read_ph2_labels(path: Path) -> dict[str, int]:
    """``{case id: diagnosis}`` from PH2's label table; rows not naming a case (legends) are ignored.

    Raises:
        ValueError: no ``Name`` column, no diagnosis column, a diagnosis that is not 0/1/2 (or
            not exactly one ``X``), or a case listed twice — naming the file and row.
    """
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise FileNotFoundError(f"PH2: cannot read label file {path}: {err}") from err
    rows = [_split_cells(line) for line in text.splitlines()]
    header_at = next((i for i, r in enumerate(rows) if any(c.lower() == "name" for c in r)), None)
    if header_at is None:
        raise ValueError(f"PH2 label file {path}: no header row with a 'Name' column")
    header = [c.lower() for c in rows[header_at]]
    name_col = header.index("name")
    diag_col = header.index("clinical diagnosis") if "clinical diagnosis" in header else None
    hot_cols = [header.index(c) for c in _ONE_HOT_COLUMNS if c in header]
    if diag_col is None and len(hot_cols) != 3:
        raise ValueError(f"PH2 label file {path}: expected a 'Clinical Diagnosis' column or the "
                         f"columns {_ONE_HOT_COLUMNS}; header is {rows[header_at]}")
    labels: dict[str, int] = {}
    for lineno, row in enumerate(rows[header_at + 1:], start=header_at + 2):
        if len(row) <= name_col or not _CASE.match(row[name_col]):
            continue  # blank lines and the legend below the table
        case = row[name_col]
        try:
            if diag_col is not None:
                value = row[diag_col] if len(row) > diag_col else ""
                label = int(float(value))
                if label not in (0, 1, 2):
                    raise ValueError
            else:
                marks = [len(row) > c and row[c].upper() == "X" for c in hot_cols]
                if sum(marks) != 1:
                    raise ValueError
                label = marks.index(True)
        except ValueError:
            raise ValueError(f"PH2 label file {path}, line {lineno} ({case}): diagnosis must be "
                             f"0, 1 or 2 (common / atypical nevus, melanoma), got {row}") from None
        if case in labels:
            raise ValueError(f"PH2 label file {path}, line {lineno}: case {case} listed twice")
        labels[case] = label
    if not labels:
        raise ValueError(f"PH2 label file {path}: no rows with a case name like IMD003")
    return labels


class PH2DataModule(BaseDataModule):
    """PH2: skin-lesion classification (3 diagnoses) or lesion segmentation (2 classes).

    Args:
        root: folder holding ``PH2 Dataset images`` and ``PH2_dataset.csv``; ``None`` =
            ``$MEDROBUST_DATA/ph2``.
        task: ``"classification"`` (label 0 common nevus, 1 atypical nevus, 2 melanoma) or
            ``"segmentation"`` (mask 0 background, 1 lesion).
        image_size: every image (and mask) is resized to ``(H, W)``.
        augment: training augmentations.
        split_fractions: train / val / test fractions of the seeded stratified split.
        split_seed: seed of that split.
        split_file: JSON file holding the split: read if it exists (its ids must match the
            data), else written.
        on_bad_sample: ``"error"`` (default) or ``"skip"`` (decodes every file once at setup and
            leaves unusable cases out with a warning naming them).
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        task: ImageFileTask = "classification",
        image_size: tuple[int, int] = (128, 128),
        augment: AugmentConfig | None = None,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        split_file: str | None = None,
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 16,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        check_choice("PH2 task", task, get_args(ImageFileTask))
        self.root = root
        self.task = task
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.split_file = split_file
        self._cases: dict[str, FileRecord] | None = None
        self._split: dict[str, list[str]] | None = None

    @property
    def data_root(self) -> Path:
        return resolve_data_path(self.root, "ph2", "PH2")

    def cases(self) -> dict[str, FileRecord]:
        """Every case of the dataset (case folders and label table), before screening."""
        if self._cases is not None:
            return self._cases
        root = self.data_root
        images_dir = require_dir(root / IMAGES_DIR, f"PH2 images folder ({IMAGES_DIR!r})")
        label_file = next((root / n for n in LABEL_FILES if (root / n).is_file()), None)
        if label_file is None:
            if not task_named(self.task).has_mask:  # the diagnosis is the target
                raise FileNotFoundError(f"PH2: no label table in {root} (expected one of "
                                        f"{LABEL_FILES})")
            labels: dict[str, int] = {}
        else:
            labels = read_ph2_labels(label_file)
        folders = sorted(p.name for p in images_dir.iterdir() if p.is_dir() and _CASE.match(p.name))
        ids = sorted(set(folders) | set(labels))
        if not ids:
            raise FileNotFoundError(f"PH2: no case folders like IMD003 in {images_dir}")
        cases = {}
        for case in ids:
            folder = images_dir / case
            cases[case] = FileRecord(
                id=case,
                image=folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp",
                mask=folder / f"{case}_lesion" / f"{case}_lesion.bmp",
                label=labels.get(case),
            )
        self._cases = cases
        return cases

    def split_ids(self) -> dict[str, list[str]]:
        """Case ids per split (seeded, stratified by diagnosis; shared by both tasks)."""
        if self._split is None:
            cases = self.cases()
            ids = sorted(cases)
            # Unlabelled cases (segmentation only) form their own stratum.
            strata = [cases[c].label if cases[c].label is not None else -1 for c in ids]
            self._split = load_or_create_split(self.split_file, ids, strata,
                                               self.split_fractions, self.split_seed)
        return self._split

    def build_info(self) -> DataInfo:
        seg = task_named(self.task).has_mask
        names = ["background", "lesion"] if seg else list(PH2_CLASSES)
        return DataInfo(task=self.task, in_channels=3, image_size=self.image_size,
                        num_classes=len(names), class_names=names,
                        num_train=len(self.split_ids()["train"]))

    def build_split(self, split: Split) -> ImageFileDataset:
        seg = task_named(self.task).has_mask
        cases = self.cases()
        records = [cases[c] for c in self.split_ids()[split]]
        if not seg:  # the diagnosis is the target; the mask is not read
            records = [FileRecord(r.id, r.image, None, r.label) for r in records]
        return screened_file_dataset(
            records, task=self.task, channels=3, num_classes=None if seg else len(PH2_CLASSES),
            image_size=self.image_size, augment=self.augment, split=split,
            on_bad_sample=self.on_bad_sample, name="PH2")
