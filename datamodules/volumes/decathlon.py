"""The Medical Segmentation Decathlon datamodule: ``dataset.json`` read, the labelled cases
indexed once from their NIfTI headers and split, as volumes or as axial slices."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal, get_args

from torch.utils.data import Dataset

from attacks.options import check_choice
from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from datamodules.paths import resolve_data_path
from datamodules.samples import BadSampleError, BadSamples, OnBadSample, check_on_bad_sample
from datamodules.splits import Split, load_or_create_split, split_items
from datamodules.transforms import AugmentConfig, JointTransform
from datamodules.volumes.datasets import (
    DecathlonSliceDataset,
    DecathlonVolumeDataset,
    SpatialMode,
    VolumeDatasetBase,
)
from datamodules.volumes.nifti import (
    VolumeCase,
    VolumeLoader,
    header_shape_dhw,
    strip_nifti,
)

log = logging.getLogger(__name__)

#: one sample per volume, or one per axial slice
VolumeMode = Literal["3d", "2d_slices"]


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
        mode: VolumeMode = "3d",
        patch_size: tuple[int, int, int] = (32, 64, 64),
        spatial_mode: SpatialMode = "resize",
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
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        check_choice("mode", mode, get_args(VolumeMode))
        check_choice("spatial_mode", spatial_mode, get_args(SpatialMode))
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
        self.cache = cache
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
            case_id = strip_nifti(image_path.name)
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
        self._splits = split_items(ids, cases)
        for split, vols in self._splits.items():
            log.info("%s: %s split has %d volumes", self.what, split, len(vols))
        return self._splits

    def build_split(self, split: Split) -> Dataset:
        cases = self.splits()[split]
        name = f"{self.what} [{split}]"
        if self.mode == "3d":
            ds: VolumeDatasetBase = DecathlonVolumeDataset(
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
                        spatial_dims=3 if three_d else 2,
                        image_size=self.patch_size if three_d else self.image_size,
                        num_classes=len(self.class_names), class_names=list(self.class_names),
                        num_train=num_train)
