"""Cephalometric landmark detection: LabelMe JSON points and the ISBI 2015 text format.

Batch (see :mod:`datamodules.info`)::

    image      float32 [B, 1, H, W]  grey X-ray in [0, 1]
    landmarks  float32 [B, K, 2]     (x, y) pixel-index coordinates of the delivered image
                                     (resize and augmentation applied; the centre of pixel
                                     image[r, c] is (x=c, y=r))
    visible    bool    [B, K]        False for a point that is missing / ambiguous in the
                                     annotation or was moved out of the image by augmentation
    spacing    float32 [B]           mm per delivered pixel, NaN when the spacing is unknown
    index      int64   [B]           position in the split, stable across epochs and ranks

Layouts read:

* **LabelMe** (``format="labelme"``), e.g. the Hamedan University set in
  ``$MEDROBUST_DATA/cephalometric``: one folder per annotator (``annotated by Dr.mollabashi/``,
  ``annotated by Dr.farhadifar/``) holding ``NNN.json`` with ``shapes[k] = {"label": "l1".."l19",
  "points": [[x, y]], "shape_type": "point"}`` and ``imagePath`` relative to the JSON file
  (``../pictures/NNN.png``). A root that holds the JSON files itself is one annotator.
* **ISBI 2015** (``format="isbi"``): ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp`` and
  ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt`` (first K lines ``x,y``, then the
  classification-challenge lines, which are ignored).

Pixel spacing: the ISBI 2015 images are 0.1 mm/pixel (challenge paper), used when
``pixel_spacing_mm`` is None. The shared LabelMe copy states no spacing anywhere (its README only
says "downsampled x4"), so it is unknown (NaN) unless ``pixel_spacing_mm`` is given: the mm per
pixel of the files *on disk*. The delivered ``spacing`` is that value times the resize factor.
When the x and y resize factors differ (``image_size`` not keeping the aspect ratio) a single
number cannot be exact; we deliver ``spacing * sqrt(fx * fy)`` (the geometric mean, which keeps
areas right) and warn how anisotropic the result is when it exceeds 2 %.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from attacks.options import check_choice
from datamodules.base import BaseDataModule
from datamodules.imagefiles import IMAGE_EXTENSIONS, image_hw, read_image
from datamodules.info import DataInfo
from datamodules.paths import resolve_data_path
from datamodules.samples import (
    BadSampleError,
    BadSamples,
    OnBadSample,
    check_on_bad_sample,
    format_listing,
)
from datamodules.splits import load_or_create_split
from datamodules.transforms import AugmentConfig, JointTransform, as_augment_config

log = logging.getLogger(__name__)

ISBI_PIXEL_SPACING_MM = 0.1
ISBI_TRAIN_FOLDER = "TrainingData"


# --------------------------------------------------------------------------------------------
# Annotation parsing
# --------------------------------------------------------------------------------------------
@dataclass
class LandmarkCase:
    """One image with its landmarks as read from disk.

    Attributes:
        case_id: file stem shared by image and annotations (e.g. ``"001"``).
        image_path: the image file.
        image_hw: ``(H, W)`` of the image on disk.
        points: float32 ``[K, 2]`` ``(x, y)`` in pixels of the image on disk; NaN = no usable
            point (missing or ambiguous in every annotator used).
        sources: the annotation files the points come from.
    """

    case_id: str
    image_path: Path
    image_hw: tuple[int, int]
    points: np.ndarray
    sources: tuple[Path, ...]


def parse_labelme_points(path: Path, names: Sequence[str]) -> tuple[np.ndarray, list[str],
                                                                    dict[str, Any]]:
    """Read the landmarks of one LabelMe JSON file, ordered like ``names``.

    Returns:
        ``(points, problems, meta)``: float64 ``[K, 2]`` points with NaN where a landmark is
        missing, duplicated or malformed; one human-readable problem per such landmark; and the
        file's ``imagePath`` / ``imageHeight`` / ``imageWidth``.

    Raises:
        BadSampleError: the file is not LabelMe JSON or has a label not in ``names``.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BadSampleError(f"cannot read LabelMe JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise BadSampleError("not a LabelMe file (expected a JSON object with a 'shapes' list)")
    position = {name: k for k, name in enumerate(names)}
    found: dict[int, list[Any]] = {}
    for shape in data["shapes"]:
        label = str(shape.get("label", "")).strip() if isinstance(shape, dict) else ""
        if label not in position:
            raise BadSampleError(f"unknown landmark label {label!r} (expected one of "
                                 f"{names[0]}..{names[-1]})")
        found.setdefault(position[label], []).append(shape)
    points = np.full((len(names), 2), np.nan)
    problems: list[str] = []
    for k, name in enumerate(names):
        shapes = found.get(k, [])
        if not shapes:
            problems.append(f"{name} missing")
            continue
        if len(shapes) > 1:
            problems.append(f"{name} given {len(shapes)} times at "
                            + ", ".join(_short_points(s.get("points")) for s in shapes))
            continue
        pts = shapes[0].get("points")
        kind = shapes[0].get("shape_type", "point")
        try:
            xy = np.asarray(pts, dtype=np.float64)
        except (TypeError, ValueError):
            xy = np.zeros((0,))
        if kind != "point" or xy.shape != (1, 2) or not np.isfinite(xy).all():
            problems.append(f"{name} is not a single point (shape_type={kind!r}, points={pts})")
            continue
        points[k] = xy[0]
    meta = {key: data.get(key) for key in ("imagePath", "imageHeight", "imageWidth")}
    return points, problems, meta


def _short_points(points: Any) -> str:
    """``[[x, y]]`` as ``(x, y)`` with one decimal, for messages."""
    try:
        return ", ".join(f"({float(x):.1f}, {float(y):.1f})" for x, y in points)
    except (TypeError, ValueError):
        return repr(points)


def parse_isbi_points(path: Path, num_landmarks: int) -> np.ndarray:
    """Read the first ``num_landmarks`` ``x,y`` lines of an ISBI 2015 annotation file.

    Returns:
        float64 ``[K, 2]`` ``(x, y)`` pixels.

    Raises:
        BadSampleError: the file is unreadable or does not start with exactly K coordinate lines.
    """
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise BadSampleError(f"cannot read ISBI annotation: {err}") from err
    coords: list[tuple[float, float]] = []
    for ln in lines:
        # Coordinate lines are "x,y"; the class lines that follow hold a single integer.
        if "," not in ln:
            break
        parts = ln.split(",")
        try:
            x, y = (float(p) for p in parts)
        except ValueError as err:
            raise BadSampleError(f"line {len(coords) + 1} {ln!r} is not 'x,y'") from err
        coords.append((x, y))
    if len(coords) != num_landmarks:
        raise BadSampleError(f"expected {num_landmarks} 'x,y' landmark lines, found {len(coords)}")
    return np.asarray(coords, dtype=np.float64)


def match_annotators(folders: Sequence[Path], annotator: str) -> list[Path]:
    """The annotator folders selected by ``annotator``.

    ``"average"`` selects all; otherwise an exact folder name, or a unique folder whose name ends
    with it (``"mollabashi"`` -> ``annotated by Dr.mollabashi``, ``"senior"`` -> ``400_senior``).
    """
    if not folders:
        raise FileNotFoundError("no annotator folders found")
    if annotator == "average":
        return list(folders)
    exact = [f for f in folders if f.name == annotator]
    if exact:
        return exact
    suffix = [f for f in folders if f.name.lower().endswith(annotator.lower())]
    if len(suffix) == 1:
        return suffix
    names = [f.name for f in folders]
    raise ValueError(f"annotator {annotator!r} matches {len(suffix)} of the annotator folders "
                     f"{names}; use 'average' or one folder name (or its unique ending)")


def average_points(per_annotator: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over annotators of ``[K, 2]`` points, ignoring NaN; NaN where all are NaN."""
    stack = np.stack(per_annotator)
    valid = np.isfinite(stack).all(axis=2, keepdims=True)
    count = valid.sum(axis=0)
    total = np.where(valid, stack, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _outside(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``[K]`` True for finite points outside the ``[0, W] x [0, H]`` image area."""
    h, w = hw
    x, y = points[:, 0], points[:, 1]
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & ~((x >= 0) & (x <= w) & (y >= 0) & (y <= h))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
class LandmarkDataset(Dataset):
    """Map-style dataset of :class:`LandmarkCase` items through a :class:`JointTransform`.

    Item: ``image`` float32 ``[1, H, W]`` in [0, 1], ``landmarks`` float32 ``[K, 2]``,
    ``visible`` bool ``[K]``, ``spacing`` float32 ``[]`` (mm per delivered pixel, NaN when
    unknown), ``index`` int64 ``[]``.
    """

    def __init__(self, cases: Sequence[LandmarkCase], transform: JointTransform,
                 spacing_mm: float | None, name: str = "landmarks") -> None:
        self.cases = list(cases)
        self.transform = transform
        self.spacing_mm = spacing_mm
        self.name = name

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[index]
        try:
            image = read_image(case.image_path, channels=1)
            if image.shape[:2] != case.image_hw:
                raise BadSampleError(f"image is {image.shape[:2]} (H, W) but was "
                                     f"{case.image_hw} when the dataset was indexed")
            out = self.transform(image, keypoints=case.points)
        except Exception as err:  # name the file, also from inside a DataLoader worker
            raise BadSampleError(f"{self.name}: sample {index} (case {case.case_id}, "
                                 f"{case.image_path}): {err}") from err
        h, w = out["image"].shape[-2:]
        spacing = delivered_spacing(self.spacing_mm, case.image_hw, (h, w))
        return {
            "image": out["image"],
            "landmarks": out["keypoints"],
            "visible": out["visible"],
            "spacing": torch.tensor(math.nan if spacing is None else spacing, dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def delivered_spacing(spacing_mm: float | None, disk_hw: tuple[int, int],
                      out_hw: tuple[int, int]) -> float | None:
    """mm per delivered pixel: on-disk spacing times the geometric mean of the resize factors."""
    if spacing_mm is None:
        return None
    fy, fx = disk_hw[0] / out_hw[0], disk_hw[1] / out_hw[1]
    return float(spacing_mm * math.sqrt(fx * fy))


# --------------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------------
class CephalometricDataModule(BaseDataModule):
    """Lateral cephalograms with K landmarks (LabelMe JSON or ISBI 2015 layout).

    Args:
        root: dataset folder; ``None`` = ``$MEDROBUST_DATA/cephalometric`` (LabelMe) or
            ``$MEDROBUST_DATA/isbi2015`` (ISBI).
        format: ``"labelme"`` or ``"isbi"`` (see the module docstring for the layouts).
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
        format: Literal["labelme", "isbi"] = "labelme",
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
        bad_landmarks: Literal["invisible", "error"] = "invisible",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        check_choice("format", format, ("labelme", "isbi"))
        check_choice("bad_landmarks", bad_landmarks, ("invisible", "error"))
        check_on_bad_sample(on_bad_sample)
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
        self.augment = as_augment_config(augment) if augment is not None else None
        self.bad_landmarks = bad_landmarks
        self.on_bad_sample = on_bad_sample
        self._splits: dict[str, list[LandmarkCase]] | None = None

    @property
    def name(self) -> str:
        return f"cephalometric {self.format} ({self.root})"

    # --- indexing ------------------------------------------------------------------------------
    def splits(self) -> dict[str, list[LandmarkCase]]:
        """The cases of every split (indexed once; cheap: reads annotations and image headers)."""
        if self._splits is None:
            if self.format == "labelme":
                cases, bad = self._index_labelme()
                by_id = {c.case_id: c for c in cases}
                ids = sorted(set(by_id) | set(bad.problems))
                split_ids = load_or_create_split(self.split_file, ids, None,
                                                 self.split_fractions, self.seed)
                # Split over every case found (bad ones too), then drop the bad ones, so that
                # skipping a broken file does not reshuffle the others.
                self._splits = {s: [by_id[i] for i in v if i in by_id]
                                for s, v in split_ids.items()}
            else:
                self._splits = self._index_isbi()
            for split, cases in self._splits.items():
                log.info("%s: %s split has %d cases", self.name, split, len(cases))
        return self._splits

    def _check_image(self, path: Path) -> tuple[int, int]:
        return image_hw(path, decode=self.on_bad_sample == "skip")

    def _point_checks(self, case_key: str, files: Sequence[Path], per_annotator: list[np.ndarray],
                      problems: dict[str, list[str]], hw: tuple[int, int],
                      point_problems: dict[str, list[str]], bad: BadSamples) -> bool:
        """Flag points outside the image, then apply ``bad_landmarks``; True = keep the case.

        ``problems`` holds what parsing found per file; points already NaN for those.
        """
        for file, points in zip(files, per_annotator):
            outside = _outside(points, hw)
            if outside.any():
                names = [self.landmark_names[k] for k in np.flatnonzero(outside)]
                problems.setdefault(str(file), []).append(
                    f"{names} outside the {hw[1]}x{hw[0]} image")
                points[outside] = np.nan
        found = {str(f): problems[str(f)] for f in files if problems.get(str(f))}
        if not found:
            return True
        if self.bad_landmarks == "error":
            bad.add(case_key, "; ".join(f"{f}: {', '.join(v)}" for f, v in found.items())
                    + " (bad_landmarks='error'; 'invisible' delivers such points with "
                    "visible=False)")
            return False
        point_problems.update(found)
        return True

    def _warn_points(self, point_problems: dict[str, list[str]], averaged: bool) -> None:
        """One warning listing every landmark delivered invisible (or from fewer annotators)."""
        if not point_problems:
            return
        n_points = sum(len(v) for v in point_problems.values())
        fallback = ("the other annotators' points are used for them, or visible=False where "
                    "none has one" if averaged else "they are delivered with visible=False")
        listing = format_listing({k: "; ".join(v) for k, v in point_problems.items()})
        warnings.warn(f"{self.name}: {n_points} landmark problem(s) in {len(point_problems)} "
                      f"file(s); {fallback} (bad_landmarks='invisible'):\n{listing}",
                      stacklevel=3)

    def _index_labelme(self) -> tuple[list[LandmarkCase], BadSamples]:
        root = self.root
        folders = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.json")))
        if not folders and any(root.glob("*.json")):
            folders = [root]
        if not folders:
            raise FileNotFoundError(
                f"{self.name}: no LabelMe JSON files in {root} or its sub-folders (expected "
                "one folder of NNN.json per annotator, e.g. 'annotated by Dr.mollabashi/')")
        chosen = match_annotators(folders, self.annotator)
        bad = BadSamples(self.name, self.on_bad_sample)
        point_problems: dict[str, list[str]] = {}
        case_ids = sorted({p.stem for f in chosen for p in f.glob("*.json")})
        cases: list[LandmarkCase] = []
        for case_id in case_ids:
            files = [f / f"{case_id}.json" for f in chosen]
            problems: dict[str, list[str]] = {}
            per_annotator: list[np.ndarray] = []
            image_paths: set[Path] = set()
            declared: set[tuple[int, int]] = set()
            try:
                missing = [str(f) for f in files if not f.is_file()]
                if missing:
                    raise BadSampleError(f"no annotation {', '.join(missing)} (annotator="
                                         f"{self.annotator!r} needs one in every folder used)")
                for file in files:
                    try:
                        points, file_problems, meta = parse_labelme_points(
                            file, self.landmark_names)
                    except BadSampleError as err:
                        raise BadSampleError(f"{file}: {err}") from err
                    if not meta["imagePath"]:
                        raise BadSampleError(f"{file}: no imagePath")
                    image_paths.add((file.parent / str(meta["imagePath"])).resolve())
                    if meta["imageHeight"] and meta["imageWidth"]:
                        declared.add((int(meta["imageHeight"]), int(meta["imageWidth"])))
                    per_annotator.append(points)
                    if file_problems:
                        problems[str(file)] = file_problems
                if len(image_paths) != 1:
                    raise BadSampleError("annotators point at different images "
                                         f"{sorted(image_paths)}")
                image_path = image_paths.pop()
                hw = self._check_image(image_path)
                if declared and declared != {hw}:
                    raise BadSampleError(f"annotation declares image size (H, W) "
                                         f"{sorted(declared)} but {image_path} is {hw}: points "
                                         "would not match")
            except BadSampleError as err:
                bad.add(case_id, str(err))
                continue
            if self._point_checks(case_id, files, per_annotator, problems, hw, point_problems,
                                  bad):
                cases.append(LandmarkCase(case_id, image_path, hw,
                                          average_points(per_annotator).astype(np.float32),
                                          tuple(files)))
        self._warn_points(point_problems, averaged=len(chosen) > 1)
        bad.resolve()
        return cases, bad

    def _index_isbi(self) -> dict[str, list[LandmarkCase]]:
        root = self.root
        ann_root, img_root = root / "AnnotationsByMD", root / "RawImage"
        for folder in (ann_root, img_root):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{self.name}: {folder} not found (ISBI 2015 layout: RawImage/"
                    "{TrainingData,Test1Data,Test2Data}/NNN.bmp and AnnotationsByMD/"
                    "{400_senior,400_junior}/NNN.txt)")
        chosen = match_annotators(sorted(p for p in ann_root.iterdir() if p.is_dir()),
                                  self.annotator)
        bad = BadSamples(self.name, self.on_bad_sample)
        point_problems: dict[str, list[str]] = {}
        by_folder: dict[str, list[LandmarkCase]] = {}
        all_train_ids: list[str] = []
        for folder_name in (ISBI_TRAIN_FOLDER, *self.isbi_test_sets):
            folder = img_root / folder_name
            if not folder.is_dir():
                raise FileNotFoundError(f"{self.name}: image folder {folder} not found")
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if folder_name == ISBI_TRAIN_FOLDER:
                all_train_ids = [p.stem for p in images]
            cases = by_folder.setdefault(folder_name, [])
            for image_path in images:
                case_id = image_path.stem
                files = [f / f"{case_id}.txt" for f in chosen]
                try:
                    missing = [str(f) for f in files if not f.is_file()]
                    if missing:
                        raise BadSampleError(f"no annotation {', '.join(missing)}")
                    per_annotator = []
                    for file in files:
                        try:
                            per_annotator.append(parse_isbi_points(file, len(self.landmark_names)))
                        except BadSampleError as err:
                            raise BadSampleError(f"{file}: {err}") from err
                    hw = self._check_image(image_path)
                except BadSampleError as err:
                    bad.add(str(image_path), str(err))
                    continue
                if self._point_checks(str(image_path), files, per_annotator, {}, hw,
                                      point_problems, bad):
                    cases.append(LandmarkCase(case_id, image_path, hw,
                                              average_points(per_annotator).astype(np.float32),
                                              tuple(files)))
        self._warn_points(point_problems, averaged=len(chosen) > 1)
        bad.resolve()
        train_cases = {c.case_id: c for c in by_folder[ISBI_TRAIN_FOLDER]}
        val_fraction = self.split_fractions[1]
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"split_fractions[1] (val) must be in [0, 1), got {val_fraction}")
        # Split every training image (bad ones too), then drop the bad: skipping a broken file
        # does not reshuffle the others.
        split_ids = load_or_create_split(self.split_file, all_train_ids, None,
                                         (1.0 - val_fraction, val_fraction, 0.0), self.seed)
        test_cases = [c for name in self.isbi_test_sets for c in by_folder[name]]
        dupes = [k for k, n in Counter(c.case_id for c in test_cases).items() if n > 1]
        if dupes:
            raise ValueError(f"{self.name}: case ids {dupes[:10]} appear in several test folders")
        return {"train": [train_cases[i] for i in split_ids["train"] if i in train_cases],
                "val": [train_cases[i] for i in split_ids["val"] if i in train_cases],
                "test": test_cases}

    # --- BaseDataModule ------------------------------------------------------------------------
    def build_split(self, split: str) -> LandmarkDataset:
        transform = JointTransform(self.image_size, self.augment, train=split == "train",
                                   has_keypoints=True)
        return LandmarkDataset(self.splits()[split], transform, self.spacing_mm,
                               name=f"{self.name} [{split}]")

    def build_info(self) -> DataInfo:
        splits = self.splits()
        sizes = {c.image_hw for cases in splits.values() for c in cases}
        out_hw = self.image_size or (next(iter(sizes)) if len(sizes) == 1 else None)
        spacing = None
        if self.spacing_mm is not None and len(sizes) == 1 and out_hw is not None:
            disk_hw = next(iter(sizes))
            spacing = delivered_spacing(self.spacing_mm, disk_hw, out_hw)
            fy, fx = disk_hw[0] / out_hw[0], disk_hw[1] / out_hw[1]
            if abs(fx / fy - 1.0) > 0.02:
                warnings.warn(f"{self.name}: resizing {disk_hw} -> {out_hw} scales x by "
                              f"{1 / fx:.3f} and y by {1 / fy:.3f}; the delivered spacing "
                              f"{spacing:.4f} mm is their geometric mean", stacklevel=2)
        return DataInfo(task="landmarks", in_channels=1, spatial_dims=2, bounds=(0.0, 1.0),
                        image_size=tuple(out_hw) if out_hw else (),
                        num_landmarks=len(self.landmark_names), pixel_spacing_mm=spacing,
                        class_names=list(self.landmark_names), num_train=len(splits["train"]))
