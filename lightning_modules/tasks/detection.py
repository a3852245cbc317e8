"""Detection, model side: :class:`~lightning_modules.DetectionModule`; a torchvision-style
detector of the user's own inside :class:`~lightning_modules.nets.detectors.DetectorWrapper`,
with its own training loss per image, mAP, and an image violated when its loss exceeds a
threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.suites import DETECTION_SUITES, SuiteRecipe
from datamodules.tasks.detection import DetectionData
from lightning_modules.detection_module import DetectionModule, detection_loss_inputs
from lightning_modules.tasks.base import AdapterRules, Task, WrappedModel


class DetectionRules(AdapterRules):
    """``model(images)`` in torchvision's call convention; targets one dict per image."""

    keys: ClassVar[tuple[str, ...]] = ("image", "targets")
    default_loss: ClassVar[bool] = True
    compute_groups: ClassVar[bool] = False

    def check(self, per_sample_loss: Any, metrics: Any, attack_loss_inputs: Any) -> None:
        if not (callable(per_sample_loss) or per_sample_loss is None):
            raise TypeError("RobustTaskAdapter.per_sample_loss must be callable (output, target) -> [B]")
        if attack_loss_inputs is not None:
            raise ValueError("RobustTaskAdapter(task='detection') takes no attack_loss_inputs: the "
                             "detection losses read the detector itself (see the class docstring)")

    def default_metrics(self) -> dict[str, Any]:
        from lightning_modules.metrics.detection import DetectionMAP

        return {"detection": DetectionMAP()}

    #: the per-sample file's column: the image's AP@0.5, not its mAP
    metric_column: ClassVar[str | None] = "ap50"

    def default_main_metric(self, names: Sequence[str]) -> str | None:
        return "map" if len(names) == 1 else None  # MeanAveragePrecision: one object, many values

    def check_main_metric(self, main_metric: str, names: Sequence[str]) -> None:
        if len(names) != 1:
            super().check_main_metric(main_metric, names)

    def __init__(self, task: Task) -> None:
        super().__init__(task=task)
        self.wrapper: Any = None  # the DetectorWrapper around the user's detector (built once)

    def attack_model(self, model: nn.Module) -> nn.Module:
        from lightning_modules.nets.detectors import DetectorWrapper

        if isinstance(model, DetectorWrapper):
            return model
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError("RobustTaskAdapter(task='detection'): the detector is needed as an nn.Module; "
                             "a TorchScript detector hides the heads the per-image losses come from")
        if self.wrapper is None or self.wrapper.detector is not model:
            # the user's labels are the detector's own (label_offset 0: nothing shifted); a fixed
            # sampling seed makes Faster R-CNN's eval-mode losses a function of the input
            self.wrapper = DetectorWrapper(model, label_offset=0, sampling_seed=0)
        return self.wrapper

    def as_batch(self, batch: Any, keys: Sequence[str]) -> dict[str, Any]:
        return detection_batch(batch, keys)

    def target(self, batch: Mapping[str, Any], keys: Sequence[str]) -> Any:
        # torchvision's targets: one dict per image
        return [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])]

    def user_output(self, output: Any) -> Any:
        out = detection_output(output)
        return out.family.detections(out)

    def loss(self, output: Any, batch: Mapping[str, Any]) -> Tensor:
        out = detection_output(output)
        return out.family.loss(out, batch["boxes"], batch["labels"])

    def is_violated(self, adapter: Any, output: Any, batch: Any, threshold: float | None) -> Tensor:
        # DetectionModule's test: the image's loss above a threshold
        thr = adapter.violation_threshold if threshold is None else float(threshold)
        with torch.no_grad():
            return adapter.per_sample_loss(output, batch).detach() > thr

    def metric_output(self, output: Any) -> Any:
        return detached_detections(output)

    def per_sample_metric(self, output: Any, target: Any) -> Tensor:
        from lightning_modules.metrics.detection import per_image_ap50

        preds = detached_detections(output)
        return per_image_ap50(preds, detached_targets(target, preds))

    def metric_inputs(self, output: Any, target: Any) -> tuple[Any, Any]:
        # torchmetrics' MeanAveragePrecision form
        preds = detached_detections(output)
        return preds, detached_targets(target, preds)

    def display(self, output: Any) -> Any:
        return detached_detections(output)

    def attack_loss_inputs(self, output: Any, batch: Mapping[str, Any], keys: Sequence[str],
                           given: Any, inputs: str) -> tuple[Tensor, Tensor]:
        return detection_loss_inputs(detection_output(output), batch, inputs, "RobustTaskAdapter")


