"""The interface of a per-task row handler (:class:`TaskRows`) and the options it reads."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.manifest.labels import Flag
from datamodules.manifest.sample import Sample
from datamodules.transforms import AugmentConfig, JointTransform

__all__ = ["RowOptions", "TaskRows"]


@dataclass(frozen=True)
class RowOptions:
    """The datamodule's options that decide how rows are read (see
    :class:`~datamodules.manifest.datamodule.ManifestDataModule` for each)."""

    class_names: list[str] | None = None
    num_classes: int | None = None
    multilabel: bool | None = None
    mask_threshold: float | None = None
    pixel_spacing_mm: float | None = None
    degenerate_boxes: str = "error"


class TaskRows(ABC):
    """Everything a manifest needs to know about one task. Subclasses set :attr:`name`,
    :attr:`columns` and implement :meth:`parse` and :meth:`classes` (abstract: a handler that
    lacks one cannot be built), and :meth:`item` unless they override :meth:`dataset`.

    A handler keeps some state while a manifest is indexed (landmark names from the columns,
    detection's box problems); :meth:`start` resets it.
    """

    name: ClassVar[str]
    #: the columns a row of this task needs (for messages and the docs)
    columns: ClassVar[str]
    #: several rows may name the same image (detection: one row per box)
    rows_per_image: ClassVar[bool] = False
    #: the item holds a mask / keypoints that the joint transform moves with the image
    has_mask: ClassVar[bool] = False
    has_keypoints: ClassVar[bool] = False

    def __init__(self, options: RowOptions) -> None:
        self.options = options

    def start(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Forget the state of an earlier indexing."""

    @abstractmethod
    def parse(self, s: Sample, cells: dict[str, Any], resolve: Callable[[Any], Path],
              decode: bool) -> None:
        """Read this task's targets of one row into ``s`` (its image header is known).
        ``resolve`` turns a path cell into a file path; ``decode``: read whole files too.

        Raises:
            BadSampleError: a missing column or a bad value (the row becomes bad).
        """

    @abstractmethod
    def classes(self, samples: list[Sample], flag: Flag, multilabel: bool, what: str) -> list[str]:
        """The class (or landmark) names; targets that do not fit make their row bad
        (``flag``)."""

    def finish(self, what: str) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Called once the usable samples are known (warnings about what was repaired)."""

    def strata(self, samples: list[Sample], multilabel: bool) -> dict[str, int] | None:
        """Sample id -> stratum for the seeded split (``None``: not stratified)."""
        return None

    def info(self, names: list[str], samples: list[Sample], out: tuple[int, ...]) -> dict[str, Any]:
        """This task's :class:`~datamodules.info.DataInfo` fields (``out``: delivered size)."""
        return {"num_classes": len(names), "num_landmarks": 0, "pixel_spacing_mm": None}

    def dataset(self, samples: list[Sample], out: tuple[int, ...], augment: AugmentConfig | None,
                train: bool, channels: int, num_classes: int, multilabel: bool, name: str,
                source: Path) -> Dataset:
        """The 2-D dataset of one split (``source``: the manifest, for messages)."""
        from datamodules.manifest.dataset import ManifestDataset

        transform = JointTransform(out, augment, train=train, has_mask=self.has_mask,  # type: ignore[arg-type]
                                   has_keypoints=self.has_keypoints)
        return ManifestDataset(samples, self, channels, transform, num_classes, multilabel, name)

    def load_targets(self, s: Sample, image: np.ndarray, num_classes: int) -> dict[str, Any]:
        """What the joint transform moves with ``image`` ``[H, W, C]``: ``mask`` / ``keypoints``."""
        return {}

    def item(self, s: Sample, out: dict[str, Any], num_classes: int,
             multilabel: bool) -> dict[str, torch.Tensor]:
        """The item's target keys from the transform's ``out`` — what the default
        :meth:`dataset` asks of a handler (detection builds its items in its own dataset)."""
        raise TypeError(f"{type(self).__name__} uses TaskRows.dataset, which needs its item(); "
                        "define item() or override dataset()")
