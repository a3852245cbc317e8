"""A researcher's own data for all four tasks: one manifest file (CSV or JSON), one row a sample.

Paths in a manifest are relative to the manifest's folder (absolute paths also work). Columns
(CSV header names, or keys of the JSON objects):

* every task: ``image`` (an image file; segmentation also a NIfTI volume ``.nii`` / ``.nii.gz``)
  and an optional ``split`` (``train`` / ``val`` / ``test``; ``training`` / ``validation`` /
  ``valid`` / ``testing`` are accepted). Without a ``split`` column a seeded split is made with
  :func:`datamodules.splits.load_or_create_split` (stratified by class for single-label
  classification) and written to ``split_file``.
* classification: ``label`` — a class index or a class name; multi-label: several separated by
  ``;`` (or a JSON list), an empty cell = no class.
* segmentation: ``mask`` — an integer class map of the image's size (grey or palette PNG…, NIfTI
  for volumes). 0 = background. A mask holding only 0 and 255 is read as binary (255 = 1);
  ``mask_threshold`` binarises any other mask (JPEG masks).
* landmarks: the points as ``<name>_x`` / ``<name>_y`` column pairs, as ``x1, y1, x2, y2…``, or
  one ``points`` (or ``landmarks``) cell holding a JSON list ``[[x, y], …]``; ``(x, y)`` are
  pixel-index coordinates of the image on disk (centre of the top-left pixel = (0, 0)); an empty
  coordinate is a missing point (delivered with ``visible=False``). Optional ``spacing`` column
  (mm per pixel of the image on disk), else ``pixel_spacing_mm`` for every image.
* detection: either ``boxes`` (JSON list of ``[x1, y1, x2, y2]``) with ``labels`` (JSON list of
  class indices or names), or one row per box with ``x1, y1, x2, y2, label`` (``xmin…`` also
  accepted); a row with empty box cells is an image without boxes. Boxes use continuous pixel
  edges (a box covering columns 3..5 has ``x1 = 3, x2 = 6``).

A JSON manifest is a list of such objects, or an object whose ``train`` / ``val`` / ``test``
(or MONAI datalist's ``training`` / ``validation`` / ``test``) lists give the split.

Bad rows (missing or unreadable file, label out of range or unknown, mask of another size or with
values outside the classes, box outside the image, a point outside the image, duplicate image)
are collected while the manifest is indexed: ``on_bad_sample="error"`` raises one error listing
every bad row by number and file; ``"skip"`` leaves them out with one warning that counts them.

``data_info`` is inferred: channels from the image files (1 when every image is grey, else 3),
classes from the labels (or masks), the image size when every image has the same (else pass
``image_size``); bounds are (0, 1) (8- and 16-bit images are scaled by their type's range).

:class:`PairedFoldersDataModule` is segmentation from an ``images/`` and a ``masks/`` folder
matched by file stem, with the same checks.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from attacks.options import check_choice
from datamodules.base import BaseDataModule
from datamodules.detection import DetectionDataset, DetectionRecord, sanitize_box
from datamodules.imagefiles import (
    IMAGE_EXTENSIONS,
    BadSampleError,
    image_header,
    image_header_size,
    read_image,
    require_dir,
)
from datamodules.info import DataInfo
from datamodules.landmarks import delivered_spacing
from datamodules.samples import BadSamples, OnBadSample, check_on_bad_sample, format_listing
from datamodules.splits import load_or_create_split
from datamodules.transforms import AugmentConfig, JointTransform
from datamodules.volumes import (
    DecathlonVolumeDataset,
    VolumeCase,
    VolumeLoader,
    header_shape_dhw,
)

log = logging.getLogger(__name__)

Task = Literal["classification", "segmentation", "landmarks", "detection"]
MANIFEST_TASKS = ("classification", "segmentation", "landmarks", "detection")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: files a paired-folders set may hold (GIF: DRIVE's ``1st_manual`` masks)
FOLDER_EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif", *NIFTI_SUFFIXES)
_BOX_KEYS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"))
_GREY_MODES = ("1", "L", "LA", "P", "I", "I;16", "I;16B", "I;16L", "F")  # for masks
_GREY_IMAGE_MODES = tuple(m for m in _GREY_MODES if m != "P")  # a palette image may be colour


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ------------------------------------------------------------------------------ reading a manifest
@dataclass
class ManifestRow:
    """One row of a manifest: its 1-based number, its cells and the split a JSON key gave it."""

    row: int
    cells: dict[str, Any]
    split: str | None = None


def read_manifest(path: Path) -> list[ManifestRow]:
    """The rows of a CSV (``.csv`` / ``.tsv``) or JSON manifest; cells keep their types in JSON
    and are stripped strings in CSV. Row numbers count data rows from 1 (CSV line = row + 1).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable or empty file, no ``image`` column — naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read manifest {path}: {err}") from err
    rows: list[ManifestRow] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"manifest {path} is not valid JSON: {err}") from err
        if isinstance(data, list):
            groups: list[tuple[str | None, Any]] = [(None, data)]
        elif isinstance(data, dict):
            groups = [(SPLIT_ALIASES[k.lower()], v) for k, v in data.items()
                      if k.lower() in SPLIT_ALIASES]
            if not groups:
                raise ValueError(f"manifest {path}: a JSON manifest is a list of samples or an "
                                 f"object with train/val/test (or training/validation) lists; "
                                 f"got keys {sorted(data)}")
        else:
            raise ValueError(f"manifest {path}: expected a JSON list or object, got "
                             f"{type(data).__name__}")
        for split, items in groups:
            if not isinstance(items, list):
                raise ValueError(f"manifest {path}: {split or 'the top level'} must be a list")
            for item in items:
                n = len(rows) + 1
                cells = item if isinstance(item, dict) else {"image": item} if isinstance(item, str) \
                    else None
                if cells is None:
                    raise ValueError(f"manifest {path}, row {n}: expected an object with an "
                                     f"'image' key, got {item!r}")
                rows.append(ManifestRow(n, {str(k).strip().lower(): v for k, v in cells.items()},
                                        split))
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
        if not reader.fieldnames:
            raise ValueError(f"manifest {path} is empty (expected a header row with 'image')")
        for n, rec in enumerate(reader, start=1):
            cells = {str(k).strip().lower(): (v or "").strip() for k, v in rec.items()
                     if k is not None}
            if not any(cells.values()):
                continue  # blank line
            rows.append(ManifestRow(n, cells))
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    if not any("image" in r.cells for r in rows):
        raise ValueError(f"manifest {path} has no 'image' column (columns: "
                         f"{sorted(rows[0].cells)})")
    return rows


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "") or (
        isinstance(value, float) and math.isnan(value))


