"""torchvision object detectors for medrobust: builder, tiny CPU default, and the attack wrapper.

Three things torchvision detectors do that a robustness framework must undo:

1. **They return losses only in train mode, averaged over the batch.** Attacks and AMAT need one
   loss per image. :class:`DetectorWrapper` computes the transform and the backbone once for
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
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, box_iou

from attacks.mode import is_norm_with_stats
from lightning_modules.nets.builder import import_object

__all__ = [
    "DetectionOutput",
    "DetectorWrapper",
    "TinyBackbone",
    "build_detector",
    "label_offset_for",
    "tiny_fcos",
    "tiny_fasterrcnn",
]

Targets = list[dict[str, Tensor]]


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
def _call_detector(det: nn.Module, images: list[Tensor], targets: Targets | None = None) -> Any:
    """``det(images[, targets])`` with a clear error when the detector does not take torchvision's
    call convention (a list of ``[C, H, W]`` images, and the targets in train mode)."""
    try:
        return det(images) if targets is None else det(images, targets)
    except TypeError as err:
        raise ValueError(
            f"detection: {type(det).__name__} must take torchvision's detector call "
            "(`model(images: list[Tensor[C, H, W]], targets)` -> a dict of losses in train mode, "
            f"`model(images)` -> one dict per image in eval mode): {err}") from None


def _checked_losses(out: Any) -> dict[str, Tensor]:
    """A generic detector's train-mode output: ``{name: scalar loss}``, else a clear error."""
    if not (isinstance(out, Mapping) and out
            and all(isinstance(v, Tensor) and v.numel() == 1 for v in out.values())):
        got = (f"a dict with {sorted((k, tuple(v.shape)) for k, v in out.items() if isinstance(v, Tensor))}"
               if isinstance(out, Mapping) else type(out).__name__)
        raise ValueError("detection: in train mode, given (images, targets), a detector must return a "
                         f"non-empty dict of scalar loss tensors (torchvision's form); got {got}")
    return {k: v.reshape(()) for k, v in out.items()}


def _checked_detections(out: Any, n: int) -> Targets:
    """A generic detector's eval-mode output: ``n`` dicts with ``boxes`` ``[N, 4]``, ``scores``
    ``[N]``, ``labels`` ``[N]`` (and optionally ``logits`` ``[N, K]``), else a clear error."""
    form = ("one dict per image with 'boxes' [N, 4] (xyxy pixels), 'scores' [N], 'labels' [N] "
            "(optional: 'logits' [N, K])")
    if not (isinstance(out, (list, tuple)) and len(out) == n and all(isinstance(d, Mapping) for d in out)):
        got = f"{len(out)} items" if isinstance(out, (list, tuple)) else type(out).__name__
        raise ValueError(f"detection: in eval mode a detector must return {form} for {n} images; got {got}")
    for i, d in enumerate(out):
        missing = [k for k in ("boxes", "scores", "labels") if not isinstance(d.get(k), Tensor)]
        if missing:
            raise ValueError(f"detection: image {i}'s detections lack {missing} (tensors); expected {form}")
        m = d["boxes"].shape[0] if d["boxes"].ndim == 2 else -1
        shapes_ok = (d["boxes"].ndim == 2 and d["boxes"].shape[1] == 4 and d["scores"].shape == (m,)
                     and d["labels"].shape == (m,))
        if "logits" in d:
            z = d["logits"]
            shapes_ok = shapes_ok and isinstance(z, Tensor) and z.ndim == 2 and z.shape[0] == m
        if not shapes_ok:
            shapes = {k: tuple(v.shape) for k, v in d.items() if isinstance(v, Tensor)}
            raise ValueError(f"detection: image {i}'s detections have shapes {shapes}; expected {form}")
    return list(out)


@contextlib.contextmanager
def _flags(modules: Sequence[nn.Module | None], training: bool) -> Iterator[None]:
    """Set ``.training`` of exactly these modules (not their children) and restore it."""
    saved = [(m, m.training) for m in modules if m is not None]
    try:
        for m, _ in saved:
            m.training = training
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def _logic_flags(model: nn.Module, training: bool) -> Iterator[None]:
    """Flags of every module that is not a norm-with-statistics or dropout layer (for the
    generic per-image fallback, where we cannot tell which module selects losses)."""
    chosen = [m for m in model.modules()
              if not is_norm_with_stats(m) and not isinstance(m, _DropoutNd)]
    with _flags(chosen, training):
        yield


