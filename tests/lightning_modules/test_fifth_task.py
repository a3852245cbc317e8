"""A fifth task, added the way docs/architecture.md says: scalar regression (the brightness of
a lesion), one data-side class and one model-side class, registered by name — and nothing else
edited. It is trained a few steps with SAT through the synthetic datamodule and the normal
module, evaluated per epoch by ``AdversarialEvaluation`` with the named ``quick`` suite (which
the task object supplies), and evaluated by ``medrobust.evaluate`` from tensors.

Files it took: the two classes below would be one file each (``datamodules/tasks/<task>.py``
and ``lightning_modules/tasks/<task>.py``, the module class inside the latter); no file outside
them changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanAbsoluteError

from attacks.suites import SuiteRecipe
from callbacks import AdversarialEvaluation
from datamodules import SyntheticDataModule
from datamodules.tasks import DataTask, register_task, task_named
from datamodules.tasks.base import _REGISTRY
from lightning_modules.base import TaskModule
from lightning_modules.methods import SAT
from lightning_modules.panels import Panel
from lightning_modules.tasks import Task, model_task


# ------------------------------------------------------------------ data side (one file)
class RegressionData(DataTask):
    """``value`` float32 ``[B]``: the lesion's darkness in [0.2, 0.8]."""

    name: ClassVar[str] = "regression"
    target_keys: ClassVar[tuple[str, ...]] = ("value",)
    target_word: ClassVar[str] = "values"

    def check_target_tensor(self, x: Tensor, y: Tensor, who: str) -> Tensor:
        if y.ndim != 1 or not y.is_floating_point():
            raise ValueError(f"{who}: regression targets y must be float [N], got {y.dtype} {tuple(y.shape)}")
        return y.float()

    def check_target_classes(self, y: Any, k: int, who: str = "evaluate") -> None:
        """No classes."""

    def info_fields(self, y: Any, k: int) -> dict[str, Any]:
        return {"num_classes": 0}

    def synthetic_sample(self, rng: np.random.Generator, index: int, params: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"]
        value = float(rng.uniform(0.2, 0.8))
        yy, xx = np.mgrid[:h, :w]
        disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 3) ** 2
        image = 0.9 - value * disc + 0.02 * rng.standard_normal((h, w))
        image = np.repeat(np.clip(image, 0, 1)[None].astype(np.float32), params["channels"], axis=0)
        return {"image": image, "value": value}

    def finish_item(self, sample: Any, item: dict[str, Any]) -> dict[str, Any]:
        item["value"] = torch.tensor(sample["value"], dtype=torch.float32)
        return item


