"""Detector families: how each kind of detector gives per-image losses, detections and the DAG
inputs. One strategy object per family, chosen once when the wrapper is built
(:func:`family_for`); the wrapper and the output ask it and never switch on the detector's type.

* :class:`RcnnFamily` (torchvision's ``GeneralizedRCNN``: Faster / Mask / Keypoint R-CNN): the
  RPN and the RoI heads run per image on that image's slice of the shared features.
* :class:`FcosFamily` and :class:`RetinaNetFamily` (:class:`DenseFamily`): the dense heads run
  once for the batch; only the (cheap) loss computation loops over images.
* :class:`GenericFamily`: any other detector in torchvision's call convention, one full forward
  per image (cost: ``B`` forwards instead of one).

Each image's loss is exactly what torchvision returns for a batch holding only that image.
Random proposal sampling runs on a forked RNG seeded with the output's ``sampling_seed`` (when
not ``None``), so the global RNG stream is left as it was. Only the flags that select losses
(the detector, its RPN and RoI heads) are switched to train mode; norm and dropout layers keep
the caller's mode, and every flag is restored.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes

from lightning_modules.nets.detection_output import DetectionOutput, Targets
from lightning_modules.nets.detector_family import DetectorFamily, stack_terms
from lightning_modules.nets.detector_ops import (
    call_detector,
    checked_detections,
    checked_losses,
    logic_flags,
    match_by_centre,
    match_by_iou,
    matched_row,
    pad_matched,
    set_flags,
)


class TorchvisionFamily(DetectorFamily):
    """Shared by torchvision's detectors: one transform + backbone pass for the batch."""

    def run(self, z: Tensor, sampling_seed: int | None) -> DetectionOutput:
        det: Any = self.detector
        transform = det.transform
        # Eval-mode transform: no random choice among min sizes, and postprocess rescales.
        with set_flags([transform], False):
            image_list, _ = transform(list(z))
        features = det.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        return DetectionOutput(self, z, image_list, features, sampling_seed)

    @staticmethod
    def parts(out: DetectionOutput) -> tuple[ImageList, OrderedDict[str, Tensor]]:
        """``(image_list, features)`` of an output made by :meth:`run`."""
        if out.image_list is None or out.features is None:
            raise ValueError("detection: this output has no backbone features (it was not made by a "
                             "FCOS, RetinaNet or R-CNN detector's wrapper)")
        return out.image_list, out.features

    @staticmethod
    def scaled_targets(targets: Targets, out: DetectionOutput) -> Targets:
        """Boxes in the transformed image frame (identity when the transform does not rescale)."""
        image_list, _ = TorchvisionFamily.parts(out)
        scaled = []
        for t, new, old in zip(targets, image_list.image_sizes, out.original_sizes):
            boxes = t["boxes"] if tuple(new) == tuple(old) else resize_boxes(t["boxes"], old, new)
            scaled.append({"boxes": boxes, "labels": t["labels"]})
        return scaled

    def finish(self, dets: Targets, out: DetectionOutput) -> Targets:
        """Detections in the transformed frame -> the delivered frame, labels in ``[0, C)``."""
        image_list, _ = self.parts(out)
        transform = self.detector.transform
        with set_flags([transform], False):
            dets = transform.postprocess(dets, image_list.image_sizes, out.original_sizes)
        return [{"boxes": d["boxes"], "scores": d["scores"],
                 "labels": d["labels"] - self.label_offset} for d in dets]


