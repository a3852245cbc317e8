"""The cephalometric landmark datamodule: its options, the splits' cases indexed once (LabelMe
or ISBI layout, :mod:`~datamodules.landmarks.layouts`), the datasets and the data info."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

from attacks.options import check_choice
from datamodules.base import BaseDataModule, delivered_size
from datamodules.imagefiles import image_hw
from datamodules.info import DataInfo
from datamodules.landmarks.dataset import (
    LandmarkCase,
    LandmarkDataset,
    delivered_spacing,
)
from datamodules.landmarks.layouts import index_isbi, index_labelme
from datamodules.paths import resolve_data_path
from datamodules.samples import OnBadSample, check_on_bad_sample
from datamodules.splits import Split, load_or_create_split, split_items
from datamodules.transforms import AugmentConfig, JointTransform

log = logging.getLogger(__name__)

#: mm per pixel of the ISBI 2015 images (the challenge paper)
ISBI_PIXEL_SPACING_MM = 0.1
#: the two layouts on disk (:mod:`datamodules.landmarks`)
LandmarkFormat = Literal["labelme", "isbi"]
#: what a landmark that cannot be used makes of its point or its file
BadLandmarks = Literal["invisible", "error"]


class CephalometricDataModule(BaseDataModule):
    """Lateral cephalograms with K landmarks (LabelMe JSON or ISBI 2015 layout).

    Args:
        root: dataset folder; ``None`` = ``$MEDROBUST_DATA/cephalometric`` (LabelMe) or
            ``$MEDROBUST_DATA/isbi2015`` (ISBI).
        format: ``"labelme"`` or ``"isbi"`` (layouts: :mod:`datamodules.landmarks`).
        annotator: ``"average"`` (mean of every annotator folder, per landmark), an annotator
            folder name, or its unique ending (``"mollabashi"``, ``"farhadifar"``, ``"senior"``,
            ``"junior"``). With ``"average"`` every annotator must have a file for every case
            (a missing one is a bad sample).
        image_size: delivered ``(H, W)``; ``None`` keeps the size on disk. The default halves
            the shared copy (417 x 335) keeping its aspect ratio to within 0.5 %.
        num_landmarks: K.
        landmark_names: LabelMe labels in output order; default ``l1 .. lK``.
        pixel_spacing_mm: mm per pixel of the images on disk; ``None`` = 0.1 for ISBI, unknown
            (NaN ``spacing``) for LabelMe.
        split_fractions: ``(train, val, test)`` fractions of the seeded split (LabelMe). For
            ISBI, test is ``isbi_test_sets`` and ``val`` is the fraction
            ``split_fractions[1]`` of ``TrainingData``.
        seed: split seed.
        split_file: JSON file the split is saved to on first use and read from afterwards.
        isbi_test_sets: ISBI ``RawImage`` folders that form the test split.
        augment: training augmentations (flip, rotation, scale, crop, intensity), applied
            jointly to the image and its points. Note: a horizontal flip mirrors the anatomy
            (a lateral cephalogram then faces the other way); landmark identities stay valid.
        bad_landmarks: a landmark missing, given more than once, not a single point, or outside
            its image: ``"invisible"`` (default) delivers it with ``visible=False`` — or, with
            ``annotator="average"``, uses the other annotators' points for it — and emits one
            warning listing every file and landmark; ``"error"`` makes the file a bad sample.
        on_bad_sample: ``"error"`` (default) raises one error listing every bad file (missing
            or unreadable image / annotation, unknown label, wrong landmark count, image size
            not the one the annotation declares); ``"skip"`` leaves those cases out with one
            warning giving their count and names. Skipping decodes every image at setup so
            that truncated files are found before indices are assigned.
        batch_size / num_workers / pin_memory / eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        format: LandmarkFormat = "labelme",
        annotator: str = "average",
        image_size: tuple[int, int] | None = (208, 168),
        num_landmarks: int = 19,
        landmark_names: list[str] | None = None,
        pixel_spacing_mm: float | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        split_file: str | None = None,
        isbi_test_sets: tuple[str, ...] = ("Test1Data", "Test2Data"),
        augment: AugmentConfig | None = None,
        bad_landmarks: BadLandmarks = "invisible",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 8,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        check_choice("format", format, get_args(LandmarkFormat))
        check_choice("bad_landmarks", bad_landmarks, get_args(BadLandmarks))
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        names = list(landmark_names) if landmark_names else [f"l{k}" for k in
                                                              range(1, num_landmarks + 1)]
        if len(names) != num_landmarks or len(set(names)) != len(names):
            raise ValueError(f"landmark_names must be {num_landmarks} distinct labels, got {names}")
        if pixel_spacing_mm is not None and not pixel_spacing_mm > 0:
            raise ValueError(f"pixel_spacing_mm must be > 0 or None, got {pixel_spacing_mm}")
        self.format = format
        self.root = resolve_data_path(
            root, "cephalometric" if format == "labelme" else "isbi2015",
            f"cephalometric landmarks ({format})")
        if not self.root.is_dir():
            raise NotADirectoryError(f"cephalometric {format} root {self.root} is not a folder")
        self.annotator = annotator
        self.image_size = tuple(image_size) if image_size is not None else None
        self.landmark_names = names
        self.spacing_mm = (pixel_spacing_mm if pixel_spacing_mm is not None
                           else ISBI_PIXEL_SPACING_MM if format == "isbi" else None)
        self.split_fractions = tuple(split_fractions)
        self.seed = seed
        self.split_file = split_file
        self.isbi_test_sets = tuple(isbi_test_sets)
        self.bad_landmarks = bad_landmarks
        self._splits: dict[str, list[LandmarkCase]] | None = None

    @property
    def name(self) -> str:
        return f"cephalometric {self.format} ({self.root})"

    # --- indexing ------------------------------------------------------------------------------
    def splits(self) -> dict[str, list[LandmarkCase]]:
        """The cases of every split (indexed once; cheap: reads annotations and image headers)."""
        if self._splits is None:
            if self.format == "labelme":
                cases, bad = index_labelme(self)
                by_id = {c.case_id: c for c in cases}
                ids = sorted(set(by_id) | set(bad.problems))
                self._splits = split_items(load_or_create_split(
                    self.split_file, ids, None, self.split_fractions, self.seed), by_id)
            else:
                self._splits = index_isbi(self)
            for split, cases in self._splits.items():
                log.info("%s: %s split has %d cases", self.name, split, len(cases))
        return self._splits

    def check_image(self, path: Path) -> tuple[int, int]:
        """``(H, W)`` of an image file; decoded in full when skipping bad samples, so that
        truncated files are found before indices are assigned."""
        return image_hw(path, decode=self.on_bad_sample == "skip")

    # --- BaseDataModule ------------------------------------------------------------------------
    def build_split(self, split: Split) -> LandmarkDataset:
        transform = JointTransform(self.image_size, self.augment, train=split == "train",
                                   has_keypoints=True)
        return LandmarkDataset(self.splits()[split], transform, self.spacing_mm,
                               name=f"{self.name} [{split}]")

    def build_info(self) -> DataInfo:
        splits = self.splits()
        sizes = {c.image_hw for cases in splits.values() for c in cases}
        out_hw = delivered_size(self.image_size, sizes)
        spacing = None
        if self.spacing_mm is not None and len(sizes) == 1 and out_hw is not None:
            disk_hw = next(iter(sizes))
            spacing = delivered_spacing(self.spacing_mm, disk_hw, out_hw)
            fy, fx = disk_hw[0] / out_hw[0], disk_hw[1] / out_hw[1]
            if abs(fx / fy - 1.0) > 0.02:
                warnings.warn(f"{self.name}: resizing {disk_hw} -> {out_hw} scales x by "
                              f"{1 / fx:.3f} and y by {1 / fy:.3f}; the delivered spacing "
                              f"{spacing:.4f} mm is their geometric mean", stacklevel=2)
        return DataInfo(task="landmarks", in_channels=1,
                        image_size=out_hw or (),
                        num_landmarks=len(self.landmark_names), pixel_spacing_mm=spacing,
                        class_names=list(self.landmark_names), num_train=len(splits["train"]))
