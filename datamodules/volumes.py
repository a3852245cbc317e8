"""3-D segmentation volumes in the Medical Segmentation Decathlon layout, read through MONAI.

Layout (one task folder, e.g. ``Task04_Hippocampus``)::

    dataset.json   {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": ...},
                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                    "test": ["./imagesTs/y.nii.gz"]}
    imagesTr/*.nii.gz   3-D (one modality) or 4-D (X, Y, Z, modality) NIfTI
    labelsTr/*.nii.gz   3-D integer label maps, same voxel grid as the image

Only the ``training`` cases carry labels, so train / val / test are a seeded split of them
(``split_fractions``, ``seed``, saved to ``split_file``); the Decathlon ``test`` images are not
used.

Batch::

    mode="3d":        image float32 [B, C, D, H, W] in [0, 1], mask int64 [B, D, H, W]
    mode="2d_slices": image float32 [B, C, H, W]    in [0, 1], mask int64 [B, H, W]
    index int64 [B]   3d: the volume's position in its split; 2d_slices: the slice's position
                      in the split's flattened (volume, slice) list — volumes in split order,
                      slices in increasing depth — so it is stable across epochs and ranks.

Axes: volumes are reoriented to ``orientation`` (RAS by default, MONAI ``Orientationd``) and the
array ``[C, X, Y, Z]`` is transposed to ``[C, D, H, W] = [C, Z, Y, X]``: D is the superior axis,
so ``2d_slices`` are axial slices and ``volume[:, d]`` is slice ``d``.

Intensity (``bounds`` are always (0, 1), clipped): by default each volume and channel is mapped
linearly from its ``percentiles`` (0.5th, 99.5th) to [0, 1] (robust to MRI's arbitrary scale);
for CT give ``intensity_range=(a_min, a_max)`` in HU to use one fixed window for all volumes.

Spatial size: ``mode="3d"`` delivers ``patch_size`` (D, H, W): ``spatial_mode="resize"`` resizes
the whole volume (image trilinear, mask nearest); ``"crop"`` zero-pads up to the patch and
crops it — at random for training, centred for val / test (so "crop" evaluation sees only the
centre patch of each volume; whole-volume sliding-window evaluation is not provided here).
``mode="2d_slices"`` resizes every slice to ``image_size`` (H, W).
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from attacks.options import check_choice
from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from datamodules.paths import resolve_data_path
from datamodules.samples import BadSampleError, BadSamples, OnBadSample, check_on_bad_sample
from datamodules.splits import load_or_create_split
from datamodules.transforms import AugmentConfig, JointTransform, as_augment_config

log = logging.getLogger(__name__)

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


def _strip_nifti(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def parse_decathlon_labels(labels: Any, source: Path) -> list[str]:
    """Class names ordered by label value from ``dataset.json``'s ``labels``.

    Accepts the Decathlon form ``{"0": "background", "1": "x"}`` and the nnU-Net v2 form
    ``{"background": 0, "x": 1}``; values must be ``0..C-1``.
    """
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{source}: 'labels' must be a non-empty object")
    try:
        if all(str(k).strip().isdigit() for k in labels):
            by_value = {int(k): str(v) for k, v in labels.items()}
        else:
            by_value = {int(v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: 'labels' must map label values to names: {err}") from err
    if sorted(by_value) != list(range(len(by_value))):
        raise ValueError(f"{source}: label values must be 0..C-1, got {sorted(by_value)}")
    return [by_value[k] for k in range(len(by_value))]


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


def _plain(t: Any) -> torch.Tensor:
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
        image = _plain(data["image"]).permute(0, 3, 2, 1).contiguous().float()
        label = _plain(data["label"]).permute(0, 3, 2, 1).contiguous()
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


def build_3d_pipeline(patch_size: tuple[int, int, int], spatial_mode: str,
                      augment: AugmentConfig | None, train: bool) -> Any:
    """MONAI dict pipeline on ``image`` ``[C, D, H, W]`` and ``mask`` ``[1, D, H, W]`` (float).

    Spatial step (resize or pad + crop) first, then — for training — the enabled augmentations:
    flips (hflip: W axis, vflip: H axis), in-plane (H, W) rotation and isotropic zoom (one
    affine resampling), brightness (additive shift), contrast (scaling about the mean) and gamma.
    ``crop_scale`` has no 3-D counterpart here: use ``spatial_mode="crop"`` for random patches.
    """
    from monai.transforms import (
        CenterSpatialCropd,
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandScaleIntensityFixedMeand,
        RandShiftIntensityd,
        RandSpatialCropd,
        Resized,
        SpatialPadd,
    )

    keys = ["image", "mask"]
    ops: list[Any] = []
    if spatial_mode == "resize":
        ops.append(Resized(keys=keys, spatial_size=patch_size, mode=("trilinear", "nearest")))
    else:
        ops.append(SpatialPadd(keys=keys, spatial_size=patch_size, mode="constant"))
        ops.append(RandSpatialCropd(keys=keys, roi_size=patch_size, random_size=False) if train
                   else CenterSpatialCropd(keys=keys, roi_size=patch_size))
    cfg = augment if augment is not None else AugmentConfig()
    if train:
        if cfg.hflip:
            ops.append(RandFlipd(keys=keys, prob=cfg.hflip, spatial_axis=2))
        if cfg.vflip:
            ops.append(RandFlipd(keys=keys, prob=cfg.vflip, spatial_axis=1))
        if cfg.rotate_deg or cfg.scale:
            rad = math.radians(cfg.rotate_deg)
            # rotate_range[0] turns about the first spatial axis (D): an in-plane rotation.
            ops.append(RandAffined(keys=keys, prob=1.0, rotate_range=(rad, 0.0, 0.0),
                                   scale_range=(cfg.scale,) * 3 if cfg.scale else None,
                                   mode=("bilinear", "nearest"), padding_mode="zeros"))
        if cfg.brightness:
            ops.append(RandShiftIntensityd(keys="image", offsets=cfg.brightness,
                                           prob=cfg.p_intensity))
        if cfg.contrast:
            ops.append(RandScaleIntensityFixedMeand(keys="image", factors=cfg.contrast,
                                                    prob=cfg.p_intensity))
        if cfg.gamma:
            ops.append(RandAdjustContrastd(keys="image", gamma=(1 - cfg.gamma, 1 + cfg.gamma),
                                           prob=cfg.p_intensity))
    return Compose(ops)


class _VolumeDatasetBase(Dataset):
    def __init__(self, cases: Sequence[VolumeCase], loader: VolumeLoader, name: str,
                 cache_size: int) -> None:
        self.cases = list(cases)
        self.loader = loader
        self.name = name
        self.cache_size = cache_size
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def preload(self) -> None:
        """Load every volume into the cache (shared with forked workers copy-on-write)."""
        self.cache_size = max(self.cache_size, len(self.cases))
        for i in range(len(self.cases)):
            self._volume(i)

    def _volume(self, case_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if case_index in self._cache:
            self._cache.move_to_end(case_index)
            return self._cache[case_index]
        case = self.cases[case_index]
        try:
            volume = self.loader(case)
        except BadSampleError as err:
            raise BadSampleError(f"{self.name}: case {case.case_id}: {err}") from err
        if self.cache_size > 0:
            self._cache[case_index] = volume
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return volume


class DecathlonVolumeDataset(_VolumeDatasetBase):
    """One item per volume: ``image`` float32 ``[C, D, H, W]``, ``mask`` int64 ``[D, H, W]``,
    ``index`` int64 ``[]``."""

    def __init__(self, cases: Sequence[VolumeCase], loader: VolumeLoader,
                 patch_size: tuple[int, int, int], spatial_mode: str,
                 augment: AugmentConfig | None, train: bool, name: str,
                 cache_size: int = 0) -> None:
        super().__init__(cases, loader, name, cache_size)
        self.pipeline = build_3d_pipeline(patch_size, spatial_mode, augment, train)
        self.train = train

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self._volume(index)
        if self.train:
            # Seed MONAI's random transforms from torch so runs follow torch.manual_seed and
            # every worker / epoch draws differently.
            self.pipeline.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        try:
            out = self.pipeline({"image": image.clone(), "mask": mask[None].float()})
        except Exception as err:  # name the case, also from inside a DataLoader worker
            raise BadSampleError(f"{self.name}: sample {index} ({self.cases[index].image_path}): "
                                 f"transform failed: {err}") from err
        return {
            "image": _plain(out["image"]).float().clamp(0.0, 1.0).contiguous(),
            "mask": _plain(out["mask"])[0].round().long().contiguous(),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class DecathlonSliceDataset(_VolumeDatasetBase):
    """One item per axial slice: ``image`` float32 ``[C, H, W]``, ``mask`` int64 ``[H, W]``,
    ``index`` int64 ``[]`` (position in the flattened (volume, slice) list)."""

    def __init__(self, cases: Sequence[VolumeCase], loader: VolumeLoader,
                 transform: JointTransform, name: str, cache_size: int = 2) -> None:
        super().__init__(cases, loader, name, cache_size)
        self.transform = transform
        self.slices = [(c, d) for c, case in enumerate(self.cases)
                       for d in range(case.shape_dhw[0])]

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case_index, depth = self.slices[index]
        image, mask = self._volume(case_index)
        try:
            out = self.transform(image[:, depth].permute(1, 2, 0).numpy(),
                                 mask=mask[depth].numpy())
        except Exception as err:  # name the case, also from inside a DataLoader worker
            raise BadSampleError(f"{self.name}: sample {index} (slice {depth} of "
                                 f"{self.cases[case_index].image_path}): transform failed: "
                                 f"{err}") from err
        return {"image": out["image"], "mask": out["mask"],
                "index": torch.tensor(index, dtype=torch.int64)}


class DecathlonDataModule(BaseDataModule):
    """Medical Segmentation Decathlon task as 3-D volumes / patches or as 2-D axial slices.

    Args:
        root: folder holding the task folders (or the task folder itself); ``None`` =
            ``$MEDROBUST_DATA/decathlon``.
        task_dir: task folder below ``root`` (e.g. ``"Task04_Hippocampus"``); ``None`` when
            ``root`` is the task folder.
        mode: ``"3d"`` (one sample per volume) or ``"2d_slices"`` (one per axial slice).
        patch_size: ``(D, H, W)`` delivered in ``"3d"`` mode.
        spatial_mode: ``"resize"`` the whole volume to ``patch_size`` or ``"crop"`` a patch
            (random for training, centred for evaluation) after zero-padding.
        image_size: ``(H, W)`` every slice is resized to in ``"2d_slices"`` mode.
        orientation: axis codes volumes are reoriented to (``None`` keeps the file's order).
        intensity_range: fixed ``(a_min, a_max)`` window mapped to [0, 1] (CT, in HU);
            ``None`` = per-volume, per-channel ``percentiles``.
        percentiles: lower / upper percentile mapped to 0 / 1 when ``intensity_range`` is None.
        split_fractions / seed / split_file: seeded split of the labelled ``training`` cases.
        augment: training augmentations (2-D: albumentations on each slice with its mask; 3-D:
            the MONAI equivalents, see :func:`build_3d_pipeline`).
        cache: keep every loaded volume in memory (loaded at setup, shared with forked
            workers). Without it each dataset keeps only the last two volumes it read, which is
            enough for evaluation (slices of a volume are consecutive) but reloads a volume per
            slice in shuffled 2-D training.
        on_bad_sample: ``"error"`` raises one error listing every bad case (missing or
            unreadable file, image / label size mismatch, wrong channel count); ``"skip"`` leaves
            them out with one warning, and also loads every volume at setup so that truncated
            files and label values outside the classes are found before indices are assigned.
            With ``"error"`` those two are only found when the case is loaded, and the error
            names the file.
        batch_size / num_workers / pin_memory / eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        task_dir: str | None = "Task04_Hippocampus",
        mode: Literal["3d", "2d_slices"] = "3d",
        patch_size: tuple[int, int, int] = (32, 64, 64),
        spatial_mode: Literal["resize", "crop"] = "resize",
        image_size: tuple[int, int] = (64, 64),
        orientation: str | None = "RAS",
        intensity_range: tuple[float, float] | None = None,
        percentiles: tuple[float, float] = (0.5, 99.5),
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        split_file: str | None = None,
        augment: AugmentConfig | None = None,
        cache: bool = False,
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 2,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        check_choice("mode", mode, ("3d", "2d_slices"))
        check_choice("spatial_mode", spatial_mode, ("resize", "crop"))
        check_on_bad_sample(on_bad_sample)
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be (D, H, W) positive, got {patch_size}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) positive, got {image_size}")
        if intensity_range is not None and not intensity_range[0] < intensity_range[1]:
            raise ValueError(f"intensity_range must be (low, high) with low < high, "
                             f"got {intensity_range}")
        if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        base = resolve_data_path(root, "decathlon", "Medical Segmentation Decathlon")
        if task_dir is None or ((base / "dataset.json").is_file() and base.name == task_dir):
            self.root = base
        else:
            self.root = base / task_dir
        if not (self.root / "dataset.json").is_file():
            raise FileNotFoundError(f"Decathlon: {self.root / 'dataset.json'} not found (expected "
                                    "a task folder with dataset.json, imagesTr/, labelsTr/)")
        self.mode = mode
        self.patch_size = tuple(int(s) for s in patch_size)
        self.spatial_mode = spatial_mode
        self.image_size = tuple(int(s) for s in image_size)
        self.orientation = orientation
        self.split_fractions = tuple(split_fractions)
        self.seed = seed
        self.split_file = split_file
        self.augment = as_augment_config(augment) if augment is not None else None
        self.cache = cache
        self.on_bad_sample = on_bad_sample
        self.what = f"Decathlon ({self.root})"
        meta = self._read_json()
        self.class_names = parse_decathlon_labels(meta.get("labels"), self.root / "dataset.json")
        modality = meta.get("modality") or meta.get("channel_names") or {"0": "image"}
        try:
            self.modalities = [str(modality[k]) for k in sorted(modality, key=lambda k: int(k))]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.what}: dataset.json 'modality' must map channel numbers to "
                             f"names, got {modality!r}") from err
        self.loader = VolumeLoader(orientation,
                                   tuple(intensity_range) if intensity_range else None,
                                   tuple(percentiles), len(self.class_names))
        self._training = meta.get("training")
        self._splits: dict[str, list[VolumeCase]] | None = None

    def _read_json(self) -> dict[str, Any]:
        path = self.root / "dataset.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{self.what}: cannot read {path}: {err}") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
            raise ValueError(f"{self.what}: {path} has no 'training' list")
        return meta

    def splits(self) -> dict[str, list[VolumeCase]]:
        """The volumes of every split (indexed once from the NIfTI headers)."""
        if self._splits is not None:
            return self._splits
        bad = BadSamples(self.what, self.on_bad_sample)
        cases: dict[str, VolumeCase] = {}
        all_ids: set[str] = set()
        for i, entry in enumerate(self._training or []):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise ValueError(f"{self.what}: dataset.json training[{i}] = {entry!r} lacks "
                                 "'image' or 'label'")
        # MONAI's reader of the Decathlon datalist: paths joined to the task folder
        from monai.data import load_decathlon_datalist

        entries = load_decathlon_datalist(str(self.root / "dataset.json"), is_segmentation=True,
                                          data_list_key="training", base_dir=str(self.root))
        for entry in entries:
            image_path = Path(entry["image"]).resolve()
            label_path = Path(entry["label"]).resolve()
            case_id = _strip_nifti(image_path.name)
            if case_id in all_ids:
                raise ValueError(f"{self.what}: case {case_id} listed twice in dataset.json")
            all_ids.add(case_id)
            try:
                for p in (image_path, label_path):
                    if not p.is_file():
                        raise BadSampleError(f"{p} does not exist (listed in dataset.json)")
                shape, channels = header_shape_dhw(image_path, self.orientation)
                label_shape, label_channels = header_shape_dhw(label_path, self.orientation)
                if label_channels != 1:
                    raise BadSampleError(f"label {label_path} has {label_channels} channels; "
                                         "expected one 3-D label map")
                if label_shape != shape:
                    raise BadSampleError(f"label {label_path} is {label_shape} (D, H, W) but image "
                                         f"{image_path} is {shape}: a label map must share the "
                                         "image's voxel grid")
                if channels != len(self.modalities):
                    raise BadSampleError(f"{image_path} has {channels} channel(s); dataset.json "
                                         f"declares {len(self.modalities)} modalities "
                                         f"{self.modalities}")
                case = VolumeCase(case_id, image_path, label_path, shape, channels)
                if self.on_bad_sample == "skip":
                    self.loader(case)  # full read: truncated files, label values
            except BadSampleError as err:
                bad.add(case_id, str(err))
                continue
            cases[case_id] = case
        if not all_ids:
            raise ValueError(f"{self.what}: dataset.json lists no training cases")
        bad.resolve()
        ids = load_or_create_split(self.split_file, sorted(all_ids), None, self.split_fractions,
                                   self.seed)
        self._splits = {s: [cases[i] for i in v if i in cases] for s, v in ids.items()}
        for split, vols in self._splits.items():
            log.info("%s: %s split has %d volumes", self.what, split, len(vols))
        return self._splits

    def build_split(self, split: str) -> Dataset:
        cases = self.splits()[split]
        name = f"{self.what} [{split}]"
        if self.mode == "3d":
            ds: _VolumeDatasetBase = DecathlonVolumeDataset(
                cases, self.loader, self.patch_size, self.spatial_mode, self.augment,
                train=split == "train", name=name)
        else:
            transform = JointTransform(self.image_size, self.augment, train=split == "train",
                                       has_mask=True)
            ds = DecathlonSliceDataset(cases, self.loader, transform, name=name)
        if self.cache:
            ds.preload()
        return ds

    def build_info(self) -> DataInfo:
        splits = self.splits()
        three_d = self.mode == "3d"
        num_train = (len(splits["train"]) if three_d
                     else sum(c.shape_dhw[0] for c in splits["train"]))
        return DataInfo(task="segmentation", in_channels=len(self.modalities),
                        spatial_dims=3 if three_d else 2, bounds=(0.0, 1.0),
                        image_size=self.patch_size if three_d else self.image_size,
                        num_classes=len(self.class_names), class_names=list(self.class_names),
                        num_train=num_train)