def _json_cell(value: Any, what: str) -> Any:
    """A cell that holds a JSON list in CSV, or the list itself in JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as err:
            raise BadSampleError(f"{what} {value!r} is not a JSON list") from err
    return value


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadSampleError(f"{what} {value!r} is not a number") from None


# ------------------------------------------------------------------------------ masks
def read_label_mask(path: Path, threshold: float | None) -> np.ndarray:
    """An integer class map ``int64 [H, W]`` from a grey / palette / 16-bit image.

    ``threshold`` set: ``mask > threshold`` (binary). Unset: the stored values, except that a
    mask holding only 0 and 255 is binary (255 -> 1).

    Raises:
        BadSampleError: missing or unreadable file, or a colour mask without ``threshold``.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in _GREY_MODES:
                if threshold is None:
                    raise BadSampleError(f"mask {path} is a colour ({im.mode}) image; save class "
                                         "indices as a grey or palette image, or set "
                                         "mask_threshold to binarise it")
                im = im.convert("L")
            elif im.mode == "LA":
                im = im.convert("L")
            arr = np.asarray(im)
    except FileNotFoundError as err:
        raise BadSampleError(f"missing mask file {path}") from err
    except BadSampleError:
        raise
    except Exception as err:  # PIL's many read errors
        raise BadSampleError(f"cannot read mask {path}: {err}") from err
    if threshold is not None:
        return (arr > threshold).astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise BadSampleError(f"mask {path} holds non-integer values; class maps must be "
                                 "integers (or set mask_threshold)")
    values = np.unique(arr)
    if values.size and set(values.tolist()) <= {0, 255} and values.max() == 255:
        return (arr == 255).astype(np.int64)
    return arr.astype(np.int64)


def _nifti_values(path: Path) -> np.ndarray:
    """The distinct values of a NIfTI label map (read once at indexing)."""
    import nibabel as nib

    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises many types
        raise BadSampleError(f"cannot read NIfTI mask {path}: {err}") from err
    values = np.unique(data)
    if (values != np.round(values)).any():
        raise BadSampleError(f"NIfTI mask {path} holds non-integer values {values[:10].tolist()}")
    return values.astype(np.int64)


# ------------------------------------------------------------------------------ samples
@dataclass
class Sample:
    """One usable sample of a manifest, as indexed (paths resolved, targets parsed).

    Attributes:
        id: the image path as written in the manifest (the key of the split file).
        rows: the manifest rows it comes from (several for detection's one row per box).
        image: image file; ``hw``: its ``(H, W)`` on disk (2-D) or ``(D, H, W)`` (NIfTI).
        label: classification target: a class index, or the list of indices (multi-label).
        mask: segmentation mask file; ``mask_values``: the values it holds.
        points: landmarks float ``[K, 2]`` (x, y) on disk, NaN = missing; ``spacing`` mm/pixel.
        boxes: detection float32 ``[N, 4]`` xyxy; ``box_labels``: int64 ``[N]``.
    """

    id: str
    rows: list[int]
    image: Path
    split: str | None = None
    hw: tuple[int, ...] = ()
    channels: int = 1
    label: int | list[int] | None = None
    mask: Path | None = None
    mask_values: np.ndarray | None = None
    points: np.ndarray | None = None
    spacing: float | None = None
    boxes: np.ndarray | None = None
    box_labels: np.ndarray | None = None
    raw_labels: list[Any] = field(default_factory=list)
    label_rows: list[int] = field(default_factory=list)  # detection: the row of each raw label


