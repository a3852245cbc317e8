"""The synthetic dataset (item ``i`` generated from ``(seed, split, i)`` on demand) and its
datamodule, for any task whose object makes a synthetic sample."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule
from datamodules.info import DataInfo
from datamodules.splits import SPLITS, Split
from datamodules.tasks import DataTask, task_named
from datamodules.transforms import (
    AugmentConfig,
    JointTransform,
    flip_volume,
    volume_augment_warning,
)


class SyntheticDataset(Dataset):
    """Map-style dataset whose item ``i`` is generated from ``(seed, split, i)`` on demand.

    Items follow the batch contract of :mod:`datamodules.info` (``image`` float32
    ``[C, H, W]`` / ``[C, D, H, W]`` in [0, 1], ``index`` int64 scalar, task target).
    """

    def __init__(self, task: str | DataTask, split: Split, length: int, seed: int, params: dict[str, Any],
                 transform: JointTransform | None, augment: AugmentConfig | None = None) -> None:
        self.kind = task_named(task, "SyntheticDataset.task")
        self.task, self.split, self.length, self.seed = self.kind.name, split, length, seed
        self.params = params
        self.transform = transform
        self.augment3d = augment if (transform is None and split == "train") else None

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> dict[str, Any]:
        """The generated sample before any transform (numpy, channels-first image)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.split} split of {self.length}")
        # the split enters the seed as its position in SPLITS: train 0, val 1, test 2
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        return self.kind.synthetic_sample(rng, index, self.params)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.raw(index)
        out: dict[str, Any]
        if self.transform is not None:
            res = self.transform(
                sample["image"].transpose(1, 2, 0),
                mask=sample.get("mask"),
                keypoints=sample.get("keypoints"),
                boxes=sample.get("boxes"),
                box_labels=sample.get("box_labels"),
            )
            out = {"image": res["image"]}
            if "mask" in res:
                out["mask"] = res["mask"]
            if "keypoints" in res:
                out["landmarks"] = res["keypoints"]
                out["visible"] = res["visible"]
                out["spacing"] = torch.tensor(float("nan"), dtype=torch.float32)
            if "boxes" in res:
                out["boxes"] = res["boxes"]
                out["labels"] = res["box_labels"]
        else:  # 3-D: only flips, done in torch on the channels-first volume
            image = torch.from_numpy(sample["image"])
            mask = torch.from_numpy(sample["mask"]) if "mask" in sample else None
            image, mask = flip_volume(image, mask, self.augment3d)
            out = {"image": image.contiguous()}
            if mask is not None:
                out["mask"] = mask.contiguous()
        out = self.kind.finish_item(sample, out)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out


class SyntheticDataModule(BaseDataModule):
    """Synthetic medical-looking data for any task, deterministic by ``seed``.

    Args:
        task: ``classification`` | ``segmentation`` | ``landmarks`` | ``detection``.
        num_train / num_val / num_test: samples per split.
        image_size: ``(H, W)``; for ``spatial_dims=3`` volumes are ``D = H = W = image_size[0]``
            (or pass ``(D, H, W)``).
        spatial_dims: 2 or 3 (3-D: classification and segmentation).
        in_channels: image channels (1 grey, 3 RGB-like; more cycle the RGB tints).
        num_classes: classification classes (default 2); segmentation classes incl. background
            (default 2: 0 background, 1 lesion; 2 lesion core; 3+ satellites); detection object
            classes without background (default 3: rbc, wbc, platelet). ``None`` = default.
        num_landmarks: landmarks per image (landmark task).
        max_objects: most cells per image (detection task).
        seed: base seed; every sample is generated from ``(seed, split, index)``.
        augment: training augmentations (2-D: any; 3-D: flips only).
        batch_size, num_workers, pin_memory, eval_batch_size: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        task: str = "classification",
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        image_size: tuple[int, ...] = (32, 32),
        spatial_dims: Literal[2, 3] = 2,
        in_channels: int = 1,
        num_classes: int | None = None,
        num_landmarks: int = 5,
        max_objects: int = 6,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        batch_size: int = 32,
        **loader: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, augment=augment, **loader)
        kind = task_named(task, "SyntheticDataModule.task")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if spatial_dims not in kind.spatial_dims:
            raise ValueError(f"synthetic {task} data is {'/'.join(map(str, kind.spatial_dims))}-D only; "
                             f"use spatial_dims={kind.spatial_dims[0]}")
        size = tuple(int(s) for s in image_size)
        if spatial_dims == 2:
            if len(size) != 2:
                raise ValueError(f"image_size must be (H, W) for 2-D data, got {image_size}")
        else:
            size = size if len(size) == 3 else (size[0],) * 3
        if min(size) < 8:
            raise ValueError(f"image_size must be at least 8 pixels per axis, got {image_size}")
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if n < 1:
                raise ValueError(f"{name} must be >= 1, got {n}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        k = kind.default_num_classes if num_classes is None else int(num_classes)
        if k < kind.min_classes:
            raise ValueError(f"num_classes for {task} must be >= {kind.min_classes}, got {k}")
        kind.check_synthetic(num_landmarks, max_objects)
        message = volume_augment_warning(augment) if spatial_dims == 3 else None
        if message:
            warnings.warn(f"SyntheticDataModule: {message}", stacklevel=2)
        self.task = kind.name
        self.kind = kind
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = size
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = k
        self.num_landmarks = kind.synthetic_num_landmarks(num_landmarks)
        self.max_objects = max_objects
        self.seed = seed

    def build_info(self) -> DataInfo:
        return DataInfo(
            task=self.task,
            in_channels=self.in_channels,
            spatial_dims=self.spatial_dims,
            image_size=self.image_size,
            num_classes=self.num_classes,
            class_names=self.class_names(),
            num_landmarks=self.num_landmarks,
            num_train=self.sizes["train"],
        )

    def class_names(self) -> list[str]:
        return self.kind.synthetic_class_names(self.num_classes)

    def build_split(self, split: Split) -> SyntheticDataset:
        params = {
            "shape": self.image_size,
            "channels": self.in_channels,
            "num_classes": self.num_classes,
            "num_landmarks": self.num_landmarks,
            "max_objects": self.max_objects,
        }
        transform = None
        if self.spatial_dims == 2:
            transform = JointTransform(
                self.image_size, self.augment, train=split == "train",
                has_mask=self.kind.has_mask, has_keypoints=self.kind.has_keypoints,
                has_boxes=self.kind.has_boxes,
            )
        return SyntheticDataset(self.kind, split, self.sizes[split], self.seed, params,
                                transform, self.augment)
