"""The task owns its evaluation face: main metric, its direction (from the torchmetrics object),
how it is drawn — and a new task is one module file: the one below is evaluated and drawn by
the callbacks with no edit to ``callbacks/``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection
from torchmetrics.detection import MeanAveragePrecision
from torchmetrics.regression import MeanAbsoluteError

from callbacks import AdversarialEvaluation, AdversarialExamples
from callbacks.record import RobustnessRecord
from datamodules.info import DataInfo
from lightning_modules.metrics.landmarks import MeanRadialError
from lightning_modules.panels import Panel
from lightning_modules.protocol import metric_of
from tests.support.callback_models import make_datamodule, make_module, real_module_class


@pytest.mark.parametrize(("task", "metric", "higher"), [
    ("classification", "accuracy", True),
    ("segmentation", "dice", True),
    ("landmarks", "mre", False),
    ("detection", "map", True),
])
def test_main_metric_and_its_direction(task: str, metric: str, higher: bool) -> None:
    if real_module_class(task) is None:
        pytest.skip(f"no {task} module")
    module = make_module(make_datamodule(task=task, num_val=4, num_train=4))
    assert module.main_metric == metric
    assert module.metric_higher_is_better() is higher
    obj = metric_of(module.build_metrics(), metric)
    assert obj is not None and obj.higher_is_better is higher  # read from the metric object
    if task == "detection":
        assert isinstance(obj, MeanAveragePrecision)
        assert module.metric_higher_is_better("map_50") is True


def test_direction_comes_from_the_metric_object_not_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module(make_datamodule(task="landmarks", num_val=4, num_train=4))
    monkeypatch.setattr(MeanRadialError, "higher_is_better", True)  # a name that says "error"
    assert module.metric_higher_is_better("mre") is True
    monkeypatch.setattr(MeanRadialError, "higher_is_better", None)
    with pytest.raises(ValueError, match="MeanRadialError.*declares no direction"):
        module.metric_higher_is_better("mre")


def test_adapter_main_metric_and_direction() -> None:
    from torchmetrics.classification import MulticlassAccuracy

    from callbacks import RobustTaskAdapter

    module = nn.Linear(4, 2)
    metrics = {"accuracy": MulticlassAccuracy(num_classes=2), "mae": MeanAbsoluteError()}
    adapter = RobustTaskAdapter(module, module, lambda o, y: o.sum(1), metrics)
    assert adapter.main_metric == "accuracy" and adapter.metric_higher_is_better() is True
    assert adapter.metric_higher_is_better("mae") is False
    with pytest.raises(ValueError, match="main_metric='dice' is not one of the metrics"):
        RobustTaskAdapter(module, module, lambda o, y: o.sum(1), metrics, main_metric="dice")


def test_one_protocol_implemented_once() -> None:
    """Modules and the adapter subclass the protocol (the direction is its one implementation);
    a task module missing a protocol method cannot be built, and callbacks never guess a
    direction from a metric's name."""
    from callbacks import RobustTaskAdapter
    from callbacks.common import metric_direction
    from lightning_modules import ClassificationModule, TaskModule
    from lightning_modules.protocol import RobustTask, TrainableTask

    assert TrainableTask in TaskModule.__mro__ and RobustTask in RobustTaskAdapter.__mro__
    for cls in (TaskModule, ClassificationModule, RobustTaskAdapter):
        assert cls.metric_higher_is_better is RobustTask.metric_higher_is_better

    class Forgetful(ClassificationModule):
        output_divergence = TaskModule.output_divergence  # back to the abstract declaration

    with pytest.raises(TypeError, match="abstract method.*output_divergence"):
        Forgetful(data_info=make_datamodule(num_val=4, num_train=4).info)

    module = nn.Linear(4, 2)
    adapter = RobustTaskAdapter(module, module, lambda o, y: o.sum(1), {"mre_error": _Undeclared()})
    with pytest.raises(ValueError, match="declares no direction"):  # not guessed from "error"
        metric_direction(adapter, "mre_error")
    assert metric_direction(adapter, "mre_error", None) is None