@contextlib.contextmanager
def _maybe_fork_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class DetectorWrapper(nn.Module):
    """``images in bounds -> DetectionOutput``: normalization + a torchvision detector.

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
        self.label_offset = int(label_offset)
        self.repeat_channels = repeat_channels
        self.sampling_seed = sampling_seed
        if isinstance(detector, GeneralizedRCNN):
            self.family = "rcnn"
        elif isinstance(detector, FCOS):
            self.family = "fcos"
        elif isinstance(detector, RetinaNet):
            self.family = "retinanet"
        else:
            self.family = "generic"

    # ------------------------------------------------------------------ public
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
        z = self.prepare(x)
        if self.family == "generic":
            return DetectionOutput(self, z, None, None, seed)
        image_list, features = self._backbone(z)
        return DetectionOutput(self, z, image_list, features, seed)

    def prepare(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` in bounds -> the detector's input (normalized, channels fixed)."""
        z = self.normalize(x)
        if self.repeat_channels and z.shape[1] == 1:
            z = z.expand(-1, 3, *z.shape[2:])
        return z

    def to_detector_targets(self, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                            device: torch.device) -> Targets:
        """Batch-contract targets -> torchvision's (labels shifted by ``label_offset``)."""
        out: Targets = []
        for b, lab in zip(boxes, labels):
            b = b.to(device=device, dtype=torch.float32).reshape(-1, 4)
            lab = lab.to(device=device, dtype=torch.int64).reshape(-1)
            if b.is_inference():  # Lightning eval batches; autograd may save them
                b, lab = b.clone(), lab.clone()
            out.append({"boxes": b, "labels": lab + self.label_offset})
        return out

    # ------------------------------------------------------------------ internals
    def _backbone(self, z: Tensor) -> tuple[ImageList, OrderedDict[str, Tensor]]:
        det = self.detector
        transform: GeneralizedRCNNTransform = det.transform
        # Eval-mode transform: no random choice among min sizes, and postprocess rescales.
        with _flags([transform], False):
            image_list, _ = transform(list(z))
        features = det.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        return image_list, features

    def _scaled_targets(self, targets: Targets, image_list: ImageList,
                        original_sizes: list[tuple[int, int]]) -> Targets:
        """Boxes in the transformed image frame (identity when the transform does not rescale)."""
        scaled = []
        for t, new, old in zip(targets, image_list.image_sizes, original_sizes):
            boxes = t["boxes"] if tuple(new) == tuple(old) else resize_boxes(t["boxes"], old, new)
            scaled.append({"boxes": boxes, "labels": t["labels"]})
        return scaled

    def _anchors(self, image_list: ImageList, feats: list[Tensor]) -> list[Tensor]:
        return self.detector.anchor_generator(image_list, feats)

    def per_image_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        """Each loss term of the detector, per image: ``{name: [B]}``."""
        det = self.detector
        b = out.z.shape[0]
        if len(targets) != b:
            raise ValueError(f"{len(targets)} targets for a batch of {b} images")
        per_image: list[dict[str, Tensor]] = [{} for _ in range(b)]

        def add(i: int, losses: dict[str, Tensor]) -> None:
            per_image[i] = {name: value.reshape(()) for name, value in losses.items()}

        with _maybe_fork_rng(out.sampling_seed, out.z.device):
            if self.family == "generic":
                with _logic_flags(det, True):
                    for i in range(b):
                        add(i, _checked_losses(_call_detector(det, [out.z[i]], [targets[i]])))
            else:
                image_list, features = out.image_list, out.features
                assert image_list is not None and features is not None
                tgt = self._scaled_targets(targets, image_list, out.original_sizes)
                if self.family == "rcnn":
                    with _flags([det, det.rpn, det.roi_heads], True):
                        for i in range(b):
                            il = ImageList(image_list.tensors[i:i + 1], [image_list.image_sizes[i]])
                            f = OrderedDict((k, v[i:i + 1]) for k, v in features.items())
                            proposals, rpn_losses = det.rpn(il, f, [tgt[i]])
                            _, roi_losses = det.roi_heads(f, proposals, il.image_sizes, [tgt[i]])
                            add(i, {**rpn_losses, **roi_losses})
                else:
                    feats = list(features.values())
                    head_out = out.head_outputs()
                    anchors = self._anchors(image_list, feats)
                    for i in range(b):
                        h_i = {k: v[i:i + 1] for k, v in head_out.items()}
                        if self.family == "fcos":
                            levels = [f.shape[2] * f.shape[3] for f in feats]
                            add(i, det.compute_loss([tgt[i]], h_i, [anchors[i]], levels))
                        else:
                            add(i, det.compute_loss([tgt[i]], h_i, [anchors[i]]))
        names = list(dict.fromkeys(n for losses in per_image for n in losses))
        zero = out.z.new_zeros(())
        return {n: torch.stack([losses.get(n, zero) for losses in per_image]) for n in names}

    def batch_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        """Each loss term of the detector for the whole batch, reduced as torchvision reduces
        it in training (``{name: []}``): what ``detector(images, targets)`` returns in train
        mode for these features, e.g. FCOS divides by the foreground locations of the *batch*,
        Faster R-CNN by the sampled anchors / proposals of the batch, RetinaNet averages its
        per-image terms. Same random-sampling rule as :meth:`per_image_losses`."""
        det = self.detector
        with _maybe_fork_rng(out.sampling_seed, out.z.device):
            if self.family == "generic":
                with _logic_flags(det, True):
                    return _checked_losses(_call_detector(det, list(out.z), targets))
            image_list, features = out.image_list, out.features
            assert image_list is not None and features is not None
            tgt = self._scaled_targets(targets, image_list, out.original_sizes)
            if self.family == "rcnn":
                with _flags([det, det.rpn, det.roi_heads], True):
                    proposals, rpn_losses = det.rpn(image_list, features, tgt)
                    _, roi_losses = det.roi_heads(features, proposals, image_list.image_sizes, tgt)
                return {**rpn_losses, **roi_losses}
            feats = list(features.values())
            head_out = out.head_outputs()
            anchors = self._anchors(image_list, feats)
            if self.family == "fcos":
                levels = [f.shape[2] * f.shape[3] for f in feats]
                return dict(det.compute_loss(tgt, head_out, anchors, levels))
            return dict(det.compute_loss(tgt, head_out, anchors))

    def detections(self, out: DetectionOutput) -> Targets:
        """Eval-mode post-processed detections per image: ``boxes`` ``[N, 4]`` xyxy pixels,
        ``scores`` ``[N]``, ``labels`` ``[N]`` in ``[0, C)`` (a generic detector's ``logits``
        ``[N, K]`` too, where it returns them)."""
        det = self.detector
        if self.family == "generic":
            with _logic_flags(det, False):
                dets = _checked_detections(_call_detector(det, list(out.z)), len(out))
            # a generic detector's class logits per detection (optional): DAG's inputs
            return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - self.label_offset,
                     **({"logits": d["logits"]} if "logits" in d else {})} for d in dets]
        image_list, features = out.image_list, out.features
        assert image_list is not None and features is not None
        transform = det.transform
        if self.family == "rcnn":
            with _flags([det, det.rpn, det.roi_heads, transform], False):
                proposals, _ = det.rpn(image_list, features)
                dets, _ = det.roi_heads(features, proposals, image_list.image_sizes)
        else:
            feats = list(features.values())
            head_out = out.head_outputs()
            anchors = self._anchors(image_list, feats)
            hw = [f.shape[2] * f.shape[3] for f in feats]
            per_loc = head_out["cls_logits"].shape[1] // sum(hw)  # anchors per location
            levels = [n * per_loc for n in hw]
            split = {k: list(v.split(levels, dim=1)) for k, v in head_out.items()}
            split_anchors = [list(a.split(levels)) for a in anchors]
            dets = det.postprocess_detections(split, split_anchors, image_list.image_sizes)
        with _flags([transform], False):
            dets = transform.postprocess(dets, image_list.image_sizes, out.original_sizes)
        return [{"boxes": d["boxes"], "scores": d["scores"],
                 "labels": d["labels"] - self.label_offset} for d in dets]


