"""The task objects, model side: one file per built-in task over :class:`Task`
(:mod:`lightning_modules.tasks.base`), registered under the task's name in the one registry
(:func:`datamodules.tasks.register_task`). :func:`model_task` is the lookup by name.

Adding a task (see docs/architecture.md): a ``DataTask`` subclass (data side), a ``Task``
subclass of it naming its ``TaskModule`` (model side), and ``register_task(MyTask())``.
"""

from __future__ import annotations

from typing import Any

from datamodules.tasks import register_task, task_named, task_names
from lightning_modules.tasks.base import AdapterRules, NormalizedModel, Task, WrappedModel
from lightning_modules.tasks.classification import ClassificationTask
from lightning_modules.tasks.detection import DetectionTask
from lightning_modules.tasks.landmarks import LandmarksTask
from lightning_modules.tasks.segmentation import SegmentationTask

for builtin in (ClassificationTask(), SegmentationTask(), LandmarksTask(), DetectionTask()):
    register_task(builtin)


def model_task(name: Any, who: str = "task") -> Task:
    """The task object of ``name`` with its model side (a :class:`Task` is returned as is).

    Raises:
        ValueError: an unknown name (with the closest one), or a task registered with its data
            side only.
    """
    task = task_named(name, who)
    if not isinstance(task, Task):
        raise ValueError(f"{who}: task {task.name!r} has no model side: register a "
                         "lightning_modules.tasks.Task subclass of its data-side class")
    return task


def suite_configs(name: str, task: Any, where: str = "attacks",
                  num_classes: int | None = None) -> list[dict[str, Any]]:
    """The attack list of the named suite ``name`` for ``task`` (a name or a task object)."""
    return model_task(task, where).suite_configs(name, num_classes, where)


def suite_specs(name: str, where: str, task: Any, num_classes: int | None = None) -> list[Any]:
    """The named suite ``name`` of ``task`` as checked :class:`attacks.AttackSpec` s."""
    from attacks.spec import parse_attack_specs

    return parse_attack_specs(suite_configs(name, task, where, num_classes), where)


__all__ = ["AdapterRules", "ClassificationTask", "DetectionTask", "LandmarksTask", "NormalizedModel",
           "SegmentationTask", "Task", "WrappedModel", "model_task", "register_task", "suite_configs", "suite_specs",
           "task_named",
           "task_names"]
