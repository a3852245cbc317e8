"""Reading image files safely, and the datasets whose items are read from image files.

Shared by the folder-based loaders (PH2, ISIC, chest X-ray folders) and the manifest, VOC / COCO
and landmark loaders. Every failure is a :class:`~datamodules.samples.BadSampleError` naming the
file and what was expected; what a loader then does with bad samples (one error listing all, or
``on_bad_sample="skip"`` with one warning) is :mod:`datamodules.samples`.
:class:`IndexedImageDataset` is the one "record → batch item" path (read the image, check its
size, transform, wrap any failure as a bad sample) that every such dataset specialises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.samples import BadSampleError, OnBadSample, screen
from datamodules.tasks import task_named
from datamodules.transforms import AugmentConfig, JointTransform

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: the tasks an :class:`ImageFileDataset` delivers: a class label per image, or a mask
ImageFileTask = Literal["classification", "segmentation"]
# Errors PIL raises for missing, unreadable, truncated or absurd files.
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                Image.DecompressionBombError)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`FileNotFoundError` saying what was expected."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a folder at {path}, found "
                                f"{'a file' if path.exists() else 'nothing'}")
    return path


def image_header(path: Path) -> tuple[int, int, str]:
    """``(width, height, PIL mode)`` from the file header, without decoding pixels.

    Raises:
        BadSampleError: the file is missing or its header unreadable (the message names it).
    """
    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], im.mode
    except FileNotFoundError as err:
        raise BadSampleError(f"missing file {path}") from err
    except _READ_ERRORS as err:
        raise BadSampleError(f"cannot read image {path}: {err}") from err


def image_header_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding pixels."""
    w, h, _ = image_header(path)
    return w, h


def image_hw(path: Path, decode: bool = False) -> tuple[int, int]:
    """``(H, W)`` of an image from its header; ``decode`` also decodes every pixel (finds
    truncated files, at the cost of reading the whole file).

    Raises:
        BadSampleError: the file is missing, unreadable or (with ``decode``) truncated.
    """
    w, h = image_header_size(path)
    if decode:
        read_image(path, 1)
    return h, w


def _to_unit_float(arr: np.ndarray, path: Path) -> np.ndarray:
    """Scale integer pixels to [0, 1] by their type's range (8 or 16 bit), floats unchanged."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype in (np.uint16, np.int32, np.int16):
        # 16-bit PNG/TIFF (PIL opens them as I;16 or I): scale by the 16-bit range.
        return np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int((~np.isfinite(arr)).sum())
        if bad:  # a float TIFF can hold NaN / Inf; caught here, not as a NaN loss later
            raise BadSampleError(f"image {path} holds {bad} non-finite (NaN/Inf) pixel values")
        return arr.astype(np.float32)
    raise BadSampleError(f"image {path} has unsupported pixel type {arr.dtype}")


def read_image(path: Path, channels: Literal[1, 3]) -> np.ndarray:
    """Decode an image as float32 ``[H, W, channels]`` in [0, 1].

    Colour images read as grey are converted with PIL's luminance weights; grey images read as
    RGB are repeated over three channels; 16-bit greyscale keeps its precision.

    Raises:
        BadSampleError: missing, unreadable or truncated file (the message names it).
    """
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode now so truncation is detected here
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = _to_unit_float(np.asarray(im), path)
                arr = arr[:, :, None]
                if channels == 3:
                    arr = np.repeat(arr, 3, axis=2)
                return np.ascontiguousarray(arr)
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except FileNotFoundError as err:
        raise BadSampleError(f"missing image file {path}") from err
    except _READ_ERRORS as err:
        raise BadSampleError(f"cannot read image {path}: {err}") from err
    arr = _to_unit_float(arr, path)
    return np.ascontiguousarray(arr.reshape(arr.shape[0], arr.shape[1], channels))


def read_binary_mask(path: Path) -> np.ndarray:
    """Decode a lesion mask (0 / 255, or 0 / 1) as int64 ``[H, W]`` in {0, 1}.

    Values are thresholded at half the type's range, so JPEG-compressed masks still work.
    """
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L") if im.mode not in ("1", "L", "P") else im)
    except FileNotFoundError as err:
        raise BadSampleError(f"missing mask file {path}") from err
    except _READ_ERRORS as err:
        raise BadSampleError(f"cannot read mask {path}: {err}") from err
    if arr.ndim != 2:
        raise BadSampleError(f"mask {path} must be single-channel, got shape {arr.shape}")
    threshold = 0.5 if arr.dtype == np.bool_ or arr.max() <= 1 else 127
    return (arr > threshold).astype(np.int64)


@dataclass
class FileRecord:
    """One sample on disk: its id, image file, optional mask file and label."""

    id: str
    image: Path
    mask: Path | None = None
    label: int | None = None


def check_record(record: FileRecord, num_classes: int | None, decode: bool) -> None:
    """Raise :class:`BadSampleError` if the record cannot be used.

    Checks that files exist and have readable headers, that a mask has its image's size, and
    that the label is in ``[0, num_classes)``; with ``decode`` also decodes every pixel (catches
    truncated files, at the cost of reading everything once).
    """
    if num_classes is not None:
        if record.label is None:
            raise BadSampleError(f"no label for image {record.image}")
        if not 0 <= int(record.label) < num_classes:
            raise BadSampleError(f"label {record.label} out of range "
                                 f"[0, {num_classes}) for image {record.image}")
    size = image_header_size(record.image)
    if record.mask is not None:
        mask_size = image_header_size(record.mask)
        if mask_size != size:
            raise BadSampleError(f"mask {record.mask} is {mask_size[0]}x"
                                 f"{mask_size[1]} but image {record.image} is {size[0]}x{size[1]}")
    if decode:
        read_image(record.image, 3)
        if record.mask is not None:
            read_binary_mask(record.mask)


class IndexedImageDataset(Dataset, ABC):
    """Base of the map-style datasets whose items are read from disk on demand, one indexed
    record each (a file record, a detection record, a landmark case, a manifest sample).

    A subclass says how a record's files are read and transformed (:meth:`load`, returning the
    :class:`JointTransform`'s dict), which target entries the item gets (:meth:`targets`) and how
    a record is named in messages (:meth:`describe`). Items: ``image`` float32 ``[C, H, W]`` in
    [0, 1], the targets, ``index`` int64 ``[]`` (position in ``records``). Any failure while
    loading raises :class:`BadSampleError` naming the dataset, the sample and its files, also
    from inside a DataLoader worker.
    """

    def __init__(self, records: Sequence[Any], transform: JointTransform, channels: int,
                 name: str) -> None:
        self.records = list(records)
        self.transform = transform
        self.channels = channels
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    @abstractmethod
    def load(self, record: Any) -> dict[str, Any]:
        """Read ``record``'s files and return the transform's output (``image`` and what moved)."""

    @abstractmethod
    def targets(self, record: Any, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The item's target entries from the transform's output ``out``."""

    def describe(self, record: Any) -> str:
        """How a failure message names ``record`` (its id and files)."""
        return str(record)

    def read(self, path: Path, hw: tuple[int, int] | None = None) -> np.ndarray:
        """Decode ``path`` as float32 ``[H, W, channels]``; ``hw``: the ``(H, W)`` found when the
        dataset was indexed, which the decoded image must still have."""
        image = read_image(path, self.channels)  # type: ignore[arg-type]
        if hw is not None and image.shape[:2] != tuple(hw):
            raise BadSampleError(f"image is {image.shape[:2]} (H, W) but was {tuple(hw)} when "
                                 "the dataset was indexed")
        return image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        try:
            out = self.load(record)
        except Exception as err:  # name the file, also from inside a DataLoader worker
            raise BadSampleError(f"{self.name}: sample {index} ({self.describe(record)}): "
                                 f"{err}") from err
        return {"image": out["image"], **self.targets(record, out),
                "index": torch.tensor(index, dtype=torch.int64)}


