"""Pascal VOC XML detection data (e.g. BCCD): one ``Annotations/<stem>.xml`` per image, splits
from ``ImageSets/Main`` or seeded. VOC ``bndbox`` values are 1-based inclusive pixel indices
(``xmin = 1`` is the first column, ``xmax = W`` the last), so ``x1 = xmin - 1, x2 = xmax``
(``one_based=False`` reads them as 0-based continuous edges instead)."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.detection.boxes import warn_box_problems
from datamodules.detection.datamodule import DetectionDataModule
from datamodules.detection.dataset import DetectionRecord
from datamodules.imagefiles import IMAGE_EXTENSIONS
from datamodules.paths import resolve_data_path
from datamodules.samples import BadSampleError, BadSamples
from datamodules.splits import SPLITS, load_or_create_split, split_items


@dataclass
class VOCObject:
    """One ``<object>`` of a VOC file: its class name, ``<difficult>`` flag and ``<bndbox>``
    corners as written (``xmin, ymin, xmax, ymax``)."""

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


class VOCDetectionDataModule(DetectionDataModule):
    """Pascal VOC XML detection data (BCCD at ``$MEDROBUST_DATA/bccd``).

    Args:
        root: VOC folder with ``Annotations/``, ``JPEGImages/`` and optionally
            ``ImageSets/Main/``, or a folder holding exactly one such folder (``bccd/``,
            ``VOCdevkit/``); ``None`` = ``$MEDROBUST_DATA/bccd``.
        class_names: classes in label order; ``None`` = every name found in the annotations,
            stripped of whitespace, sorted. A name not in the list makes its file a bad sample.
        use_image_sets: take the splits from ``ImageSets/Main/<name>.txt``; ``None`` = when all
            three files exist; without them a seeded split (``split_fractions``, ``seed``,
            ``split_file``) over all annotations is made.
        image_set_names: the file stems used for train / val / test.
        keep_difficult: keep objects flagged ``<difficult>1`` as ordinary boxes (the batch has
            no per-box flag; VOC evaluation would ignore them). ``False`` drops them and warns
            how many. BCCD has none.
        one_based: read VOC corners as 1-based inclusive pixel indices (the VOC convention).
        options: what every detection datamodule takes (size, channels, seeded split,
            augment, bad boxes and samples, loader): see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        class_names: list[str] | None = None,
        use_image_sets: bool | None = None,
        image_set_names: tuple[str, str, str] = ("train", "val", "test"),
        keep_difficult: bool = True,
        one_based: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
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
        warn_box_problems(self.what, self.box_problems, self.degenerate_boxes)
        bad.resolve()
        return split_items(split_ids, records)
