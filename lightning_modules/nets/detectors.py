"""torchvision object detectors for medrobust: builder, tiny CPU default, and the attack wrapper.

Three files: this one builds detectors and wraps them (:class:`DetectorWrapper`);
:mod:`~lightning_modules.nets.detector_families` holds one strategy per kind of detector (how
it gives per-image losses, detections and the DAG inputs); the wrapper's output,
:class:`~lightning_modules.nets.detection_output.DetectionOutput`, is plain data its family reads.

Three things torchvision detectors do that a robustness framework must undo:

1. **They return losses only in train mode, averaged over the batch.** Attacks and AMAT need one
   loss per image. :class:`DetectorWrapper` (through its family) computes the transform and the backbone once for
   the whole batch and then the heads' losses *per image* (exact: each image's loss is what
   torchvision would return for a batch holding only that image). For Faster R-CNN the RPN and
   the RoI heads run per image on that image's slice of the shared features; for FCOS and
   RetinaNet only the (cheap) loss computation loops. Any other detector falls back to one full
   forward per image (cost: ``B`` forwards instead of one).
2. **The train-mode switch is global.** Setting ``model.train()`` to get losses would also put
   BatchNorm into batch-statistics mode and Dropout on. The wrapper flips only the flags that
   select *losses* (the detector itself, its RPN and RoI heads) and leaves every norm / dropout
   layer as the caller set it: under an attack (``attacks.attack_mode``: BN eval) nothing
   moves BN statistics; in a training step BN trains as usual. Every flag is restored.
3. **Training-mode proposal sampling draws random numbers.** Faster R-CNN samples anchors and
   proposals with ``torch.randperm``. When the wrapper is in eval mode (an attack puts the
   model there through ``attacks.attack_mode``; so does validation) the loss computation runs
   inside ``torch.random.fork_rng`` seeded with ``sampling_seed``: the same input gives the
   same loss every time, and the global RNG stream is left exactly as it was. In train mode
   the samplers draw from the global RNG, as in torchvision (a fixed seed would pick the same
   anchor positions every step).

Cost of the per-image losses: one batched transform + backbone pass; then, for FCOS / RetinaNet,
the dense heads once for the batch and ``B`` cheap loss computations; for Faster R-CNN, the RPN
head, proposal sampling and RoI heads ``B`` times on single-image feature slices. Measured on
CPU (forward + backward, 8 images of 64 px, vs torchvision's batch-averaged training loss):
1.16× for the tiny FCOS, 1.19× for the tiny Faster R-CNN, 1.43× for Faster R-CNN MobileNetV3
FPN. Any other detector: ``B`` full single-image forwards.

Image handling: images arrive in the data's ``bounds``; normalization is ours (the task
pipeline's ``Normalize`` in front of the wrapper, or the wrapper's ``normalize`` when it is used
on its own), not torchvision's: the detector's own ``image_mean``/``image_std`` are set to 0/1,
and ``min_size``/``max_size`` are set to the data's image size, so torchvision neither rescales
(e.g. 64 px -> 800 px) nor renormalizes and boxes stay in the delivered pixels.

Labels: the batch contract has classes ``[0, C)`` and no background. Models reserving 0 for
background (R-CNN family, SSD) get ``label_offset = 1``: labels are shifted up for the losses
and back down in the detections.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.ssd import SSD
from torchvision.ops import MultiScaleRoIAlign

from lightning_modules.nets.builder import import_object
from lightning_modules.nets.detection_output import DetectionOutput
from lightning_modules.nets.detector_families import family_for
from lightning_modules.nets.detector_family import DetectorFamily

__all__ = [
    "DetectionOutput",
    "DetectorFamily",
    "DetectorWrapper",
    "TinyBackbone",
    "build_detector",
    "label_offset_for",
    "tiny_fcos",
    "tiny_fasterrcnn",
]


# ----------------------------------------------------------------------------- tiny default
class TinyBackbone(nn.Module):
    """A small CNN giving one feature map at stride ``2 ** len(widths)``.

    Each stage halves the resolution: ``conv3x3/2 → GN → ReLU → conv3x3 → GN → ReLU``. GroupNorm
    (not BatchNorm) because detection batches are small and the per-image loss path sees one
    image at a time; it also makes train and eval forwards identical.

    Args:
        in_channels: image channels.
        widths: channels of the stages (``len(widths)`` = number of stride-2 stages).
        out_channels: channels of the output map (a multiple of 8: the tiny heads use
            GroupNorm with 8 groups).
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (16, 32),
                 out_channels: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for w in widths:
            layers += [
                nn.Conv2d(ch, w, 3, stride=2, padding=1), nn.GroupNorm(min(8, w), w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.ReLU(inplace=True),
            ]
            ch = w
        layers += [nn.Conv2d(ch, out_channels, 3, padding=1), nn.GroupNorm(8, out_channels),
                   nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out_channels = out_channels  # torchvision detectors read this attribute
        self.stride = 2 ** len(widths)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, out_channels, H / stride, W / stride]``."""
        return self.body(x)


def tiny_fcos(
    num_classes: int,
    in_channels: int = 3,
    widths: Sequence[int] = (16, 32),
    out_channels: int = 64,
    head_convs: int = 2,
    **kwargs: Any,
) -> FCOS:
    """FCOS on a :class:`TinyBackbone` (single feature level): the CPU-friendly default.

    Anchor-free and without random sampling, so its training losses are a deterministic function
    of the input. With one level, FCOS assigns every object size to it (its scale ranges are
    open on both ends for a single level). ``num_classes`` has no background slot (FCOS uses
    sigmoid focal loss). ``kwargs`` go to :class:`torchvision.models.detection.FCOS`
    (``min_size``, ``score_thresh``…).
    """
    backbone = TinyBackbone(in_channels, widths, out_channels)
    stride = backbone.stride
    anchors = AnchorGenerator(sizes=((stride,),), aspect_ratios=((1.0,),))
    head = FCOSHead(out_channels, 1, num_classes, num_convs=head_convs)
    _regroup_norms(head, groups=8)
    kwargs.setdefault("score_thresh", 0.05)
    kwargs.setdefault("detections_per_img", 50)
    return FCOS(backbone, num_classes, anchor_generator=anchors, head=head, **kwargs)


def tiny_fasterrcnn(
    num_classes: int,
    in_channels: int = 3,
    widths: Sequence[int] = (16, 32),
    out_channels: int = 64,
    anchor_sizes: Sequence[int] = (8, 16, 32),
    representation_size: int = 128,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN on a :class:`TinyBackbone` (single level); ``num_classes`` includes the
    background slot 0. Small RoI head (``representation_size``) and proposal counts for CPU."""
    backbone = TinyBackbone(in_channels, widths, out_channels)
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(out_channels * 49, representation_size)
    # torchvision wants num_classes=None when the predictor is given; it carries the classes.
    predictor = FastRCNNPredictor(representation_size, num_classes)
    for key, value in {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 100,
                       "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 50,
                       "box_batch_size_per_image": 64, "box_detections_per_img": 50,
                       "box_score_thresh": 0.05}.items():
        kwargs.setdefault(key, value)
    return FasterRCNN(backbone, None, rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
                      box_head=box_head, box_predictor=predictor, **kwargs)


def _regroup_norms(module: nn.Module, groups: int) -> None:
    """Replace every GroupNorm in ``module`` by one with ``groups`` groups (torchvision's FCOS
    head hard-codes 32, too many for a 64-channel tiny head to be useful)."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.GroupNorm(groups, child.num_channels, child.eps, child.affine))
        else:
            _regroup_norms(child, groups)


# ----------------------------------------------------------------------------- builder
_BACKGROUND_CLASSES = (GeneralizedRCNN, SSD)
_NO_BACKGROUND_CLASSES = (FCOS, RetinaNet)


def label_offset_for(builder: Callable[..., Any] | nn.Module) -> int | None:
    """1 if the detector reserves class 0 for background (R-CNN family, SSD), 0 if not (FCOS,
    RetinaNet), ``None`` if it cannot be told from ``builder`` (a class, a function annotated
    with its return class, or a built model)."""
    candidates: list[Any] = []
    if isinstance(builder, nn.Module):
        candidates.append(type(builder))
    elif inspect.isclass(builder):
        candidates.append(builder)
    else:
        # get_type_hints resolves postponed (string) annotations such as our own builders'.
        with contextlib.suppress(Exception):
            candidates.append(typing.get_type_hints(builder).get("return"))
        with contextlib.suppress(TypeError, ValueError):
            candidates.append(inspect.signature(builder).return_annotation)
    for cls in candidates:
        if inspect.isclass(cls):
            if issubclass(cls, _BACKGROUND_CLASSES):
                return 1
            if issubclass(cls, _NO_BACKGROUND_CLASSES):
                return 0
    return None


def build_detector(
    class_path: str | Callable[..., nn.Module],
    num_classes: int,
    in_channels: int = 3,
    image_size: Sequence[int] = (),
    init_args: dict[str, Any] | None = None,
    label_offset: int | None = None,
) -> tuple[nn.Module, int, bool]:
    """Build a torchvision-style detector that never downloads weights.

    Args:
        class_path: dotted path (or the callable) of a detector class or builder, e.g.
            ``torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn``,
            ``…fcos_resnet50_fpn``, ``…retinanet_resnet50_fpn`` or
            ``lightning_modules.nets.detectors.tiny_fcos``.
        num_classes: object classes ``C`` of the data (no background).
        in_channels: image channels; given to builders that take ``in_channels`` (the tiny
            ones). Other builders expect 3 — the wrapper then repeats a single channel.
        image_size: ``(H, W)`` of the delivered images; sets ``min_size``/``max_size`` so the
            detector's transform does not rescale.
        init_args: extra keyword arguments (override the defaults set here, except
            ``weights``/``weights_backbone``, which are always ``None``).
        label_offset: ``None`` = decide from the model type (see :func:`label_offset_for`).

    Returns:
        ``(detector, label_offset, takes_in_channels)``.
    """
    builder = import_object(class_path, "net.class_path") if isinstance(class_path, str) else class_path
    kwargs = dict(init_args or {})
    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:
            raise ValueError(f"{key} must be None: medrobust never downloads weights")
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in ("weights", "weights_backbone"):
        if key in params:
            kwargs[key] = None  # torchvision defaults weights_backbone to ImageNet: a download
    takes_in_channels = "in_channels" in params
    if takes_in_channels:
        kwargs.setdefault("in_channels", in_channels)
    if image_size and (accepts_kwargs or "min_size" in params):
        h, w = int(image_size[-2]), int(image_size[-1])
        kwargs.setdefault("min_size", min(h, w))
        kwargs.setdefault("max_size", max(h, w))
    if accepts_kwargs or "image_mean" in params:
        ch = in_channels if takes_in_channels else 3
        kwargs.setdefault("image_mean", [0.0] * ch)  # our Normalize is the first layer
        kwargs.setdefault("image_std", [1.0] * ch)

    offset = label_offset if label_offset is not None else label_offset_for(builder)
    model = builder(num_classes=num_classes + (offset if offset is not None else 1), **kwargs)
    if offset is None:
        offset = label_offset_for(model)
        if offset == 0:  # guessed wrong: no background slot needed, rebuild (rare, cheap)
            model = builder(num_classes=num_classes, **kwargs)
        elif offset is None:
            offset = 1  # unknown family: a spare class 0 is harmless, a missing one is not
    return model, int(offset), takes_in_channels


# ----------------------------------------------------------------------------- wrapper
class DetectorWrapper(nn.Module):
    """``images in bounds -> DetectionOutput``: normalization + a torchvision detector.

    The detector's family (:func:`~lightning_modules.nets.detector_families.family_for`) is
    chosen once, here; the wrapper runs the shared pass and the output's readings are the
    family's. State-dict keys: ``normalize.*`` and ``detector.*`` (the family holds no state).

    Args:
        detector: a torchvision-style detector (``GeneralizedRCNN``, ``FCOS``, ``RetinaNet`` or
            anything taking ``(list[Tensor], targets)`` and returning losses in train mode).
        normalize: the first layer (maps the data's bounds to the network's input scale).
        label_offset: 1 when the detector reserves class 0 for background.
        repeat_channels: repeat a single-channel image to 3 (torchvision backbones want RGB).
        sampling_seed: seed of the loss path's random sampling when the wrapper is in eval
            mode (attacks put it there; so does validation); in train mode, or with ``None``,
            the global RNG is used, as torchvision does. See :meth:`forward`.
    """

    def __init__(
        self,
        detector: nn.Module,
        normalize: nn.Module | None = None,
        label_offset: int = 0,
        repeat_channels: bool = False,
        sampling_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.detector = detector
        self.repeat_channels = repeat_channels
        self.sampling_seed = sampling_seed
        self.family: DetectorFamily = family_for(detector, label_offset)

    @property
    def label_offset(self) -> int:
        """1 when the detector reserves class 0 for background (the family's)."""
        return self.family.label_offset

    def forward(self, x: Tensor, sampling_seed: int | None | str = "default") -> DetectionOutput:
        """Normalize, run the detector's transform and backbone once for the batch.

        Args:
            x: ``[B, C, H, W]`` images in the data's bounds.
            sampling_seed: seed of the loss path's random sampling; ``"default"``: the
                wrapper's ``sampling_seed`` in eval mode, the global RNG in train mode (a fixed
                seed in training would draw the same anchor / proposal positions every step).
                The heads run lazily, when a loss or detections are asked for.
        """
        if sampling_seed == "default":
            seed = None if self.training else self.sampling_seed
        else:
            seed = sampling_seed  # type: ignore[assignment]
        if self.family.detector is not self.detector:  # the detector was replaced after build
            self.family = family_for(self.detector, self.family.label_offset)
        return self.family.run(self.prepare(x), seed)

    def prepare(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` in bounds -> the detector's input (normalized, channels fixed)."""
        z = self.normalize(x)
        if self.repeat_channels and z.shape[1] == 1:
            z = z.expand(-1, 3, *z.shape[2:])
        return z