class ManifestDataset(Dataset):
    """2-D classification, segmentation or landmark samples of a manifest through a
    :class:`JointTransform`.

    Items: ``image`` float32 ``[C, H, W]`` in [0, 1], ``index`` int64 ``[]``, and
    ``label`` int64 ``[]`` (or float32 ``[K]`` multi-label) / ``mask`` int64 ``[H, W]`` /
    ``landmarks`` float32 ``[K, 2]`` + ``visible`` bool ``[K]`` + ``spacing`` float32 ``[]``.
    A failure names the manifest row and file, also from inside a DataLoader worker.
    """

    def __init__(self, samples: list[Sample], task: str, channels: int, transform: JointTransform,
                 num_classes: int, multilabel: bool, mask_threshold: float | None, name: str) -> None:
        self.samples, self.task, self.channels = samples, task, channels
        self.transform, self.num_classes, self.multilabel = transform, num_classes, multilabel
        self.mask_threshold, self.name = mask_threshold, name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        try:
            image = read_image(s.image, self.channels)  # type: ignore[arg-type]
            if image.shape[:2] != s.hw:
                raise BadSampleError(f"image is {image.shape[:2]} (H, W) but was {s.hw} when "
                                     "the manifest was indexed")
            mask = None
            if self.task == "segmentation":
                assert s.mask is not None
                mask = read_label_mask(s.mask, self.mask_threshold)
                if mask.shape != image.shape[:2]:
                    raise BadSampleError(f"mask {s.mask} is {mask.shape} but the image is "
                                         f"{image.shape[:2]}")
                if mask.size and (mask.min() < 0 or mask.max() >= self.num_classes):
                    raise BadSampleError(f"mask {s.mask} holds values outside the classes "
                                         f"0..{self.num_classes - 1}")
            out = self.transform(image, mask=mask,
                                 keypoints=s.points if self.task == "landmarks" else None)
        except Exception as err:
            raise BadSampleError(f"{self.name}: sample {index} (row {', '.join(map(str, s.rows))}, "
                                 f"{s.image}): {err}") from err
        item: dict[str, torch.Tensor] = {"image": out["image"]}
        if self.task == "classification":
            if self.multilabel:
                target = torch.zeros(self.num_classes, dtype=torch.float32)
                target[list(s.label or [])] = 1.0  # type: ignore[arg-type]
                item["label"] = target
            else:
                item["label"] = torch.tensor(int(s.label), dtype=torch.int64)  # type: ignore[arg-type]
        elif self.task == "segmentation":
            item["mask"] = out["mask"]
        else:
            h, w = out["image"].shape[-2:]
            spacing = delivered_spacing(s.spacing, s.hw, (h, w))  # type: ignore[arg-type]
            item["landmarks"], item["visible"] = out["keypoints"], out["visible"]
            item["spacing"] = torch.tensor(math.nan if spacing is None else spacing,
                                           dtype=torch.float32)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