class _Undeclared(MeanAbsoluteError):
    higher_is_better = None  # type: ignore[assignment]


# --- a new task in one file -------------------------------------------------------------------
class BrightnessData(Dataset):
    """Images ``[1, 8, 8]`` in [0, 1]; target ``value`` = mean brightness (a regression task)."""

    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "value": self.x[i].mean(), "index": i}


class ValuePanel(Panel):
    """Writes the predicted and true brightness; counts its calls (the test checks them)."""

    calls = 0

    def prediction(self, ax: Any, pred: Any, class_names: Any, shape: Any, min_score: float = 0.3,
                   max_boxes: int = 20) -> str:
        ValuePanel.calls += 1
        return f"pred {float(pred['value']):.2f}"

    def truth_caption(self, batch: Any, i: int, class_names: Any = ()) -> str:
        return f"{float(batch['value'][i]):.2f}"


class BrightnessTask(L.LightningModule):
    """A minimal ``RobustTask``: regress the mean brightness; MAE (lower is better)."""

    task = "brightness"
    main_metric = "mae"
    violation_direction = "above"
    panel = ValuePanel()

    def __init__(self) -> None:
        super().__init__()
        # a new task name needs no edit elsewhere: DataInfo takes any task name
        self.data_info = DataInfo(task="brightness", in_channels=1, image_size=(8, 8))
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
        self.normalizer = nn.Identity()
        self.method = SimpleNamespace(name="clean")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def attack_model(self) -> nn.Module:
        return self

    def per_sample_loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return (output - batch["value"].float()) ** 2

    def is_violated(self, output: Any, batch: dict[str, Any], threshold: float | None = None) -> torch.Tensor:
        return (output - batch["value"]).abs() > (0.1 if threshold is None else threshold)

    def violation_statistic(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        return self.per_sample_loss(output, batch).detach()

    def output_divergence(self, out_adv: Any, out_clean: Any) -> torch.Tensor:
        return (out_adv - out_clean) ** 2

    def forward_joint(self, xs: Any) -> list[Any]:
        return [self(x) for x in xs]

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"mae": MeanAbsoluteError()})

    def update_metrics(self, metrics: MetricCollection, output: Any, batch: dict[str, Any]) -> None:
        metrics["mae"].update(output.detach(), batch["value"])

    def metric_higher_is_better(self, name: str | None = None) -> bool:
        return bool(self.build_metrics()[name or self.main_metric].higher_is_better)

    def predict_for_display(self, output: Any) -> dict[str, torch.Tensor]:
        return {"value": output.detach()}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return F.mse_loss(self(batch["image"]), batch["value"])


def test_a_new_task_is_evaluated_and_drawn_without_touching_callbacks(tmp_path: Path) -> None:
    loader = DataLoader(BrightnessData(), batch_size=4)
    evaluation = AdversarialEvaluation(attacks=[{"name": "pgd", "norm": "linf", "steps": 2, "random_start": False},
                                                {"name": "fgsm"}], eps=[0.05, 0.1], subset=8, sanity="never")
    examples = AdversarialExamples(num_samples=2, eps=0.05)
    tr = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                   callbacks=[evaluation, examples])
    ValuePanel.calls = 0
    tr.validate(BrightnessTask(), loader, verbose=False)
    record = RobustnessRecord.load(tmp_path / "robustness.json")
    assert record.task == "brightness" and set(record.clean) == {"mae"}
    area = record.robust_area
    assert area is not None and area.metric == "mae" and area.metric_lower_is_better
    assert area.value is not None and area.value < 0  # an error: the negative mean MAE
    # the ensemble is never better than a single attack (lower MAE would be better)
    for eps in record.eps_grid():
        worst = record.value("mae", "ensemble", eps)
        assert all(worst >= record.value("mae", a, eps) - 1e-6 for a in record.attack_labels())
    assert json.loads((tmp_path / "robustness.json").read_text())["task"] == "brightness"
    assert (tmp_path / "robustness.png").is_file()
    assert examples.last_path is not None and examples.last_path.is_file()
    assert ValuePanel.calls == 4  # 2 samples × (clean, adversarial), drawn by the task's panel
