"""Reading image files safely and a dataset over image/mask files.

Shared by the folder-based loaders (PH2, ISIC, chest X-ray folders) and the manifest, VOC / COCO
and landmark loaders (image headers). Every failure is a :class:`BadSampleError` naming the file
and what was expected; what a loader then does with bad samples (one error listing all, or
``on_bad_sample="skip"`` with one warning) is :mod:`datamodules.samples`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.samples import BadSampleError  # also importable from here, as it always was
from datamodules.tasks import task_named
from datamodules.transforms import JointTransform

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
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


class ImageFileDataset(Dataset):
    """Classification or segmentation samples read from image (and mask) files on demand.

    Items: ``image`` float32 ``[C, H, W]`` in [0, 1]; ``label`` int64 scalar (classification) or
    ``mask`` int64 ``[H, W]`` in {0, 1} (segmentation); ``index`` int64 scalar (position in
    ``records``). A failure while reading or transforming raises :class:`BadSampleError`
    naming the sample's files, also from inside a DataLoader worker.
    """

    def __init__(self, records: Sequence[FileRecord], task: str, channels: Literal[1, 3],
                 transform: JointTransform, name: str) -> None:
        if task not in ("classification", "segmentation"):
            raise ValueError(f"ImageFileDataset supports classification and segmentation, "
                             f"not {task!r}")
        self.records = list(records)
        self.task = task
        self.kind = task_named(task, "ImageFileDataset")
        self.channels = channels
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rec = self.records[index]
        try:
            image = read_image(rec.image, self.channels)
            mask = None
            if self.kind.has_mask:
                if rec.mask is None:
                    raise BadSampleError(f"no mask for image {rec.image}")
                mask = read_binary_mask(rec.mask)
                if mask.shape != image.shape[:2]:
                    raise BadSampleError(f"mask {rec.mask} has shape {mask.shape} but image "
                                         f"{rec.image} has {image.shape[:2]}")
            res = self.transform(image, mask=mask)
        except Exception as err:
            raise BadSampleError(f"{self.name}: sample {index} ({rec.id}, {rec.image}"
                                 f"{', ' + str(rec.mask) if rec.mask else ''}): {err}") from err
        out = {"image": res["image"]}
        if self.kind.has_mask:
            out["mask"] = res["mask"]
        else:
            out["label"] = torch.tensor(int(rec.label), dtype=torch.int64)  # type: ignore[arg-type]
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out