# ------------------------------------------------------------------------------ the datamodule
class ManifestDataModule(BaseDataModule):
    """Any of the four tasks from a manifest file (see the module docstring for the columns).

    Args:
        manifest: the CSV / TSV / JSON file; paths in it are relative to its folder.
        task: ``classification`` | ``segmentation`` | ``landmarks`` | ``detection``.
        image_size: ``(H, W)`` every 2-D image is resized to; ``None`` keeps the images' common
            size (an error when they differ).
        patch_size: ``(D, H, W)`` NIfTI volumes are resized to; ``None`` = their common shape.
        channels: 1 (grey) or 3 (RGB); ``None`` infers it from the files (3 if any is colour).
        class_names: class (or landmark) names in index order; labels may then be names or
            indices in ``[0, len(class_names))``. ``None``: inferred (sorted names, or indices
            ``0..max``; segmentation: ``0..max mask value``).
        num_classes: the number of classes when labels are indices (a label at or beyond it is
            a bad row); overrides inference.
        multilabel: classification with several labels per image; ``None`` = when some label
            cell holds ``;`` or a list.
        mask_threshold: binarise masks at this value (else masks are class maps; 0/255 ones are
            binary).
        pixel_spacing_mm: landmarks: mm per pixel of every image on disk, when the manifest
            has no ``spacing`` column.
        degenerate_boxes: detection boxes that are degenerate or cross the image border:
            ``"error"`` (the row is bad), ``"drop"`` or ``"fix"`` (swap / clip), with a warning.
        augment: training augmentations (albumentations, jointly on masks, points and boxes;
            volumes: the MONAI equivalents).
        split_fractions / split_seed: the seeded split made when there is no ``split`` column.
        split_file: where that split is written and read back; ``"auto"`` =
            ``<manifest stem>.split.json`` beside the manifest; ``None`` = not saved.
        on_bad_sample: ``"error"`` (default): one error listing every bad row; ``"skip"``:
            decode every file once and leave bad rows out with a warning counting them.
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        manifest: str | None = None,
        task: Task = "classification",
        image_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int, int] | None = None,
        channels: int | None = None,
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        multilabel: bool | None = None,
        mask_threshold: float | None = None,
        pixel_spacing_mm: float | None = None,
        degenerate_boxes: Literal["error", "drop", "fix"] = "error",
        augment: AugmentConfig | None = None,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        split_file: str | None = "auto",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        check_choice("task", task, MANIFEST_TASKS)
        check_on_bad_sample(on_bad_sample)
        check_choice("degenerate_boxes", degenerate_boxes, ("error", "drop", "fix"))
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None (inferred), got {channels}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is "
                             f"{num_classes}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be (H, W) positive, got {image_size}")
        self.manifest = manifest
        self.task = task
        self.image_size = tuple(int(s) for s in image_size) if image_size is not None else None
        self.patch_size = tuple(int(s) for s in patch_size) if patch_size is not None else None
        self.channels = channels
        self.class_names = list(class_names) if class_names is not None else None
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.mask_threshold = mask_threshold
        self.pixel_spacing_mm = pixel_spacing_mm
        self.degenerate_boxes = degenerate_boxes
        self.augment = augment
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.split_file = split_file
        self.on_bad_sample = on_bad_sample
        self._index: dict[str, Any] | None = None

    # --- where the rows come from (PairedFoldersDataModule overrides these) ------------------
    @property
    def manifest_path(self) -> Path:
        if self.manifest is None or str(self.manifest) == "":
            raise ValueError("ManifestDataModule: pass manifest=<file.csv|file.json> "
                             "(--data.init_args.manifest)")
        return Path(os.path.expandvars(os.path.expanduser(str(self.manifest)))).resolve()

    @property
    def what(self) -> str:
        return f"manifest {self.manifest_path}"

    def base_dir(self) -> Path:
        return self.manifest_path.parent

    def rows(self, bad: BadSamples) -> list[ManifestRow]:
        return read_manifest(self.manifest_path)

    def _split_file(self) -> Path | None:
        if self.split_file is None:
            return None
        if self.split_file == "auto":
            return self.manifest_path.with_name(f"{_stem(self.manifest_path)}.split.json")
        return Path(os.path.expandvars(os.path.expanduser(self.split_file)))

    # --- indexing ----------------------------------------------------------------------------
    def _resolve(self, value: Any) -> Path:
        path = Path(os.path.expandvars(os.path.expanduser(str(value).strip())))
        return path if path.is_absolute() else self.base_dir() / path

    def _image(self, s: Sample, decode: bool) -> None:
        """Header checks of the sample's image: size and channels (NIfTI: shape)."""
        if is_nifti(s.image):
            if not s.image.is_file():
                raise BadSampleError(f"missing image file {s.image}")
            shape, channels = header_shape_dhw(s.image, None)
            s.hw, s.channels = shape, channels
            return
        w, h, mode = image_header(s.image)
        s.channels = 1 if mode in _GREY_IMAGE_MODES else 3
        s.hw = (h, w)
        if decode:
            read_image(s.image, 3)

    def _flag(self, bad: BadSamples, row: int, sid: str | None, reason: str) -> None:
        """Record a bad row (its number and image are the key every message shows)."""
        bad.add(f"row {row}" + (f" ({sid})" if sid else ""), reason)
        self._bad_rows.add(row)

    def _parse(self, rows: list[ManifestRow], bad: BadSamples) -> list[Sample]:
        """Rows -> samples with files checked and targets parsed; labels stay raw here."""
        samples: dict[str, Sample] = {}
        unreadable: dict[str, str] = {}
        decode = self.on_bad_sample == "skip"
        for r in rows:
            raw_image = r.cells.get("image")
            if _empty(raw_image):
                self._flag(bad, r.row, None, "no 'image' value")
                continue
            sid = str(raw_image).strip()
            split = r.split
            if not _empty(r.cells.get("split")):
                split = SPLIT_ALIASES.get(str(r.cells["split"]).strip().lower())
                if split is None:
                    self._flag(bad, r.row, sid, f"split {r.cells['split']!r} is not one of "
                                                "train / val / test")
                    continue
            if sid in unreadable:
                self._flag(bad, r.row, sid, unreadable[sid])
                continue
            if sid in samples:
                s = samples[sid]
                if self.task != "detection":
                    self._flag(bad, r.row, sid, f"image listed again (first at row {s.rows[0]})")
                    continue
                if split != s.split:
                    self._flag(bad, r.row, sid, f"split {split} but row {s.rows[0]} put this "
                                                f"image in {s.split}")
                    continue
                s.rows.append(r.row)
            else:
                s = Sample(sid, [r.row], self._resolve(raw_image), split)
                try:
                    self._image(s, decode)
                except BadSampleError as err:
                    unreadable[sid] = str(err)
                    self._flag(bad, r.row, sid, str(err))
                    continue
                samples[sid] = s
            try:
                self._targets(s, r, decode)
            except BadSampleError as err:
                self._flag(bad, r.row, sid, str(err))
        return list(samples.values())

    def _targets(self, s: Sample, r: ManifestRow, decode: bool) -> None:
        cells = r.cells
        if self.task == "classification":
            if "label" not in cells:
                raise BadSampleError("no 'label' column")
            value = cells["label"]
            if isinstance(value, list):
                s.raw_labels = list(value)
            elif _empty(value):
                s.raw_labels = []
            elif isinstance(value, str) and (";" in value or value.startswith("[")):
                s.raw_labels = (_json_cell(value, "label") if value.startswith("[")
                                else [v.strip() for v in value.split(";") if v.strip()])
            else:
                s.raw_labels = [value]
            if not s.raw_labels and self.multilabel is False:
                raise BadSampleError("empty label")
            multi = isinstance(value, list) or (isinstance(value, str) and (";" in value
                                                                            or value.startswith("[")))
            if multi:
                s.label = []  # marks a multi-label cell; resolved later
        elif self.task == "segmentation":
            if _empty(cells.get("mask")):
                raise BadSampleError("no 'mask' value")
            s.mask = self._resolve(cells["mask"])
            if is_nifti(s.image) != is_nifti(s.mask):
                raise BadSampleError(f"image {s.image} and mask {s.mask} must both be NIfTI or "
                                     "both be 2-D images")
            if is_nifti(s.mask):
                if not s.mask.is_file():
                    raise BadSampleError(f"missing mask file {s.mask}")
                shape, ch = header_shape_dhw(s.mask, None)
                if ch != 1 or shape != s.hw:
                    raise BadSampleError(f"mask {s.mask} is {shape} (D, H, W) x {ch} channel(s) but "
                                         f"image {s.image} is {s.hw}: a mask must share the "
                                         "image's voxel grid")
                s.mask_values = _nifti_values(s.mask)
            else:
                w, h = image_header_size(s.mask)
                if (h, w) != s.hw:
                    raise BadSampleError(f"mask {s.mask} is {w}x{h} but image {s.image} is "
                                         f"{s.hw[1]}x{s.hw[0]}")
                s.mask_values = np.unique(read_label_mask(s.mask, self.mask_threshold))
            if s.mask_values.size and s.mask_values.min() < 0:
                raise BadSampleError(f"mask {s.mask} holds negative values")
        elif self.task == "landmarks":
            s.points = self._points(cells)
            if not _empty(cells.get("spacing")):
                s.spacing = _number(cells["spacing"], "spacing")
                if not s.spacing > 0:
                    raise BadSampleError(f"spacing {s.spacing} must be > 0 (mm per pixel)")
            else:
                s.spacing = self.pixel_spacing_mm
            h, w = s.hw
            x, y = s.points[:, 0], s.points[:, 1]
            with np.errstate(invalid="ignore"):
                out = np.isfinite(x) & ~((x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5))
            if out.any():
                raise BadSampleError(f"point(s) {np.flatnonzero(out).tolist()} "
                                     f"{s.points[out].tolist()} lie outside the {w}x{h} image "
                                     f"{s.image}")
        else:
            self._boxes(s, cells)

    def _points(self, cells: dict[str, Any]) -> np.ndarray:
        for key in ("points", "landmarks"):
            if key in cells:
                pts = _json_cell(cells[key], key)
                try:
                    arr = np.asarray([[np.nan if _empty(v) else float(v) for v in p] for p in pts],
                                     dtype=np.float64)
                except (TypeError, ValueError) as err:
                    raise BadSampleError(f"{key} must be a list of [x, y], got {pts!r}") from err
                if arr.ndim != 2 or arr.shape[1] != 2:
                    raise BadSampleError(f"{key} must be a list of [x, y], got {pts!r}")
                return arr
        names = self._landmark_columns(cells)
        if not names:
            raise BadSampleError("no landmark columns ('points', '<name>_x'/'<name>_y' or "
                                 "x1, y1, x2, y2, …)")
        if self._point_names is None:  # landmark names from the columns: nose_x -> nose
            self._point_names = [x[:-2] if x.endswith("_x") else f"l{x[1:]}" for x, _ in names]
        return np.asarray([[np.nan if _empty(cells[c]) else _number(cells[c], c) for c in pair]
                           for pair in names], dtype=np.float64)

    @staticmethod
    def _landmark_columns(cells: dict[str, Any]) -> list[tuple[str, str]]:
        """``(x column, y column)`` pairs in column order."""
        pairs = []
        for c in cells:
            m = re.fullmatch(r"(.+)_x", c) or re.fullmatch(r"x(\d+)", c)
            if m is None:
                continue
            y = f"{m.group(1)}_y" if c.endswith("_x") else f"y{m.group(1)}"
            if y in cells:
                pairs.append((c, y))
        return pairs

    def _boxes(self, s: Sample, cells: dict[str, Any]) -> None:
        """Append this row's boxes (valid ones, per ``degenerate_boxes``) to the sample."""
        raw: list[Any] = []
        labels: list[Any] = []
        if "boxes" in cells:
            raw = _json_cell(cells["boxes"], "boxes") if not _empty(cells["boxes"]) else []
            labels = _json_cell(cells.get("labels", "[]"), "labels") if not _empty(
                cells.get("labels")) else []
            if not isinstance(raw, list) or not isinstance(labels, list) or len(raw) != len(labels):
                raise BadSampleError(f"'boxes' and 'labels' must be lists of the same length, got "
                                     f"{cells['boxes']!r} and {cells.get('labels')!r}")
        else:
            keys = next((k for k in _BOX_KEYS if all(c in cells for c in k)), None)
            if keys is None:
                raise BadSampleError("no boxes: give 'boxes' + 'labels' (JSON lists) or the "
                                     "columns x1, y1, x2, y2, label")
            values = [cells[k] for k in keys]
            if all(_empty(v) for v in values):
                pass  # an image without boxes
            elif any(_empty(v) for v in values) or _empty(cells.get("label")):
                raise BadSampleError(f"incomplete box {values} / label {cells.get('label')!r}")
            else:
                raw, labels = [values], [cells["label"]]
        boxes = []
        for box, label in zip(raw, labels):
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise BadSampleError(f"box {box!r} is not [x1, y1, x2, y2]")
            coords = [_number(v, "box coordinate") for v in box]
            fixed, problem = sanitize_box(coords, s.hw, self.degenerate_boxes,  # type: ignore[arg-type]
                                          one_based=False)
            if problem and self.degenerate_boxes == "error":
                raise BadSampleError(f"{problem} of {s.image} (degenerate_boxes='error'; 'drop' "
                                     "or 'fix' handle such boxes)")
            if problem:
                key = f"row {s.rows[-1]} ({s.id})"
                self._box_problems[key] = "; ".join(filter(None, (self._box_problems.get(key),
                                                                   problem)))
            if fixed is not None:
                boxes.append(fixed)
                s.raw_labels.append(label)
                s.label_rows.append(s.rows[-1])
        old = s.boxes if s.boxes is not None else np.zeros((0, 4), np.float32)
        s.boxes = np.concatenate([old, np.asarray(boxes, np.float32).reshape(-1, 4)])

    # --- classes -----------------------------------------------------------------------------
    def _resolve_labels(self, samples: list[Sample], bad: BadSamples, multilabel: bool) -> list[str]:
        """Map raw labels (indices or names) to class indices; returns the class names.

        A label out of ``[0, num_classes)`` or not among ``class_names`` makes its row bad."""
        if self.task in ("segmentation", "landmarks"):
            return []
        raw = [str(v).strip() for s in samples for v in s.raw_labels]
        numeric = [re.fullmatch(r"-?\d+(\.0+)?", v) is not None for v in raw]
        names = self.class_names
        if names is None:
            if raw and all(numeric):
                if self.num_classes is None:
                    self._check_contiguous(samples)
                names = [str(i) for i in range(self.num_classes or
                                               max(2, max(int(float(v)) for v in raw) + 1))]
            elif raw and not any(numeric):
                names = sorted(set(raw))
            elif not raw:
                names = [str(i) for i in range(self.num_classes or 2)]
            else:
                raise ValueError(f"{self.what}: labels mix class indices and names "
                                 f"({sorted(set(raw))[:10]}); use one kind, or pass class_names")
        position = {n: i for i, n in enumerate(names)}
        k = self.num_classes or len(names)
        for s in samples:
            idx = []
            rows = s.label_rows or [s.rows[0]] * len(s.raw_labels)
            at = s.rows[0]  # the row a bad label is reported at
            try:
                for v, row in zip(s.raw_labels, rows):
                    at, text = row, str(v).strip()
                    if re.fullmatch(r"-?\d+(\.0+)?", text):
                        i = int(float(text))
                        if not 0 <= i < k:
                            raise BadSampleError(f"label {text} out of range [0, {k}) for image "
                                                 f"{s.image}")
                        idx.append(i)
                    elif text in position:
                        idx.append(position[text])
                    else:
                        raise BadSampleError(f"unknown label {text!r} for image {s.image} "
                                             f"(classes: {names})")
            except BadSampleError as err:
                self._flag(bad, at, s.id, str(err))
                continue
            if self.task == "detection":
                s.box_labels = np.asarray(idx, dtype=np.int64)
            elif multilabel:
                s.label = sorted(set(idx))
            elif len(idx) != 1:
                self._flag(bad, s.rows[0], s.id, f"expected one label, got {s.raw_labels}")
            else:
                s.label = idx[0]
        return list(names) if len(names) == k else [str(i) for i in range(k)]

    def _check_contiguous(self, samples: list[Sample]) -> None:
        """Integer labels with no declared classes must be ``0..max`` without a gap: labels
        {0, 1, 5} would silently make a 6-class model with three classes that no sample has.
        The error names the rows whose labels lie beyond the first missing class."""
        rows: dict[int, list[int]] = {}
        for s in samples:
            at = s.label_rows or [s.rows[0]] * len(s.raw_labels)
            for v, row in zip(s.raw_labels, at):
                i = int(float(str(v).strip()))
                if i >= 0:  # a negative label is a bad row, reported with the others
                    rows.setdefault(i, []).append(row)
        if not rows:
            return
        missing = [i for i in range(max(rows)) if i not in rows]
        if not missing:
            return
        beyond = sorted((row, i) for i, rs in rows.items() if i > missing[0] for row in rs)
        shown = ", ".join(f"row {r} (label {i})" for r, i in beyond[:10]) + (" …" if len(beyond) > 10 else "")
        raise ValueError(
            f"{self.what}: the class indices {sorted(rows)} skip {missing}, so the model would get "
            f"{max(rows) + 1} classes, {len(missing)} of them with no sample. Labels beyond the gap: "
            f"{shown}. Renumber the labels 0..{len(rows) - 1}, or declare the classes "
            f"(num_classes={max(rows) + 1} or class_names) if the missing ones exist elsewhere")

    def index(self) -> dict[str, Any]:
        """Every usable sample per split, the class names and what was inferred (cached)."""
        if self._index is not None:
            return self._index
        bad = BadSamples(self.what, self.on_bad_sample)
        self._bad_rows: set[int] = set()
        self._box_problems: dict[str, str] = {}
        self._point_names: list[str] | None = None
        rows = self.rows(bad)
        parsed = self._parse(rows, bad)
        # Every image named by the manifest takes part in the seeded split, bad or not, so that
        # fixing or skipping a row never moves the others to another split.
        all_ids = sorted({str(r.cells["image"]).strip() for r in rows
                          if not _empty(r.cells.get("image"))})
        samples = [s for s in parsed if not self._bad_rows & set(s.rows)]
        multilabel = bool(self.multilabel) or (self.multilabel is None and any(
            isinstance(s.label, list) for s in samples))
        names = self._resolve_labels(samples, bad, multilabel)
        samples = [s for s in samples if not self._bad_rows & set(s.rows)]
        if self.task == "segmentation":
            top = max((int(s.mask_values.max()) for s in samples
                       if s.mask_values is not None and s.mask_values.size), default=1)
            k = self.num_classes or (len(self.class_names) if self.class_names else max(2, top + 1))
            for s in samples:
                if s.mask_values is not None and s.mask_values.size and s.mask_values.max() >= k:
                    self._flag(bad, s.rows[0], s.id, f"mask {s.mask} holds values "
                               f"{s.mask_values[s.mask_values >= k].tolist()[:10]} outside the "
                               f"classes 0..{k - 1}")
            names = self.class_names or (["background", "foreground"] if k == 2
                                         else [str(i) for i in range(k)])
        if self.task == "landmarks" and samples:
            first = samples[0]
            for s in samples:
                if len(s.points) != len(first.points):  # type: ignore[arg-type]
                    self._flag(bad, s.rows[0], s.id, f"{len(s.points)} points but row "  # type: ignore[arg-type]
                               f"{first.rows[0]} has {len(first.points)}")  # type: ignore[arg-type]
            k = len(first.points)  # type: ignore[arg-type]
            names = self.class_names or (self._point_names if self._point_names is not None
                                         and len(self._point_names) == k
                                         else [f"l{i + 1}" for i in range(k)])
            if len(names) != k:
                raise ValueError(f"{self.what}: class_names has {len(names)} landmark names but "
                                 f"the rows have {k} points")
        bad.resolve()
        samples = [s for s in samples if not self._bad_rows & set(s.rows)]
        if not samples:
            raise ValueError(f"{self.what}: no usable samples (of {len(rows)} rows)")
        if self._box_problems:
            warnings.warn(f"{self.what}: {len(self._box_problems)} row(s) with degenerate or "
                          f"out-of-image boxes, degenerate_boxes={self.degenerate_boxes!r}:\n"
                          + format_listing(self._box_problems), stacklevel=2)
        given = {s.split for s in samples}
        if given == {None}:
            strata = None
            if self.task == "classification" and not multilabel:
                by_id = {s.id: int(s.label) for s in samples}  # type: ignore[arg-type]
                strata = [by_id.get(i, -1) for i in all_ids]
            split = load_or_create_split(self._split_file(), all_ids, strata,
                                         self.split_fractions, self.split_seed)
            where = {i: name for name, ids in split.items() for i in ids}
            for s in samples:
                s.split = where[s.id]
        elif None in given:
            missing = [f"row {s.rows[0]} ({s.id})" for s in samples if s.split is None]
            raise ValueError(f"{self.what}: some rows have a split and {len(missing)} do not: "
                             f"{missing[:10]}")
        by_split = {n: [s for s in samples if s.split == n] for n in ("train", "val", "test")}
        self._index = {"splits": by_split, "class_names": names, "multilabel": multilabel,
                       "channels": self.channels or max(s.channels for s in samples),
                       "volumes": is_nifti(samples[0].image)}
        log.info("%s: %s", self.what, ", ".join(f"{k} {len(v)}" for k, v in by_split.items()))
        return self._index

    def _out_size(self) -> tuple[int, ...]:
        idx = self.index()
        sizes = {s.hw for v in idx["splits"].values() for s in v}
        wanted = self.patch_size if idx["volumes"] else self.image_size
        if wanted is not None:
            return tuple(wanted)
        if len(sizes) == 1:
            return next(iter(sizes))
        shown = sorted(sizes)[:5]
        raise ValueError(f"{self.what}: images have {len(sizes)} different sizes (e.g. {shown}); "
                         f"set {'patch_size' if idx['volumes'] else 'image_size'} to resize them "
                         "to one")

    # --- the BaseDataModule interface --------------------------------------------------------
    def build_info(self) -> DataInfo:
        idx = self.index()
        out = self._out_size()
        names = idx["class_names"]
        spacing = None
        train = idx["splits"]["train"]
        if self.task == "landmarks":
            pairs = {(s.spacing, s.hw) for v in idx["splits"].values() for s in v}
            if len(pairs) == 1 and (only := next(iter(pairs)))[0] is not None:
                spacing = delivered_spacing(only[0], only[1], out)  # type: ignore[arg-type]
        return DataInfo(
            task=self.task, in_channels=idx["channels"], spatial_dims=3 if idx["volumes"] else 2,
            bounds=(0.0, 1.0), image_size=out,
            num_classes=0 if self.task == "landmarks" else len(names), class_names=list(names),
            multilabel=idx["multilabel"], num_landmarks=len(names) if self.task == "landmarks" else 0,
            pixel_spacing_mm=spacing, num_train=len(train))

    def build_split(self, split: str) -> Dataset:
        idx = self.index()
        samples = idx["splits"][split]
        out = self._out_size()
        name = f"{self.what} [{split}]"
        info = self.info
        train = split == "train"
        if idx["volumes"]:
            cases = [VolumeCase(s.id, s.image, s.mask, s.hw, s.channels)  # type: ignore[arg-type]
                     for s in samples]
            loader = VolumeLoader(None, None, (0.5, 99.5), info.num_classes)
            return DecathlonVolumeDataset(cases, loader, out, "resize", self.augment,  # type: ignore[arg-type]
                                          train=train, name=name)
        if self.task == "detection":
            records = [DetectionRecord(s.id, s.image, s.hw, s.boxes, s.box_labels,  # type: ignore[arg-type]
                                       self.manifest_path) for s in samples]
            transform = JointTransform(out, self.augment, train=train, has_boxes=True)  # type: ignore[arg-type]
            return DetectionDataset(records, transform, idx["channels"], name=name)
        transform = JointTransform(out, self.augment, train=train,  # type: ignore[arg-type]
                                   has_mask=self.task == "segmentation",
                                   has_keypoints=self.task == "landmarks")
        return ManifestDataset(samples, self.task, idx["channels"], transform, info.num_classes,
                               idx["multilabel"], self.mask_threshold, name)


