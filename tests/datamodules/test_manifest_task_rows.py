"""The manifest datamodule asks a per-task row handler: a new task on the data side is one
:class:`TaskRows` subclass named by its task object, with no change to the datamodule."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from datamodules.manifest import (
    MANIFEST_TASKS,
    ManifestDataModule,
    TaskRows,
    write_example_manifest,
)
from datamodules.manifest.rows import empty, number
from datamodules.samples import BadSampleError
from datamodules.tasks import DataTask
from datamodules.tasks.base import _REGISTRY


class RegressionRows(TaskRows):
    """A fifth task for the test: one float ``value`` per image → item ``target`` float32 ``[]``."""

    name = "regression"
    columns = "image, value"

    def parse(self, s: Any, cells: dict[str, Any], resolve: Any, decode: bool) -> None:
        if empty(cells.get("value")):
            raise BadSampleError("no 'value'")
        s.raw_labels = [number(cells["value"], "value")]

    def classes(self, samples: list[Any], flag: Any, multilabel: bool, what: str) -> list[str]:
        return []

    def info(self, names: list[str], samples: list[Any], out: tuple[int, ...]) -> dict[str, Any]:
        return {"num_classes": 0, "num_landmarks": 0, "pixel_spacing_mm": None}

    def item(self, s: Any, out: dict[str, Any], num_classes: int,
             multilabel: bool) -> dict[str, torch.Tensor]:
        return {"target": torch.tensor(s.raw_labels[0], dtype=torch.float32)}


class RegressionData(DataTask):
    """The fifth task's data side: its object names its row handler."""

    name = "regression"
    target_keys = ("target",)

    def manifest_rows(self) -> type | None:
        return RegressionRows


def _regression_manifest(tmp: Path, values: list[str]) -> Path:
    src = write_example_manifest(tmp, "classification", n=len(values))
    with open(src, newline="") as fh:
        images = [r["image"] for r in csv.DictReader(fh)]
    path = tmp / "regression.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "value", "split"])
        for i, (image, v) in enumerate(zip(images, values)):
            w.writerow([image, v, "train" if i % 2 == 0 else "val"])
    return path


def test_a_fifth_task_is_one_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert MANIFEST_TASKS == ("classification", "segmentation", "landmarks", "detection")
    monkeypatch.setitem(_REGISTRY, "regression", RegressionData())
    values = ["0.5", "1.25", "-2", "3.5"]
    dm = ManifestDataModule(manifest=str(_regression_manifest(tmp_path, values)), task="regression")
    dm.setup("fit")
    assert dm.info.task == "regression" and dm.info.num_train == 2 and dm.info.num_classes == 0
    train = dm.build_split("train")
    got = [(float(train[i]["target"]), int(train[i]["index"])) for i in range(len(train))]
    assert got == [(0.5, 0), (-2.0, 1)]
    assert train[0]["image"].shape == (1, 32, 32)
    # a bad row is reported by the handler's message, with its row number
    bad = ManifestDataModule(manifest=str(_regression_manifest(tmp_path / "b", ["1", "x", "2", "3"])),
                             task="regression")
    with pytest.raises(BadSampleError, match=r"row 2.*value 'x' is not a number"):
        bad.setup("fit")


def test_an_unknown_task_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"task must be one of \[.classification.*got .regression."):
        ManifestDataModule(manifest="x.csv", task="regression")  # type: ignore[arg-type]
