"""Per-task row handlers: how a manifest row becomes a sample, what columns it needs, what the
task's classes are, and which dataset and item keys it delivers.

One object per task, named by the task object (:meth:`datamodules.tasks.DataTask.manifest_rows`;
interface in :mod:`datamodules.manifest.handler`);
:class:`~datamodules.manifest.datamodule.ManifestDataModule` and
:class:`~datamodules.manifest.dataset.ManifestDataset` ask it instead of switching on the
task's name. A new task's data-side object names its own
:class:`~datamodules.manifest.handler.TaskRows` subclass.

Classification and segmentation are here; landmarks and detection (points and boxes, with more
column forms) are in :mod:`datamodules.manifest.task_geometry`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.imagefiles import image_header_size
from datamodules.manifest.handler import RowOptions, TaskRows
from datamodules.manifest.labels import Flag, resolve_labels
from datamodules.manifest.rows import empty, is_nifti, json_cell
from datamodules.manifest.sample import Sample, nifti_values, read_label_mask
from datamodules.samples import BadSampleError
from datamodules.volumes.nifti import header_shape_dhw

__all__ = ["MANIFEST_TASKS", "ClassificationRows", "SegmentationRows", "manifest_tasks", "task_rows"]


class ClassificationRows(TaskRows):
    """``label``: a class index or name; several separated by ``;`` (or a JSON list) for
    multi-label, an empty cell = no class. Items: ``label`` int64 ``[]`` (multi-label:
    float32 ``[K]``)."""

    name = "classification"
    columns = "image, label"

    def parse(self, s: Sample, cells: dict[str, Any], resolve: Callable[[Any], Path],
              decode: bool) -> None:
        if "label" not in cells:
            raise BadSampleError("no 'label' column")
        value = cells["label"]
        if isinstance(value, list):
            s.raw_labels = list(value)
        elif empty(value):
            s.raw_labels = []
        elif isinstance(value, str) and (";" in value or value.startswith("[")):
            s.raw_labels = (json_cell(value, "label") if value.startswith("[")
                            else [v.strip() for v in value.split(";") if v.strip()])
        else:
            s.raw_labels = [value]
        if not s.raw_labels and self.options.multilabel is False:
            raise BadSampleError("empty label")
        multi = isinstance(value, list) or (isinstance(value, str) and (";" in value
                                                                        or value.startswith("[")))
        if multi:
            s.label = []  # marks a multi-label cell; resolved later

    def classes(self, samples: list[Sample], flag: Flag, multilabel: bool, what: str) -> list[str]:
        def assign(s: Sample, idx: list[int]) -> str | None:
            if multilabel:
                s.label = sorted(set(idx))
            elif len(idx) != 1:
                return f"expected one label, got {s.raw_labels}"
            else:
                s.label = idx[0]
            return None

        return resolve_labels(samples, self.options.class_names, self.options.num_classes, what,
                              flag, assign)

    def strata(self, samples: list[Sample], multilabel: bool) -> dict[str, int] | None:
        return None if multilabel else {s.id: int(s.label) for s in samples}  # type: ignore[arg-type]

    def item(self, s: Sample, out: dict[str, Any], num_classes: int,
             multilabel: bool) -> dict[str, torch.Tensor]:
        if multilabel:
            target = torch.zeros(num_classes, dtype=torch.float32)
            target[list(s.label or [])] = 1.0  # type: ignore[arg-type]
            return {"label": target}
        return {"label": torch.tensor(int(s.label), dtype=torch.int64)}  # type: ignore[arg-type]


class SegmentationRows(TaskRows):
    """``mask``: an integer class map of the image's size (NIfTI for volumes); 0 =
    background. Items: ``mask`` int64 ``[H, W]``."""

    name = "segmentation"
    columns = "image, mask"
    has_mask = True

    def parse(self, s: Sample, cells: dict[str, Any], resolve: Callable[[Any], Path],
              decode: bool) -> None:
        if empty(cells.get("mask")):
            raise BadSampleError("no 'mask' value")
        s.mask = resolve(cells["mask"])
        if is_nifti(s.image) != is_nifti(s.mask):
            raise BadSampleError(f"image {s.image} and mask {s.mask} must both be NIfTI or "
                                 "both be 2-D images")
        if is_nifti(s.mask):
            if not s.mask.is_file():
                raise BadSampleError(f"missing mask file {s.mask}")
            shape, ch = header_shape_dhw(s.mask, None)
            if ch != 1 or shape != s.hw:
                raise BadSampleError(f"mask {s.mask} is {shape} (D, H, W) x {ch} channel(s) but "
                                     f"image {s.image} is {s.hw}: a mask must share the "
                                     "image's voxel grid")
            s.mask_values = nifti_values(s.mask)
        else:
            w, h = image_header_size(s.mask)
            if (h, w) != s.hw:
                raise BadSampleError(f"mask {s.mask} is {w}x{h} but image {s.image} is "
                                     f"{s.hw[1]}x{s.hw[0]}")
            s.mask_values = np.unique(read_label_mask(s.mask, self.options.mask_threshold))
        if s.mask_values.size and s.mask_values.min() < 0:
            raise BadSampleError(f"mask {s.mask} holds negative values")

    def classes(self, samples: list[Sample], flag: Flag, multilabel: bool, what: str) -> list[str]:
        names, num_classes = self.options.class_names, self.options.num_classes
        top = max((int(s.mask_values.max()) for s in samples
                   if s.mask_values is not None and s.mask_values.size), default=1)
        k = num_classes or (len(names) if names else max(2, top + 1))
        for s in samples:
            if s.mask_values is not None and s.mask_values.size and s.mask_values.max() >= k:
                flag(s.rows[0], s.id, f"mask {s.mask} holds values "
                     f"{s.mask_values[s.mask_values >= k].tolist()[:10]} outside the "
                     f"classes 0..{k - 1}")
        return names or (["background", "foreground"] if k == 2 else [str(i) for i in range(k)])

    def load_targets(self, s: Sample, image: np.ndarray, num_classes: int) -> dict[str, Any]:
        assert s.mask is not None
        mask = read_label_mask(s.mask, self.options.mask_threshold)
        if mask.shape != image.shape[:2]:
            raise BadSampleError(f"mask {s.mask} is {mask.shape} but the image is "
                                 f"{image.shape[:2]}")
        if mask.size and (mask.min() < 0 or mask.max() >= num_classes):
            raise BadSampleError(f"mask {s.mask} holds values outside the classes "
                                 f"0..{num_classes - 1}")
        return {"mask": mask}

    def item(self, s: Sample, out: dict[str, Any], num_classes: int,
             multilabel: bool) -> dict[str, torch.Tensor]:
        return {"mask": out["mask"]}


def manifest_tasks() -> tuple[str, ...]:
    """The tasks a manifest can hold: the registered tasks whose object names a row handler."""
    from datamodules.tasks import task_named, task_names

    return tuple(n for n in task_names() if task_named(n).manifest_rows() is not None)


#: the built-in tasks a manifest holds, in the order the docs list them
MANIFEST_TASKS = manifest_tasks()


def task_rows(task: str, options: RowOptions) -> TaskRows:
    """The handler of ``task`` (one of :func:`manifest_tasks`)."""
    from datamodules.tasks import task_named

    handler = task_named(task, "ManifestDataModule.task").manifest_rows()
    if handler is None:
        raise ValueError(f"ManifestDataModule.task: task {task!r} has no manifest row handler")
    return handler(options)
