"""Use :class:`callbacks.AdversarialEvaluation` on your own LightningModule.

medrobust's task modules implement :class:`lightning_modules.protocol.RobustTask`; a module of
your own does not need to. Give it a ``robust_task`` attribute, a :class:`RobustTaskAdapter`
built from three things — the model an attacker faces, a per-sample loss, the metrics — and the
callback evaluates it (clean, every attack × ε, the per-sample worst case, ``robustness.json``,
the curve)::

    import torch.nn.functional as F
    from torchmetrics.classification import MulticlassAccuracy
    from callbacks import AdversarialEvaluation, RobustTaskAdapter

    class MyModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = MyNet()            # images in [0, 1] → logits [B, K]
            self.robust_task = RobustTaskAdapter(
                self,
                model=lambda: self.model,   # or the module itself
                per_sample_loss=lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
                metrics={"accuracy": MulticlassAccuracy(num_classes=K)},
                bounds=(0.0, 1.0),          # the range attacks clamp to; ε is in these units
            )

    trainer = L.Trainer(callbacks=[AdversarialEvaluation(eps=[2/255, 4/255])])
    trainer.fit(MyModule(), train_loader, val_loader)   # tuple batches (x, y) are fine

Batches may be tuples ``(x, y)`` (as from a ``TensorDataset``) or dicts: the adapter turns a
tuple into ``{keys[0]: x, keys[1]: y}`` (``keys=("image", "label")`` by default). Per-sample
loss and metrics receive ``(output, target)`` with ``target = batch[keys[1]]``.

How the per-sample worst case is judged: by ``per_sample_metric(output, target) -> Tensor[B]``,
the main metric on each sample alone, in the direction of ``main_metric`` (for example per-image
Dice, or radial error); with ``task="classification"`` (the default) it defaults to correct
(1) / wrong (0). Without one, the evaluator falls back to ``is_violated`` (then the loss), and
says so in the record's ``ensemble_rule``.

Detection (``task="detection"``): ``model`` is a detector in torchvision's call convention —
``model(images)`` with a list of ``[C, H, W]`` images returns, in eval mode, one dict per image
with ``boxes`` ``[N, 4]`` (xyxy pixels), ``scores`` ``[N]``, ``labels`` ``[N]``;
``model(images, targets)`` returns, in train mode, a dict of scalar loss terms. The adapter wraps
it in :class:`~lightning_modules.nets.detectors.DetectorWrapper` (only the detector's loss
flags switch; BatchNorm / Dropout stay as the attack sets them), so ``per_sample_loss`` and
``metrics`` may be ``None``: the detector's own training loss of each image, and
``DetectionMAP`` (``map``, ``map_50``, ``map_75``); the per-sample metric is each image's
AP@0.5 and an image is broken when its loss exceeds ``violation_threshold``. DAG's members need
class logits where the objects are: FCOS, RetinaNet and the R-CNN family give them from their
heads; any other detector returns ``logits`` ``[N, K]`` with its eval-mode detections. Targets
are one dict per image, ``boxes`` ``[N_i, 4]`` and ``labels`` ``[N_i]`` in the detector's own
label convention (nothing is shifted); batches are ``(images, targets)`` or a dict with
``image``, ``boxes`` and ``labels`` (medrobust's detection datamodules). A callable of your own
(loss, metric, violation test) receives the eval-mode detections and the targets.

    self.robust_task = RobustTaskAdapter(self, self.detector, None, None, task="detection")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from datamodules.info import TASKS, DataInfo


class RobustTaskAdapter:
    """:class:`~lightning_modules.protocol.RobustTask` for a LightningModule of your own.

    Args:
        module: your LightningModule (logging, device, rank come from it).
        model: the ``nn.Module`` mapping images ``[B, C, *spatial]`` in ``bounds`` to the
            output, or a zero-argument callable returning it (so it is looked up when needed).
        per_sample_loss: ``(output, target) -> Tensor[B]``, differentiable w.r.t. the input
            (the attacks ascend it). Detection: ``None`` = the detector's own loss per image.
        metrics: torchmetrics, ``{name: Metric}`` or a ``MetricCollection``, updated with
            ``(output, target)`` (a fresh copy per attack × ε). Detection: ``None`` = mAP.
        task: a medrobust task name (``classification``…); decides the default violation test
            and the robust-area metric's direction.
        bounds: the images' value range; attacks keep ``x_adv`` inside it.
        keys: the dict keys a tuple batch is given (image, target); default ``("image",
            "label")``, detection ``("image", "targets")``.
        is_violated: ``(output, target) -> bool[B]``; default for classification: arg-max ≠
            label (multi-dimensional outputs: ``argmax(dim=1)``).
        method: the name written as ``method`` in ``robustness.json``.
        prepare_metric_input: maps the output before ``metric.update`` (e.g. softmax); default
            identity.
        main_metric: the metric of the robust area (default: the first of ``metrics``); its
            direction is the torchmetrics object's ``higher_is_better``.
        panel: how example panels draw predictions (:mod:`lightning_modules.panels`; default:
            the built-in panel of ``task``).
        per_sample_metric: ``(output, target) -> Tensor[B]``, the main metric of each sample
            (higher or lower is better as ``main_metric``'s ``higher_is_better`` says); default
            for classification: 1.0 where the arg-max equals the label, else 0.0.
        num_classes: the number of classes (classification: logits ``[B, K]``; segmentation:
            ``[B, K, *spatial]``); the ``standard`` classification suite adds its targeted
            members with ``>= 4``. ``None``: read from a metric of ``metrics`` that has
            ``num_classes`` (torchmetrics' multi-class metrics do), else unknown.
        attack_loss_inputs: ``(output, target, image) -> (logits, labels)`` for the named attack
            losses of :mod:`attacks.task_losses` (what the named suites use). Default per task:
            classification logits ``[B, K]`` and labels ``[B]``; segmentation logits
            ``[B, K, *spatial]`` and the mask ``[B, *spatial]`` (a ``[B, 1, *spatial]`` mask is
            squeezed); landmarks heatmaps ``[B, L, h, w]`` and targets ``[B, L, 2]`` ``(x, y)``
            image pixels (``[B, L, 3]``: + visibility 1/0), mapped to the heatmap frame when the
            heatmaps are smaller than the image. Detection takes none: its inputs come from
            the wrapped detector (see the module docstring).
        violation_threshold: detection: an image is broken when its loss exceeds this (the
            default of :class:`lightning_modules.DetectionModule`).
    """

    violation_direction = None

    def __init__(
        self,
        module: nn.Module,
        model: nn.Module | Callable[[], nn.Module],
        per_sample_loss: Callable[[Any, Any], Tensor] | None,
        metrics: Mapping[str, Metric] | MetricCollection | None,
        task: str = "classification",
        bounds: tuple[float, float] = (0.0, 1.0),
        keys: Sequence[str] | None = None,
        is_violated: Callable[[Any, Any], Tensor] | None = None,
        method: str = "user",
        prepare_metric_input: Callable[[Any], Any] | None = None,
        main_metric: str | None = None,
        panel: Any = None,
        per_sample_metric: Callable[[Any, Any], Tensor] | None = None,
        num_classes: int | None = None,
        attack_loss_inputs: Callable[[Any, Any, Tensor], tuple[Tensor, Tensor]] | None = None,
        violation_threshold: float = 1.5,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"RobustTaskAdapter.task must be one of {TASKS}, got {task!r}")
        detection = task == "detection"
        keys = keys if keys is not None else (("image", "targets") if detection else ("image", "label"))
        if len(tuple(keys)) < 2:
            raise ValueError(f"RobustTaskAdapter.keys needs (image key, target key), got {keys!r}")
        if not (callable(per_sample_loss) or (detection and per_sample_loss is None)):
            raise TypeError("RobustTaskAdapter.per_sample_loss must be callable (output, target) -> [B]"
                            + ("" if detection else " (None only for task='detection')"))
        if metrics is None and not detection:
            raise TypeError("RobustTaskAdapter.metrics: give {name: torchmetrics.Metric} "
                            "(None only for task='detection', whose default is mAP)")
        if detection and attack_loss_inputs is not None:
            raise ValueError("RobustTaskAdapter(task='detection') takes no attack_loss_inputs: the "
                             "detection losses read the detector itself (see the class docstring)")
        object.__setattr__(self, "_module", module)  # no nn.Module registration (no cycle)
        self._model = model
        self._loss = per_sample_loss
        if metrics is None:
            from lightning_modules.metrics.detection import DetectionMAP

            metrics = {"detection": DetectionMAP()}
        self._metrics = metrics if isinstance(metrics, MetricCollection) else MetricCollection(
            dict(metrics), compute_groups=not detection)
        self.task = task
        #: detection's default violation test: the per-image loss above this (as DetectionModule)
        self.violation_threshold = float(violation_threshold)
        if detection:
            self.violation_direction = "above"
            if per_sample_metric is None:
                #: the per-sample file's column: the image's AP@0.5, not its mAP
                self.per_sample_metric_name = "ap50"
        self._wrapper: Any = None  # detection: the DetectorWrapper around the user's detector
        self.keys = tuple(keys)
        self._is_violated = is_violated
        if per_sample_metric is not None and not callable(per_sample_metric):
            raise TypeError("RobustTaskAdapter.per_sample_metric must be callable (output, target) -> [B]")
        self._metric = per_sample_metric
        self._prepare = prepare_metric_input or (lambda out: out)
        self.data_info = DataInfo(task=task, in_channels=1, bounds=tuple(bounds))
        self.method = type("UserMethod", (), {"name": method})()
        names = list(self._metrics.keys(keep_base=True))
        if detection and main_metric is None and len(names) == 1:
            main_metric = "map"  # what MeanAveragePrecision reports (one object, many values)
        if main_metric is not None and main_metric not in names and not (detection and len(names) == 1):
            raise ValueError(f"RobustTaskAdapter.main_metric={main_metric!r} is not one of the metrics {names}")
        self.main_metric = main_metric or (names[0] if names else "")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"RobustTaskAdapter.num_classes must be an int >= 1, got {num_classes!r}")
        #: number of classes (``None``: unknown); the named suites read it
        self.num_classes = num_classes if num_classes is not None else _classes_of(self._metrics)
        if attack_loss_inputs is not None and not callable(attack_loss_inputs):
            raise TypeError("RobustTaskAdapter.attack_loss_inputs must be callable "
                            "(output, target, image) -> (logits, labels)")
        self._loss_inputs = attack_loss_inputs
        from lightning_modules.panels import panel_for

        self.panel = panel_for(panel if panel is not None else task)

    # -- what the callback reaches through the module ------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # log, device, trainer, global_rank … are the module's
        return getattr(object.__getattribute__(self, "_module"), name)

    def parameters(self) -> Any:
        return self.attack_model().parameters()

    # -- RobustTask ---------------------------------------------------------------------------------
    def attack_model(self) -> nn.Module:
        """The model the attacks face; detection: the user's detector inside a
        :class:`~lightning_modules.nets.detectors.DetectorWrapper` (built once per detector),
        whose output, a ``DetectionOutput``, gives the per-image losses, the detections and
        DAG's matched predictions."""
        model = self._model if isinstance(self._model, nn.Module) else self._model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"RobustTaskAdapter.model must give an nn.Module, got {type(model).__name__}")
        if self.task != "detection":
            return model
        from lightning_modules.nets.detectors import DetectorWrapper

        if isinstance(model, DetectorWrapper):
            return model
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError("RobustTaskAdapter(task='detection'): the detector is needed as an nn.Module; "
                             "a TorchScript detector hides the heads the per-image losses come from")
        if self._wrapper is None or self._wrapper.detector is not model:
            # the user's labels are the detector's own (label_offset 0: nothing shifted); a fixed
            # sampling seed makes Faster R-CNN's eval-mode losses a function of the input
            self._wrapper = DetectorWrapper(model, label_offset=0, sampling_seed=0)
        return self._wrapper

    def as_batch(self, batch: Any) -> dict[str, Any]:
        """A tuple ``(image, target, …)`` as ``{keys[i]: …}``; a dict is checked for the keys.
        Detection: ``{"image": [B, C, H, W], "boxes": [B × [N_i, 4]], "labels": [B × [N_i]]}``
        (see :func:`_detection_batch`)."""
        if self.task == "detection":
            return _detection_batch(batch, self.keys)
        if isinstance(batch, Mapping):
            missing = [k for k in self.keys[:2] if k not in batch]
            if missing:
                raise KeyError(f"RobustTaskAdapter: the batch lacks {missing}; keys {list(self.keys)}")
            return dict(batch)
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return dict(zip(self.keys, batch))
        raise TypeError(
            f"RobustTaskAdapter: a batch must be a tuple (image, target) or a dict with keys "
            f"{list(self.keys)}, got {type(batch).__name__}"
        )

    def _target(self, batch: Mapping[str, Any]) -> Any:
        if self.task == "detection":  # torchvision's targets: one dict per image
            return [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])]
        return batch[self.keys[1]]

    def _user_output(self, output: Any) -> Any:
        """What the user's callables receive: the output itself; detection: the eval-mode
        detections (one dict per image, differentiable; :func:`_detection_output`)."""
        return _detection_output(output).detections if self.task == "detection" else output

    def per_sample_loss(self, output: Any, batch: Mapping[str, Any]) -> Tensor:
        if self._loss is None:  # detection: the detector's own training loss of each image
            return _detection_output(output).loss(batch["boxes"], batch["labels"])
        loss = self._loss(self._user_output(output), self._target(batch))
        if not isinstance(loss, Tensor) or loss.ndim != 1:
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"RobustTaskAdapter.per_sample_loss must return a Tensor[B] "
                             f"(reduction='none'), got {got}")
        return loss

    def is_violated(self, output: Any, batch: Mapping[str, Any], threshold: float | None = None) -> Tensor:
        if self._is_violated is not None:
            return self._is_violated(self._user_output(output), self._target(batch))
        if self.task == "detection":  # DetectionModule's test: the image's loss above a threshold
            thr = self.violation_threshold if threshold is None else float(threshold)
            return self.violation_statistic(output, batch) > thr
        if self.task == "classification" and isinstance(output, Tensor):
            return output.argmax(dim=1) != self._target(batch).reshape(-1).long()
        raise ValueError(f"RobustTaskAdapter(task={self.task!r}) has no violation test: pass "
                         "is_violated=(output, target) -> Bool[B] (True where the sample counts as broken)")

    def violation_statistic(self, output: Any, batch: Mapping[str, Any]) -> Tensor:
        with torch.no_grad():
            return self.per_sample_loss(output, batch).detach()

    def per_sample_metric(self, output: Any, batch: Mapping[str, Any]) -> Tensor:
        target = self._target(batch)
        if self.task == "detection":
            preds = _detection_output(output).detached_detections()
            if self._metric is not None:
                output = preds
            else:
                from lightning_modules.metrics.detection import per_image_ap50

                return per_image_ap50(preds, _detached_targets(target, preds))
        if self._metric is not None:
            value = self._metric(output, target)
            if not isinstance(value, Tensor) or value.ndim != 1:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"RobustTaskAdapter.per_sample_metric must return a Tensor[B], got {got}")
            return value.detach().float()
        if self.task == "classification" and isinstance(output, Tensor):
            return (output.detach().argmax(dim=1) == target.reshape(-1).long()).float()
        raise ValueError(f"RobustTaskAdapter(task={self.task!r}) has no per-sample metric: pass "
                         "per_sample_metric=(output, target) -> Tensor[B] (the main metric per sample)")

    def build_metrics(self) -> MetricCollection:
        return self._metrics.clone()

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Mapping[str, Any]) -> None:
        target = self._target(batch)
        if self.task == "detection":  # torchmetrics' MeanAveragePrecision form
            output = _detection_output(output).detached_detections()
            target = _detached_targets(target, output)
        prepared = self._prepare(output)
        for name in metrics.keys(keep_base=True):
            metrics[name].update(prepared.detach() if isinstance(prepared, Tensor) else prepared, target)

    def predict_for_display(self, output: Any) -> Any:
        if self.task == "detection":
            return _detection_output(output).detached_detections()
        if isinstance(output, Tensor) and output.ndim == 2:
            probs = output.detach().float().softmax(dim=1)
            conf, label = probs.max(dim=1)
            return {"label": label, "confidence": conf, "probs": probs}
        return output

    def metric_higher_is_better(self, name: str | None = None) -> bool:
        from lightning_modules.protocol import higher_is_better

        return higher_is_better(self._metrics, name or self.main_metric, "RobustTaskAdapter")

    def attack_loss_inputs(self, output: Any, batch: Mapping[str, Any],
                           inputs: str = "default") -> tuple[Tensor, Tensor]:
        """``(logits, labels)`` for the named attack losses (see ``attack_loss_inputs`` above).
        Detection, as :meth:`lightning_modules.DetectionModule.attack_loss_inputs`:
        ``inputs="default"`` the detections' scores and labels ``[B, N]`` (TOG-vanishing);
        ``"matched"`` (DAG) the class logits and boxes of the locations / proposals / detections
        with the ground-truth object each covers."""
        if self.task == "detection":
            from lightning_modules.detection_module import detection_loss_inputs

            return detection_loss_inputs(_detection_output(output), batch, inputs, "RobustTaskAdapter")
        if inputs != "default":
            raise ValueError(f"RobustTaskAdapter(task={self.task!r}) has no attack loss inputs {inputs!r}")
        target = self._target(batch)
        if self._loss_inputs is not None:
            return self._loss_inputs(output, target, batch[self.keys[0]])
        if not isinstance(output, Tensor):
            raise ValueError(f"RobustTaskAdapter: the named attack losses of task {self.task!r} need a "
                             f"Tensor output, got {type(output).__name__}; pass attack_loss_inputs=")
        if self.task == "classification" and output.ndim == 2:
            return output.float(), target.reshape(-1).long()
        if self.task == "segmentation" and output.ndim >= 3:
            mask = target[:, 0] if target.ndim == output.ndim else target
            if mask.shape[1:] != output.shape[2:]:
                raise ValueError(f"RobustTaskAdapter: segmentation logits {tuple(output.shape)} and mask "
                                 f"{tuple(target.shape)} differ in their spatial size")
            return output, mask.long()
        if self.task == "landmarks" and output.ndim == 4:
            return output, _landmark_labels(output, target, batch[self.keys[0]])
        raise ValueError(f"RobustTaskAdapter: no named attack losses for task {self.task!r} with an output "
                         f"of shape {tuple(output.shape)}; pass attack_loss_inputs=(output, target, image) "
                         "-> (logits, labels), or drop `loss:` to use your per_sample_loss")

    def attack_loss_reference(self, output: Any) -> Tensor | None:
        if self.task == "classification" and isinstance(output, Tensor) and output.ndim == 2:
            return output.detach().float()
        return None

    def forward_joint(self, xs: Sequence[Tensor]) -> list[Any]:
        model = self.attack_model()
        return [model(x) for x in xs]

    def output_divergence(self, out_adv: Any, out_clean: Any) -> Tensor:
        raise ValueError("RobustTaskAdapter has no output divergence, so TRADES cannot train through "
                         "it; use a medrobust task module (lightning_modules) for TRADES")