# ------------------------------------------------------------------------------ paired folders
class PairedFoldersDataModule(ManifestDataModule):
    """Segmentation from an images folder and a masks folder, matched by file stem.

    ``images_dir/21_training.tif`` pairs with ``masks_dir/21_manual1.gif`` when
    ``image_suffix="_training"`` and ``mask_suffix="_manual1"`` (both default to ``""``: same
    stem). Every image without a mask and every mask without an image is reported by name —
    an error, or with ``on_bad_sample="skip"`` a warning listing them; none is dropped silently.
    Files whose extension is not an image (or NIfTI) extension are not samples and are ignored.
    Other arguments: see :class:`ManifestDataModule` (``split_file="auto"`` writes
    ``<images_dir>.split.json`` beside the images folder).
    """

    def __init__(
        self,
        images_dir: str | None = None,
        masks_dir: str | None = None,
        image_suffix: str = "",
        mask_suffix: str = "",
        mask_threshold: float | None = None,
        image_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int, int] | None = None,
        channels: int | None = None,
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        augment: AugmentConfig | None = None,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        split_file: str | None = "auto",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        # Explicit arguments (not **kwargs): the CLI builds its options from this signature.
        super().__init__(
            manifest=None, task="segmentation", image_size=image_size, patch_size=patch_size,
            channels=channels, class_names=class_names, num_classes=num_classes,
            mask_threshold=mask_threshold, augment=augment, split_fractions=split_fractions,
            split_seed=split_seed, split_file=split_file, on_bad_sample=on_bad_sample,
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            eval_batch_size=eval_batch_size)
        if not images_dir or not masks_dir:
            raise ValueError("PairedFoldersDataModule needs images_dir and masks_dir")
        self.images_dir = Path(os.path.expandvars(os.path.expanduser(images_dir))).resolve()
        self.masks_dir = Path(os.path.expandvars(os.path.expanduser(masks_dir))).resolve()
        self.image_suffix, self.mask_suffix = image_suffix, mask_suffix

    @property
    def manifest_path(self) -> Path:  # the split file and messages hang off the images folder
        return self.images_dir

    @property
    def what(self) -> str:
        return f"paired folders {self.images_dir} + {self.masks_dir}"

    def base_dir(self) -> Path:
        return self.images_dir

    def _split_file(self) -> Path | None:
        if self.split_file == "auto":
            return self.images_dir.with_name(f"{self.images_dir.name}.split.json")
        return super()._split_file()

    def _files(self, folder: Path, suffix: str, what: str) -> dict[str, Path]:
        require_dir(folder, what)
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if not p.is_file() or not p.name.lower().endswith(FOLDER_EXTENSIONS):
                continue
            stem = _stem(p)
            key = stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem
            if key in out:
                raise ValueError(f"{self.what}: {out[key].name} and {p.name} in {folder} both "
                                 f"match the stem {key!r}")
            out[key] = p
        return out

    def rows(self, bad: BadSamples) -> list[ManifestRow]:
        images = self._files(self.images_dir, self.image_suffix, "images folder")
        masks = self._files(self.masks_dir, self.mask_suffix, "masks folder")
        problems: dict[str, str] = {}
        for key in sorted(images.keys() - masks.keys()):
            problems[str(images[key])] = (f"image without a mask (looked for {key}"
                                          f"{self.mask_suffix}.* in {self.masks_dir})")
        for key in sorted(masks.keys() - images.keys()):
            problems[str(masks[key])] = (f"mask without an image (looked for {key}"
                                         f"{self.image_suffix}.* in {self.images_dir})")
        if problems:
            msg = (f"{self.what}: {len(problems)} unmatched file(s) (matched by stem; "
                   f"image_suffix={self.image_suffix!r}, mask_suffix={self.mask_suffix!r}):\n"
                   f"{format_listing(problems)}")
            if self.on_bad_sample == "error":
                raise BadSampleError(msg + "\nPass on_bad_sample='skip' to leave them out with "
                                     "a warning.")
            warnings.warn(msg + "\nLeft out (on_bad_sample='skip').", stacklevel=3)
        common = sorted(images.keys() & masks.keys())
        if not common:
            raise ValueError(f"{self.what}: no image has a mask")
        return [ManifestRow(i + 1, {"image": images[k].name, "mask": str(masks[k])})
                for i, k in enumerate(common)]


