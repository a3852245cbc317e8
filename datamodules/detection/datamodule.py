"""What the VOC and COCO datamodules share: their options, the bad-box policy, the splits'
records indexed once, the datasets and the data info."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attacks.options import check_choice
from datamodules.base import BaseDataModule, delivered_size
from datamodules.detection.boxes import BOX_POLICIES, BoxPolicy, sanitize_boxes
from datamodules.detection.dataset import DetectionDataset, DetectionRecord
from datamodules.imagefiles import image_hw
from datamodules.info import DataInfo
from datamodules.samples import BadSampleError, OnBadSample, check_on_bad_sample
from datamodules.splits import Split
from datamodules.transforms import AugmentConfig, JointTransform

log = logging.getLogger(__name__)


class DetectionDataModule(BaseDataModule):
    """Base of the detection datamodules: a subclass reads its annotation format in
    :meth:`index`; everything else is here. VOC and COCO take these arguments as ``**options``.

    Args:
        image_size: delivered ``(H, W)`` (boxes are scaled with the image); ``None`` keeps the
            size on disk, which must then be the same for every image of a batch.
        channels: 3 (RGB) or 1 (grey).
        split_fractions: train / val / test fractions of the seeded split of the images that
            have no split of their own (VOC without image sets; COCO splits without an
            annotation file).
        seed: seed of that split.
        split_file: JSON file holding that split: read if it exists, else written.
        augment: training augmentations applied jointly to the image and its boxes.
        degenerate_boxes: ``"drop"`` / ``"fix"`` / ``"error"`` (:mod:`datamodules.detection`).
        on_bad_sample: ``"error"`` raises one error listing every bad file (unreadable
            annotation or image, unknown class, image size not the one declared, image listed
            in a split without annotation); ``"skip"`` leaves them out with one warning.
        batch_size / num_workers / pin_memory / eval_batch_size: see :class:`BaseDataModule`.
    """

    what = "detection"

    def __init__(
        self,
        *,
        image_size: tuple[int, int] | None = None,
        channels: Literal[1, 3] = 3,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        split_file: str | None = None,
        augment: AugmentConfig | None = None,
        degenerate_boxes: BoxPolicy = "drop",
        on_bad_sample: OnBadSample = "error",
        batch_size: int = 8,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        check_choice("degenerate_boxes", degenerate_boxes, BOX_POLICIES)
        check_choice("channels", channels, (1, 3))
        self.image_size = tuple(image_size) if image_size is not None else None
        self.channels = channels
        self.split_fractions = tuple(split_fractions)
        self.seed = seed
        self.split_file = split_file
        self.degenerate_boxes = degenerate_boxes
        self.class_names: list[str] = []
        #: ``{annotation file: [problem]}`` of every box dropped or fixed (or, under ``"error"``,
        #: that made its file a bad sample)
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
        boxes, kept, problems = sanitize_boxes(raw_boxes, hw, self.degenerate_boxes, one_based)
        if problems:
            self.box_problems[key] = problems
            if self.degenerate_boxes == "error":
                raise BadSampleError("; ".join(problems) + " (degenerate_boxes='error'; 'drop' or "
                                     "'fix' handle such boxes)")
        return boxes, kept

    def build_split(self, split: Split) -> DetectionDataset:
        transform = JointTransform(self.image_size, self.augment, train=split == "train",
                                   has_boxes=True)
        return DetectionDataset(self.splits()[split], transform, self.channels,
                                name=f"{self.what} [{split}]")

    def build_info(self) -> DataInfo:
        splits = self.splits()
        out_hw = delivered_size(self.image_size, (r.image_hw for v in splits.values() for r in v))
        return DataInfo(task="detection", in_channels=self.channels, image_size=out_hw or (),
                        num_classes=len(self.class_names), class_names=list(self.class_names),
                        num_train=len(splits["train"]))