# ------------------------------------------------------------------ model side (one file)
class RegressionModule(TaskModule):
    """One scalar per image; squared-error loss; MAE (lower is better); a sample is violated when
    its absolute error exceeds ``violation_threshold``."""

    task = "regression"
    default_net = "lightning_modules.nets.SmallCNN"
    violation_direction = "above"
    main_metric: ClassVar[str] = "mae"
    panel = Panel()

    def __init__(self, net: Any = None, data_info: Any = None, method: Any = None, lr: float = 1e-2,
                 mean: float | None = None, std: float | None = None, violation_threshold: float = 0.1) -> None:
        super().__init__(net=net, data_info=data_info, method=method, lr=lr, mean=mean, std=std)
        self.violation_threshold = violation_threshold
        self.build()

    def output_channels(self) -> int:
        return 1

    def _error(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        return output.reshape(-1) - batch["value"].to(output.dtype)

    def per_sample_loss(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        return self._error(output, batch) ** 2

    def violation_statistic(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        return self._error(output, batch).detach().abs()

    def is_violated(self, output: Tensor, batch: dict[str, Any], threshold: float | None = None) -> Tensor:
        return self.violation_statistic(output, batch) > (self.violation_threshold if threshold is None else threshold)

    def per_sample_metric(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        return self.violation_statistic(output, batch).float()

    def output_divergence(self, out_adv: Tensor, out_clean: Tensor) -> Tensor:
        return (out_adv - out_clean).reshape(out_adv.shape[0], -1).pow(2).mean(dim=1)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"mae": MeanAbsoluteError()})

    def update_metrics(self, metrics: MetricCollection, output: Tensor, batch: dict[str, Any]) -> None:
        metrics["mae"].update(output.detach().reshape(-1), batch["value"])

    def predict_for_display(self, output: Tensor) -> dict[str, Tensor]:
        return {"value": output.detach().reshape(-1)}


class RegressionTask(Task, RegressionData):
    module: ClassVar[type] = RegressionModule

    #: the named suites: APGD on the task loss and Square on it (its own, squared-error loss)
    suite: ClassVar[SuiteRecipe | None] = SuiteRecipe(
        members=lambda steps, queries, k: [{"name": "apgd", "steps": steps, "label": "apgd-task"},
                                           {"name": "square", "steps": queries, "label": "square"}],
        square_loss=None)


@pytest.fixture
def regression() -> Iterator[RegressionTask]:
    task = register_task(RegressionTask())
    yield task  # type: ignore[misc]
    _REGISTRY.pop("regression", None)


def test_the_name_means_the_new_task_everywhere(regression: RegressionTask) -> None:
    assert task_named("regression") is regression and model_task("regression") is regression
    assert regression.batch_keys == ("image", "value")
    assert [c["steps"] for c in regression.suite_configs("quick")] == [20, 100]  # SUITES' budgets
    assert not regression.sequential_suite
    with pytest.raises(ValueError, match="the name 'segmentation' is taken"):
        register_task(RegressionTask.__new__(type("Other", (RegressionTask,), {"name": "segmentation"})))


def test_fifth_task_trains_and_is_evaluated_through_the_normal_path(regression: RegressionTask,
                                                                     tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = SyntheticDataModule(task="regression", num_train=16, num_val=8, num_test=8, image_size=(16, 16),
                             batch_size=8)
    assert dm.info.task == "regression" and dm.info.num_classes == 0
    module = RegressionModule(net={"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [4, 8]}},
                              data_info=dm.info, method=SAT(eps=0.02, attack={"name": "pgd", "steps": 2}))
    evaluation = AdversarialEvaluation(attacks="quick", eps=[0.1], subset=8, sanity="never", intervals="never")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path), callbacks=[evaluation])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2  # trained: two SAT steps
    record = json.loads((tmp_path / "robustness.json").read_text())
    assert record["task"] == "regression" and record["method"] == "sat"
    labels = [a["attack"] for a in record["attacks"]]
    assert {"apgd-task", "square"} <= set(labels)  # the task's own quick suite
    clean = record["clean"]["mae"]
    worst = max(a["metrics"]["mae"] for a in record["attacks"])
    assert np.isfinite(clean) and worst > clean  # the attacks raise the error at eps 0.1


def test_fifth_task_through_medrobust_evaluate(regression: RegressionTask) -> None:
    from medrobust.evaluation import evaluate

    dm = SyntheticDataModule(task="regression", num_train=8, num_val=8, num_test=8, image_size=(16, 16))
    dm.setup("test")
    items = [dm.dataset("test")[i] for i in range(8)]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["value"] for it in items])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1))
    record = evaluate(net, (x, y), task="regression", suite="quick", eps=[0.1], normalization="none",
                      sanity="never", intervals="never", progress=False)
    assert record.task == "regression"
    clean = record.clean["mae"]
    bare = (net(x).reshape(-1) - y).abs().mean().item()
    assert clean == pytest.approx(bare, rel=1e-5)  # the wrapped model is the bare model
    with pytest.raises(ValueError, match="regression targets y must be float"):
        evaluate(net, (x, y.long()), task="regression", suite="quick", eps=[0.1], normalization="none")
