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
AP@0.5 and an image is violated when its loss exceeds ``violation_threshold``. DAG's members need
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
from types import SimpleNamespace
from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from datamodules.info import DataInfo
from lightning_modules.protocol import RobustTask


class RobustTaskAdapter(RobustTask):
    """:class:`~lightning_modules.protocol.RobustTask` for a LightningModule of your own (for
    evaluation: training methods need a medrobust task module). The metrics' direction is the
    protocol's (``metric_higher_is_better``); the task-specific defaults are the task object's
    :class:`~lightning_modules.tasks.AdapterRules`.

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
        violation_threshold: detection: an image is violated when its loss exceeds this (the
            default of :class:`lightning_modules.DetectionModule`).
    """

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
        from lightning_modules.tasks import model_task

        kind = model_task(task, "RobustTaskAdapter.task")  # an unknown name: the closest known one
        rules = kind.adapter_rules(kind)
        keys = keys if keys is not None else rules.keys
        if len(tuple(keys)) < 2:
            raise ValueError(f"RobustTaskAdapter.keys needs (image key, target key), got {keys!r}")
        rules.check(per_sample_loss, metrics, attack_loss_inputs)
        object.__setattr__(self, "_module", module)  # no nn.Module registration (no cycle)
        self._rules = rules
        self._model = model
        self._loss = per_sample_loss
        if metrics is None:
            metrics = rules.default_metrics()
        self._metrics = metrics if isinstance(metrics, MetricCollection) else MetricCollection(
            dict(metrics), compute_groups=rules.compute_groups)
        self.task = kind.name
        #: detection's default violation test: the per-image loss above this (as DetectionModule)
        self.violation_threshold = float(violation_threshold)
        if per_sample_metric is None and rules.metric_column is not None:
            #: the per-sample file's column (detection: the image's AP@0.5, not its mAP)
            self.per_sample_metric_name = rules.metric_column
        self.keys = tuple(keys)
        self._is_violated = is_violated
        if per_sample_metric is not None and not callable(per_sample_metric):
            raise TypeError("RobustTaskAdapter.per_sample_metric must be callable (output, target) -> [B]")
        self._metric = per_sample_metric
        self._prepare = prepare_metric_input or (lambda out: out)
        self.data_info = DataInfo(task=kind.name, in_channels=1, bounds=tuple(bounds))
        #: what the record names as the method
        self.method = SimpleNamespace(name=method)
        names = list(self._metrics.keys(keep_base=True))
        if main_metric is None:
            main_metric = rules.default_main_metric(names)
        if main_metric is not None:
            rules.check_main_metric(main_metric, names)
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

        self.panel = panel_for(panel if panel is not None else kind)

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
        return self._rules.attack_model(model)

    def as_batch(self, batch: Any) -> dict[str, Any]:
        """A tuple ``(image, target, …)`` as ``{keys[i]: …}``; a dict is checked for the keys.
        Detection: ``{"image": [B, C, H, W], "boxes": [B × [N_i, 4]], "labels": [B × [N_i]]}``
        (see :func:`lightning_modules.tasks.detection.detection_batch`)."""
        return self._rules.as_batch(batch, self.keys)

    def _target(self, batch: Mapping[str, Any]) -> Any:
        return self._rules.target(batch, self.keys)

    def per_sample_loss(self, output: Any, batch: Mapping[str, Any]) -> Tensor:
        if self._loss is None:  # detection: the detector's own training loss of each image
            return self._rules.loss(output, batch)
        loss = self._loss(self._rules.user_output(output), self._target(batch))
        if not isinstance(loss, Tensor) or loss.ndim != 1:
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"RobustTaskAdapter.per_sample_loss must return a Tensor[B] "
                             f"(reduction='none'), got {got}")
        return loss

    def is_violated(self, output: Any, batch: Mapping[str, Any], threshold: float | None = None) -> Tensor:
        if self._is_violated is not None:
            return self._is_violated(self._rules.user_output(output), self._target(batch))
        return self._rules.is_violated(self, output, batch, threshold)

    def per_sample_metric(self, output: Any, batch: Mapping[str, Any]) -> Tensor:
        target = self._target(batch)
        if self._metric is None:
            return self._rules.per_sample_metric(output, target)
        value = self._metric(self._rules.metric_output(output), target)
        if not isinstance(value, Tensor) or value.ndim != 1:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"RobustTaskAdapter.per_sample_metric must return a Tensor[B], got {got}")
        return value.detach().float()

    def build_metrics(self) -> MetricCollection:
        return self._metrics.clone()

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Mapping[str, Any]) -> None:
        output, target = self._rules.metric_inputs(output, self._target(batch))
        prepared = self._prepare(output)
        for name in metrics.keys(keep_base=True):
            metrics[name].update(prepared.detach() if isinstance(prepared, Tensor) else prepared, target)

    def predict_for_display(self, output: Any) -> Any:
        return self._rules.display(output)

    def attack_loss_inputs(self, output: Any, batch: Mapping[str, Any],
                           inputs: str = "default") -> tuple[Tensor, Tensor]:
        """``(logits, labels)`` for the named attack losses (see ``attack_loss_inputs`` above).
        Detection, as :meth:`lightning_modules.DetectionModule.attack_loss_inputs`:
        ``inputs="default"`` the detections' scores and labels ``[B, N]`` (TOG-vanishing);
        ``"matched"`` (DAG) the class logits and boxes of the locations / proposals / detections
        with the ground-truth object each covers."""
        return self._rules.attack_loss_inputs(output, batch, self.keys, self._loss_inputs, inputs)

    def attack_loss_reference(self, output: Any) -> Tensor | None:
        return self._rules.loss_reference(output)


def _classes_of(metrics: MetricCollection) -> int | None:
    """The ``num_classes`` a metric of the collection was built for (``None``: none says)."""
    for name in metrics.keys(keep_base=True):
        k = getattr(metrics[name], "num_classes", None)
        if isinstance(k, int) and not isinstance(k, bool) and k >= 1:
            return k
    return None


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
