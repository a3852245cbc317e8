"""Object detection: Pascal VOC XML (e.g. BCCD) and COCO JSON.

Batch (see :mod:`datamodules.info`)::

    image   float32 [B, C, H, W]          in [0, 1]; every image resized to ``image_size``
    boxes   list of B float32 [N_i, 4]    (x1, y1, x2, y2) absolute pixels of the delivered
                                          image, continuous edges (a box over columns a..b
                                          inclusive has x1 = a, x2 = b + 1), x2 > x1, y2 > y1
    labels  list of B int64 [N_i]         in [0, num_classes), no background class
    index   int64 [B]                     position in the split

``N_i`` may be 0 (an image without objects is legal): its tensors are ``[0, 4]`` and ``[0]``.

Coordinates read from disk:

* VOC ``bndbox`` values are 1-based inclusive pixel indices (``xmin = 1`` is the first column,
  ``xmax = W`` the last), so ``x1 = xmin - 1, x2 = xmax`` (``one_based=False`` reads them as
  0-based continuous edges instead).
* COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixels: ``x1 = x, x2 = x + w``.

Bad boxes: a box is *degenerate* when, as written in the file, ``xmax <= xmin`` or
``ymax <= ymin`` (COCO: ``w <= 0`` or ``h <= 0``) — judged on the raw values, so a VOC box with
``xmin == xmax`` (a zero-size click, as in two BCCD files) is degenerate although the inclusive
convention could read it as one pixel wide. It is *out of image* when it crosses the image
border. ``degenerate_boxes`` decides what happens (``"drop"`` default, ``"fix"``: swap reversed
corners and clip to the image, dropping what is still empty; ``"error"``: the file is a bad
sample), always with one warning (``warnings.warn``) that counts the boxes and lists the
files; the problems found are also kept in ``datamodule.box_problems`` (``{file: [problem]}``).
No degenerate box ever reaches a batch.
"""

from __future__ import annotations

import json
import logging
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from attacks.options import check_choice
from datamodules.base import SPLITS, BaseDataModule
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

BOX_POLICIES = ("drop", "fix", "error")
# Coordinates this close outside the image are rounding (e.g. COCO x + w = 640.0000001), not a
# box problem: they are clipped without a warning.
BORDER_TOLERANCE = 1e-3


@dataclass
class DetectionRecord:
    """One image and its valid boxes, in pixels of the image on disk.

    Attributes:
        image_id: VOC file stem or COCO image id (as a string).
        image_path: the image file.
        image_hw: ``(H, W)`` on disk.
        boxes: float32 ``[N, 4]`` xyxy, continuous pixel edges, all valid (x2 > x1, y2 > y1,
            inside the image).
        labels: int64 ``[N]`` in ``[0, num_classes)``.
        source: annotation file the boxes come from.
    """

    image_id: str
    image_path: Path
    image_hw: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    source: Path


def sanitize_box(raw: Sequence[float], hw: tuple[int, int], policy: str,
                 one_based: bool) -> tuple[list[float] | None, str | None]:
    """Validate one box given as raw ``(xmin, ymin, xmax, ymax)`` from its file.

    Args:
        raw: corners as written (VOC values, or COCO ``x, y, x + w, y + h``).
        hw: ``(H, W)`` of the image.
        policy: ``"drop"`` / ``"error"`` (reject a bad box) or ``"fix"`` (swap, clip).
        one_based: VOC inclusive 1-based indices (``x1 = xmin - 1``).

    Returns:
        ``(box, problem)``: the 0-based continuous ``[x1, y1, x2, y2]`` or ``None`` when the
        box is rejected, and a description of what was wrong (``None`` for a clean box).
    """
    h, w = hw
    x1, y1, x2, y2 = (float(v) for v in raw)
    shown = f"[{', '.join(f'{v:g}' for v in raw)}]"
    if not np.isfinite([x1, y1, x2, y2]).all():
        return None, f"box {shown} has non-finite coordinates"
    problems: list[str] = []
    if x2 <= x1 or y2 <= y1:
        problems.append(f"box {shown} is degenerate (xmax <= xmin or ymax <= ymin)")
        if policy != "fix" or x2 == x1 or y2 == y1:
            return None, problems[0] + (" and cannot be fixed" if policy == "fix" else "")
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
    if one_based:
        x1, y1 = x1 - 1.0, y1 - 1.0
    tol = BORDER_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
        problems.append(f"box {shown} crosses the {w}x{h} image border")
        if policy != "fix":
            return None, problems[-1]
    x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    if x2 <= x1 or y2 <= y1:
        return None, "; ".join(problems) + " and is empty inside the image"
    return [x1, y1, x2, y2], ("; ".join(problems) + " (fixed)") if problems else None