class ImageFileDataset(IndexedImageDataset):
    """Classification or segmentation samples read from image (and mask) files on demand.

    Items: ``image`` float32 ``[C, H, W]`` in [0, 1]; ``label`` int64 scalar (a task whose target
    is one class label) or ``mask`` int64 ``[H, W]`` in {0, 1} (a task whose joint transform
    moves a mask); ``index`` int64 scalar (position in ``records``).
    """

    def __init__(self, records: Sequence[FileRecord], task: str, channels: Literal[1, 3],
                 transform: JointTransform, name: str) -> None:
        super().__init__(records=records, transform=transform, channels=channels, name=name)
        self.kind = task_named(task, "ImageFileDataset")
        if self.kind.target_keys not in (("label",), ("mask",)):
            raise ValueError(f"ImageFileDataset delivers a class label or a mask, not the targets "
                             f"{self.kind.target_keys} of task {self.kind.name!r}")
        self.task = self.kind.name

    def load(self, record: FileRecord) -> dict[str, Any]:
        image = self.read(record.image)
        mask = None
        if self.kind.has_mask:
            if record.mask is None:
                raise BadSampleError(f"no mask for image {record.image}")
            mask = read_binary_mask(record.mask)
            if mask.shape != image.shape[:2]:
                raise BadSampleError(f"mask {record.mask} has shape {mask.shape} but image "
                                     f"{record.image} has {image.shape[:2]}")
        return self.transform(image, mask=mask)

    def targets(self, record: FileRecord, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.kind.has_mask:
            return {"mask": out["mask"]}
        return {"label": torch.tensor(int(record.label), dtype=torch.int64)}  # type: ignore[arg-type]

    def describe(self, record: FileRecord) -> str:
        return f"{record.id}, {record.image}{', ' + str(record.mask) if record.mask else ''}"


def screened_file_dataset(records: Sequence[FileRecord], *, task: str, channels: Literal[1, 3],
                          num_classes: int | None, image_size: tuple[int, int] | None,
                          augment: AugmentConfig | None, split: str, on_bad_sample: OnBadSample,
                          name: str, describe: Callable[[FileRecord], str] = lambda r: r.id,
                          ) -> ImageFileDataset:
    """One split's :class:`ImageFileDataset` from its file records, screened first: every record
    must pass :func:`check_record` (files readable, a mask of its image's size, a label in
    ``[0, num_classes)`` unless the task's target is a mask; every pixel decoded under
    ``on_bad_sample="skip"``), and the bad ones are handled by ``on_bad_sample``.

    ``name`` names the data in messages (``"PH2"``); ``describe`` names one record.

    Raises:
        BadSampleError: bad records under ``on_bad_sample="error"`` (all of them listed).
        ValueError: no record is usable.
    """
    seg = task_named(task).has_mask
    decode = on_bad_sample == "skip"

    def check(record: FileRecord) -> None:
        check_record(record, None if seg else num_classes, decode)
        if seg and record.mask is None:
            raise BadSampleError(f"{record.id}: no mask")

    what = f"{name} {split} split"
    kept = screen(records, check, on_bad_sample, what, describe=describe)
    if not kept:
        raise ValueError(f"{what}: no usable samples")
    transform = JointTransform(image_size, augment, train=split == "train", has_mask=seg)
    return ImageFileDataset(kept, task, channels, transform, f"{name} {split}")
