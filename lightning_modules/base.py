"""The base LightningModule of every task: network, normalization, training method, logging.

A task (classification, segmentation, landmarks, detection) is one subclass of
:class:`TaskModule` that implements the :class:`~lightning_modules.protocol.RobustTask`
methods (``per_sample_loss``, ``is_violated``, ``violation_statistic``, ``output_divergence``,
``build_metrics``, ``update_metrics``, ``predict_for_display``) and says what its network must
output (:meth:`TaskModule.output_channels`). Everything else lives here once:

* the model is ``Normalize → (the method's embedded module, e.g. a denoiser) → net``; images
  arrive in their natural range ``data_info.bounds`` and :meth:`TaskModule.attack_model`
  returns that whole pipeline, so attacks and evaluation callbacks see what is deployed;
* ``training_step`` delegates to the training method (clean, SAT, AMAT, denoise, TRADES…) and
  logs its signals; the method's end-of-epoch hook runs after the last training batch, before
  validation and checkpointing, on every rank;
* validation/test log ``val/loss`` and the task's torchmetrics (synchronised across ranks);
* hyperparameters are stored as plain values (``data_info`` as a dict, the method as
  ``{class_path, init_args}``), so ``Module.load_from_checkpoint(path)`` and
  ``train.py test --ckpt_path`` rebuild the model without unpickling objects.

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

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from attacks.options import check_choice
from attacks.seeding import seeded_generator
from datamodules.info import DataInfo
from lightning_modules import fault_tolerance
from lightning_modules.methods.base import TrainingMethod, upgrade_init_args
from lightning_modules.nets.builder import build_net, import_object, net_instance_marker
from lightning_modules.nets.normalize import Normalize
from lightning_modules.protocol import Batch

OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "cosine", "onecycle"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)


class Pipeline(nn.Module):
    """``net(embedded(normalizer(x)))``: the model an attacker faces. Holds references to the
    task's own modules (no copies), so it is always the current model."""

    def __init__(self, normalizer: nn.Module, embedded: nn.Module | None, net: nn.Module) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.embedded = embedded if embedded is not None else nn.Identity()
        self.net = net
        object.__setattr__(self, "parts", (normalizer, embedded, net))

    def forward(self, x: Tensor) -> Any:
        return self.net(self.embedded(self.normalizer(x)))


