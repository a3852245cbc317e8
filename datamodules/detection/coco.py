"""COCO JSON detection data: ``images``, ``annotations`` with ``bbox [x, y, w, h]`` in
continuous pixels (``x1 = x, x2 = x + w``), ``categories``; one file per split, a missing
``val`` / ``test`` carved out of train's images."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.detection.boxes import warn_box_problems
from datamodules.detection.datamodule import DetectionDataModule
from datamodules.detection.dataset import DetectionRecord
from datamodules.paths import resolve_data_path
from datamodules.samples import BadSampleError, BadSamples
from datamodules.splits import SPLITS, split_by_id

log = logging.getLogger(__name__)


class COCODetectionDataModule(DetectionDataModule):
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
        options: what every detection datamodule takes (size, channels, seeded split,
            augment, bad boxes and samples, loader): see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        annotation_files: dict[str, str] | None = None,
        image_dirs: str | dict[str, str] | None = None,
        keep_crowd: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
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
        warn_box_problems(self.what, self.box_problems, self.degenerate_boxes)
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
        carved = split_by_id({r.image_id: r for r in by_split["train"]},
                             (1.0 - fv - ft, fv, ft), self.seed, self.split_file)
        return {**by_split, **{s: carved[s] for s in ("train", *missing)}}
