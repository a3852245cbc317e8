"""One indexed sample of a manifest, and the file checks every task shares: the image header
and the mask readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.imagefiles import image_header, read_image
from datamodules.manifest.rows import is_nifti
from datamodules.samples import BadSampleError
from datamodules.volumes.nifti import header_shape_dhw

__all__ = ["Sample", "check_image", "nifti_values", "read_label_mask"]

_GREY_MODES = ("1", "L", "LA", "P", "I", "I;16", "I;16B", "I;16L", "F")  # for masks
_GREY_IMAGE_MODES = tuple(m for m in _GREY_MODES if m != "P")  # a palette image may be colour


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


def check_image(s: Sample, decode: bool) -> None:
    """Header checks of the sample's image: size and channels (NIfTI: shape) into ``s.hw`` /
    ``s.channels``; ``decode``: read the whole 2-D image once too.

    Raises:
        BadSampleError: missing or unreadable file.
    """
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


def nifti_values(path: Path) -> np.ndarray:
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
