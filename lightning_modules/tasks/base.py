"""What a task is on the model side: the data-side facts (:class:`datamodules.tasks.DataTask`)
plus its module, attack suites, drawing, and how a model medrobust did not train is read.

A :class:`Task` subclasses its data-side class and is registered under the same name
(:func:`datamodules.tasks.register_task`), so ``task_named("segmentation")`` returns one object
that owns every fact about segmentation. Modules, callbacks and ``medrobust.evaluate`` ask it;
none switches on the name. The per-sample loss, metrics, violation test and their direction are
the module's (:class:`lightning_modules.protocol.TrainableTask`); a user's own module gets them
through :class:`callbacks.RobustTaskAdapter`, whose task-specific defaults are the task's
:class:`AdapterRules`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.suites import SuiteRecipe, suite_configs
from datamodules.tasks.base import DataTask

__all__ = ["AdapterRules", "Task", "WrappedModel"]


@dataclass
class WrappedModel:
    """A user's bare model made into a task module's network (see :meth:`Task.wrap_model`)."""

    #: the network the task module is built around (its first module is the stated normalisation)
    net: nn.Module
    #: the number of classes the model predicts (landmarks: of heatmaps)
    num_classes: int
    #: the bare model's clean output on the probe images, to compare with the wrapped model's
    reference: Any
    #: extra arguments of the task module
    options: dict[str, Any] = field(default_factory=dict)


class NormalizedModel(nn.Module):
    """``model(normalize(x))``: the user's model behind their stated normalisation."""

    def __init__(self, normalize: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.normalize, self.model = normalize, model

    def forward(self, x: Tensor) -> Any:
        return self.model(self.normalize(x))


class AdapterRules:
    """How :class:`callbacks.RobustTaskAdapter` reads a user's own model for a task: batches,
    targets, and the defaults for what the user did not give. Defaults here are those of a model
    with one tensor output and one target tensor per batch; a task overrides what differs."""

    #: the keys a tuple batch is given (image, target)
    keys: ClassVar[tuple[str, ...]] = ("image", "label")
    #: ``None`` is allowed for the per-sample loss / the metrics (the task has defaults)
    default_loss: ClassVar[bool] = False

    def __init__(self, task: Task) -> None:
        self.task = task

    def check(self, per_sample_loss: Any, metrics: Any, attack_loss_inputs: Any) -> None:
        """Raise for arguments the task cannot take."""
        if not callable(per_sample_loss):
            raise TypeError("RobustTaskAdapter.per_sample_loss must be callable (output, target) -> [B]"
                            " (None only for task='detection')")
        if metrics is None:
            raise TypeError("RobustTaskAdapter.metrics: give {name: torchmetrics.Metric} "
                            "(None only for task='detection', whose default is mAP)")

    def default_metrics(self) -> dict[str, Any]:
        raise TypeError("RobustTaskAdapter.metrics: give {name: torchmetrics.Metric}")

    #: torchmetrics' compute groups for the user's metrics
    compute_groups: ClassVar[bool] = True

    #: the per-sample file's column for the default per-sample metric (``None``: the main metric)
    metric_column: ClassVar[str | None] = None

    def default_main_metric(self, names: Sequence[str]) -> str | None:
        return None

    def check_main_metric(self, main_metric: str, names: Sequence[str]) -> None:
        if main_metric not in names:
            raise ValueError(f"RobustTaskAdapter.main_metric={main_metric!r} is not one of the metrics {names}")

    def attack_model(self, model: nn.Module) -> nn.Module:
        """The model the attacks face (a rules object belongs to one adapter, so it may cache)."""
        return model

    def as_batch(self, batch: Any, keys: Sequence[str]) -> dict[str, Any]:
        """A tuple ``(image, target, …)`` as ``{keys[i]: …}``; a dict is checked for the keys."""
        if isinstance(batch, Mapping):
            missing = [k for k in keys[:2] if k not in batch]
            if missing:
                raise KeyError(f"RobustTaskAdapter: the batch lacks {missing}; keys {list(keys)}")
            return dict(batch)
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return dict(zip(keys, batch))
        raise TypeError(
            f"RobustTaskAdapter: a batch must be a tuple (image, target) or a dict with keys "
            f"{list(keys)}, got {type(batch).__name__}"
        )

    def target(self, batch: Mapping[str, Any], keys: Sequence[str]) -> Any:
        return batch[keys[1]]

    def user_output(self, output: Any) -> Any:
        """What the user's callables receive."""
        return output

    def loss(self, output: Any, batch: Mapping[str, Any]) -> Tensor:
        """The per-sample loss when the user gave none (only where :attr:`default_loss`)."""
        raise TypeError(f"RobustTaskAdapter(task={self.task.name!r}) needs a per_sample_loss")

    def is_violated(self, adapter: Any, output: Any, batch: Mapping[str, Any], threshold: float | None) -> Tensor:
        raise ValueError(f"RobustTaskAdapter(task={self.task.name!r}) has no violation test: pass "
                         "is_violated=(output, target) -> Bool[B] (True where the sample counts as violated)")

    def metric_output(self, output: Any) -> Any:
        """The output a user's per-sample metric receives."""
        return output

    def per_sample_metric(self, output: Any, target: Any) -> Tensor:
        raise ValueError(f"RobustTaskAdapter(task={self.task.name!r}) has no per-sample metric: pass "
                         "per_sample_metric=(output, target) -> Tensor[B] (the main metric per sample)")

    def metric_inputs(self, output: Any, target: Any) -> tuple[Any, Any]:
        """``(output, target)`` as the metrics are updated with them (before the user's
        ``prepare_metric_input``)."""
        return output, target

    def display(self, output: Any) -> Any:
        if isinstance(output, Tensor) and output.ndim == 2:
            probs = output.detach().float().softmax(dim=1)
            conf, label = probs.max(dim=1)
            return {"label": label, "confidence": conf, "probs": probs}
        return output

    def attack_loss_inputs(self, output: Any, batch: Mapping[str, Any], keys: Sequence[str],
                           given: Callable[[Any, Any, Tensor], tuple[Tensor, Tensor]] | None,
                           inputs: str) -> tuple[Tensor, Tensor]:
        """``(logits, labels)`` of the named attack losses: the user's ``attack_loss_inputs``
        (``given``), else :meth:`default_loss_inputs`."""
        if inputs != "default":
            raise ValueError(f"RobustTaskAdapter(task={self.task.name!r}) has no attack loss inputs {inputs!r}")
        target = self.target(batch, keys)
        if given is not None:
            return given(output, target, batch[keys[0]])
        if not isinstance(output, Tensor):
            raise ValueError(f"RobustTaskAdapter: the named attack losses of task {self.task.name!r} need a "
                             f"Tensor output, got {type(output).__name__}; pass attack_loss_inputs=")
        found = self.default_loss_inputs(output, target, batch[keys[0]])
        if found is None:
            raise ValueError(f"RobustTaskAdapter: no named attack losses for task {self.task.name!r} with an "
                             f"output of shape {tuple(output.shape)}; pass attack_loss_inputs=(output, target, "
                             "image) -> (logits, labels), or drop `loss:` to use your per_sample_loss")
        return found

    def default_loss_inputs(self, output: Tensor, target: Any, image: Tensor) -> tuple[Tensor, Tensor] | None:
        """The task's own ``(logits, labels)`` from a tensor output, or ``None`` (none fit)."""
        return None

    def loss_reference(self, output: Any) -> Tensor | None:
        """The clean logits ``[B, K]`` targeted losses pick their target from, or ``None``."""
        return None


class Task(DataTask):
    """The model side of a task (subclass it together with the task's data-side class).

    Subclasses set :attr:`module` (the task's ``TaskModule`` class: its loss, metrics and their
    direction, violation test, panel, certification form), :attr:`suite` and :attr:`adapter_rules`,
    and override what differs from the defaults below."""

    #: the task's LightningModule class (``TaskModule`` subclass)
    module: ClassVar[type]
    #: how a user's own module is read (:class:`callbacks.RobustTaskAdapter`)
    adapter_rules: ClassVar[type[AdapterRules]] = AdapterRules
    #: how the named suites (``standard``, ``quick``, ``aa_budget``) are built for the task's
    #: output (:class:`attacks.suites.SuiteRecipe`); ``None``: the task has no named suites
    suite: ClassVar[SuiteRecipe | None] = None

    @property
    def panel(self) -> Any:
        """How predictions and ground truth are drawn: the module's
        (:class:`lightning_modules.panels.Panel`; one home, read here by name)."""
        return self.module.panel

    # -- attack suites ----------------------------------------------------------------------
    def suite_configs(self, name: str, num_classes: int | None = None, where: str = "attacks") -> list[dict[str, Any]]:
        """The attack list of the named suite ``name`` for this task."""
        if self.suite is None:
            raise ValueError(f"{where}: task {self.name!r} has no named suites (its Task.suite is None); "
                             "give an attack list")
        return suite_configs(name, self.suite, where, num_classes)

    @property
    def sequential_suite(self) -> bool:
        """A named suite's members attack only samples no earlier member broke."""
        return self.suite is not None and self.suite.sequential

    def warn_unknown_classes(self) -> bool:
        """A named suite needs the number of classes (to add its targeted members)."""
        return False

    # -- a model medrobust did not train (medrobust.evaluate) -------------------------------
    def output_classes(self, output: Any, given: int | None, who: str = "evaluate") -> int:
        """The number of classes the model's output has along dim 1 (``given``: checked)."""
        if not isinstance(output, Tensor):
            raise ValueError(f"{who}: the model's output must be a Tensor for task {self.name!r}, got "
                             f"{type(output).__name__}")
        if output.ndim < 2:
            raise ValueError(f"{who}: the model's output {tuple(output.shape)} has no class dimension")
        k = self.classes_of_output(output)
        if given is not None and given != k:
            raise ValueError(f"{who}: num_classes={given} but the model outputs {output.shape[1]} channels")
        return k

    def classes_of_output(self, output: Tensor) -> int:
        return int(output.shape[1])

    def module_options(self, reference: Any) -> dict[str, Any]:
        """Task-module arguments read from the model's clean output."""
        return {}

    def wrap_model(self, bare: nn.Module, normalize: nn.Module, probe_x: Tensor, given: int | None,
                   opaque: bool = False) -> WrappedModel:
        """The user's model behind its stated normalisation, its classes and its clean output
        on ``probe_x``. ``opaque``: the model is TorchScript / ``torch.export`` (no submodules)."""
        bare.eval()
        with torch.no_grad():
            reference = bare(normalize(probe_x))
        k = self.output_classes(reference, given)
        return WrappedModel(NormalizedModel(normalize, bare), k, reference, self.module_options(reference))

    def check_model_classes(self, wrapped: WrappedModel, info: Any) -> None:
        """Raise when the model's classes do not fit a datamodule's ``info`` (default: no check)."""

    def comparable_output(self, output: Any) -> Any:
        """The wrapped model's output in the form of :attr:`WrappedModel.reference`."""
        return output