class TaskModule(L.LightningModule):
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
    #: see :attr:`lightning_modules.protocol.RobustTask.violation_direction`
    violation_direction: ClassVar[str | None] = None

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
        lo, hi = self.data_info.bounds
        if isinstance(net, nn.Module) and (mean is None or std is None):
            # A built network comes from elsewhere (trained in plain PyTorch, a MONAI bundle…):
            # guessing its input normalisation silently changes its predictions.
            raise ValueError(
                f"{owner}(net=<{type(net).__name__} instance>): state the input normalisation the "
                "network expects, mean=… and std=… (one value or one per channel; mean=0.0, "
                "std=1.0: it takes the images as they are, in data_info.bounds). The default "
                f"(mean {(lo + hi) / 2:g}, std {(hi - lo) / 4:g}) is only for networks medrobust "
                "builds from a config and trains behind it. Loading an older checkpoint of such "
                "a module: load_from_checkpoint(path, net=…, mean=0.5, std=0.25) keeps what it "
                "was trained with.")
        self._norm_mean = (lo + hi) / 2 if mean is None else mean
        self._norm_std = (hi - lo) / 4 if std is None else std

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
        self.corruption_augment = None
        if corruption_augment is not None:
            from corruptions import CorruptionAugment

            if not isinstance(corruption_augment, dict):
                raise ValueError(f"{owner}.corruption_augment must be a mapping like {{suite: chest_xray, p: 0.5}}, "
                                 f"got {corruption_augment!r}")
            unknown = set(corruption_augment) - {"suite", "p", "severities", "exclude", "seed"}
            if unknown:
                raise ValueError(f"{owner}.corruption_augment: unknown keys {sorted(unknown)} (suite, p, severities, "
                                 "exclude, seed)")
            args = {k: v for k, v in corruption_augment.items() if k != "seed"}
            self.corruption_augment = CorruptionAugment(**args)
            self._augment_seed = int(corruption_augment.get("seed", 0))

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

    def output_channels(self) -> int:
        """What the network must output along dim 1 (logits, classes, heatmaps…)."""
        raise NotImplementedError

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
        """One forward over ``torch.cat(xs)``, split back (see the protocol). Falls back to
        separate forwards when the output cannot be split along the batch."""
        model = self.attack_model()
        if len(xs) == 1:
            return [model(xs[0])]
        sizes = [int(x.shape[0]) for x in xs]
        out = model(torch.cat(list(xs), dim=0))
        parts = split_output(out, sizes)
        if parts is None:
            return [model(x) for x in xs]
        return parts

    @property
    def world_size(self) -> int:
        """Number of processes (1 without a trainer)."""
        trainer = self._trainer
        return int(trainer.world_size) if trainer is not None else 1

    # ------------------------------------------------------------------ task interface
    def per_sample_loss(self, output: Any, batch: Batch) -> Tensor:
        raise NotImplementedError

    def batch_loss(self, output: Any, batch: Batch) -> Tensor:
        """``[]``: the training loss of the whole batch (what methods train on; attacks use
        :meth:`per_sample_loss`). The mean of the per-sample losses, except where a task's
        reference implementation reduces differently (detection)."""
        return self.per_sample_loss(output, batch).mean()

    def is_violated(self, output: Any, batch: Batch, threshold: float | None = None) -> Tensor:
        raise NotImplementedError

    def violation_statistic(self, output: Any, batch: Batch) -> Tensor:
        raise NotImplementedError

    def per_sample_metric(self, output: Any, batch: Batch) -> Tensor:
        raise NotImplementedError

    def output_divergence(self, out_adv: Any, out_clean: Any) -> Tensor:
        raise NotImplementedError

    def build_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: Batch) -> None:
        raise NotImplementedError

    def predict_for_display(self, output: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation face
    def metric_higher_is_better(self, name: str | None = None) -> bool:
        """Direction of metric ``name`` (default :attr:`main_metric`), from the torchmetrics
        object that computes it (``Metric.higher_is_better``), not from the name."""
        from lightning_modules.protocol import higher_is_better

        return higher_is_better(self.build_metrics(), name or self.main_metric, type(self).__name__)

    def attack_loss_inputs(self, output: Any, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(logits, labels)`` for the named attack losses of :mod:`attacks.task_losses`."""
        raise ValueError(
            f"no named attack losses for task {self.task!r}; drop `loss:` to use the task's own loss"
        )

    def attack_loss_reference(self, output: Any) -> Tensor | None:
        """Clean logits ``[B, K]`` for targeted attack losses; ``None``: the task has none."""
        return None

    #: how a panel draws this task's predictions and ground truth (lightning_modules/panels.py)
    panel: ClassVar[Any] = None
    #: the task's randomized-smoothing certification (a class path in :mod:`certification.tasks`,
    #: built by :func:`certification.tasks.certification_for`); ``None``: the task has none
    certification: ClassVar[str | None] = None

    def hard_prediction(self, output: Any) -> Tensor:
        """The task's hard decision from a model output (a class per image, a label map, decoded
        points), what randomized smoothing votes on or takes the median of."""
        raise NotImplementedError(f"{type(self).__name__} has no hard_prediction (no certification)")

    def metric_names_per_class(self) -> list[str]:
        """Names used for per-class metric entries (class names, else indices)."""
        k = max(self.data_info.num_classes, 0)
        names = list(self.data_info.class_names)
        return [str(n) for n in names] if len(names) == k else [str(i) for i in range(k)]

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
        if self.optimizer_name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        elif self.optimizer_name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler_name == "cosine":
            epochs = self.trainer.max_epochs if self._trainer is not None else None
            if epochs is None or epochs < 1:
                raise ValueError(
                    f"{type(self).__name__}.scheduler='cosine' needs trainer.max_epochs >= 1, got {epochs}"
                )
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if self.scheduler_name == "onecycle":
            total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
            if total < 2:
                raise ValueError(f"{type(self).__name__}.scheduler='onecycle' needs a trainer with a "
                                 f"known number of training steps (>= 2), got {total}")
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=self.lr, total_steps=total, pct_start=0.4, anneal_strategy="linear",
                cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt

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


def split_output(out: Any, sizes: list[int]) -> list[Any] | None:
    """Split a batched output (tensor, dict / list / tuple of tensors) into chunks of ``sizes``
    along dim 0; ``None`` when its structure does not allow it. An output object may split
    itself: ``out.split_batch(sizes) -> list`` (e.g. the detection output)."""
    total = sum(sizes)
    if callable(getattr(out, "split_batch", None)):
        return out.split_batch(sizes)
    if isinstance(out, Tensor):
        return list(out.split(sizes)) if out.ndim and out.shape[0] == total else None
    if isinstance(out, Mapping):
        pieces = {k: split_output(v, sizes) for k, v in out.items()}
        if any(p is None for p in pieces.values()):
            return None
        return [{k: p[i] for k, p in pieces.items()} for i in range(len(sizes))]  # type: ignore[index]
    if isinstance(out, list | tuple) and not hasattr(out, "_fields"):
        elems = [split_output(v, sizes) for v in out]
        if any(e is None for e in elems):
            return None
        return [type(out)(e[i] for e in elems) for i in range(len(sizes))]  # type: ignore[index]
    return None


def data_info_to_dict(info: DataInfo) -> dict[str, Any]:
    """``DataInfo`` as plain values (tuples become lists) for hyperparameters and YAML."""
    out = dataclasses.asdict(info)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def as_data_info(value: Any, owner: str) -> DataInfo:
    """A :class:`DataInfo` from itself or its dict; a clear error when missing."""
    if isinstance(value, DataInfo):
        return value
    if value is None:
        raise ValueError(
            f"{owner}: data_info is required. train.py links it from the datamodule "
            "(data.info); in Python pass data_info=datamodule.info"
        )
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(DataInfo)}
        unknown = set(value) - fields
        if unknown:
            raise ValueError(f"{owner}.data_info has unknown fields {sorted(unknown)}")
        return DataInfo(**dict(value))
    raise ValueError(f"{owner}.data_info must be a DataInfo or a dict, got {type(value).__name__}")


def as_method(value: Any, owner: str) -> TrainingMethod:
    """A :class:`TrainingMethod` from itself, its ``{class_path, init_args}``, or ``None``
    (clean training)."""
    if value is None:
        from lightning_modules.methods.clean import Clean

        return Clean()
    if isinstance(value, TrainingMethod):
        return value
    if isinstance(value, Mapping) and "class_path" in value:
        cls = import_object(value["class_path"], f"{owner}.method.class_path")
        if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
            raise ValueError(
                f"{owner}.method.class_path={value['class_path']!r} is not a TrainingMethod subclass"
            )
        return cls(**upgrade_init_args(cls, value.get("init_args") or {}))
    raise ValueError(
        f"{owner}.method must be a TrainingMethod or {{class_path, init_args}}, got {value!r}"
    )