class RcnnFamily(TorchvisionFamily):
    """Two-stage R-CNN detectors: RPN and RoI heads per image on its feature slice."""

    name = "rcnn"
    detector_type = GeneralizedRCNN

    def loss_flags(self) -> list[nn.Module]:
        det: Any = self.detector
        return [det, det.rpn, det.roi_heads]

    def image_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        det: Any = self.detector
        image_list, features = self.parts(out)
        tgt = self.scaled_targets(targets, out)
        per_image = []
        with set_flags(self.loss_flags(), True):
            for i in range(len(out)):
                il = ImageList(image_list.tensors[i:i + 1], [image_list.image_sizes[i]])
                f = OrderedDict((k, v[i:i + 1]) for k, v in features.items())
                proposals, rpn_losses = det.rpn(il, f, [tgt[i]])
                _, roi_losses = det.roi_heads(f, proposals, il.image_sizes, [tgt[i]])
                per_image.append({**rpn_losses, **roi_losses})
        return stack_terms(per_image, out.z.new_zeros(()))

    def batch_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        det: Any = self.detector
        image_list, features = self.parts(out)
        tgt = self.scaled_targets(targets, out)
        with set_flags(self.loss_flags(), True):
            proposals, rpn_losses = det.rpn(image_list, features, tgt)
            _, roi_losses = det.roi_heads(features, proposals, image_list.image_sizes, tgt)
        return {**rpn_losses, **roi_losses}

    def postprocess(self, out: DetectionOutput) -> Targets:
        det: Any = self.detector
        image_list, features = self.parts(out)
        with set_flags([*self.loss_flags(), det.transform], False):
            proposals, _ = det.rpn(image_list, features)
            dets, _ = det.roi_heads(features, proposals, image_list.image_sizes)
        return self.finish(dets, out)

    def matched(self, out: DetectionOutput, targets: Targets, iou_thresh: float) -> tuple[Tensor, Tensor]:
        det: Any = self.detector
        image_list, features = self.parts(out)
        targets = self.scaled_targets(targets, out)
        with set_flags(self.loss_flags(), False):
            proposals, _ = det.rpn(image_list, features)
            heads = det.roi_heads
            feats = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
            class_logits, box_regression = heads.box_predictor(feats)
            decoded = heads.box_coder.decode(box_regression, proposals)  # [sum N, K, 4]
        preds, tgts = [], []
        start = 0
        for p, t in zip(proposals, targets):
            cls, gt = match_by_iou(p.detach(), t, iou_thresh)
            z, b = class_logits[start:start + len(p)], decoded[start:start + len(p)]
            start += len(p)
            b = b[torch.arange(len(p), device=b.device), cls.clamp_min(0)]  # unmatched: ignored
            preds.append(torch.cat([z, b], dim=1))
            tgts.append(matched_row(cls, gt))
        return pad_matched(preds, tgts)


class DenseFamily(TorchvisionFamily):
    """Single-stage detectors with dense heads (run once for the batch) and anchors / points."""

    dense_heads = True

    @abstractmethod
    def compute_loss(self, targets: Targets, heads: dict[str, Tensor], anchors: list[Tensor],
                     feats: list[Tensor]) -> dict[str, Tensor]:
        """The detector's own ``compute_loss`` on these images' targets, heads and anchors."""

    @abstractmethod
    def decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        """One image's box regression ``[L, 4]`` at its anchors ``[L, 4]`` -> boxes ``[L, 4]``."""

    @abstractmethod
    def match(self, anchors: Tensor, target: dict[str, Tensor], iou_thresh: float) -> tuple[Tensor, Tensor]:
        """The ground-truth class ``[L]`` and box ``[L, 4]`` each location covers."""

    def head_outputs(self, out: DetectionOutput) -> dict[str, Tensor]:
        if out.heads is None:
            _, features = self.parts(out)
            out.heads = self.detector.head(list(features.values()))
        return out.heads

    def anchors(self, out: DetectionOutput) -> list[Tensor]:
        """Per image ``[L, 4]``: the anchors (FCOS: the points' anchor boxes) of every location."""
        image_list, features = self.parts(out)
        return self.detector.anchor_generator(image_list, list(features.values()))

    def image_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        tgt = self.scaled_targets(targets, out)
        feats = list(self.parts(out)[1].values())
        heads, anchors = self.head_outputs(out), self.anchors(out)
        per_image = [self.compute_loss([tgt[i]], {k: v[i:i + 1] for k, v in heads.items()},
                                       [anchors[i]], feats) for i in range(len(out))]
        return stack_terms(per_image, out.z.new_zeros(()))

    def batch_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        feats = list(self.parts(out)[1].values())
        return dict(self.compute_loss(self.scaled_targets(targets, out), self.head_outputs(out),
                                      self.anchors(out), feats))

    def postprocess(self, out: DetectionOutput) -> Targets:
        image_list, features = self.parts(out)
        feats = list(features.values())
        heads, anchors = self.head_outputs(out), self.anchors(out)
        hw = [f.shape[2] * f.shape[3] for f in feats]
        per_loc = heads["cls_logits"].shape[1] // sum(hw)  # anchors per location
        levels = [n * per_loc for n in hw]
        split = {k: list(v.split(levels, dim=1)) for k, v in heads.items()}
        split_anchors = [list(a.split(levels)) for a in anchors]
        dets = self.detector.postprocess_detections(split, split_anchors, image_list.image_sizes)
        return self.finish(dets, out)

    def matched(self, out: DetectionOutput, targets: Targets, iou_thresh: float) -> tuple[Tensor, Tensor]:
        targets = self.scaled_targets(targets, out)
        heads = self.head_outputs(out)
        preds, tgts = [], []
        for i, (a, t) in enumerate(zip(self.anchors(out), targets)):
            cls, gt = self.match(a, t, iou_thresh)
            b = self.decode(heads["bbox_regression"][i], a)
            preds.append(torch.cat([heads["cls_logits"][i], b], dim=1))
            tgts.append(matched_row(cls, gt))
        return torch.stack(preds), torch.stack(tgts)


