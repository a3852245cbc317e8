"""The datamodule of a manifest: index its rows once (files checked, targets parsed, bad rows
collected, classes and the split decided), then build each split's dataset. Which columns a row
needs and what an item holds is asked of the task's row handler
(:mod:`datamodules.manifest.tasks`). Columns: see :mod:`datamodules.manifest`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from attacks.options import check_choice
from datamodules.base import BaseDataModule, delivered_size
from datamodules.detection.boxes import BOX_POLICIES, BoxPolicy
from datamodules.info import DataInfo
from datamodules.manifest.handler import RowOptions, TaskRows
from datamodules.manifest.rows import (
    SPLIT_ALIASES,
    ManifestRow,
    empty,
    file_stem,
    is_nifti,
    read_manifest,
)
from datamodules.manifest.sample import Sample, check_image
from datamodules.manifest.tasks import manifest_tasks, task_rows
from datamodules.samples import (
    BadSampleError,
    BadSamples,
    OnBadSample,
    check_on_bad_sample,
)
from datamodules.splits import Split, load_or_create_split
from datamodules.transforms import AugmentConfig
from datamodules.volumes.datasets import DecathlonVolumeDataset
from datamodules.volumes.nifti import VolumeCase, VolumeLoader

__all__ = ["ManifestDataModule", "ManifestTask"]

log = logging.getLogger(__name__)

#: the built-in tasks a manifest holds (a registered task whose object names a row handler too)
ManifestTask = Literal["classification", "segmentation", "landmarks", "detection"]


class ManifestDataModule(BaseDataModule):
    """Any of the four tasks from a manifest file (see the module docstring for the columns).

    Args:
        manifest: the CSV / TSV / JSON file; paths in it are relative to its folder.
        task: ``classification`` | ``segmentation`` | ``landmarks`` | ``detection``.
        image_size: ``(H, W)`` every 2-D image is resized to; ``None`` keeps the images' common
            size (an error when they differ).
        patch_size: ``(D, H, W)`` NIfTI volumes are resized to; ``None`` = their common shape.
        channels: 1 (grey) or 3 (RGB); ``None`` infers it from the files (3 if any is colour).
        class_names: class (or landmark) names in index order; labels may then be names or
            indices in ``[0, len(class_names))``. ``None``: inferred (sorted names, or indices
            ``0..max``; segmentation: ``0..max mask value``).
        num_classes: the number of classes when labels are indices (a label at or beyond it is
            a bad row); overrides inference.
        multilabel: classification with several labels per image; ``None`` = when some label
            cell holds ``;`` or a list.
        mask_threshold: binarise masks at this value (else masks are class maps; 0/255 ones are
            binary).
        pixel_spacing_mm: landmarks: mm per pixel of every image on disk, when the manifest
            has no ``spacing`` column.
        degenerate_boxes: detection boxes that are degenerate or cross the image border:
            ``"error"`` (the row is bad), ``"drop"`` or ``"fix"`` (swap / clip), with a warning.
        augment: training augmentations (albumentations, jointly on masks, points and boxes;
            volumes: the MONAI equivalents).
        split_fractions / split_seed: the seeded split made when there is no ``split`` column.
        split_file: where that split is written and read back; ``"auto"`` =
            ``<manifest stem>.split.json`` beside the manifest; ``None`` = not saved.
        on_bad_sample: ``"error"`` (default): one error listing every bad row; ``"skip"``:
            decode every file once and leave bad rows out with a warning counting them.
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        manifest: str | None = None,
        task: ManifestTask = "classification",
        image_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int, int] | None = None,
        channels: Literal[1, 3] | None = None,
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        multilabel: bool | None = None,
        mask_threshold: float | None = None,
        pixel_spacing_mm: float | None = None,
        degenerate_boxes: BoxPolicy = "error",
        augment: AugmentConfig | None = None,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        split_file: str | None = "auto",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 16,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        check_choice("task", task, manifest_tasks())  # the built-ins: MANIFEST_TASKS
        check_choice("degenerate_boxes", degenerate_boxes, BOX_POLICIES)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None (inferred), got {channels}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is "
                             f"{num_classes}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be (H, W) positive, got {image_size}")
        self.manifest = manifest
        self.task = task
        self.image_size = tuple(int(s) for s in image_size) if image_size is not None else None
        self.patch_size = tuple(int(s) for s in patch_size) if patch_size is not None else None
        self.channels = channels
        self.class_names = list(class_names) if class_names is not None else None
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.mask_threshold = mask_threshold
        self.pixel_spacing_mm = pixel_spacing_mm
        self.degenerate_boxes = degenerate_boxes
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.split_file = split_file
        #: how this task's rows become samples and items
        self.task_rows: TaskRows = task_rows(task, RowOptions(
            class_names=self.class_names, num_classes=num_classes, multilabel=multilabel,
            mask_threshold=mask_threshold, pixel_spacing_mm=pixel_spacing_mm,
            degenerate_boxes=degenerate_boxes))
        self._index: dict[str, Any] | None = None

    # --- where the rows come from (PairedFoldersDataModule overrides these) ------------------
    @property
    def manifest_path(self) -> Path:
        if self.manifest is None or str(self.manifest) == "":
            raise ValueError("ManifestDataModule: pass manifest=<file.csv|file.json> "
                             "(--data.init_args.manifest)")
        return Path(os.path.expandvars(os.path.expanduser(str(self.manifest)))).resolve()

    @property
    def what(self) -> str:
        return f"manifest {self.manifest_path}"

    def base_dir(self) -> Path:
        return self.manifest_path.parent

    def rows(self, bad: BadSamples) -> list[ManifestRow]:
        return read_manifest(self.manifest_path)

    def _split_file(self) -> Path | None:
        if self.split_file is None:
            return None
        if self.split_file == "auto":
            return self.manifest_path.with_name(f"{file_stem(self.manifest_path)}.split.json")
        return Path(os.path.expandvars(os.path.expanduser(self.split_file)))

    # --- indexing ----------------------------------------------------------------------------
    def _resolve(self, value: Any) -> Path:
        path = Path(os.path.expandvars(os.path.expanduser(str(value).strip())))
        return path if path.is_absolute() else self.base_dir() / path

    def _flag(self, bad: BadSamples, row: int, sid: str | None, reason: str) -> None:
        """Record a bad row (its number and image are the key every message shows)."""
        bad.add(f"row {row}" + (f" ({sid})" if sid else ""), reason)
        self._bad_rows.add(row)

    def _parse(self, rows: list[ManifestRow], bad: BadSamples) -> list[Sample]:
        """Rows -> samples with files checked and targets parsed; labels stay raw here."""
        samples: dict[str, Sample] = {}
        unreadable: dict[str, str] = {}
        decode = self.on_bad_sample == "skip"
        for r in rows:
            raw_image = r.cells.get("image")
            if empty(raw_image):
                self._flag(bad, r.row, None, "no 'image' value")
                continue
            sid = str(raw_image).strip()
            split = r.split
            if not empty(r.cells.get("split")):
                split = SPLIT_ALIASES.get(str(r.cells["split"]).strip().lower())
                if split is None:
                    self._flag(bad, r.row, sid, f"split {r.cells['split']!r} is not one of "
                                                "train / val / test")
                    continue
            if sid in unreadable:
                self._flag(bad, r.row, sid, unreadable[sid])
                continue
            if sid in samples:
                s = samples[sid]
                if not self.task_rows.rows_per_image:
                    self._flag(bad, r.row, sid, f"image listed again (first at row {s.rows[0]})")
                    continue
                if split != s.split:
                    self._flag(bad, r.row, sid, f"split {split} but row {s.rows[0]} put this "
                                                f"image in {s.split}")
                    continue
                s.rows.append(r.row)
            else:
                s = Sample(sid, [r.row], self._resolve(raw_image), split)
                try:
                    check_image(s, decode)
                except BadSampleError as err:
                    unreadable[sid] = str(err)
                    self._flag(bad, r.row, sid, str(err))
                    continue
                samples[sid] = s
            try:
                self.task_rows.parse(s, r.cells, self._resolve, decode)
            except BadSampleError as err:
                self._flag(bad, r.row, sid, str(err))
        return list(samples.values())

    def index(self) -> dict[str, Any]:
        """Every usable sample per split, the class names and what was inferred (cached)."""
        if self._index is not None:
            return self._index
        bad = BadSamples(self.what, self.on_bad_sample)
        self._bad_rows: set[int] = set()
        self.task_rows.start()
        rows = self.rows(bad)
        parsed = self._parse(rows, bad)
        # Every image named by the manifest takes part in the seeded split, bad or not, so that
        # fixing or skipping a row never moves the others to another split.
        all_ids = sorted({str(r.cells["image"]).strip() for r in rows
                          if not empty(r.cells.get("image"))})
        samples = [s for s in parsed if not self._bad_rows & set(s.rows)]
        multilabel = bool(self.multilabel) or (self.multilabel is None and any(
            isinstance(s.label, list) for s in samples))
        names = self.task_rows.classes(samples, lambda row, sid, reason: self._flag(bad, row, sid, reason),
                                       multilabel, self.what)
        bad.resolve()
        samples = [s for s in samples if not self._bad_rows & set(s.rows)]
        if not samples:
            raise ValueError(f"{self.what}: no usable samples (of {len(rows)} rows)")
        self.task_rows.finish(self.what)
        given = {s.split for s in samples}
        if given == {None}:
            by_id = self.task_rows.strata(samples, multilabel)
            strata = None if by_id is None else [by_id.get(i, -1) for i in all_ids]
            split = load_or_create_split(self._split_file(), all_ids, strata,
                                         self.split_fractions, self.split_seed)
            where = {i: name for name, ids in split.items() for i in ids}
            for s in samples:
                s.split = where[s.id]
        elif None in given:
            missing = [f"row {s.rows[0]} ({s.id})" for s in samples if s.split is None]
            raise ValueError(f"{self.what}: some rows have a split and {len(missing)} do not: "
                             f"{missing[:10]}")
        by_split = {n: [s for s in samples if s.split == n] for n in ("train", "val", "test")}
        self._index = {"splits": by_split, "class_names": names, "multilabel": multilabel,
                       "channels": self.channels or max(s.channels for s in samples),
                       "volumes": is_nifti(samples[0].image)}
        log.info("%s: %s", self.what, ", ".join(f"{k} {len(v)}" for k, v in by_split.items()))
        return self._index

    def _out_size(self) -> tuple[int, ...]:
        idx = self.index()
        sizes = {s.hw for v in idx["splits"].values() for s in v}
        out = delivered_size(self.patch_size if idx["volumes"] else self.image_size, sizes)
        if out is not None:
            return out
        shown = sorted(sizes)[:5]
        raise ValueError(f"{self.what}: images have {len(sizes)} different sizes (e.g. {shown}); "
                         f"set {'patch_size' if idx['volumes'] else 'image_size'} to resize them "
                         "to one")

    # --- the BaseDataModule interface --------------------------------------------------------
    def build_info(self) -> DataInfo:
        idx = self.index()
        out = self._out_size()
        names = idx["class_names"]
        train = idx["splits"]["train"]
        every = [s for v in idx["splits"].values() for s in v]
        return DataInfo(
            task=self.task, in_channels=idx["channels"], spatial_dims=3 if idx["volumes"] else 2,
            image_size=out, class_names=list(names),
            multilabel=idx["multilabel"], num_train=len(train),
            **self.task_rows.info(names, every, out))

    def build_split(self, split: Split) -> Dataset:
        idx = self.index()
        samples = idx["splits"][split]
        out = self._out_size()
        name = f"{self.what} [{split}]"
        info = self.info
        train = split == "train"
        if idx["volumes"]:
            cases = [VolumeCase(s.id, s.image, s.mask, s.hw, s.channels)  # type: ignore[arg-type]
                     for s in samples]
            loader = VolumeLoader(None, None, (0.5, 99.5), info.num_classes)
            return DecathlonVolumeDataset(cases, loader, out, "resize", self.augment,  # type: ignore[arg-type]
                                          train=train, name=name)
        return self.task_rows.dataset(samples, out, self.augment, train, idx["channels"],
                                      info.num_classes, idx["multilabel"], name, self.manifest_path)
