"""Object detection with torchvision detectors (Faster R-CNN, RetinaNet, FCOS, or a tiny FCOS).

Batch (the contract in :mod:`datamodules.info`): ``image`` ``[B, C, H, W]`` in
``data_info.bounds``; ``boxes`` a list of ``B`` float32 ``[N_i, 4]`` xyxy absolute pixels;
``labels`` a list of ``B`` int64 ``[N_i]`` in ``[0, C)`` (no background class); ``N_i`` may be 0.

The network is a :class:`~lightning_modules.nets.detectors.DetectorWrapper` around the detector
named by ``net.class_path`` (a torchvision builder or class, built with ``weights=None,
weights_backbone=None``). Its output, a :class:`~lightning_modules.nets.detectors.DetectionOutput`,
holds the batch's backbone features; losses and detections are computed from it on demand:

* ``per_sample_loss`` = the sum of the detector's training losses *per image* (exact, see
  :mod:`lightning_modules.nets.detectors` for how and what it costs), differentiable w.r.t. the
  input — the attack loss and AMAT's (per-sample, masked) loss;
* ``batch_loss`` = the detector's loss of the whole batch as torchvision normalises it — what
  clean training, SAT, the fast-AT methods, TRADES' natural term and denoise train on;
* ``violation_statistic`` = that loss, ``violation_direction = "above"`` (Ma & Liang's AMAT
  for detection: violated when the loss exceeds a threshold computed from the clean model's
  training losses; AMAT computes it, ``violation_threshold`` is only the default for callers
  without one);
* metrics: ``map`` (mAP@[.5:.95]), ``map_50``, ``map_75`` (torchmetrics, pycocotools backend),
  from eval-mode post-processed detections.

``output_divergence`` (TRADES' robust term) has no canonical form for detectors. Our choice:

* single-stage detectors (FCOS, RetinaNet, the tiny default): the binary KL between the clean
  and the adversarial per-location class probabilities (and FCOS centre-ness), summed over
  classes and averaged over locations — the dense analogue of TRADES' KL, differentiable w.r.t.
  both outputs. Box regression is not in it (no distribution to compare);
* two-stage and other detectors: the detection loss of the adversarial output against the
  clean output's detections with score ``>= pseudo_label_score`` as pseudo-targets (detached:
  only the adversarial side gets gradients). Early in training, when the clean model detects
  nothing, this pulls the adversarial output towards "no object".
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from attacks.losses import bernoulli_kl
from attacks.options import check_choice
from datamodules.info import DataInfo
from lightning_modules.base import TaskModule
from lightning_modules.fault_tolerance import NonFiniteMode
from lightning_modules.methods.base import TrainingMethod
from lightning_modules.metrics.detection import DetectionMAP, per_image_ap50
from lightning_modules.nets.builder import import_object
from lightning_modules.nets.detectors import DetectionOutput, DetectorWrapper, build_detector
from lightning_modules.nets.weights import load_weights, pop_weight_options
from lightning_modules.optimization import OptimizerName, SchedulerName
from lightning_modules.panels import BoxesPanel
from lightning_modules.protocol import Batch

Divergence = Literal["auto", "dense", "pseudo_label"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)


def detection_loss_inputs(output: DetectionOutput, batch: Batch, inputs: str = "default",
                          who: str = "DetectionModule") -> tuple[Tensor, Tensor]:
    """The named detection attack losses' ``(logits, labels)`` from a ``DetectionOutput`` and a
    batch with ``boxes`` / ``labels`` lists (see :meth:`DetectionModule.attack_loss_inputs`; the
    own-model path's :class:`callbacks.RobustTaskAdapter` uses it too)."""
    if inputs == "matched":
        return output.family.matched_predictions(output, batch["boxes"], batch["labels"])
    if inputs != "default":
        raise ValueError(f"{who}: unknown attack loss inputs {inputs!r}; expected 'default' or 'matched'")
    dets = output.family.detections(output)
    n = max([1] + [d["scores"].numel() for d in dets])
    pad = [n - d["scores"].numel() for d in dets]
    scores = torch.stack([F.pad(d["scores"], (0, p)) for d, p in zip(dets, pad)])
    labels = torch.stack([F.pad(d["labels"].long(), (0, p), value=-1) for d, p in zip(dets, pad)])
    return scores, labels


class DetectionModule(TaskModule):
    """Object detection task module.

    Args:
        net, data_info, method, optimizer, lr, weight_decay, momentum, scheduler, mean, std,
        nonfinite, max_nonfinite_skips, corruption_augment:
            see :class:`lightning_modules.base.TaskModule`. ``net`` names a detector:
            ``{class_path: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn,
            init_args: {...}}`` (any torchvision detector builder or class, or
            ``lightning_modules.nets.detectors.tiny_fcos`` / ``tiny_fasterrcnn``, the default
            being ``tiny_fcos``). ``num_classes`` (plus a background slot where the model
            needs one), ``min_size`` / ``max_size`` (the data's image size: no rescaling) and
            an identity ``image_mean`` / ``image_std`` (our normalization is the first layer)
            are filled in; ``weights`` / ``weights_backbone`` are always ``None``.
        label_offset: 1 if the detector reserves class 0 for background; ``None`` = from the
            detector type (R-CNN family and SSD: 1; FCOS, RetinaNet: 0).
        sampling_seed: seed of the detector's random proposal sampling (Faster R-CNN) when the
            loss is computed in eval mode (attacks, validation): the same input always gives
            the same loss and the global RNG is untouched. In train mode the global RNG is used,
            as torchvision does. ``None``: global RNG always.
        violation_threshold: default per-image loss threshold of :meth:`is_violated`.
        divergence: TRADES' divergence, ``"auto"`` (dense for single-stage detectors,
            pseudo-labels otherwise), ``"dense"`` or ``"pseudo_label"``.
        pseudo_label_score: score above which clean detections become pseudo-targets.
    """

    task = "detection"
    default_net = "lightning_modules.nets.detectors.tiny_fcos"
    violation_direction = "above"
    #: mAP@[.5:.95], the COCO summary number (``map_50`` is reported beside it); the one
    #: metric of the robust area, the checkpoint and the paper suites
    main_metric: ClassVar[str] = "map"
    #: ``per_sample_metric`` is the image's AP@0.5, not its mAP: its name in the per-sample file
    per_sample_metric_name: ClassVar[str] = "ap50"
    panel = BoxesPanel()

    def __init__(
        self,
        net: dict | None = None,
        data_info: DataInfo | None = None,
        method: TrainingMethod | None = None,
        label_offset: int | None = None,
        sampling_seed: int | None = 0,
        violation_threshold: float = 1.5,
        divergence: Divergence = "auto",
        pseudo_label_score: float = 0.5,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: SchedulerName = "none",
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        nonfinite: NonFiniteMode = "error",
        max_nonfinite_skips: int | None = None,
        corruption_augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net=net, data_info=data_info, method=method, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, momentum=momentum, scheduler=scheduler,
                         mean=mean, std=std,
                         nonfinite=nonfinite, max_nonfinite_skips=max_nonfinite_skips,
                         corruption_augment=corruption_augment)
        owner = type(self).__name__
        info = self.data_info
        if info.num_classes < 1:
            raise ValueError(f"{owner} needs data_info.num_classes >= 1 (object classes, no "
                             f"background), got {info.num_classes}")
        if info.spatial_dims != 2:
            raise ValueError(f"{owner} handles 2-D images; data_info.spatial_dims={info.spatial_dims}")
        check_choice(f"{owner}.divergence", divergence, DIVERGENCES)
        if label_offset not in (None, 0, 1):
            raise ValueError(f"{owner}.label_offset must be None, 0 or 1, got {label_offset!r}")
        self.num_classes = info.num_classes
        self.label_offset_arg = label_offset
        self.sampling_seed = sampling_seed
        self.violation_threshold = float(violation_threshold)
        self.divergence = divergence
        self.pseudo_label_score = float(pseudo_label_score)
        self.build()

    # ------------------------------------------------------------------ construction
    def output_channels(self) -> int:
        return self.num_classes

    def build_network(self, spec: dict | None) -> nn.Module:
        if isinstance(spec, nn.Module):
            return spec  # a built detector wrapper from a script
        spec = dict(spec or {})
        init = dict(spec.get("init_args") or {})
        weights = pop_weight_options(spec, {})  # net.weights_path / net.init_args.weights_path
        weights = weights if weights[0] else pop_weight_options(init, {})
        spec["init_args"] = init
        unknown = set(spec) - {"class_path", "init_args"}
        if unknown:
            raise ValueError(f"net has unknown keys {sorted(unknown)}; expected class_path, init_args")
        class_path = spec.get("class_path") or self.default_net
        builder = import_object(class_path, "net.class_path")
        info = self.data_info
        detector, offset, takes_channels = build_detector(
            builder, self.num_classes, info.in_channels, info.image_size,
            dict(spec.get("init_args") or {}), self.label_offset_arg)
        if not takes_channels and info.in_channels not in (1, 3):
            raise ValueError(
                f"net.class_path={class_path!r} expects 3-channel images and the data has "
                f"{info.in_channels}; use a detector that takes in_channels (tiny_fcos) or 1/3 "
                "channel data"
            )
        if weights[0] is not None:
            load_weights(detector, weights[0], weights[1], "net")
        return DetectorWrapper(detector, label_offset=offset,
                               repeat_channels=not takes_channels and info.in_channels == 1,
                               sampling_seed=self.sampling_seed)

    # ------------------------------------------------------------------ helpers
    def attack_loss_inputs(self, output: Any, batch: Batch, inputs: str = "default") -> tuple[Tensor, Tensor]:
        """``inputs="default"``: the scores of the eval-mode detections ``[B, N]``
        (differentiable, zero-padded to the most detections in the batch) and their labels
        ``[B, N]`` (``-1`` in the padding). ``inputs="matched"`` (DAG): the class logits and
        decoded boxes of the locations / proposals ``[B, L, K + 4]`` and the ground-truth class
        and box each covers ``[B, L, 5]`` (class ``-1`` where none), from
        the detector family's ``matched_predictions``."""
        return detection_loss_inputs(self._output(output), batch, inputs)

    @classmethod
    def _detections(cls, output: Any) -> list[dict[str, Tensor]]:
        """The output's detections, detached (asked of its detector family)."""
        out = cls._output(output)
        return out.family.detached_detections(out)

    @staticmethod
    def _output(output: Any) -> DetectionOutput:
        if not isinstance(output, DetectionOutput):
            raise ValueError(
                "detection expects the DetectionOutput of a DetectorWrapper net, got "
                f"{type(output).__name__}"
            )
        return output

    # ------------------------------------------------------------------ protocol
    def per_sample_loss(self, output: Any, batch: Batch) -> Tensor:
        """``[B]``: sum of the detector's training losses of each image."""
        out = self._output(output)
        return out.family.loss(out, batch["boxes"], batch["labels"])

    def batch_loss(self, output: Any, batch: Batch) -> Tensor:
        """``[]``: the detector's training loss of the batch as torchvision reduces it
        (the detector family's ``batch_loss``), not the mean of :meth:`per_sample_loss`.

        Why: FCOS normalises its summed terms by the foreground locations of the *batch*
        (Faster R-CNN by the anchors / proposals sampled in the batch), so in torchvision an
        image with many objects weighs more than one with few; the mean of per-image losses
        weighs every image alike. On a batch with uneven object counts the two differ in value
        and gradient direction (measured: ``benchmarks/detection_batch_loss.py``, numbers in
        ``docs/fast_at.md``). Training follows torchvision; attacks and AMAT keep the exact
        per-image losses ``[B]``."""
        out = self._output(output)
        return out.family.batch_loss(out, batch["boxes"], batch["labels"])

    def violation_statistic(self, output: Any, batch: Batch) -> Tensor:
        """The per-image loss ``[B]`` (violated when *above* the threshold)."""
        with torch.no_grad():
            return self.per_sample_loss(output, batch).detach()

    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> Tensor:
        thr = self.violation_threshold if threshold is None else float(threshold)
        return self.violation_statistic(output, batch) > thr

    def per_sample_metric(self, output: Any, batch: Batch) -> Tensor:
        """``[B]`` AP@0.5 of each image (:func:`lightning_modules.metrics.detection.
        per_image_ap50`; NaN for an image without objects). Why AP and not recall: it is the
        per-image form of the ``map_50`` the task reports, so a candidate that adds confident
        false positives of an object's class counts as worse, and it needs no score threshold."""
        preds = self._detections(output)
        target = [{"boxes": b.detach().to(p["boxes"].device).float().reshape(-1, 4),
                   "labels": lab.detach().to(p["boxes"].device).long().reshape(-1)}
                  for b, lab, p in zip(batch["boxes"], batch["labels"], preds)]
        return per_image_ap50(preds, target)

    # ------------------------------------------------------------------ dataset-level evidence
    def evidence_spec(self) -> dict[str, Any]:
        """What :meth:`sample_evidence` keeps for the bootstrap over images of ``map``,
        ``map_50`` and ``map_75`` (:mod:`callbacks.dataset_metrics`): each image's detections
        matched to its ground truth at COCO's IoU thresholds."""
        from lightning_modules.metrics.detection import coco_thresholds

        iou, rec = coco_thresholds()
        return {"kind": "matches", "metrics": ["map", "map_50", "map_75"],
                "info": {"iou_thresholds": iou, "rec_thresholds": rec, "max_detections": 100}}

    def sample_evidence(self, output: Any, batch: Batch) -> list[list[list[float]]]:
        """Per image ``[[class, score, tp_bits], …]``: its detections as the ``map`` of
        :meth:`update_metrics` matches them (:func:`lightning_modules.metrics.detection.coco_matches`)."""
        from lightning_modules.metrics.detection import coco_matches, coco_thresholds

        iou, _ = coco_thresholds()
        preds = self._detections(output)
        return [coco_matches(p, {"boxes": b, "labels": lab}, iou)[0]
                for p, b, lab in zip(preds, batch["boxes"], batch["labels"])]

    def evidence_targets(self, batch: Batch) -> list[list[list[int]]]:
        """Per image ``[[class, count], …]``: its ground-truth boxes per class."""
        out = []
        for lab in batch["labels"]:
            classes, counts = torch.unique(lab.detach().reshape(-1).long().cpu(), return_counts=True)
            out.append([[int(c), int(k)] for c, k in zip(classes.tolist(), counts.tolist())])
        return out

    def output_divergence(self, out_adv: Any, out_clean: Any) -> Tensor:
        """``[B]`` divergence of the adversarial from the clean output (see module docstring)."""
        adv, clean = self._output(out_adv), self._output(out_clean)
        dense_ok = adv.family.dense_heads
        kind = self.divergence if self.divergence != "auto" else ("dense" if dense_ok else "pseudo_label")
        if kind == "dense":
            if not dense_ok:
                raise ValueError(
                    f"DetectionModule.divergence='dense' needs a single-stage detector (FCOS, "
                    f"RetinaNet); this one is {adv.family.name!r}: use 'pseudo_label'"
                )
            ha, hc = adv.family.head_outputs(adv), clean.family.head_outputs(clean)
            div = bernoulli_kl(hc["cls_logits"], ha["cls_logits"]).sum(dim=2).mean(dim=1)
            if "bbox_ctrness" in ha:
                div = div + bernoulli_kl(hc["bbox_ctrness"], ha["bbox_ctrness"]).sum(dim=2).mean(dim=1)
            return div
        dets = clean.family.detached_detections(clean)
        boxes = [d["boxes"][d["scores"] >= self.pseudo_label_score] for d in dets]
        labels = [d["labels"][d["scores"] >= self.pseudo_label_score] for d in dets]
        return adv.family.loss(adv, boxes, labels)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"detection": DetectionMAP()}, compute_groups=False)

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        preds = self._detections(output)
        target = [{"boxes": b.detach().to(p["boxes"].device).float().reshape(-1, 4),
                   "labels": lab.detach().to(p["boxes"].device).long().reshape(-1)}
                  for b, lab, p in zip(batch["boxes"], batch["labels"], preds)]
        for name in metrics.keys(keep_base=True):
            metrics[name].update(preds, target)

    def predict_for_display(self, output: Any) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": [N, 4] xyxy pixels, "labels": [N] in [0, C), "scores": [N]}``."""
        return self._detections(output)