class DetectionTask(Task, DetectionData):
    module: ClassVar[type] = DetectionModule
    adapter_rules: ClassVar[type[AdapterRules]] = DetectionRules
    suite: ClassVar[SuiteRecipe | None] = DETECTION_SUITES

    def wrap_model(self, bare: nn.Module, normalize: nn.Module, probe_x: Tensor, given: int | None,
                   opaque: bool = False) -> WrappedModel:
        """The detector inside :class:`~lightning_modules.nets.detectors.DetectorWrapper`; its
        classes from its head (an R-CNN's background slot not counted); the reference is its
        detections with the labels in the data's convention."""
        from lightning_modules.nets.detectors import DetectorWrapper, label_offset_for

        if opaque or isinstance(bare, torch.jit.ScriptModule):
            raise ValueError("evaluate: a detector is needed as an nn.Module (or a state dict + net spec): the "
                             "per-image losses the attacks need come from its heads and transform, which a "
                             "TorchScript / torch.export file does not expose as torchvision's classes")
        if given is None:
            k, offset = detector_classes(bare)
        else:
            offset = label_offset_for(bare)
            k, offset = int(given), 1 if offset is None else offset
            try:
                found, _ = detector_classes(bare)
            except ValueError:
                found = k
            if found != k:
                raise ValueError(f"evaluate: num_classes={given} but the detector has {found} object classes")
        bare.eval()
        with torch.no_grad():
            reference = bare(list(normalize(probe_x)))
        if not (isinstance(reference, list) and all(isinstance(d, Mapping) and "boxes" in d for d in reference)):
            raise ValueError("evaluate: a detector must return, in eval mode, one dict with 'boxes', 'scores' "
                             f"and 'labels' per image (torchvision's form); got {type(reference).__name__}")
        reference = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - offset}
                     for d in reference]
        wrapper = DetectorWrapper(bare, normalize=normalize, label_offset=offset, sampling_seed=0)
        return WrappedModel(wrapper, k, reference, {"label_offset": wrapper.label_offset})

    def check_model_classes(self, wrapped: WrappedModel, info: Any) -> None:
        if info.num_classes != wrapped.num_classes:
            raise ValueError(f"evaluate: the detector has {wrapped.num_classes} object classes but the data has "
                             f"{info.num_classes} ({wrapped.net.family} family; an R-CNN counts background "
                             "as class 0 besides them)")

    def comparable_output(self, output: Any) -> Any:
        return [{k: v.detach() for k, v in d.items()} for d in output.family.detections(output)]


def detector_classes(detector: nn.Module) -> tuple[int, int]:
    """``(object classes, label offset)`` of a torchvision-style detector: FCOS / RetinaNet
    (no background slot) from their classification head, the R-CNN family (class 0 is
    background) from their box predictor."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    if isinstance(detector, (FCOS, RetinaNet)):
        return int(detector.head.classification_head.num_classes), 0
    if isinstance(detector, GeneralizedRCNN):
        predictor = getattr(detector.roi_heads, "box_predictor", None)
        scores = getattr(predictor, "cls_score", None)
        if isinstance(scores, nn.Linear):
            return int(scores.out_features) - 1, 1
    raise ValueError(f"evaluate: cannot tell the object classes of a {type(detector).__name__}: give "
                     "num_classes (the data's object classes, no background)")


def detection_output(output: Any) -> Any:
    """The ``DetectionOutput`` the adapter's detector wrapper returns (else a clear error)."""
    from lightning_modules.nets.detectors import DetectionOutput

    if not isinstance(output, DetectionOutput):
        raise ValueError("RobustTaskAdapter(task='detection'): expected the output of the adapter's "
                         f"attack_model() (a DetectionOutput), got {type(output).__name__}")
    return output


def detached_detections(output: Any) -> list[dict[str, Tensor]]:
    """The detections of the adapter's output, detached (asked of its detector family)."""
    out = detection_output(output)
    return out.family.detached_detections(out)


