"""The detector-family strategy: what the wrapper and its output ask of a kind of detector.

:class:`DetectorFamily` is the interface (and the parts every family shares: target conversion,
the seeded loss path, the detections cache); the families themselves are in
:mod:`lightning_modules.nets.detector_families`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_modules.nets.detection_output import DetectionOutput, Targets
from lightning_modules.nets.detector_ops import maybe_fork_rng


def stack_terms(per_image: list[dict[str, Tensor]], zero: Tensor) -> dict[str, Tensor]:
    """Per-image ``{name: []}`` dicts -> ``{name: [B]}`` (a term an image lacks counts 0)."""
    names = list(dict.fromkeys(n for losses in per_image for n in losses))
    return {n: torch.stack([losses.get(n, zero).reshape(()) for losses in per_image]) for n in names}


class DetectorFamily(ABC):
    """The strategy of one kind of detector: reads a :class:`DetectionOutput` of it.

    Args:
        detector: the detector (shared with the wrapper, which owns it as a submodule).
        label_offset: 1 when the detector reserves class 0 for background.
    """

    #: the family's name (messages, ``str(family)``)
    name: ClassVar[str]
    #: the torchvision class this family reads (``None``: any detector)
    detector_type: ClassVar[type[nn.Module] | None] = None
    #: dense per-location class heads (``head_outputs``): TRADES' dense divergence applies
    dense_heads: ClassVar[bool] = False

    def __init__(self, detector: nn.Module, label_offset: int = 0) -> None:
        self.detector = detector
        self.label_offset = int(label_offset)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label_offset={self.label_offset})"

    # ------------------------------------------------------------ per family
    @abstractmethod
    def run(self, z: Tensor, sampling_seed: int | None) -> DetectionOutput:
        """The batch's shared pass on ``z`` ``[B, C', H, W]`` (heads run later, when asked)."""

    @abstractmethod
    def image_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        """Each loss term per image ``{name: [B]}``, targets in the detector's label space."""

    @abstractmethod
    def batch_losses(self, out: DetectionOutput, targets: Targets) -> dict[str, Tensor]:
        """Each loss term of the whole batch ``{name: []}``, reduced as torchvision reduces it in
        training (FCOS divides by the foreground locations of the *batch*, Faster R-CNN by the
        sampled anchors / proposals of the batch, RetinaNet averages its per-image terms)."""

    @abstractmethod
    def postprocess(self, out: DetectionOutput) -> Targets:
        """Eval-mode detections per image, labels in ``[0, C)``."""

    @abstractmethod
    def matched(self, out: DetectionOutput, targets: Targets, iou_thresh: float) -> tuple[Tensor, Tensor]:
        """:meth:`matched_predictions` with targets in the detector's label space."""

    def head_outputs(self, out: DetectionOutput) -> dict[str, Tensor]:
        """Dense head outputs; only single-stage families have them."""
        raise ValueError(f"detection: a {self.name} detector has no dense head outputs "
                         "(FCOS and RetinaNet have)")

    # ------------------------------------------------------------ shared
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

    def per_image_losses(self, out: DetectionOutput, boxes: Sequence[Tensor],
                         labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """``{loss name: [B]}`` for targets in the batch contract (labels in ``[0, C)``). A
        no-grad request for the targets of the last with-grad one reuses it, detached."""
        cache = out.loss_cache
        if (not torch.is_grad_enabled() and cache is not None and cache[0] is boxes
                and cache[1] is labels):
            return {k: v.detach() for k, v in cache[2].items()}
        targets = self.to_detector_targets(boxes, labels, out.z.device)
        if len(targets) != len(out):
            raise ValueError(f"{len(targets)} targets for a batch of {len(out)} images")
        with maybe_fork_rng(out.sampling_seed, out.z.device):
            terms = self.image_losses(out, targets)
        if torch.is_grad_enabled():
            out.loss_cache = (boxes, labels, terms)
        return terms

    def loss(self, out: DetectionOutput, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> Tensor:
        """``[B]``: the sum of the detector's training losses for each image."""
        terms = self.per_image_losses(out, boxes, labels)
        return torch.stack(list(terms.values())).sum(dim=0)

    def batch_loss(self, out: DetectionOutput, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> Tensor:
        """``[]``: the sum of :meth:`batch_losses`. Not the mean of :meth:`loss`: FCOS, for one,
        divides by the foreground locations of the batch, so an image with many objects weighs
        more than one with few (see the task's ``batch_loss``)."""
        targets = self.to_detector_targets(boxes, labels, out.z.device)
        with maybe_fork_rng(out.sampling_seed, out.z.device):
            terms = self.batch_losses(out, targets)
        return torch.stack([v.reshape(()) for v in terms.values()]).sum()

    def detections(self, out: DetectionOutput) -> Targets:
        """Eval-mode detections per image (cached on ``out``): ``boxes`` ``[N, 4]`` xyxy pixels,
        ``scores`` ``[N]``, ``labels`` ``[N]`` in ``[0, C)`` (a generic detector's ``logits``
        ``[N, K]`` too, where it returns them)."""
        if out.cached_detections is None:
            out.cached_detections = self.postprocess(out)
        return out.cached_detections

    def detached_detections(self, out: DetectionOutput) -> Targets:
        """:meth:`detections` (``boxes``, ``scores``, ``labels``) with every tensor detached
        (for metrics, displays, pseudo-labels)."""
        return [{k: d[k].detach() for k in ("boxes", "scores", "labels")} for d in self.detections(out)]

    def matched_predictions(self, out: DetectionOutput, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                            iou_thresh: float = 0.5) -> tuple[Tensor, Tensor]:
        """Class logits and boxes of the eval-mode locations / proposals / detections, with the
        ground-truth object each one covers: the inputs of DAG-style attack losses (Xie et al.
        2017, "Adversarial Examples for Semantic Segmentation and Object Detection").

        Args:
            boxes, labels: ground truth in the batch contract (xyxy pixels, labels ``[0, C)``).
            iou_thresh: Faster R-CNN / RetinaNet / generic: a proposal / anchor / detection is
                matched to the GT box it overlaps most when that IoU is ``>= iou_thresh``.

        Returns:
            ``(pred [B, L, K + 4], target [B, L, 5])``. ``pred[..., :K]``: the class head's raw
            logits at every location (FCOS: ``K = C`` sigmoid logits per anchor point;
            RetinaNet: per anchor; Faster R-CNN: ``K = C + 1`` softmax logits per eval-mode RPN
            proposal, zero-padded to the most proposals in the batch; generic: the ``logits``
            of its detections); ``pred[..., K:]``: the location's decoded box (xyxy pixels;
            Faster R-CNN: the box regressed for the matched class). ``target[..., 0]``: the
            matched object's class in the head's index space (``label + label_offset``),
            ``-1`` where nothing is matched (or padding); ``target[..., 1:]``: its GT box (0
            where unmatched). FCOS matches a location to the smallest GT box that contains its
            centre (FCOS's own rule without centre sampling and scale ranges).
            Differentiable w.r.t. the input.
        """
        return self.matched(out, self.to_detector_targets(boxes, labels, out.z.device), iou_thresh)
