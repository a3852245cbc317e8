"""Indexing the two cephalometric layouts on disk for a :class:`CephalometricDataModule`:
LabelMe folders (one per annotator) and the ISBI 2015 folders. Both check every point against
its image, apply ``bad_landmarks``, and collect bad cases under ``on_bad_sample``."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datamodules.imagefiles import IMAGE_EXTENSIONS
from datamodules.landmarks.annotations import (
    average_points,
    match_annotators,
    parse_isbi_points,
    parse_labelme_points,
    points_outside,
)
from datamodules.landmarks.dataset import LandmarkCase
from datamodules.samples import BadSampleError, BadSamples, format_listing
from datamodules.splits import load_or_create_split, split_items

if TYPE_CHECKING:
    from datamodules.landmarks.datamodule import CephalometricDataModule

ISBI_TRAIN_FOLDER = "TrainingData"


def _point_checks(dm: CephalometricDataModule, case_key: str, files: Sequence[Path], per_annotator: list[np.ndarray],
                  problems: dict[str, list[str]], hw: tuple[int, int],
                  point_problems: dict[str, list[str]], bad: BadSamples) -> bool:
    """Flag points outside the image, then apply ``bad_landmarks``; True = keep the case.

    ``problems`` holds what parsing found per file; points already NaN for those.
    """
    for file, points in zip(files, per_annotator):
        outside = points_outside(points, hw)
        if outside.any():
            names = [dm.landmark_names[k] for k in np.flatnonzero(outside)]
            problems.setdefault(str(file), []).append(
                f"{names} outside the {hw[1]}x{hw[0]} image")
            points[outside] = np.nan
    found = {str(f): problems[str(f)] for f in files if problems.get(str(f))}
    if not found:
        return True
    if dm.bad_landmarks == "error":
        bad.add(case_key, "; ".join(f"{f}: {', '.join(v)}" for f, v in found.items())
                + " (bad_landmarks='error'; 'invisible' delivers such points with "
                "visible=False)")
        return False
    point_problems.update(found)
    return True


def _warn_points(dm: CephalometricDataModule, point_problems: dict[str, list[str]], averaged: bool) -> None:
    """One warning listing every landmark delivered invisible (or from fewer annotators)."""
    if not point_problems:
        return
    n_points = sum(len(v) for v in point_problems.values())
    fallback = ("the other annotators' points are used for them, or visible=False where "
                "none has one" if averaged else "they are delivered with visible=False")
    listing = format_listing({k: "; ".join(v) for k, v in point_problems.items()})
    warnings.warn(f"{dm.name}: {n_points} landmark problem(s) in {len(point_problems)} "
                  f"file(s); {fallback} (bad_landmarks='invisible'):\n{listing}",
                  stacklevel=3)


def index_labelme(dm: CephalometricDataModule) -> tuple[list[LandmarkCase], BadSamples]:
    """Every usable case of a LabelMe layout (one folder of ``NNN.json`` per annotator), and the
    bad ones collected (already resolved: raised, or warned about under ``"skip"``)."""
    root = dm.root
    folders = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.json")))
    if not folders and any(root.glob("*.json")):
        folders = [root]
    if not folders:
        raise FileNotFoundError(
            f"{dm.name}: no LabelMe JSON files in {root} or its sub-folders (expected "
            "one folder of NNN.json per annotator, e.g. 'annotated by Dr.mollabashi/')")
    chosen = match_annotators(folders, dm.annotator)
    bad = BadSamples(dm.name, dm.on_bad_sample)
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
                                     f"{dm.annotator!r} needs one in every folder used)")
            for file in files:
                try:
                    points, file_problems, meta = parse_labelme_points(
                        file, dm.landmark_names)
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
            hw = dm.check_image(image_path)
            if declared and declared != {hw}:
                raise BadSampleError(f"annotation declares image size (H, W) "
                                     f"{sorted(declared)} but {image_path} is {hw}: points "
                                     "would not match")
        except BadSampleError as err:
            bad.add(case_id, str(err))
            continue
        if _point_checks(dm, case_id, files, per_annotator, problems, hw, point_problems,
                              bad):
            cases.append(LandmarkCase(case_id, image_path, hw,
                                      average_points(per_annotator).astype(np.float32),
                                      tuple(files)))
    _warn_points(dm, point_problems, averaged=len(chosen) > 1)
    bad.resolve()
    return cases, bad


def index_isbi(dm: CephalometricDataModule) -> dict[str, list[LandmarkCase]]:
    """The cases of every split of an ISBI 2015 layout: ``TrainingData`` split into train / val,
    ``isbi_test_sets`` as test."""
    root = dm.root
    ann_root, img_root = root / "AnnotationsByMD", root / "RawImage"
    for folder in (ann_root, img_root):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{dm.name}: {folder} not found (ISBI 2015 layout: RawImage/"
                "{TrainingData,Test1Data,Test2Data}/NNN.bmp and AnnotationsByMD/"
                "{400_senior,400_junior}/NNN.txt)")
    chosen = match_annotators(sorted(p for p in ann_root.iterdir() if p.is_dir()),
                              dm.annotator)
    bad = BadSamples(dm.name, dm.on_bad_sample)
    point_problems: dict[str, list[str]] = {}
    by_folder: dict[str, list[LandmarkCase]] = {}
    all_train_ids: list[str] = []
    for folder_name in (ISBI_TRAIN_FOLDER, *dm.isbi_test_sets):
        folder = img_root / folder_name
        if not folder.is_dir():
            raise FileNotFoundError(f"{dm.name}: image folder {folder} not found")
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
                        per_annotator.append(parse_isbi_points(file, len(dm.landmark_names)))
                    except BadSampleError as err:
                        raise BadSampleError(f"{file}: {err}") from err
                hw = dm.check_image(image_path)
            except BadSampleError as err:
                bad.add(str(image_path), str(err))
                continue
            if _point_checks(dm, str(image_path), files, per_annotator, {}, hw,
                                  point_problems, bad):
                cases.append(LandmarkCase(case_id, image_path, hw,
                                          average_points(per_annotator).astype(np.float32),
                                          tuple(files)))
    _warn_points(dm, point_problems, averaged=len(chosen) > 1)
    bad.resolve()
    train_cases = {c.case_id: c for c in by_folder[ISBI_TRAIN_FOLDER]}
    val_fraction = dm.split_fractions[1]
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_fractions[1] (val) must be in [0, 1), got {val_fraction}")
    # Split every training image (bad ones too), then drop the bad: skipping a broken file
    # does not reshuffle the others.
    split_ids = load_or_create_split(dm.split_file, all_train_ids, None,
                                     (1.0 - val_fraction, val_fraction, 0.0), dm.seed)
    test_cases = [c for name in dm.isbi_test_sets for c in by_folder[name]]
    dupes = [k for k, n in Counter(c.case_id for c in test_cases).items() if n > 1]
    if dupes:
        raise ValueError(f"{dm.name}: case ids {dupes[:10]} appear in several test folders")
    return {**split_items({s: split_ids[s] for s in ("train", "val")}, train_cases),
            "test": test_cases}