def detached_targets(target: list[dict[str, Tensor]], preds: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Targets on the predictions' device, detached, in torchmetrics' detection form."""
    return [{"boxes": t["boxes"].detach().to(p["boxes"].device).float().reshape(-1, 4),
             "labels": t["labels"].detach().to(p["boxes"].device).long().reshape(-1)}
            for t, p in zip(target, preds)]


def detection_batch(batch: Any, keys: Sequence[str]) -> dict[str, Any]:
    """A detection batch in medrobust's form: ``image`` ``[B, C, H, W]``, ``boxes`` (``B`` float
    ``[N_i, 4]`` xyxy pixels) and ``labels`` (``B`` int64 ``[N_i]``), lists so that samples can be
    picked (:func:`attacks.tree.select_rows`).

    Accepted: a tuple ``(images, targets, …)`` (torchvision's form: ``images`` a ``[B, C, H, W]``
    tensor or a list / tuple of ``B`` same-size ``[C, H, W]`` tensors; ``targets`` ``B`` dicts with
    ``boxes`` and ``labels``); a dict with ``keys[0]`` and either ``boxes`` + ``labels`` (medrobust's
    detection datamodules) or ``keys[1]`` holding the ``B`` target dicts."""
    image_key, target_key = keys[0], keys[1]
    if isinstance(batch, Mapping):
        if image_key not in batch:
            raise KeyError(f"RobustTaskAdapter: the detection batch lacks {image_key!r}; keys {sorted(batch)}")
        out = {k: v for k, v in batch.items() if k != target_key}
        if "boxes" in batch and "labels" in batch:
            boxes, labels = batch["boxes"], batch["labels"]
        elif target_key in batch:
            boxes, labels = _split_targets(batch[target_key])
        else:
            raise KeyError(f"RobustTaskAdapter: a detection batch needs 'boxes' and 'labels' or "
                           f"{target_key!r} (one dict per image); keys {sorted(batch)}")
        images = batch[image_key]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images = batch[0]
        boxes, labels = _split_targets(batch[1])
        out = dict(zip(keys[2:], batch[2:]))
    else:
        raise TypeError("RobustTaskAdapter: a detection batch must be a tuple (images, targets) or a dict "
                        f"with {image_key!r} and 'boxes' + 'labels', got {type(batch).__name__}")
    if isinstance(images, (list, tuple)):
        shapes = {tuple(i.shape) for i in images if isinstance(i, Tensor)}
        if len(shapes) != 1 or not all(isinstance(i, Tensor) for i in images):
            raise ValueError(f"RobustTaskAdapter: detection images must be tensors of one size to be "
                             f"stacked, got sizes {sorted(shapes)}")
        images = torch.stack(list(images))
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"RobustTaskAdapter: detection images must be [B, C, H, W], got {got}")
    boxes, labels = list(boxes), list(labels)
    if len(boxes) != images.shape[0] or len(labels) != images.shape[0]:
        raise ValueError(f"RobustTaskAdapter: {len(boxes)} targets for {images.shape[0]} images")
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        if not (isinstance(b, Tensor) and isinstance(lab, Tensor) and b.ndim == 2 and b.shape[1] == 4
                and lab.ndim == 1 and lab.shape[0] == b.shape[0]):
            got = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in (b, lab)]
            raise ValueError(f"RobustTaskAdapter: detection target {i} must have 'boxes' [N, 4] (xyxy "
                             f"pixels) and 'labels' [N]; got {got[0]} and {got[1]}")
    out.pop(image_key, None)
    out.update({"image": images, "boxes": boxes, "labels": labels})  # the evaluator reads "image"
    return out


def _split_targets(targets: Any) -> tuple[list[Any], list[Any]]:
    """``B`` dicts ``{"boxes", "labels"}`` -> ``(boxes list, labels list)`` (else a clear error)."""
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, Mapping) for t in targets):
        raise ValueError("RobustTaskAdapter: detection targets must be one dict per image with 'boxes' "
                         f"[N, 4] and 'labels' [N] (torchvision's form), got {type(targets).__name__}")
    missing = [i for i, t in enumerate(targets) if "boxes" not in t or "labels" not in t]
    if missing:
        raise ValueError(f"RobustTaskAdapter: detection targets {missing} lack 'boxes' or 'labels'")
    return [t["boxes"] for t in targets], [t["labels"] for t in targets]
