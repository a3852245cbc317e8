"""The datasets of volume cases: one item per volume (3-D, MONAI pipeline with resize or
pad + crop and the 3-D augmentations) or one per axial slice (2-D, the joint transform)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from datamodules.samples import BadSampleError
from datamodules.transforms import AugmentConfig, JointTransform
from datamodules.volumes.nifti import VolumeCase, VolumeLoader, plain

SpatialMode = Literal["resize", "crop"]


def build_3d_pipeline(patch_size: tuple[int, int, int], spatial_mode: SpatialMode,
                      augment: AugmentConfig | None, train: bool) -> Any:
    """MONAI dict pipeline on ``image`` ``[C, D, H, W]`` and ``mask`` ``[1, D, H, W]`` (float).

    Spatial step (resize or pad + crop) first, then — for training — the enabled augmentations:
    flips (hflip: W axis, vflip: H axis), in-plane (H, W) rotation and isotropic zoom (one
    affine resampling), brightness (additive shift), contrast (scaling about the mean) and gamma.
    ``crop_scale`` has no 3-D counterpart here: use ``spatial_mode="crop"`` for random patches.
    """
    from monai.transforms import (
        CenterSpatialCropd,
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandScaleIntensityFixedMeand,
        RandShiftIntensityd,
        RandSpatialCropd,
        Resized,
        SpatialPadd,
    )

    keys = ["image", "mask"]
    ops: list[Any] = []
    if spatial_mode == "resize":
        ops.append(Resized(keys=keys, spatial_size=patch_size, mode=("trilinear", "nearest")))
    else:
        ops.append(SpatialPadd(keys=keys, spatial_size=patch_size, mode="constant"))
        ops.append(RandSpatialCropd(keys=keys, roi_size=patch_size, random_size=False) if train
                   else CenterSpatialCropd(keys=keys, roi_size=patch_size))
    cfg = augment if augment is not None else AugmentConfig()
    if train:
        if cfg.hflip:
            ops.append(RandFlipd(keys=keys, prob=cfg.hflip, spatial_axis=2))
        if cfg.vflip:
            ops.append(RandFlipd(keys=keys, prob=cfg.vflip, spatial_axis=1))
        if cfg.rotate_deg or cfg.scale:
            rad = math.radians(cfg.rotate_deg)
            # rotate_range[0] turns about the first spatial axis (D): an in-plane rotation.
            ops.append(RandAffined(keys=keys, prob=1.0, rotate_range=(rad, 0.0, 0.0),
                                   scale_range=(cfg.scale,) * 3 if cfg.scale else None,
                                   mode=("bilinear", "nearest"), padding_mode="zeros"))
        if cfg.brightness:
            ops.append(RandShiftIntensityd(keys="image", offsets=cfg.brightness,
                                           prob=cfg.p_intensity))
        if cfg.contrast:
            ops.append(RandScaleIntensityFixedMeand(keys="image", factors=cfg.contrast,
                                                    prob=cfg.p_intensity))
        if cfg.gamma:
            ops.append(RandAdjustContrastd(keys="image", gamma=(1 - cfg.gamma, 1 + cfg.gamma),
                                           prob=cfg.p_intensity))
    return Compose(ops)


class VolumeDatasetBase(Dataset):
    def __init__(self, cases: Sequence[VolumeCase], loader: VolumeLoader, name: str,
                 cache_size: int) -> None:
        self.cases = list(cases)
        self.loader = loader
        self.name = name
        self.cache_size = cache_size
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def preload(self) -> None:
        """Load every volume into the cache (shared with forked workers copy-on-write)."""
        self.cache_size = max(self.cache_size, len(self.cases))
        for i in range(len(self.cases)):
            self._volume(i)

    def _volume(self, case_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if case_index in self._cache:
            self._cache.move_to_end(case_index)
            return self._cache[case_index]
        case = self.cases[case_index]
        try:
            volume = self.loader(case)
        except BadSampleError as err:
            raise BadSampleError(f"{self.name}: case {case.case_id}: {err}") from err
        if self.cache_size > 0:
            self._cache[case_index] = volume
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return volume


class DecathlonVolumeDataset(VolumeDatasetBase):
    """One item per volume: ``image`` float32 ``[C, D, H, W]``, ``mask`` int64 ``[D, H, W]``,
    ``index`` int64 ``[]``."""

    def __init__(self, cases: Sequence[VolumeCase], loader: VolumeLoader,
                 patch_size: tuple[int, int, int], spatial_mode: SpatialMode,
                 augment: AugmentConfig | None, train: bool, name: str,
                 cache_size: int = 0) -> None:
        super().__init__(cases=cases, loader=loader, name=name, cache_size=cache_size)
        self.pipeline = build_3d_pipeline(patch_size, spatial_mode, augment, train)
        self.train = train

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self._volume(index)
        if self.train:
            # Seed MONAI's random transforms from torch so runs follow torch.manual_seed and
            # every worker / epoch draws differently.
            self.pipeline.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        try:
            out = self.pipeline({"image": image.clone(), "mask": mask[None].float()})
        except Exception as err:  # name the case, also from inside a DataLoader worker
            raise BadSampleError(f"{self.name}: sample {index} ({self.cases[index].image_path}): "
                                 f"transform failed: {err}") from err
        return {
            "image": plain(out["image"]).float().clamp(0.0, 1.0).contiguous(),
            "mask": plain(out["mask"])[0].round().long().contiguous(),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class DecathlonSliceDataset(VolumeDatasetBase):
    """One item per axial slice: ``image`` float32 ``[C, H, W]``, ``mask`` int64 ``[H, W]``,
    ``index`` int64 ``[]`` (position in the flattened (volume, slice) list)."""

    def __init__(self, cases: Sequence[VolumeCase], loader: VolumeLoader,
                 transform: JointTransform, name: str, cache_size: int = 2) -> None:
        super().__init__(cases=cases, loader=loader, name=name, cache_size=cache_size)
        self.transform = transform
        self.slices = [(c, d) for c, case in enumerate(self.cases)
                       for d in range(case.shape_dhw[0])]

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case_index, depth = self.slices[index]
        image, mask = self._volume(case_index)
        try:
            out = self.transform(image[:, depth].permute(1, 2, 0).numpy(),
                                 mask=mask[depth].numpy())
        except Exception as err:  # name the case, also from inside a DataLoader worker
            raise BadSampleError(f"{self.name}: sample {index} (slice {depth} of "
                                 f"{self.cases[case_index].image_path}): transform failed: "
                                 f"{err}") from err
        return {"image": out["image"], "mask": out["mask"],
                "index": torch.tensor(index, dtype=torch.int64)}