class DetectionDataset(Dataset):
    """Map-style dataset of :class:`DetectionRecord` items through a :class:`JointTransform`.

    Item: ``image`` float32 ``[C, H, W]`` in [0, 1], ``boxes`` float32 ``[N, 4]``,
    ``labels`` int64 ``[N]``, ``index`` int64 ``[]``.
    """

    def __init__(self, records: Sequence[DetectionRecord], transform: JointTransform,
                 channels: Literal[1, 3] = 3, name: str = "detection") -> None:
        self.records = list(records)
        self.transform = transform
        self.channels = channels
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rec = self.records[index]
        try:
            image = read_image(rec.image_path, channels=self.channels)
            if image.shape[:2] != rec.image_hw:
                raise BadSampleError(f"image is {image.shape[:2]} (H, W) but was {rec.image_hw} "
                                     "when the dataset was indexed")
            out = self.transform(image, boxes=rec.boxes, box_labels=rec.labels)
        except Exception as err:  # name the file, also from inside a DataLoader worker
            raise BadSampleError(f"{self.name}: sample {index} (image {rec.image_id}, "
                                 f"{rec.image_path}): {err}") from err
        boxes, labels = out["boxes"].reshape(-1, 4), out["box_labels"].reshape(-1)
        # JointTransform already drops boxes an augmentation emptied; this guard keeps the
        # contract (x2 > x1, y2 > y1) even if that ever changes.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "image": out["image"],
            "boxes": boxes[keep].to(torch.float32),
            "labels": labels[keep].to(torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class _DetectionDataModule(BaseDataModule):
    """What the VOC and COCO datamodules share: options, bad-box policy, datasets, info."""

    what = "detection"

    def __init__(
        self,
        image_size: tuple[int, int] | None,
        channels: Literal[1, 3],
        split_fractions: tuple[float, float, float],
        seed: int,
        split_file: str | None,
        augment: AugmentConfig | None,
        degenerate_boxes: str,
        on_bad_sample: str,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        eval_batch_size: int | None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        check_choice("degenerate_boxes", degenerate_boxes, BOX_POLICIES)
        check_on_bad_sample(on_bad_sample)
        check_choice("channels", channels, (1, 3))
        self.image_size = tuple(image_size) if image_size is not None else None
        self.channels = channels
        self.split_fractions = tuple(split_fractions)
        self.seed = seed
        self.split_file = split_file
        self.augment = as_augment_config(augment) if augment is not None else None
        self.degenerate_boxes = degenerate_boxes
        self.on_bad_sample = on_bad_sample
        self.class_names: list[str] = []
        self.box_problems: dict[str, list[str]] = {}
        self._splits: dict[str, list[DetectionRecord]] | None = None

    # --- subclasses ----------------------------------------------------------------------------
    def index(self) -> dict[str, list[DetectionRecord]]:
        """Read the annotations; set ``class_names``; return the records of every split."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------
    def splits(self) -> dict[str, list[DetectionRecord]]:
        """The records of every split (indexed once: annotations and image headers only)."""
        if self._splits is None:
            self._splits = self.index()
            for split, records in self._splits.items():
                n_boxes = sum(len(r.boxes) for r in records)
                log.info("%s: %s split has %d images, %d boxes", self.what, split,
                         len(records), n_boxes)
        return self._splits

    def _check_image(self, path: Path) -> tuple[int, int]:
        # Full decode only when skipping, so truncated files are found before indexing ends.
        return image_hw(path, decode=self.on_bad_sample == "skip")

    def _boxes(self, key: str, raw_boxes: Sequence[Sequence[float]], hw: tuple[int, int],
               one_based: bool) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``degenerate_boxes`` to one file's boxes.

        Returns ``(boxes float32 [N', 4], kept index int64 [N'])``; problems are recorded in
        ``self.box_problems[key]``.

        Raises:
            BadSampleError: ``degenerate_boxes="error"`` and some box is bad.
        """
        kept: list[list[float]] = []
        kept_idx: list[int] = []
        problems: list[str] = []
        for i, raw in enumerate(raw_boxes):
            box, problem = sanitize_box(raw, hw, self.degenerate_boxes, one_based)
            if problem:
                problems.append(f"object {i}: {problem}")
            if box is not None:
                kept.append(box)
                kept_idx.append(i)
        if problems:
            self.box_problems[key] = problems
            if self.degenerate_boxes == "error":
                raise BadSampleError("; ".join(problems) + " (degenerate_boxes='error'; 'drop' or "
                                     "'fix' handle such boxes)")
        return (np.asarray(kept, dtype=np.float32).reshape(-1, 4),
                np.asarray(kept_idx, dtype=np.int64))

    def _warn_boxes(self) -> None:
        """One warning counting the bad boxes and naming their files."""
        if not self.box_problems or self.degenerate_boxes == "error":
            return
        n = sum(len(v) for v in self.box_problems.values())
        n_dropped = sum(1 for v in self.box_problems.values() for p in v
                        if not p.endswith("(fixed)"))
        listing = format_listing({k: "; ".join(v) for k, v in self.box_problems.items()})
        warnings.warn(f"{self.what}: {n} degenerate or out-of-image box(es) in "
                      f"{len(self.box_problems)} file(s): {n_dropped} dropped, {n - n_dropped} "
                      f"fixed (degenerate_boxes={self.degenerate_boxes!r}):\n{listing}",
                      stacklevel=3)

    @property
    def num_bad_boxes(self) -> int:
        """How many boxes were degenerate or crossed the image border (fixed or dropped)."""
        return sum(len(v) for v in self.box_problems.values())

    def build_split(self, split: str) -> DetectionDataset:
        transform = JointTransform(self.image_size, self.augment, train=split == "train",
                                   has_boxes=True)
        return DetectionDataset(self.splits()[split], transform, self.channels,
                                name=f"{self.what} [{split}]")

    def build_info(self) -> DataInfo:
        splits = self.splits()
        sizes = {r.image_hw for records in splits.values() for r in records}
        out_hw = self.image_size or (next(iter(sizes)) if len(sizes) == 1 else ())
        return DataInfo(task="detection", in_channels=self.channels, spatial_dims=2,
                        bounds=(0.0, 1.0), image_size=tuple(out_hw),
                        num_classes=len(self.class_names), class_names=list(self.class_names),
                        num_train=len(splits["train"]))


# --------------------------------------------------------------------------------------------
# Pascal VOC
# --------------------------------------------------------------------------------------------
@dataclass
class VOCObject:
    name: str
    difficult: bool
    raw_box: tuple[float, float, float, float]


def parse_voc_xml(path: Path) -> tuple[str | None, tuple[int, int] | None, list[VOCObject]]:
    """Read one Pascal VOC annotation.

    Returns:
        ``(filename, (H, W) or None, objects)``; names are stripped of whitespace.

    Raises:
        BadSampleError: the XML is unreadable or an object lacks its name or a numeric box.
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise BadSampleError(f"cannot read VOC XML: {err}") from err
    size = None
    try:
        w, h = int(float(root.findtext("size/width", "0"))), int(float(root.findtext(
            "size/height", "0")))
        if w > 0 and h > 0:
            size = (h, w)
    except ValueError:
        size = None  # no usable declared size: the image header decides
    objects: list[VOCObject] = []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise BadSampleError(f"object {i} has no <name>")
        box = obj.find("bndbox")
        try:
            raw = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError) as err:
            raise BadSampleError(f"object {i} ({name}) has no numeric <bndbox> "
                                 "xmin/ymin/xmax/ymax") from err
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "", "false")
        objects.append(VOCObject(name, difficult, raw))  # type: ignore[arg-type]
    filename = (root.findtext("filename") or "").strip() or None
    return filename, size, objects


def find_voc_root(path: Path) -> Path:
    """``path`` if it holds ``Annotations/``, else its single descendant (2 levels) that does.

    Lets ``root`` point at ``bccd/`` (holding ``BCCD/``) or ``VOCdevkit/`` (holding one year).
    """
    if (path / "Annotations").is_dir():
        return path
    found = [p for p in path.glob("*/Annotations") if p.is_dir()]
    found += [p for p in path.glob("*/*/Annotations") if p.is_dir()]
    if len(found) == 1:
        return found[0].parent
    where = f"; candidates: {sorted(str(f.parent) for f in found)}" if found else ""
    raise FileNotFoundError(f"Pascal VOC: no single Annotations/ folder in {path}{where} "
                            "(expected Annotations/*.xml and JPEGImages/)")


class VOCDetectionDataModule(_DetectionDataModule):
    """Pascal VOC XML detection data (BCCD at ``$MEDROBUST_DATA/bccd``).

    Args:
        root: VOC folder with ``Annotations/``, ``JPEGImages/`` and optionally
            ``ImageSets/Main/``, or a folder holding exactly one such folder (``bccd/``,
            ``VOCdevkit/``); ``None`` = ``$MEDROBUST_DATA/bccd``.
        class_names: classes in label order; ``None`` = every name found in the annotations,
            stripped of whitespace, sorted. A name not in the list makes its file a bad sample.
        image_size: delivered ``(H, W)`` (boxes are scaled with the image); ``None`` keeps the
            size on disk, which must then be the same for every image of a batch.
        channels: 3 (RGB) or 1 (grey).
        use_image_sets: take the splits from ``ImageSets/Main/<name>.txt``; ``None`` = when all
            three files exist; without them a seeded split (``split_fractions``, ``seed``,
            ``split_file``) over all annotations is made.
        image_set_names: the file stems used for train / val / test.
        split_fractions / seed / split_file: the seeded split when image sets are not used.
        keep_difficult: keep objects flagged ``<difficult>1`` as ordinary boxes (the batch has
            no per-box flag; VOC evaluation would ignore them). ``False`` drops them and warns
            how many. BCCD has none.
        one_based: read VOC corners as 1-based inclusive pixel indices (the VOC convention).
        augment: training augmentations applied jointly to the image and its boxes.
        degenerate_boxes: ``"drop"`` / ``"fix"`` / ``"error"`` (module docstring).
        on_bad_sample: ``"error"`` raises one error listing every bad file (unreadable XML
            or image, unknown class, image size not the one declared, image listed in a split
            without annotation); ``"skip"`` leaves them out with one warning.
        batch_size / num_workers / pin_memory / eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        class_names: list[str] | None = None,
        image_size: tuple[int, int] | None = None,
        channels: Literal[1, 3] = 3,
        use_image_sets: bool | None = None,
        image_set_names: tuple[str, str, str] = ("train", "val", "test"),
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        split_file: str | None = None,
        keep_difficult: bool = True,
        one_based: bool = True,
        augment: AugmentConfig | None = None,
        degenerate_boxes: Literal["drop", "fix", "error"] = "drop",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(image_size, channels, split_fractions, seed, split_file, augment,
                         degenerate_boxes, on_bad_sample, batch_size, num_workers, pin_memory,
                         eval_batch_size)
        self.root = find_voc_root(resolve_data_path(root, "bccd", "Pascal VOC detection (BCCD)"))
        self.what = f"Pascal VOC ({self.root})"
        if class_names is not None:
            stripped = [str(c).strip() for c in class_names]
            if len(set(stripped)) != len(stripped) or not all(stripped):
                raise ValueError(f"class_names must be distinct non-empty names, got {class_names}")
            self.class_names = stripped
        self._given_classes = class_names is not None
        self.use_image_sets = use_image_sets
        self.image_set_names = tuple(image_set_names)
        self.keep_difficult = keep_difficult
        self.one_based = one_based

    def _image_path(self, stem: str, filename: str | None) -> Path:
        folder = self.root / "JPEGImages"
        candidates = [folder / f"{stem}.jpg"]
        if filename:
            candidates.append(folder / filename)
        candidates += [folder / f"{stem}{s}" for s in IMAGE_EXTENSIONS]
        for c in candidates:
            if c.is_file():
                return c
        return candidates[0]

    def _split_ids(self, all_ids: list[str]) -> dict[str, list[str]]:
        main = self.root / "ImageSets" / "Main"
        files = {s: main / f"{n}.txt" for s, n in zip(SPLITS, self.image_set_names)}
        present = {s: f.is_file() for s, f in files.items()}
        use = all(present.values()) if self.use_image_sets is None else self.use_image_sets
        if not use:
            if self.use_image_sets is None and any(present.values()):
                warnings.warn(f"{self.what}: ImageSets/Main has only "
                              f"{[files[s].name for s in SPLITS if present[s]]} of "
                              f"{[f.name for f in files.values()]}; using a seeded split instead",
                              stacklevel=3)
            return load_or_create_split(self.split_file, all_ids, None, self.split_fractions,
                                        self.seed)
        missing = [str(f) for s, f in files.items() if not present[s]]
        if missing:
            raise FileNotFoundError(f"{self.what}: use_image_sets=True but {missing} not found")
        out: dict[str, list[str]] = {}
        for split, file in files.items():
            ids = [ln.split()[0] for ln in file.read_text().splitlines() if ln.strip()]
            out[split] = list(dict.fromkeys(ids))  # keep order, drop repeats
        seen: dict[str, str] = {}
        for split, ids in out.items():
            for i in ids:
                if i in seen and seen[i] != split:
                    warnings.warn(f"{self.what}: image {i} is in both the {seen[i]} and "
                                  f"{split} image sets", stacklevel=3)
                seen.setdefault(i, split)
        return out

    def index(self) -> dict[str, list[DetectionRecord]]:
        ann_dir = self.root / "Annotations"
        all_ids = sorted(p.stem for p in ann_dir.glob("*.xml"))
        if not all_ids:
            raise FileNotFoundError(f"{self.what}: no *.xml in {ann_dir}")
        split_ids = self._split_ids(all_ids)
        wanted = sorted({i for ids in split_ids.values() for i in ids})
        bad = BadSamples(self.what, self.on_bad_sample)
        parsed: dict[str, tuple[Path, tuple[int, int], list[VOCObject]]] = {}
        known = set(all_ids)
        for stem in wanted:
            xml = ann_dir / f"{stem}.xml"
            if stem not in known:
                bad.add(stem, f"listed in ImageSets/Main but {xml} does not exist")
                continue
            try:
                try:
                    filename, declared, objects = parse_voc_xml(xml)
                except BadSampleError as err:
                    raise BadSampleError(f"{xml}: {err}") from err
                image_path = self._image_path(stem, filename)
                hw = self._check_image(image_path)
                if declared is not None and declared != hw:
                    raise BadSampleError(f"{xml} declares size (H, W) {declared} but {image_path} "
                                         f"is {hw}: boxes would not match")
            except BadSampleError as err:
                bad.add(stem, str(err))
                continue
            parsed[stem] = (image_path, hw, objects)
        if not self._given_classes:
            self.class_names = sorted({o.name for _, _, objs in parsed.values() for o in objs})
            if not self.class_names:
                raise ValueError(f"{self.what}: no objects in any annotation; pass class_names")
        class_index = {c: k for k, c in enumerate(self.class_names)}
        records: dict[str, DetectionRecord] = {}
        n_difficult = 0
        for stem, (image_path, hw, objects) in parsed.items():
            xml = ann_dir / f"{stem}.xml"
            unknown = sorted({o.name for o in objects if o.name not in class_index})
            if unknown:
                bad.add(stem, f"{xml}: unknown class name(s) {unknown} (classes: "
                        f"{self.class_names})")
                continue
            if not self.keep_difficult:
                n_difficult += sum(o.difficult for o in objects)
                objects = [o for o in objects if not o.difficult]
            try:
                boxes, kept = self._boxes(str(xml), [o.raw_box for o in objects], hw,
                                          self.one_based)
            except BadSampleError as err:
                bad.add(stem, f"{xml}: {err}")
                continue
            labels = np.asarray([class_index[objects[i].name] for i in kept], dtype=np.int64)
            records[stem] = DetectionRecord(stem, image_path, hw, boxes, labels, xml)
        if n_difficult:
            warnings.warn(f"{self.what}: dropped {n_difficult} objects flagged difficult "
                          "(keep_difficult=False)", stacklevel=3)
        self._warn_boxes()
        bad.resolve()
        return {s: [records[i] for i in ids if i in records] for s, ids in split_ids.items()}


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------
class COCODetectionDataModule(_DetectionDataModule):
    """COCO JSON detection data (``images``, ``annotations`` with ``bbox [x, y, w, h]``,
    ``categories``).

    Category ids are mapped to contiguous labels ``0..C-1`` in increasing id order; every split's
    file must declare the same categories. Crowd annotations (``iscrowd: 1``) are ignore-regions,
    not objects: they are left out (``keep_crowd=False``) and their count is logged at INFO.

    Args:
        root: dataset folder; ``None`` = ``$MEDROBUST_DATA/coco``.
        annotation_files: ``{split: JSON path}`` (relative to ``root`` or absolute) for the
            splits that have one; ``train`` is required. A missing ``val`` / ``test`` is
            carved out of train's images by a seeded split with the fractions
            ``split_fractions[1]`` / ``split_fractions[2]``.
        image_dirs: folder(s) the ``file_name`` entries are relative to: one path for all
            splits or ``{split: path}``; ``None`` = ``root/images`` if it exists, else ``root``.
        keep_crowd: keep ``iscrowd`` boxes as ordinary objects.
        (other arguments as :class:`VOCDetectionDataModule`)
    """

    def __init__(
        self,
        root: str | None = None,
        annotation_files: dict[str, str] | None = None,
        image_dirs: str | dict[str, str] | None = None,
        image_size: tuple[int, int] | None = None,
        channels: Literal[1, 3] = 3,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        split_file: str | None = None,
        keep_crowd: bool = False,
        augment: AugmentConfig | None = None,
        degenerate_boxes: Literal["drop", "fix", "error"] = "drop",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(image_size, channels, split_fractions, seed, split_file, augment,
                         degenerate_boxes, on_bad_sample, batch_size, num_workers, pin_memory,
                         eval_batch_size)
        self.root = resolve_data_path(root, "coco", "COCO detection")
        self.what = f"COCO ({self.root})"
        if not annotation_files or "train" not in annotation_files:
            raise ValueError("COCODetectionDataModule needs annotation_files with at least a "
                             "'train' entry, e.g. {'train': 'annotations/instances_train.json', "
                             f"'val': 'annotations/instances_val.json'}}; got {annotation_files}")
        unknown = set(annotation_files) - set(SPLITS)
        if unknown:
            raise ValueError(f"annotation_files keys must be among {SPLITS}, got {sorted(unknown)}")
        self.annotation_files = {s: self._path(p) for s, p in annotation_files.items()}
        for split, path in self.annotation_files.items():
            if not path.is_file():
                raise FileNotFoundError(f"{self.what}: {split} annotation file {path} not found")
        if isinstance(image_dirs, dict):
            self.image_dirs = {s: self._path(image_dirs[s]) if s in image_dirs else None
                               for s in SPLITS}
            if "train" not in image_dirs:
                raise ValueError(f"image_dirs needs a 'train' entry, got {image_dirs}")
        else:
            default = (self._path(image_dirs) if image_dirs is not None
                       else self.root / "images" if (self.root / "images").is_dir()
                       else self.root)
            self.image_dirs = dict.fromkeys(SPLITS, default)
        self.keep_crowd = keep_crowd

    def _path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.root / path

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{self.what}: cannot read COCO JSON {path}: {err}") from err
        if not isinstance(data, dict) or not all(
                isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise ValueError(f"{self.what}: {path} is not COCO detection JSON (expected lists "
                             "'images', 'annotations' and 'categories')")
        return data

    def index(self) -> dict[str, list[DetectionRecord]]:
        files = {s: self._read(p) for s, p in self.annotation_files.items()}
        categories: dict[int, str] | None = None
        for split, data in files.items():
            try:
                cats = {int(c["id"]): str(c["name"]).strip() for c in data["categories"]}
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{self.what}: {self.annotation_files[split]}: malformed "
                                 f"categories ({err})") from err
            if not cats:
                raise ValueError(f"{self.what}: {self.annotation_files[split]} has no categories")
            if categories is None:
                categories = cats
            elif cats != categories:
                raise ValueError(f"{self.what}: {self.annotation_files[split]} declares categories "
                                 f"{cats}, but {self.annotation_files['train']} declares "
                                 f"{categories}; every split must use the same ones")
        assert categories is not None
        cat_ids = sorted(categories)
        self.class_names = [categories[i] for i in cat_ids]
        label_of = {cid: k for k, cid in enumerate(cat_ids)}

        bad = BadSamples(self.what, self.on_bad_sample)
        n_crowd = 0
        by_split: dict[str, list[DetectionRecord]] = {}
        for split, data in files.items():
            ann_file = self.annotation_files[split]
            image_dir = self.image_dirs[split] or self.image_dirs["train"]
            per_image: dict[Any, list[dict[str, Any]]] = {}
            images: dict[Any, dict[str, Any]] = {}
            for img in data["images"]:
                if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
                    raise ValueError(f"{self.what}: {ann_file}: image entry {img!r} lacks "
                                     "'id' or 'file_name'")
                if img["id"] in images:
                    raise ValueError(f"{self.what}: {ann_file}: image id {img['id']} repeated")
                images[img["id"]] = img
            for ann in data["annotations"]:
                if not isinstance(ann, dict) or ann.get("image_id") not in images:
                    raise ValueError(f"{self.what}: {ann_file}: annotation {ann.get('id', '?')} "
                                     f"refers to unknown image id {ann.get('image_id')!r}")
                per_image.setdefault(ann["image_id"], []).append(ann)
            records: list[DetectionRecord] = []
            for image_id, img in images.items():
                key = f"{ann_file.name}:{img['file_name']}"
                image_path = image_dir / str(img["file_name"])
                anns = per_image.get(image_id, [])
                try:
                    hw = self._check_image(image_path)
                    declared = (img.get("height"), img.get("width"))
                    if all(declared) and tuple(int(v) for v in declared) != hw:
                        raise BadSampleError(f"{ann_file} declares size (H, W) {declared} but "
                                             f"{image_path} is {hw}: boxes would not match")
                    raw, labels = [], []
                    for ann in anns:
                        if ann.get("iscrowd", 0) and not self.keep_crowd:
                            n_crowd += 1
                            continue
                        cid = ann.get("category_id")
                        if cid not in label_of:
                            raise BadSampleError(f"annotation {ann.get('id', '?')} has unknown "
                                                 f"category_id {cid!r} (categories: {categories})")
                        try:
                            x, y, w, h = (float(v) for v in ann["bbox"])
                        except (KeyError, TypeError, ValueError) as err:
                            raise BadSampleError(f"annotation {ann.get('id', '?')} has no bbox "
                                                 "[x, y, w, h]") from err
                        raw.append((x, y, x + w, y + h))
                        labels.append(label_of[cid])
                    boxes, kept = self._boxes(key, raw, hw, one_based=False)
                except BadSampleError as err:
                    bad.add(key, str(err))
                    continue
                records.append(DetectionRecord(str(image_id), image_path, hw, boxes,
                                               np.asarray(labels, dtype=np.int64)[kept],
                                               ann_file))
            by_split[split] = records
        if n_crowd:
            log.info("%s: left out %d crowd annotations (keep_crowd=False)", self.what, n_crowd)
        self._warn_boxes()
        bad.resolve()
        return self._carve(by_split)

    def _carve(self, by_split: dict[str, list[DetectionRecord]]
               ) -> dict[str, list[DetectionRecord]]:
        """Make the splits that have no annotation file out of train's images."""
        missing = [s for s in ("val", "test") if s not in by_split]
        if not missing:
            return by_split
        fv = self.split_fractions[1] if "val" in missing else 0.0
        ft = self.split_fractions[2] if "test" in missing else 0.0
        if fv + ft >= 1.0:
            raise ValueError(f"split_fractions leave nothing for train: val {fv}, test {ft}")
        train = {r.image_id: r for r in by_split["train"]}
        ids = load_or_create_split(self.split_file, sorted(train), None,
                                   (1.0 - fv - ft, fv, ft), self.seed)
        out = dict(by_split)
        out["train"] = [train[i] for i in ids["train"]]
        for split in missing:
            out[split] = [train[i] for i in ids[split]]
        return out
