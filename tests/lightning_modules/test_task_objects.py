"""The task objects own the facts that differ between tasks: one object per name, no branch on a
task's name outside them, and the layers import downwards only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datamodules.tasks import DataTask, task_named, task_names
from lightning_modules.tasks import Task, model_task
from tests.conftest import PROJECT_ROOT as ROOT

BUILTIN = ("classification", "segmentation", "landmarks", "detection")
#: a comparison of a task name with a literal: what the task objects replace
NAME_BRANCH = re.compile(r"""(\btask|\.task)\s*(==|!=|in)\s*["'(]""")


def _sources(*packages: str) -> list[Path]:
    return [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_no_branch_on_a_task_name_outside_the_task_objects() -> None:
    sources = _sources("attacks", "corruptions", "datamodules", "lightning_modules", "certification",
                       "callbacks", "medrobust", "benchmarks") + [ROOT / "train.py"]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sources
            if "tasks" not in p.relative_to(ROOT).parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if NAME_BRANCH.search(line)]
    assert hits == []


#: the layers, lowest first; a package may import only from the ones before it (and itself)
LAYERS = (("attacks", "corruptions"), ("datamodules",), ("lightning_modules",), ("certification",),
          ("callbacks",), ("medrobust", "benchmarks", "train"))


def _above(package: str) -> list[str]:
    level = next(i for i, names in enumerate(LAYERS) if package in names)
    return [name for names in LAYERS[level + 1:] for name in names]


@pytest.mark.parametrize("lower", [name for names in LAYERS[:-1] for name in names])
def test_imports_point_down(lower: str) -> None:
    """Every import, module-level or inside a function, runs downwards: ``attacks`` /
    ``corruptions`` ← ``datamodules`` ← ``lightning_modules`` ← ``certification`` ← ``callbacks``
    ← ``medrobust`` / ``benchmarks`` / ``train.py``."""
    pattern = re.compile(rf"^\s*(from|import) ({'|'.join(_above(lower))})\b")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _sources(lower)
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_attacks_know_no_task_name() -> None:
    text = (ROOT / "attacks" / "suites.py").read_text()
    code = "\n".join(line for line in text.split('"""')[2::2])  # outside the docstrings
    assert not any(f'"{name}"' in code for name in BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_one_object_per_builtin_task(name: str) -> None:
    task = task_named(name)
    assert isinstance(task, Task) and isinstance(task, DataTask) and model_task(name) is task
    assert task.module.task == name  # the module it names trains this task
    assert task.panel is task.module.panel  # drawn the same by name and by module
    assert task.batch_keys[0] == "image" and task.target_keys
    assert name in task_names()


def test_an_unknown_name_gets_the_closest_one() -> None:
    with pytest.raises(ValueError, match="unknown task 'landmark'; did you mean 'landmarks'"):
        task_named("landmark")


def test_no_source_imports_the_tests() -> None:
    """Benchmarks and the packages share models through the packages (e.g.
    ``benchmarks/masked_models.py``), never by importing a test file."""
    pattern = re.compile(r"^\s*(from|import) tests\b")
    sources = _sources(*(name for names in LAYERS for name in names)) + [ROOT / "train.py"]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sources
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