def _detection_output(output: Any) -> Any:
    """The ``DetectionOutput`` the adapter's detector wrapper returns (else a clear error)."""
    from lightning_modules.nets.detectors import DetectionOutput

    if not isinstance(output, DetectionOutput):
        raise ValueError("RobustTaskAdapter(task='detection'): expected the output of the adapter's "
                         f"attack_model() (a DetectionOutput), got {type(output).__name__}")
    return output


def _detached_targets(target: list[dict[str, Tensor]], preds: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Targets on the predictions' device, detached, in torchmetrics' detection form."""
    return [{"boxes": t["boxes"].detach().to(p["boxes"].device).float().reshape(-1, 4),
             "labels": t["labels"].detach().to(p["boxes"].device).long().reshape(-1)}
            for t, p in zip(target, preds)]


def _detection_batch(batch: Any, keys: Sequence[str]) -> dict[str, Any]:
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


def _classes_of(metrics: MetricCollection) -> int | None:
    """The ``num_classes`` a metric of the collection was built for (``None``: none says)."""
    for name in metrics.keys(keep_base=True):
        k = getattr(metrics[name], "num_classes", None)
        if isinstance(k, int) and not isinstance(k, bool) and k >= 1:
            return k
    return None


def _landmark_labels(heat: Tensor, target: Tensor, image: Tensor) -> Tensor:
    """``[B, L, 3]``: the target points ``(x, y)`` in the heatmap frame and the visibility.

    ``target`` is ``[B, L, 2]`` (all visible) or ``[B, L, 3]`` in image pixels; heatmaps
    ``[B, L, h, w]`` smaller than the image ``[B, C, H, W]`` get the points mapped with the
    pixel-centre convention of the resize transform (``(p + 0.5) / scale − 0.5``)."""
    if target.ndim != 3 or target.shape[-1] not in (2, 3) or target.shape[:2] != heat.shape[:2]:
        raise ValueError(f"RobustTaskAdapter: landmark targets must be [B, {heat.shape[1]}, 2] (x, y) or "
                         f"[B, {heat.shape[1]}, 3] (+ visibility) for heatmaps {tuple(heat.shape)}, "
                         f"got {tuple(target.shape)}")
    pts = target[..., :2].to(heat.device, torch.float32)
    vis = (target[..., 2].to(heat.device, torch.float32) if target.shape[-1] == 3
           else pts.new_ones(pts.shape[:2]))
    sx, sy = image.shape[-1] / heat.shape[-1], image.shape[-2] / heat.shape[-2]
    if (sx, sy) != (1.0, 1.0):
        pts = (pts + 0.5) / pts.new_tensor([sx, sy]) - 0.5
    return torch.cat([pts, vis[..., None]], dim=-1)


def robust_task_of(pl_module: Any) -> Any:
    """``pl_module.robust_task`` when the module offers an adapter, else the module itself."""
    adapter = getattr(pl_module, "robust_task", None)
    return adapter if isinstance(adapter, RobustTaskAdapter) else pl_module


def batch_for(task: Any, batch: Any) -> Any:
    """The evaluation loop's batch as a dict: through the adapter, or checked against the task's
    keys (:func:`lightning_modules.batch.check_batch`)."""
    if isinstance(task, RobustTaskAdapter):
        return task.as_batch(batch)
    from lightning_modules.batch import check_batch

    return check_batch(batch, getattr(task, "task", ""), type(task).__name__)


__all__ = ["RobustTaskAdapter", "batch_for", "robust_task_of"]
