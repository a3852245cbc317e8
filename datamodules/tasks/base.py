"""What a task is on the data side, and the one registry that maps a task's name to its object.

A task's name (``"segmentation"``) is what configs, checkpoints and the CLI say; everything that
differs between tasks is asked of the task *object* that the name stands for
(:func:`task_named`). The data side of a task (:class:`DataTask`) says which batch keys its
targets use, how a target tensor is checked and becomes an item, which targets the joint
transform moves with the image, and how the synthetic default data makes a sample. Its model
side (:class:`lightning_modules.tasks.Task`, a subclass) adds the module, the attack suites,
violation test and metrics; registering it replaces the data-only object under the same name, so one
name always means one object.

Adding a task: subclass :class:`DataTask` (one file in ``datamodules/tasks/``), subclass it
again with :class:`lightning_modules.tasks.Task` (one file in ``lightning_modules/tasks/``)
and call :func:`register_task` on an instance.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

__all__ = ["DataTask", "register_task", "task_named", "task_names"]


class DataTask:
    """The data-side facts of one task. Subclasses set the class attributes and override what
    differs from the defaults (an integer class map per sample, as classification has).

    Batch contract (every datamodule): ``image`` float ``[B, C, *spatial]`` in the data's
    bounds, ``index`` int64 ``[B]``, plus this task's :attr:`target_keys`.
    """

    #: the name configs, checkpoints and the CLI use (a Python identifier)
    name: ClassVar[str]
    #: the batch keys holding the targets (what a module checks a batch for, after ``image``)
    target_keys: ClassVar[tuple[str, ...]]
    #: what a target value is called in messages ("labels", "mask values")
    target_word: ClassVar[str] = "targets"
    #: the joint transform moves a mask / keypoints / boxes with the image
    has_mask: ClassVar[bool] = False
    has_keypoints: ClassVar[bool] = False
    has_boxes: ClassVar[bool] = False
    #: image dimensionalities the task's data can have
    spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    #: synthetic data: default and smallest number of classes (0: the task has no classes)
    default_num_classes: ClassVar[int] = 0
    min_classes: ClassVar[int] = 0

    # -- batch ------------------------------------------------------------------------------
    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The keys a batch must hold (``index`` is added by the datamodules; AMAT needs it)."""
        return ("image", *self.target_keys)

    # -- tensors (x, y) -> items ------------------------------------------------------------
    def check_tensors(self, x: Any, y: Any, who: str = "evaluate") -> tuple[Tensor, Any]:
        """``(x, y)`` checked and converted: ``x`` float ``[N, C, *spatial]``, ``y`` as
        :meth:`tensor_item` takes it. Raises ``TypeError`` / ``ValueError`` naming what is wrong."""
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"{who}: data as tensors is (x, y), got ({type(x).__name__}, {type(y).__name__})")
        if x.ndim not in (4, 5) or not x.is_floating_point():
            raise ValueError(f"{who}: x must be float [N, C, H, W] or [N, C, D, H, W], got {x.dtype} "
                             f"{tuple(x.shape)}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{who}: x has {x.shape[0]} samples but y has {y.shape[0]}")
        return x.float(), self.check_target_tensor(x, y, who)

    def check_target_tensor(self, x: Tensor, y: Tensor, who: str) -> Tensor:
        """``y`` ``[N, …]`` checked against ``x`` and converted (the task's own rule)."""
        return y

    def tensor_item(self, y: Any) -> dict[str, Any]:
        """One sample's target entries of an item from one element of checked ``y``."""
        return {self.target_keys[0]: y}

    def check_target_classes(self, y: Any, k: int, who: str = "evaluate") -> None:
        """Raise ``ValueError`` when a target of checked ``y`` lies outside ``k`` classes
        (default: integer values in ``[0, k)``; a task without classes checks nothing)."""
        bad = ((y < 0) | (y >= k)).reshape(y.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{who}: {self.target_word} out of range [0, {k}) for the model's "
                             f"{k} outputs at samples {bad[:10]}{' …' if len(bad) > 10 else ''}")

    def info_fields(self, y: Any, k: int) -> dict[str, Any]:
        """:class:`~datamodules.info.DataInfo` fields for checked ``y`` and ``k`` model outputs."""
        return {"num_classes": k}

    # -- manifests and folders --------------------------------------------------------------
    def manifest_rows(self) -> type | None:
        """The manifest row handler class that reads this task's rows
        (:class:`datamodules.manifest.handler.TaskRows`), or ``None``: no manifest form."""
        return None

    def folder_datamodule(self, path: Path, kwargs: Mapping[str, Any]) -> Any:
        """A datamodule for a data folder without a manifest, or ``None`` (no such layout)."""
        return None

    # -- synthetic data ---------------------------------------------------------------------
    def check_synthetic(self, num_landmarks: int, max_objects: int) -> None:
        """Raise ``ValueError`` for synthetic options this task cannot use."""

    def synthetic_num_landmarks(self, num_landmarks: int) -> int:
        """The landmarks per image the synthetic data has (0: the task has none)."""
        return 0

    def synthetic_sample(self, rng: np.random.Generator, index: int, params: dict[str, Any]) -> dict[str, Any]:
        """A raw sample (numpy, channels-first ``image`` and the targets the transform moves)."""
        raise ValueError(f"task {self.name!r} has no synthetic data")

    def synthetic_class_names(self, k: int) -> list[str]:
        """The synthetic data's class names for ``k`` classes."""
        return []

    def finish_item(self, sample: Mapping[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        """Add the targets the transform does not move (a class label) from the raw ``sample``."""
        return item

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


#: task name -> its object: the one place a name is looked up
_REGISTRY: dict[str, DataTask] = {}


def register_task(task: DataTask) -> DataTask:
    """Make ``task`` the object of ``task.name``; returns it.

    A model-side task (a subclass of the registered data-side class) replaces the data-side
    object; any other object under a taken name is an error, so one name means one task."""
    if not isinstance(task, DataTask):
        raise TypeError(f"register_task: expected a DataTask, got {type(task).__name__}")
    if not (isinstance(getattr(task, "name", None), str) and task.name.isidentifier()):
        raise ValueError(f"register_task: {type(task).__name__}.name must be an identifier, got "
                         f"{getattr(task, 'name', None)!r}")
    old = _REGISTRY.get(task.name)
    if old is not None and not isinstance(task, type(old)) and not isinstance(old, type(task)):
        raise ValueError(f"register_task: the name {task.name!r} is taken by {type(old).__name__}; "
                         f"{type(task).__name__} must extend it or choose another name")
    if old is None or isinstance(task, type(old)):
        _REGISTRY[task.name] = task
    return _REGISTRY[task.name]


def task_named(name: Any, who: str = "task") -> DataTask:
    """The object of task ``name`` (a task object is returned as it is).

    Raises:
        ValueError: an unknown name, with the closest known one.
    """
    if isinstance(name, DataTask):
        return name
    task = _REGISTRY.get(name) if isinstance(name, str) else None
    if task is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{who}: unknown task {name!r}{hint} (tasks: {list(_REGISTRY)})")
    return task


def task_names() -> tuple[str, ...]:
    """The registered task names, built-in ones first."""
    return tuple(_REGISTRY)

