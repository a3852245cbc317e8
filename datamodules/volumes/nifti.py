"""Reading NIfTI volumes: a case described from its headers (:class:`VolumeCase`), its shape after
reorientation without loading voxels, and the deterministic load → reorient → scale → check
pipeline (:class:`VolumeLoader`, through MONAI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datamodules.samples import BadSampleError

NIBABEL_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class VolumeCase:
    """One Decathlon training case, described from its NIfTI headers.

    Attributes:
        case_id: image file name without ``.nii(.gz)``.
        image_path / label_path: the NIfTI files.
        shape_dhw: ``(D, H, W)`` after reorientation and transposition.
        channels: modalities in the image.
    """

    case_id: str
    image_path: Path
    label_path: Path
    shape_dhw: tuple[int, int, int]
    channels: int


def strip_nifti(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def header_shape_dhw(path: Path, orientation: str | None) -> tuple[tuple[int, int, int], int]:
    """``((D, H, W), channels)`` of a NIfTI volume after reorientation, from its header only."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        affine = img.affine
    except Exception as err:  # nibabel raises many types for broken files
        raise BadSampleError(f"cannot read NIfTI header of {path}: {err}") from err
    if len(shape) == 3:
        channels = 1
    elif len(shape) == 4:
        channels = shape[3]
    else:
        raise BadSampleError(f"{path} has shape {shape}; expected 3-D (X, Y, Z) or 4-D "
                             "(X, Y, Z, C)")
    xyz = list(shape[:3])
    if orientation is not None:
        # Which output axis each input axis becomes after reorienting to `orientation` (the
        # same computation MONAI's Orientationd makes from the affine).
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine),
            nib.orientations.axcodes2ornt(orientation, NIBABEL_AXIS_LABELS))
        out = [0, 0, 0]
        for axis_in, (axis_out, _) in enumerate(transform):
            out[int(axis_out)] = xyz[axis_in]
        xyz = out
    return (xyz[2], xyz[1], xyz[0]), channels


def plain(t: Any) -> torch.Tensor:
    """A plain tensor (MONAI returns MetaTensors that carry affine metadata we do not need)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


class VolumeLoader:
    """Deterministic part of the pipeline: load, reorient, scale, transpose, check.

    ``__call__(case)`` returns ``image`` float32 ``[C, D, H, W]`` in [0, 1] and ``mask`` int64
    ``[D, H, W]``, or raises ``BadSampleError`` naming the file.
    """

    def __init__(self, orientation: str | None, intensity_range: tuple[float, float] | None,
                 percentiles: tuple[float, float], num_classes: int) -> None:
        self.orientation = orientation
        self.intensity_range = intensity_range
        self.percentiles = percentiles
        self.num_classes = num_classes
        self._pipeline: Any = None

    def _build(self) -> tuple[Any, Any]:
        from monai.transforms import (
            Compose,
            LoadImaged,
            Orientationd,
            ScaleIntensityRanged,
            ScaleIntensityRangePercentilesd,
        )

        # Loaded one key at a time so that a read error names the one broken file.
        load = LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True,
                          ensure_channel_first=True, allow_missing_keys=True)
        ops: list[Any] = []
        if self.orientation is not None:
            # Explicit nibabel (RAS+) axis labels: the same convention header_shape_dhw uses.
            ops.append(Orientationd(keys=["image", "label"], axcodes=self.orientation,
                                    labels=NIBABEL_AXIS_LABELS))
        if self.intensity_range is not None:
            lo, hi = self.intensity_range
            ops.append(ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0,
                                            b_max=1.0, clip=True))
        else:
            lo, hi = self.percentiles
            ops.append(ScaleIntensityRangePercentilesd(keys="image", lower=lo, upper=hi,
                                                       b_min=0.0, b_max=1.0, clip=True,
                                                       channel_wise=True))
        return load, Compose(ops)

    def __call__(self, case: VolumeCase) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pipeline is None:
            self._pipeline = self._build()
        load, rest = self._pipeline
        data: dict[str, Any] = {}
        for key, path in (("image", case.image_path), ("label", case.label_path)):
            try:
                data[key] = load({key: str(path)})[key]
            except Exception as err:  # MONAI wraps the reader's error; report the root cause
                cause: BaseException = err
                while cause.__cause__ is not None:
                    cause = cause.__cause__
                raise BadSampleError(f"cannot load {path}: {type(cause).__name__}: "
                                     f"{cause}") from err
        data = rest(data)
        # [C, X, Y, Z] -> [C, Z, Y, X] = [C, D, H, W]
        image = plain(data["image"]).permute(0, 3, 2, 1).contiguous().float()
        label = plain(data["label"]).permute(0, 3, 2, 1).contiguous()
        if not bool(torch.isfinite(image).all()):  # NaN survives scaling and clamping
            raise BadSampleError(f"image {case.image_path} holds "
                                 f"{int((~torch.isfinite(image)).sum())} non-finite (NaN/Inf) voxels")
        if label.shape[0] != 1:
            raise BadSampleError(f"label {case.label_path} has {label.shape[0]} channels; "
                                 "expected a single 3-D label map")
        if tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise BadSampleError(f"label {case.label_path} is {tuple(label.shape[1:])} (D, H, W) "
                                 f"but image {case.image_path} is {tuple(image.shape[1:])}")
        if tuple(image.shape[1:]) != case.shape_dhw or image.shape[0] != case.channels:
            raise BadSampleError(f"{case.image_path} loaded as {tuple(image.shape)} but its "
                                 f"header said {(case.channels, *case.shape_dhw)}")
        label = label[0]
        values = torch.unique(label)
        bad = values[(values != values.round()) | (values < 0) | (values >= self.num_classes)]
        if len(bad):
            raise BadSampleError(f"label {case.label_path} holds values {bad[:10].tolist()} "
                                 f"outside the classes 0..{self.num_classes - 1} of dataset.json")
        return image.clamp_(0.0, 1.0), label.round().long()