# ------------------------------------------------------------------------------ a small example
def write_example_manifest(folder: str | Path, task: str, n: int = 12,
                           image_size: tuple[int, int] = (32, 32), seed: int = 0,
                           fmt: Literal["csv", "json"] = "csv") -> Path:
    """Write ``n`` synthetic samples of ``task`` and their manifest into ``folder``; returns the
    manifest's path. For the README example, the tests and ``benchmarks/data_speed.py``.

    Images are grey PNGs (RGB for detection) with bright shapes the targets describe:
    classification 2 classes (``blob`` when a bright square is present, else ``plain``),
    segmentation the square's mask (0/255 PNG), landmarks 3 bright dots (``<name>_x/_y``
    columns), detection 1–2 boxes of classes ``small`` / ``large``. Paths are written relative
    to the manifest; no ``split`` column (the module makes a seeded split).
    """
    check_choice("task", task, MANIFEST_TASKS)
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = image_size
    rows: list[dict[str, Any]] = []
    for i in range(n):
        img = rng.uniform(0, 0.3, (h, w)).astype(np.float32)
        row: dict[str, Any] = {"image": f"images/{i:03d}.png"}
        side = max(2, min(h, w) // 4)
        y0, x0 = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        if task == "classification":
            label = i % 2
            if label:
                img[y0:y0 + side, x0:x0 + side] = 0.9
            row["label"] = "blob" if label else "plain"
        elif task == "segmentation":
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y0 + side, x0:x0 + side] = 255
            img[mask > 0] = 0.9
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
            row["mask"] = f"masks/{i:03d}.png"
        elif task == "landmarks":
            for name in ("nose", "left_eye", "right_eye"):
                x, y = int(rng.integers(1, w - 1)), int(rng.integers(1, h - 1))
                img[y - 1:y + 2, x - 1:x + 2] = 1.0
                row[f"{name}_x"], row[f"{name}_y"] = x, y
            row["spacing"] = 0.1
        else:
            boxes, labels = [], []
            for k in range(1 + i % 2):
                s = side if k == 0 else max(2, side // 2)
                by, bx = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
                img[by:by + s, bx:bx + s] = 0.9
                boxes.append([bx, by, bx + s, by + s])
                labels.append("large" if k == 0 else "small")
            row["boxes"], row["labels"] = boxes, labels
        pixels = (img * 255).astype(np.uint8)
        Image.fromarray(np.stack([pixels] * 3, -1) if task == "detection" else pixels).save(
            root / row["image"])
        rows.append(row)
    path = root / f"manifest.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
        return path
    if task == "detection":  # CSV: one row per box
        flat = [{"image": r["image"], "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "label": lab}
                for r in rows for b, lab in zip(r["boxes"], r["labels"])]
        rows = flat
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
