"""Joint image + target transforms for 2-D samples, built on albumentations.

One :class:`JointTransform` resizes every sample to the model's input size (train and eval) and,
for training only, applies the augmentations switched on in an :class:`AugmentConfig`. The image
and its mask / keypoints / boxes go through the *same* random geometric transform, so targets
stay aligned with the pixels they describe.

Coordinate conventions (the batch contract in :mod:`datamodules.info`):

* keypoints are ``(x, y)`` in pixel-index coordinates: the centre of pixel ``image[r, c]`` is
  ``(x=c, y=r)``. A horizontal flip maps ``x -> W - 1 - x`` (exactly like the mask column
  ``c -> W - 1 - c``), a resize by factor ``s`` maps ``x -> (x + 0.5) * s - 0.5``.
* boxes are ``(x1, y1, x2, y2)`` with continuous pixel edges: a box covering columns ``a..b``
  inclusive has ``x1 = a, x2 = b + 1``. A horizontal flip maps ``[x1, x2) -> [W - x2, W - x1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

# Boxes with less than this fraction of their area left inside the image after augmentation
# are dropped (albumentations ``min_visibility``); a detector should not learn slivers.
BOX_MIN_VISIBILITY = 0.3
# After clipping, boxes thinner than this (pixels) are dropped: the contract wants x2 > x1.
BOX_MIN_SIDE = 1e-3


def as_augment_config(augment: Any) -> AugmentConfig:
    """``augment`` as an :class:`AugmentConfig`: ``None`` → all off; a mapping (what a datamodule
    built from Python, not the CLI, is given) → its fields, an unknown one named in the error."""
    if augment is None:
        return AugmentConfig()
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, dict):
        from dataclasses import fields

        known = [f.name for f in fields(AugmentConfig)]
        unknown = sorted(set(augment) - set(known))
        if unknown:
            raise ValueError(f"augment: unknown field(s) {unknown}; known: {known}")
        return AugmentConfig(**augment)
    raise TypeError(f"augment must be an AugmentConfig, a dict of its fields or None, got {type(augment).__name__}")


@dataclass
class AugmentConfig:
    """Training augmentations; every field defaults to *off*.

    Attributes:
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rotate_deg: rotation drawn uniformly in ``[-rotate_deg, rotate_deg]`` degrees.
        scale: isotropic zoom drawn in ``[1 - scale, 1 + scale]``.
        crop_scale: ``RandomResizedCrop`` minimum area fraction; ``1.0`` disables cropping.
        brightness: brightness shift limit (fraction of the intensity range).
        contrast: contrast change limit (fraction).
        gamma: gamma drawn in ``[1 - gamma, 1 + gamma]``.
        p_intensity: probability of each enabled intensity change.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rotate_deg: float = 0.0
    scale: float = 0.0
    crop_scale: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    p_intensity: float = 0.5

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "p_intensity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name} is a probability in [0, 1], got {value}")
        for name in ("rotate_deg", "scale", "brightness", "contrast", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"AugmentConfig.crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.scale >= 1.0 or self.gamma >= 1.0:
            raise ValueError("AugmentConfig.scale and .gamma must be < 1")

    @property
    def enabled(self) -> bool:
        """True when at least one augmentation is switched on."""
        return bool(
            self.hflip or self.vflip or self.rotate_deg or self.scale or self.crop_scale < 1.0
            or self.brightness or self.contrast or self.gamma
        )


def _as_hwc(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be HxW or HxWxC, got shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float ``HxWxC`` image to ``size = (H', W')`` (area filter down, linear up)."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    interp = cv2.INTER_AREA if size[0] < h and size[1] < w else cv2.INTER_LINEAR
    channels = image.shape[2]
    # cv2 handles at most 512 channels and drops a trailing singleton channel axis.
    out = cv2.resize(image, (size[1], size[0]), interpolation=interp)
    return out.reshape(size[0], size[1], channels)


class JointTransform:
    """Resize (always) and augment (``train=True`` only) an image with its targets.

    Args:
        image_size: output ``(H, W)``; ``None`` keeps each image's own size.
        augment: training augmentations (``None`` = none).
        train: apply ``augment`` (validation / test pipelines only resize).
        bounds: ``(lo, hi)`` intensity range of input and output images.
        has_mask / has_keypoints / has_boxes: which targets samples carry (documentation and
            a check that callers pass them).

    Call with ``image`` float32 ``HxW`` or ``HxWxC`` in ``bounds``; ``mask`` int ``HxW``;
    ``keypoints`` float ``[K, 2]`` ``(x, y)`` pixels (NaN = missing); ``boxes`` float ``[N, 4]``
    ``xyxy`` pixels with ``box_labels`` int ``[N]``; optional ``visible`` bool ``[K]``.

    Returns a dict with ``image`` float32 ``[C, H, W]`` clipped to ``bounds`` and, as given,
    ``mask`` int64 ``[H, W]``; ``keypoints`` float32 ``[K, 2]`` + ``visible`` bool ``[K]``
    (same order and count as the input; False when missing or moved outside the image);
    ``boxes`` float32 ``[N', 4]`` + ``box_labels`` int64 ``[N']`` (``N' <= N``: boxes pushed
    mostly outside the image are dropped, the rest clipped to it).

    Randomness: each call seeds the albumentations pipeline from torch's global generator, so
    runs are reproducible under ``torch.manual_seed`` / ``seed_everything`` and every DataLoader
    worker (which torch seeds differently each epoch) draws different augmentations.
    """

    def __init__(
        self,
        image_size: tuple[int, int] | None,
        augment: AugmentConfig | dict[str, Any] | None,
        train: bool,
        bounds: tuple[float, float] = (0.0, 1.0),
        has_mask: bool = False,
        has_keypoints: bool = False,
        has_boxes: bool = False,
    ) -> None:
        self.image_size = tuple(int(s) for s in image_size) if image_size is not None else None
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size}")
        self.augment = as_augment_config(augment)
        self.train = train
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
        self.bounds = (lo, hi)
        self.has_mask, self.has_keypoints, self.has_boxes = has_mask, has_keypoints, has_boxes
        self._augmenting = train and self.augment.enabled
        self._pipelines: dict[tuple[int, int], A.Compose] = {}

    def __repr__(self) -> str:
        return (f"JointTransform(image_size={self.image_size}, train={self.train}, "
                f"augment={self.augment if self._augmenting else None})")

    # ------------------------------------------------------------------------------------------
    def _pipeline(self, size: tuple[int, int]) -> A.Compose:
        """The augmentation pipeline for images already resized to ``size`` (cached)."""
        if size in self._pipelines:
            return self._pipelines[size]
        cfg = self.augment
        ops: list[A.BasicTransform] = []
        if cfg.crop_scale < 1.0:
            ops.append(A.RandomResizedCrop(size=size, scale=(cfg.crop_scale, 1.0), p=1.0))
        if cfg.hflip:
            ops.append(A.HorizontalFlip(p=cfg.hflip))
        if cfg.vflip:
            ops.append(A.VerticalFlip(p=cfg.vflip))
        if cfg.rotate_deg or cfg.scale:
            # Constant 0 fill = the lower bound after our [0, 1] rescaling; mask fill = background.
            ops.append(A.Affine(rotate=(-cfg.rotate_deg, cfg.rotate_deg),
                                scale=(1.0 - cfg.scale, 1.0 + cfg.scale),
                                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0))
        if cfg.brightness or cfg.contrast:
            ops.append(A.RandomBrightnessContrast(brightness_limit=cfg.brightness,
                                                  contrast_limit=cfg.contrast,
                                                  p=cfg.p_intensity))
        if cfg.gamma:
            ops.append(A.RandomGamma(gamma_limit=(100 * (1 - cfg.gamma), 100 * (1 + cfg.gamma)),
                                     p=cfg.p_intensity))
        pipeline = A.Compose(
            ops,
            # remove_invisible=False keeps landmark order and count; visibility is ours.
            keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_labels"],
                                     min_visibility=BOX_MIN_VISIBILITY, clip=True),
        )
        self._pipelines[size] = pipeline
        return pipeline

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        keypoints: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        box_labels: np.ndarray | None = None,
        visible: np.ndarray | None = None,
    ) -> dict[str, Any]:
        lo, hi = self.bounds
        img = _as_hwc(image)
        h, w = img.shape[:2]
        if self.has_mask and mask is None:
            raise ValueError("JointTransform(has_mask=True) called without a mask")
        if self.has_keypoints and keypoints is None:
            raise ValueError("JointTransform(has_keypoints=True) called without keypoints")
        if self.has_boxes and boxes is None:
            raise ValueError("JointTransform(has_boxes=True) called without boxes")

        out_size = self.image_size or (h, w)
        sy, sx = out_size[0] / h, out_size[1] / w
        # Work on [0, 1] so albumentations' float intensity ops and fills mean the same thing
        # whatever the dataset's bounds are.
        img = (img - lo) / (hi - lo)
        img = resize_image(img, out_size)

        m = None
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape[:2] != (h, w):
                raise ValueError(f"mask shape {mask.shape} does not match image shape {(h, w)}")
            m = cv2.resize(np.ascontiguousarray(mask, dtype=np.int32), (out_size[1], out_size[0]),
                           interpolation=cv2.INTER_NEAREST) if (h, w) != out_size else \
                np.ascontiguousarray(mask, dtype=np.int32)

        kp = vis = None
        if keypoints is not None:
            kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
            vis = np.isfinite(kp).all(axis=1)
            if visible is not None:
                vis &= np.asarray(visible, dtype=bool).reshape(-1)
            # Missing points ride along at the origin and stay flagged invisible.
            kp = np.where(vis[:, None], kp, 0.0)
            kp = np.stack([(kp[:, 0] + 0.5) * sx - 0.5, (kp[:, 1] + 0.5) * sy - 0.5], axis=1)

        bx = bl = None
        if boxes is not None:
            bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            bl = (np.zeros(len(bx), dtype=np.int64) if box_labels is None
                  else np.asarray(box_labels, dtype=np.int64).reshape(-1))
            if len(bl) != len(bx):
                raise ValueError(f"{len(bx)} boxes but {len(bl)} box labels")
            bad = ~((bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1]) & np.isfinite(bx).all(axis=1))
            if bad.any():
                raise ValueError(f"degenerate boxes (need x2 > x1, y2 > y1): {bx[bad].tolist()}")
            bx = bx * np.array([sx, sy, sx, sy])
            bx = np.clip(bx, 0, [out_size[1], out_size[0], out_size[1], out_size[0]])
            keep = (bx[:, 2] - bx[:, 0] > BOX_MIN_SIDE) & (bx[:, 3] - bx[:, 1] > BOX_MIN_SIDE)
            if not keep.all():
                raise ValueError(f"boxes lie outside the {w}x{h} image: "
                                 f"{np.asarray(boxes)[~keep].tolist()}")

        if self._augmenting:
            pipeline = self._pipeline(out_size)
            pipeline.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
            kwargs: dict[str, Any] = {
                "image": img,
                "keypoints": kp if kp is not None else np.zeros((0, 2)),
                "bboxes": bx if bx is not None else np.zeros((0, 4)),
                "box_labels": bl if bl is not None else np.zeros((0,), dtype=np.int64),
            }
            if m is not None:
                kwargs["mask"] = m
            res = pipeline(**kwargs)
            img = _as_hwc(res["image"])
            if m is not None:
                m = res["mask"]
            if kp is not None:
                kp = np.asarray(res["keypoints"], dtype=np.float64).reshape(-1, 2)[:, :2]
            if bx is not None:
                bx = np.asarray(res["bboxes"], dtype=np.float64).reshape(-1, 4)
                bl = np.asarray(res["box_labels"], dtype=np.int64).reshape(-1)
                keep = (bx[:, 2] - bx[:, 0] > BOX_MIN_SIDE) & (bx[:, 3] - bx[:, 1] > BOX_MIN_SIDE)
                bx, bl = bx[keep], bl[keep]

        img = np.clip(img * (hi - lo) + lo, lo, hi)
        result: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), np.float32))
        }
        if m is not None:
            result["mask"] = torch.from_numpy(np.asarray(m, dtype=np.int64))
        if kp is not None and vis is not None:
            H, W = img.shape[:2]
            # Pixel-index coordinates: the image covers [-0.5, W - 0.5) x [-0.5, H - 0.5).
            inside = ((kp[:, 0] >= -0.5) & (kp[:, 0] < W - 0.5)
                      & (kp[:, 1] >= -0.5) & (kp[:, 1] < H - 0.5))
            result["keypoints"] = torch.from_numpy(kp.astype(np.float32))
            result["visible"] = torch.from_numpy(vis & inside)
        if bx is not None and bl is not None:
            result["boxes"] = torch.from_numpy(bx.astype(np.float32).reshape(-1, 4))
            result["box_labels"] = torch.from_numpy(bl.astype(np.int64))
        return result


def flip_volume(
    image: torch.Tensor, mask: torch.Tensor | None, augment: AugmentConfig | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random flips of a 3-D sample, the only augmentation applied to volumes.

    ``image`` ``[C, D, H, W]``, ``mask`` ``[D, H, W]`` or None. ``hflip`` flips W, ``vflip`` flips
    H and (independently) D. Random draws come from torch's global generator (see
    :class:`JointTransform`).
    """
    if augment is None:
        return image, mask
    for prob, axis in ((augment.hflip, -1), (augment.vflip, -2), (augment.vflip, -3)):
        if prob and float(torch.rand(())) < prob:
            image = image.flip(axis)
            mask = mask.flip(axis) if mask is not None else None
    return image, mask


def volume_augment_warning(augment: AugmentConfig | None) -> str | None:
    """A message when ``augment`` asks for more than flips on 3-D data (else None)."""
    if augment is not None and (augment.rotate_deg or augment.scale or augment.crop_scale < 1
                                or augment.brightness or augment.contrast or augment.gamma):
        return ("3-D volumes support only hflip/vflip augmentation; the other augment "
                "settings are ignored")
    return None
