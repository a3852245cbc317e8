"""The base LightningModule of every task: network, normalization, training method, logging.

A task (classification, segmentation, landmarks, detection) is one subclass of
:class:`TaskModule` that implements the abstract methods of
:class:`~lightning_modules.protocol.TrainableTask` (``per_sample_loss``, ``is_violated``,
``per_sample_metric``, ``violation_statistic``, ``output_divergence``, ``build_metrics``,
``update_metrics``, ``predict_for_display``; a subclass missing one cannot be instantiated) and
says what its network must output (:meth:`TaskModule.output_channels`). Everything else lives
here once:

* the model is ``Normalize → (the method's embedded module, e.g. a denoiser) → net``; images
  arrive in their natural range ``data_info.bounds`` and :meth:`TaskModule.attack_model`
  returns that whole pipeline, so attacks and evaluation callbacks see what is deployed;
* ``training_step`` delegates to the training method (clean, SAT, AMAT, denoise, TRADES…) and
  logs its signals; the method's end-of-epoch hook runs after the last training batch, before
  validation and checkpointing, on every rank;
* validation/test log ``val/loss`` and the task's torchmetrics (synchronised across ranks);
* hyperparameters are stored as plain values (``data_info`` as a dict, the method as
  ``{class_path, init_args}``; :mod:`lightning_modules.hparams`), so
  ``Module.load_from_checkpoint(path)`` and ``train.py test --ckpt_path`` rebuild the model
  without unpickling objects; the optimizer and schedule: :mod:`lightning_modules.optimization`.

Writing a subclass::

    class MyTask(TaskModule):
        task = "landmarks"
        default_net = "lightning_modules.nets.SmallUNet"
        violation_direction = "above"

        def __init__(self, net=None, data_info=None, method=None, my_option=1.0,
                     optimizer="adamw", lr=1e-3, weight_decay=1e-4, momentum=0.9,
                     scheduler="none", mean=None, std=None, nonfinite="error",
                     max_nonfinite_skips=None):
            super().__init__(net=net, data_info=data_info, method=method,
                             optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                             momentum=momentum, scheduler=scheduler, mean=mean, std=std,
                             nonfinite=nonfinite, max_nonfinite_skips=max_nonfinite_skips)
            self.my_option = my_option      # task options first ...
            self.build()                    # ... then build net, method and metrics

List every argument explicitly (no ``**kwargs``) so LightningCLI can show and check them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
from torch import Tensor, nn
from torchmetrics import MetricCollection

from attacks.options import check_choice
from attacks.seeding import seeded_generator
from datamodules.info import DataInfo
from lightning_modules import fault_tolerance
from lightning_modules.hparams import (
    as_data_info,
    as_method,
    corruption_augment_from,
    data_info_to_dict,
    input_normalization,
)
from lightning_modules.methods.base import TrainingMethod
from lightning_modules.nets.builder import build_net, net_instance_marker
from lightning_modules.nets.normalize import Normalize
from lightning_modules.optimization import (
    OPTIMIZERS,
    SCHEDULERS,
    OptimizerName,
    SchedulerName,
    make_optimizer,
    with_schedule,
)
from lightning_modules.pipeline import Pipeline, forward_joint
from lightning_modules.protocol import Batch, TrainableTask, ViolationDirection

__all__ = ["TaskModule", "batch_size_of"]


class TaskModule(L.LightningModule, TrainableTask):
    """Base of the task modules (see the module docstring for how to write one).

    Args:
        net: ``{class_path, init_args}`` of the network (ours, MONAI, torchvision, anything
            importable), or a built ``nn.Module`` (from Python; it must map normalised
            ``[B, C, *spatial]`` images to the task's output; checkpoints then store a marker
            and ``load_from_checkpoint(path, net=MyNet())`` takes the network again).
            ``in_channels`` / ``out_channels`` / ``num_classes`` / ``spatial_dims`` are filled
            from ``data_info`` when the constructor takes them and ``init_args`` does not set
            them. ``None``: the task's small default network.
        data_info: the :class:`DataInfo` of the data (``train.py`` links it from ``data.info``;
            a dict with its fields is accepted, as stored in checkpoints).
        method: the training method, a :class:`TrainingMethod` (in YAML by ``class_path``) or
            its ``{class_path, init_args}``; ``None`` = clean training.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (LightningCLI's ``--optimizer`` also
            works and takes precedence).
        lr: learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum (ignored by Adam variants).
        scheduler: ``"none"``, ``"cosine"`` (cosine annealing over ``trainer.max_epochs``) or
            ``"onecycle"`` (the cyclic schedule of fast adversarial training, Wong et al.
            2020: per step, linear from ~0 up to ``lr`` over the first 40 % of all training
            steps, then linearly down to ~0).
        mean: normalization mean, one value or one per channel. ``None``: the middle of
            ``data_info.bounds`` (0.5 for [0, 1]) — only for a network medrobust builds (``net``
            a config or ``None``); a built ``nn.Module`` needs ``mean`` and ``std`` stated (an
            error otherwise: a network trained elsewhere expects its own normalisation;
            ``mean=0.0, std=1.0`` for none).
        std: normalization std, one value or one per channel. ``None``: a quarter of the bounds'
            width (0.25 for [0, 1]); the same rule as ``mean``.
        nonfinite: what a training step does with a NaN / Inf image or loss: ``"error"``
            (raise, naming the samples' ``index``) or ``"skip"`` (no backward, no step; counted,
            warned and logged as ``train/nonfinite_skipped``; the count is checkpointed).
        max_nonfinite_skips: with ``"skip"``, raise once more than this many batches were
            skipped in the run (``None``: never).
        corruption_augment: corruption-aware training (MedMNIST-C's augmentation use):
            ``{suite, p?, severities?, exclude?}`` of :class:`corruptions.CorruptionAugment`;
            each training image is corrupted with probability ``p`` by a corruption of the
            modality's suite at a random severity, on the device, *before* the method's step —
            so it combines with every method (SAT attacks the corrupted images). The draws come
            from a generator seeded by the global step (resumable). ``None``: off.
    """

    #: the task name (``DataInfo.task`` must match)
    task: ClassVar[str] = ""
    #: ``class_path`` of the network used when ``net`` is ``None``
    default_net: ClassVar[str] = ""
    #: see :attr:`lightning_modules.protocol.TrainableTask.violation_direction`
    violation_direction: ClassVar[ViolationDirection] = None

    def __init__(
        self,
        net: dict | None = None,
        data_info: DataInfo | None = None,
        method: TrainingMethod | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: SchedulerName = "none",
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        nonfinite: fault_tolerance.NonFiniteMode = "error",
        max_nonfinite_skips: int | None = None,
        corruption_augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.data_info = as_data_info(data_info, owner)
        if self.data_info.task != self.task:
            raise ValueError(
                f"{owner} trains the {self.task!r} task but data_info.task is "
                f"{self.data_info.task!r}; pick the module matching the datamodule's task"
            )
        check_choice(f"{owner}.optimizer", optimizer, OPTIMIZERS)
        check_choice(f"{owner}.scheduler", scheduler, SCHEDULERS)
        if not (isinstance(lr, int | float) and lr >= 0):
            raise ValueError(f"{owner}.lr must be a number >= 0, got {lr!r}")
        self._method_arg = as_method(method, owner)
        self._net_spec = net
        self.optimizer_name, self.lr, self.weight_decay = optimizer, float(lr), float(weight_decay)
        self.momentum, self.scheduler_name = float(momentum), scheduler
        self._norm_mean, self._norm_std = input_normalization(net, mean, std, self.data_info.bounds, owner)

        # Plain-value hyperparameters: the method as {class_path, init_args}, data_info as a
        # dict. Checkpoints are then loadable with weights_only=True (LightningCLI does that).
        built_net = ["net"] if isinstance(net, nn.Module) else []  # weights live in state_dict
        self.save_hyperparameters(ignore=["data_info", "method", *built_net])
        plain_info = data_info_to_dict(self.data_info)
        method_cfg = self._method_arg.config()
        for store in (self._hparams, self._hparams_initial):
            store["data_info"] = plain_info
            store["method"] = method_cfg
            if built_net:
                store["net"] = net_instance_marker(net)
        self._built = False
        self._epoch_closed = True
        self._pipeline: Pipeline | None = None
        #: the ``nonfinite="skip"`` policy (its count is checkpointed); None = an error
        self.nonfinite_policy = fault_tolerance.nonfinite_policy(nonfinite, max_nonfinite_skips, owner)
        self.corruption_augment, self._augment_seed = corruption_augment_from(corruption_augment, owner)

    # ------------------------------------------------------------------ construction
    def build(self) -> None:
        """Build normalization, network, method and metrics (subclasses call this at the end
        of ``__init__``, after setting their own options)."""
        if self._built:
            return
        info = self.data_info
        self.normalizer = Normalize(self._norm_mean, self._norm_std, info.in_channels)
        self.net = self.build_network(self._net_spec)
        self.method = self._method_arg
        del self._method_arg
        self.method.setup(self)
        self.val_metrics = self.build_metrics()
        self.test_metrics = self.build_metrics()
        self._built = True

    @abstractmethod
    def output_channels(self) -> int:
        """What the network must output along dim 1 (logits, classes, heatmaps…)."""

    def build_network(self, spec: dict | None) -> nn.Module:
        """The network ``self.net`` from the ``net`` config ``spec``. Default: :func:`build_net`
        for :meth:`output_channels`; a task whose network is assembled around the configured
        one (a detector wrapper, an extra head) overrides this."""
        return build_net(spec, self.data_info, self.output_channels(), self.default_net)

    # ------------------------------------------------------------------ the model
    def attack_model(self) -> nn.Module:
        """``Normalize → (method's embedded module) → net`` as one ``nn.Module`` over images in
        ``data_info.bounds`` (``[B, C, *spatial]``)."""
        self._require_built()
        embedded = self.method.embedded_module()
        p = self._pipeline
        if p is None or p.parts != (self.normalizer, embedded, self.net):
            p = Pipeline(self.normalizer, embedded, self.net)
            # Not registered as a child: it only references modules the task already owns.
            object.__setattr__(self, "_pipeline", p)
        return p

    def forward(self, x: Tensor) -> Any:
        """The task output for images ``x`` in ``data_info.bounds``."""
        return self.attack_model()(x)

    def forward_joint(self, xs: Sequence[Tensor]) -> list[Any]:
        """One forward over ``torch.cat(xs)``, split back (:func:`lightning_modules.pipeline.
        forward_joint`)."""
        return forward_joint(self.attack_model(), xs)

    # ------------------------------------------------------------------ task facts
    #: how a panel draws this task's predictions and ground truth (lightning_modules/panels.py)
    panel: ClassVar[Any] = None
    #: the task's randomized-smoothing certification (a class path in :mod:`certification.tasks`,
    #: built by :func:`certification.tasks.certification_for`); ``None``: the task has none
    certification: ClassVar[str | None] = None

    # ------------------------------------------------------------------ batches
    # The batch contract at the boundary: a dict with the task's keys, else a clear error naming
    # them (a TensorDataset tuple would fail deep inside a loss). The *_batch_start hooks rather
    # than on_before_batch_transfer, which Lightning warns about whenever a datamodule is used.
    def _check_batch(self, batch: Any) -> None:
        from lightning_modules.batch import check_batch

        check_batch(batch, self.task, type(self).__name__)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._check_batch(batch)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check_batch(batch)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check_batch(batch)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check_batch(batch)

    # ------------------------------------------------------------------ training
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        fault_tolerance.save_extra_state(self, checkpoint)  # RNG + in-epoch method state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        fault_tolerance.load_extra_state(self, checkpoint)

    def on_train_start(self) -> None:
        fault_tolerance.restore_rng_at_train_start(self)

    def on_train_epoch_start(self) -> None:
        self._epoch_closed = False
        self.method.on_train_epoch_start(self)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        self._require_built()
        if self.corruption_augment is not None:
            batch = self._corrupt_batch(batch)
        # the method's loss, with the non-finite guard around it (lightning_modules/fault_tolerance.py)
        guarded = fault_tolerance.guarded_training_loss(self, batch, batch_idx)
        if guarded is None:
            return None  # skipped by the nonfinite="skip" policy (no backward, no step)
        loss, logs = guarded
        bs = batch_size_of(batch)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=bs)
        for key, value in logs.items():
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=bs)
        return loss

    def _corrupt_batch(self, batch: Batch) -> Batch:
        """The batch with its images corrupted by :attr:`corruption_augment` (targets kept)."""
        x = batch["image"]
        gen = seeded_generator(self._augment_seed, int(self.global_step), int(self.global_rank), device=x.device)
        return {**batch, "image": self.corruption_augment(x, gen, tuple(self.data_info.bounds))}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Close the epoch right after its last batch: validation and ModelCheckpoint (whichever
        # hook it saves on) then see the method's end-of-epoch state (e.g. AMAT margins).
        trainer = self._trainer
        if trainer is not None and batch_idx + 1 >= trainer.num_training_batches:
            self._close_train_epoch()

    def on_train_epoch_end(self) -> None:
        self._close_train_epoch()  # no-op when on_train_batch_end already closed it

    def _close_train_epoch(self) -> None:
        if self._epoch_closed:
            return
        self._epoch_closed = True
        for key, value in self.method.on_train_epoch_end(self).items():
            # Identical on every rank (methods synchronise their state); sync_dist keeps
            # Lightning's epoch-level reduction consistent.
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=1)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = make_optimizer(params, self.optimizer_name, self.lr, self.weight_decay, self.momentum)
        return with_schedule(opt, self.scheduler_name, self.lr, self._trainer, type(self).__name__)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        out = self(batch["image"])
        return {"index": batch.get("index"), "prediction": self.predict_for_display(out)}

    def _eval_step(self, batch: Batch, stage: str, metrics: MetricCollection) -> None:
        out = self(batch["image"])
        loss = self.batch_loss(out, batch)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 sync_dist=True, batch_size=batch_size_of(batch))
        self.update_metrics(metrics, out, batch)

    def _log_metrics(self, stage: str, metrics: MetricCollection) -> None:
        # compute() synchronises the metric states across ranks (torchmetrics); every rank then
        # holds the same values, and sync_dist only keeps Lightning's reduction consistent.
        values = metrics.compute()
        for key, value in values.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                self.log(f"{stage}/{key}", value.float(), on_step=False, on_epoch=True,
                         sync_dist=True, prog_bar=stage == "val" and key == self.main_metric)
        metrics.reset()

    #: the metric shown in the progress bar and used by default for checkpoint selection
    main_metric: ClassVar[str] = "loss"

    # ------------------------------------------------------------------ helpers
    def _require_built(self) -> None:
        if not getattr(self, "_built", False):
            raise RuntimeError(
                f"{type(self).__name__}.__init__ must call self.build() after setting its options"
            )


# ---------------------------------------------------------------------- free helpers
def batch_size_of(batch: Batch) -> int:
    """Number of samples in a batch dict (from its ``image``)."""
    image = batch.get("image") if isinstance(batch, Mapping) else None
    if not isinstance(image, Tensor):
        raise ValueError("a batch must be a dict with an 'image' tensor [B, C, *spatial]")
    return int(image.shape[0])