class FcosFamily(DenseFamily):
    """FCOS (Tian et al. 2019): anchor points, loss normalised by the batch's foreground."""

    name = "fcos"
    detector_type = FCOS

    def compute_loss(self, targets: Targets, heads: dict[str, Tensor], anchors: list[Tensor],
                     feats: list[Tensor]) -> dict[str, Tensor]:
        levels = [f.shape[2] * f.shape[3] for f in feats]
        return dict(self.detector.compute_loss(targets, heads, anchors, levels))

    def decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.detector.box_coder.decode(regression, anchors)

    def match(self, anchors: Tensor, target: dict[str, Tensor], iou_thresh: float) -> tuple[Tensor, Tensor]:
        return match_by_centre(anchors, target)


class RetinaNetFamily(DenseFamily):
    """RetinaNet (Lin et al. 2017, focal loss): anchors matched by IoU."""

    name = "retinanet"
    detector_type = RetinaNet

    def compute_loss(self, targets: Targets, heads: dict[str, Tensor], anchors: list[Tensor],
                     feats: list[Tensor]) -> dict[str, Tensor]:
        return dict(self.detector.compute_loss(targets, heads, anchors))

    def decode(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.detector.box_coder.decode_single(regression, anchors)

    def match(self, anchors: Tensor, target: dict[str, Tensor], iou_thresh: float) -> tuple[Tensor, Tensor]:
        return match_by_iou(anchors, target, iou_thresh)


class GenericFamily(DetectorFamily):
    """Any detector in torchvision's call convention: one full forward per image for the losses
    (every non-norm, non-dropout module in train mode, since we cannot tell which selects them),
    one eval-mode call for the detections."""

    name = "generic"

    def run(self, z: Tensor, sampling_seed: int | None) -> DetectionOutput:
        return DetectionOutput(self, z, None, None, sampling_seed)

    def image_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        det = self.detector
        with logic_flags(det, True):
            per_image = [checked_losses(call_detector(det, [out.z[i]], [targets[i]]))
                         for i in range(len(out))]
        return stack_terms(per_image, out.z.new_zeros(()))

    def batch_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        with logic_flags(self.detector, True):
            return checked_losses(call_detector(self.detector, list(out.z), targets))

    def postprocess(self, out: DetectionOutput) -> Targets:
        with logic_flags(self.detector, False):
            dets = checked_detections(call_detector(self.detector, list(out.z)), len(out))
        # a generic detector's class logits per detection (optional): DAG's inputs
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - self.label_offset,
                 **({"logits": d["logits"]} if "logits" in d else {})} for d in dets]

    def matched(self, out: DetectionOutput, targets: Targets, iou_thresh: float) -> tuple[Tensor, Tensor]:
        """Its eval-mode detections must carry ``logits`` ``[N, K]`` (column ``j`` = the
        detector's class ``j``, differentiable); each is matched by IoU as R-CNN proposals are."""
        dets = self.detections(out)
        if not all("logits" in d for d in dets):
            raise ValueError(
                "DAG attack losses need the class logits of the detections: a detector that is not "
                "FCOS, RetinaNet or of the R-CNN family must return, in eval mode, 'logits' [N, K] "
                "beside 'boxes', 'scores' and 'labels' in each image's dict")
        k = max(int(d["logits"].shape[1]) for d in dets)
        preds, tgts = [], []
        for i, (d, t) in enumerate(zip(dets, targets)):
            z, b = d["logits"], d["boxes"].float()
            if z.shape[1] != k:
                raise ValueError(f"detection {i}: logits have {z.shape[1]} classes, another image's {k}")
            cls, gt = match_by_iou(b.detach(), t, iou_thresh)
            preds.append(torch.cat([z.float(), b], dim=1))
            tgts.append(matched_row(cls, gt))
        return pad_matched(preds, tgts)


#: the families tried, in order, before :class:`GenericFamily`
FAMILIES: tuple[type[DetectorFamily], ...] = (RcnnFamily, FcosFamily, RetinaNetFamily)


def family_for(detector: nn.Module, label_offset: int = 0) -> DetectorFamily:
    """The strategy for ``detector``: the first of :data:`FAMILIES` whose ``detector_type`` it
    is an instance of, else :class:`GenericFamily`."""
    for cls in FAMILIES:
        if cls.detector_type is not None and isinstance(detector, cls.detector_type):
            return cls(detector, label_offset)
    return GenericFamily(detector, label_offset)