class DetectionOutput:
    """What :class:`DetectorWrapper` returns: the batch's shared features, heads run lazily.

    Consumers ask for what they need:
    :meth:`per_image_losses` / :meth:`loss` (with the batch's targets; differentiable w.r.t.
    the input), or :attr:`detections` (eval-mode post-processing, cached).

    Attributes:
        z: ``[B, C', H, W]`` the detector's input (after our normalization).
        original_sizes: ``(H, W)`` per image.
        sampling_seed: seed for the loss path's random sampling, ``None`` = global RNG.
    """

    def __init__(self, wrapper: DetectorWrapper, z: Tensor, image_list: ImageList | None,
                 features: OrderedDict[str, Tensor] | None, sampling_seed: int | None) -> None:
        self.wrapper = wrapper
        self.z = z
        self.image_list = image_list
        self.features = features
        self.sampling_seed = sampling_seed
        self.original_sizes = [(int(z.shape[-2]), int(z.shape[-1]))] * z.shape[0]
        self._head_outputs: dict[str, Tensor] | None = None
        self._detections: Targets | None = None
        # (boxes, labels, terms) of the last loss computed with gradients: a later no-grad
        # request for the same targets (AMAT's violation test, logging) reuses it detached.
        self._loss_cache: tuple[Any, Any, dict[str, Tensor]] | None = None

    def __len__(self) -> int:
        return self.z.shape[0]

    def split_batch(self, sizes: Sequence[int]) -> list[DetectionOutput]:
        """Split along the batch into outputs of ``sizes`` images (views of the shared
        features, so a joint clean + adversarial forward costs one backbone pass)."""
        if sum(sizes) != len(self):
            raise ValueError(f"cannot split a batch of {len(self)} into {list(sizes)}")
        parts: list[DetectionOutput] = []
        start = 0
        for n in sizes:
            sl = slice(start, start + n)
            il = None
            if self.image_list is not None:
                il = ImageList(self.image_list.tensors[sl], self.image_list.image_sizes[sl])
            feats = None
            if self.features is not None:
                feats = OrderedDict((k, v[sl]) for k, v in self.features.items())
            part = DetectionOutput(self.wrapper, self.z[sl], il, feats, self.sampling_seed)
            if self._head_outputs is not None:
                part._head_outputs = {k: v[sl] for k, v in self._head_outputs.items()}
            parts.append(part)
            start += n
        return parts

    def head_outputs(self) -> dict[str, Tensor]:
        """Dense head outputs of single-stage detectors (computed once)."""
        if self._head_outputs is None:
            assert self.features is not None
            self._head_outputs = self.wrapper.detector.head(list(self.features.values()))
        return self._head_outputs

    def per_image_losses(self, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """``{loss name: [B]}`` for targets in the batch contract (labels in ``[0, C)``)."""
        cache = self._loss_cache
        if (not torch.is_grad_enabled() and cache is not None and cache[0] is boxes
                and cache[1] is labels):
            return {k: v.detach() for k, v in cache[2].items()}
        targets = self.wrapper.to_detector_targets(boxes, labels, self.z.device)
        terms = self.wrapper.per_image_losses(self, targets)
        if torch.is_grad_enabled():
            self._loss_cache = (boxes, labels, terms)
        return terms

    def loss(self, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> Tensor:
        """``[B]``: the sum of the detector's training losses for each image."""
        terms = self.per_image_losses(boxes, labels)
        return torch.stack(list(terms.values())).sum(dim=0)

    def batch_loss(self, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> Tensor:
        """``[]``: the detector's training loss of the whole batch, normalised as torchvision
        normalises it (the sum of :meth:`DetectorWrapper.batch_losses`). Not the mean of
        :meth:`loss`: FCOS, for one, divides by the foreground locations of the batch, so an
        image with many objects weighs more than one with few (see the task's ``batch_loss``)."""
        targets = self.wrapper.to_detector_targets(boxes, labels, self.z.device)
        terms = self.wrapper.batch_losses(self, targets)
        return torch.stack([v.reshape(()) for v in terms.values()]).sum()

    def matched_predictions(self, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                            iou_thresh: float = 0.5) -> tuple[Tensor, Tensor]:
        """Class logits and boxes of the eval-mode locations / proposals, with the ground-truth
        object each one covers: the inputs of DAG-style attack losses (Xie et al. 2017).

        Args:
            boxes, labels: ground truth in the batch contract (xyxy pixels, labels ``[0, C)``).
            iou_thresh: Faster R-CNN / RetinaNet: a proposal / anchor is matched to the GT box
                it overlaps most when that IoU is ``>= iou_thresh``.

        Returns:
            ``(pred [B, L, K + 4], target [B, L, 5])``. ``pred[..., :K]``: the class head's raw
            logits at every location (FCOS: ``K = C`` sigmoid logits per anchor point;
            RetinaNet: per anchor; Faster R-CNN: ``K = C + 1`` softmax logits per eval-mode RPN
            proposal, zero-padded to the most proposals in the batch); ``pred[..., K:]``: the
            location's decoded box (xyxy pixels; Faster R-CNN: the box regressed for the
            matched class). ``target[..., 0]``: the matched object's class in the head's index
            space (``label + label_offset``), ``-1`` where nothing is matched (or padding);
            ``target[..., 1:]``: its GT box (0 where unmatched). FCOS matches a location to the
            smallest GT box that contains its centre (FCOS's own rule without centre sampling
            and scale ranges). Differentiable w.r.t. the input.
        """
        wrapper = self.wrapper
        if wrapper.family == "generic":
            return self._matched_detections(boxes, labels, iou_thresh)
        if self.image_list is None or self.features is None:
            raise ValueError("matched_predictions needs the features of a FCOS, RetinaNet or Faster "
                             f"R-CNN detector, got the {wrapper.family!r} family")
        targets = wrapper.to_detector_targets(boxes, labels, self.z.device)
        targets = wrapper._scaled_targets(targets, self.image_list, self.original_sizes)
        det = wrapper.detector

        def match(points: Tensor, t: dict[str, Tensor], by_centre: bool) -> tuple[Tensor, Tensor]:
            """``[N, 4]`` boxes -> matched class ``[N]`` (-1: none) and GT box ``[N, 4]``."""
            gt = t["boxes"]
            if not len(gt):
                return (torch.full((len(points),), -1, dtype=torch.long, device=points.device),
                        points.new_zeros(len(points), 4))
            if by_centre:
                c = (points[:, :2] + points[:, 2:]) / 2
                inside = ((c[:, None, 0] > gt[None, :, 0]) & (c[:, None, 0] < gt[None, :, 2])
                          & (c[:, None, 1] > gt[None, :, 1]) & (c[:, None, 1] < gt[None, :, 3]))
                area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
                score = torch.where(inside, -area[None, :], torch.full_like(area, float("-inf"))[None, :])
                best, j = score.max(dim=1)
                ok = torch.isfinite(best)
            else:
                iou, j = box_iou(points, gt).max(dim=1)
                ok = iou >= iou_thresh
            cls = torch.where(ok, t["labels"][j], torch.full_like(j, -1))
            return cls, torch.where(ok[:, None], gt[j], torch.zeros_like(gt[j]))

        preds: list[Tensor] = []
        tgts: list[Tensor] = []
        if wrapper.family == "rcnn":
            with _flags([det, det.rpn, det.roi_heads], False):
                proposals, _ = det.rpn(self.image_list, self.features)
                heads = det.roi_heads
                feats = heads.box_head(heads.box_roi_pool(self.features, proposals,
                                                          self.image_list.image_sizes))
                class_logits, box_regression = heads.box_predictor(feats)
                decoded = heads.box_coder.decode(box_regression, proposals)  # [sum N, K, 4]
            start = 0
            for p, t in zip(proposals, targets):
                cls, gt = match(p.detach(), t, by_centre=False)
                z, b = class_logits[start:start + len(p)], decoded[start:start + len(p)]
                start += len(p)
                which = cls.clamp_min(0)  # unmatched: any box, ignored by the losses
                b = b[torch.arange(len(p), device=b.device), which]
                preds.append(torch.cat([z, b], dim=1))
                tgts.append(torch.cat([cls[:, None].to(gt.dtype), gt], dim=1))
            n = max([1] + [len(p) for p in proposals])
            pred = torch.stack([F.pad(v, (0, 0, 0, n - v.shape[0])) for v in preds])
            target = torch.stack([F.pad(v, (0, 0, 0, n - v.shape[0]), value=-1.0) for v in tgts])
            target[..., 1:] = target[..., 1:].clamp_min(0)
            return pred, target
        head = self.head_outputs()
        anchors = wrapper._anchors(self.image_list, list(self.features.values()))
        for i, (a, t) in enumerate(zip(anchors, targets)):
            cls, gt = match(a, t, by_centre=wrapper.family == "fcos")
            reg = head["bbox_regression"][i]
            coder = det.box_coder
            b = coder.decode(reg, a) if wrapper.family == "fcos" else coder.decode_single(reg, a)
            preds.append(torch.cat([head["cls_logits"][i], b], dim=1))
            tgts.append(torch.cat([cls[:, None].to(gt.dtype), gt], dim=1))
        return torch.stack(preds), torch.stack(tgts)

    def _matched_detections(self, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                            iou_thresh: float) -> tuple[Tensor, Tensor]:
        """:meth:`matched_predictions` of a generic detector: its eval-mode detections must
        carry ``logits`` ``[N, K]`` (the class logits of each detection, differentiable; column
        ``j`` = the detector's class ``j``). Each detection is matched to the ground-truth box it
        overlaps most when that IoU is ``>= iou_thresh`` (as Faster R-CNN's proposals are)."""
        dets = self.detections
        if not all("logits" in d for d in dets):
            raise ValueError(
                "DAG attack losses need the class logits of the detections: a detector that is not "
                "FCOS, RetinaNet or of the R-CNN family must return, in eval mode, 'logits' [N, K] "
                "beside 'boxes', 'scores' and 'labels' in each image's dict")
        targets = self.wrapper.to_detector_targets(boxes, labels, self.z.device)
        k = max(int(d["logits"].shape[1]) for d in dets)
        preds, tgts = [], []
        for i, (d, t) in enumerate(zip(dets, targets)):
            z, b = d["logits"], d["boxes"].float()
            if z.shape[1] != k:
                raise ValueError(f"detection {i}: logits have {z.shape[1]} classes, another image's {k}")
            gt = t["boxes"]
            if len(gt) and len(b):
                iou, j = box_iou(b.detach(), gt).max(dim=1)
                ok = iou >= iou_thresh
                cls = torch.where(ok, t["labels"][j], torch.full_like(j, -1))
                matched = torch.where(ok[:, None], gt[j], torch.zeros_like(gt[j]))
            else:
                cls = torch.full((len(b),), -1, dtype=torch.long, device=b.device)
                matched = b.new_zeros(len(b), 4)
            preds.append(torch.cat([z.float(), b], dim=1))
            tgts.append(torch.cat([cls[:, None].to(matched.dtype), matched], dim=1))
        n = max([1] + [len(p) for p in preds])
        pred = torch.stack([F.pad(v, (0, 0, 0, n - v.shape[0])) for v in preds])
        target = torch.stack([F.pad(v, (0, 0, 0, n - v.shape[0]), value=-1.0) for v in tgts])
        target[..., 1:] = target[..., 1:].clamp_min(0)
        return pred, target

    @property
    def detections(self) -> Targets:
        """Per image ``{"boxes" [N, 4], "scores" [N], "labels" [N] in [0, C)}``."""
        if self._detections is None:
            self._detections = self.wrapper.detections(self)
        return self._detections

    def detached_detections(self) -> Targets:
        """:attr:`detections` (``boxes``, ``scores``, ``labels``) with every tensor detached
        (for metrics, displays, pseudo-labels)."""
        return [{k: d[k].detach() for k in ("boxes", "scores", "labels")} for d in self.detections]
