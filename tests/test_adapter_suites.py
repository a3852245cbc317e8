"""The own-model path (a LightningModule of the user's own + RobustTaskAdapter) runs the named
suites of every task: the suite is resolved from the adapter's task and classes (not the
LightningModule's, which has neither), targeted members appear for >= 4 classes, and the dense
tasks' named attack losses get their (logits, labels) from the adapter."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from attacks.suites import suite_configs
from callbacks import AdversarialEvaluation, RobustTaskAdapter


class MeanOf(Metric):
    """Mean of a per-sample function (a test metric for the dense tasks)."""

    full_state_update = False

    higher_is_better = True

    def __init__(self, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("n", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, output: Tensor, target: Tensor) -> None:
        v = self.fn(output, target)
        self.total += v.sum()
        self.n += v.numel()

    def compute(self) -> Tensor:
        return self.total / self.n


class LowerMeanOf(MeanOf):
    higher_is_better = False


def dice(logits: Tensor, mask: Tensor) -> Tensor:
    """Per-image hard Dice of class 1 ``[B]``."""
    pred = logits.argmax(dim=1) == 1
    truth = mask == 1
    inter = (pred & truth).flatten(1).sum(1).float()
    return (2 * inter + 1) / (pred.flatten(1).sum(1) + truth.flatten(1).sum(1) + 1).float()


def radial_error(heat: Tensor, pts: Tensor) -> Tensor:
    """Per-image mean distance of the heatmap arg-max from the truth ``[B]`` (pixels)."""
    b, k, h, w = heat.shape
    flat = heat.detach().flatten(2).argmax(dim=2)
    found = torch.stack([flat % w, flat // w], dim=-1).float()
    return (found - pts.float()).norm(dim=-1).mean(dim=1)


class Own(L.LightningModule):
    """A user's module: no task, no num_classes, only a robust_task adapter."""

    def __init__(self, task: str, k: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        if task == "classification":
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(16, k))
            loss = lambda o, y: F.cross_entropy(o, y, reduction="none")  # noqa: E731
            metrics = {"accuracy": MulticlassAccuracy(num_classes=k, average="micro")}
            extra: dict = {}
        elif task == "segmentation":
            self.model = nn.Conv2d(1, k, 3, padding=1)
            loss = lambda o, y: F.cross_entropy(o, y, reduction="none").flatten(1).mean(1)  # noqa: E731
            metrics = {"dice": MeanOf(dice)}
            extra = {"per_sample_metric": dice}
        else:  # landmarks: k heatmaps at the image's size
            self.model = nn.Conv2d(1, k, 3, padding=1)
            loss = lambda o, y: o.flatten(1).pow(2).mean(1)  # noqa: E731
            metrics = {"mre": LowerMeanOf(radial_error)}
            extra = {"per_sample_metric": radial_error}
        self.robust_task = RobustTaskAdapter(self, self.model, loss, metrics, task=task, **extra)

    def test_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        pass


def data(task: str, k: int, n: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=g)
    if task == "classification":
        return TensorDataset(x, torch.arange(n) % k)
    if task == "segmentation":
        return TensorDataset(x, (x[:, 0] > 0.5).long())
    return TensorDataset(x, torch.randint(0, 4, (n, k, 2), generator=g).float())


def run(tmp_path: Path, task: str, k: int, suite: str, eps: float = 0.05, n: int = 4) -> tuple[AdversarialEvaluation, dict]:
    cb = AdversarialEvaluation(test_attacks=suite, test_eps=[eps], subset=None, plot=False, batch_size=4,
                               sanity="never", intervals="never", report=False)
    module = Own(task, k)
    L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=False, callbacks=[cb]).test(
        module, DataLoader(data(task, k, n), batch_size=4))
    return cb, cb.last_record["test"].to_dict()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_suites_through_the_adapter(tmp_path: Path, k: int) -> None:
    for suite in ("quick", "aa_budget"):
        cb, record = run(tmp_path, "classification", k, suite)
        labels = [s.label for s in cb.test_specs]
        assert labels == [c["label"] for c in suite_configs(suite, "classification", num_classes=k)]
        assert ("apgd-t1" in labels) == (k >= 4 or suite == "aa_budget" and k >= 3)
        assert {a["attack"] for a in record["attacks"]} == set(labels)
        assert cb.suites.sequential(cb_module := Own("classification", k), "test")
        assert cb_module.robust_task.num_classes == k  # read from the MulticlassAccuracy


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_standard_suite_through_the_adapter(tmp_path: Path, k: int) -> None:
    # a large ε breaks every sample early: the sequential suite then skips the rest (fast)
    cb, record = run(tmp_path, "classification", k, "standard", eps=0.5)
    labels = [s.label for s in cb.test_specs]
    targeted = ["apgd-t1", "apgd-t2", "apgd-t3"][: min(3, k - 1)] if k >= 4 else []
    assert labels == ["apgd-ce", "apgd-dlr", *targeted, "fmn", "square"]
    assert [a["attack"] for a in record["attacks"]] == labels
    assert record["suite_name"] == "standard" and record["sequential"] is True


DENSE = [(task, k) for task in ("segmentation", "landmarks") for k in (2, 3, 5)]


@pytest.mark.slow  # ~5 s each on an idle machine (Square 5000 on 2 samples of 4 × 4)
@pytest.mark.parametrize("task,k", DENSE)
def test_every_dense_suite_runs_through_the_adapter(tmp_path: Path, task: str, k: int) -> None:
    """The full budgets (APGD-100, Square 5000) end to end. ``aa_budget`` is the same suite for
    the dense tasks (AutoAttack's budget is classification's), so it is checked, not run twice."""
    suite = "standard"
    assert suite_configs("aa_budget", task) == suite_configs("standard", task)
    cb, record = run(tmp_path, task, k, suite, n=2)
    labels = [s.label for s in cb.test_specs]
    assert labels == [c["label"] for c in suite_configs(suite, task)]
    assert [a["attack"] for a in record["attacks"]] == labels and record["suite_name"] == suite
    assert next(a for a in record["attacks"] if a["attack"] == "square")["steps"] == 5000
    metric = "dice" if task == "segmentation" else "mre"
    assert all(a["metrics"][metric] == a["metrics"][metric] for a in record["attacks"])  # none NaN


@pytest.mark.parametrize("task,k", DENSE)
def test_dense_suites_through_the_adapter(tmp_path: Path, task: str, k: int) -> None:
    # "quick" on 4 samples (the same members and named losses as "standard", 20 steps / 100
    # queries instead of 100 / 5000; the full budgets: the test above)
    cb, record = run(tmp_path, task, k, "quick")
    labels = [s.label for s in cb.test_specs]
    assert labels == [c["label"] for c in suite_configs("quick", task)]
    assert labels == [c["label"] for c in suite_configs("standard", task)]
    assert not cb.suites.sequential(Own(task, k), "test")  # dense suites attack every sample
    assert [a["attack"] for a in record["attacks"]] == labels
    metric = "dice" if task == "segmentation" else "mre"
    members = [a["metrics"][metric] for a in record["attacks"]]
    assert all(v == v for v in members)  # a number from every member, none NaN
    # the per-sample worst case is never better than any member (in the metric's direction)
    worst = record["ensemble"][0]["metrics"][metric]
    assert (worst <= min(members) + 1e-6) if task == "segmentation" else (worst >= max(members) - 1e-6)
    # the standard suite resolves for the adapter too (not run: see above)
    standard = AdversarialEvaluation(test_attacks="standard")
    standard.resolve_suites(Own(task, k))
    assert [s.label for s in standard.test_specs] == labels


def test_landmark_labels_map_to_a_smaller_heatmap() -> None:
    module = Own("landmarks", 1)
    adapter = module.robust_task
    heat = torch.zeros(1, 1, 2, 2)
    image = torch.zeros(1, 1, 4, 4)
    logits, labels = adapter.attack_loss_inputs(heat, {"image": image, "label": torch.tensor([[[3.0, 1.0]]])})
    # pixel-centre convention: (p + 0.5) / 2 - 0.5
    assert torch.allclose(labels, torch.tensor([[[1.25, 0.25, 1.0]]]))
    with pytest.raises(ValueError, match=r"landmark targets must be \[B, 1, 2\]"):
        adapter.attack_loss_inputs(heat, {"image": image, "label": torch.zeros(1, 2)})


def test_unknown_classes_warn_and_bad_num_classes_error() -> None:
    owner = nn.Linear(2, 2)
    metric = MeanOf(lambda o, y: (o.argmax(1) == y).float())
    adapter = RobustTaskAdapter(owner, owner, lambda o, y: o.sum(1), {"acc": metric})
    assert adapter.num_classes is None
    holder = nn.Module()
    holder.robust_task = adapter
    cb = AdversarialEvaluation(test_attacks="standard")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb.resolve_suites(holder)
    assert any("num_classes=K" in str(w.message) for w in caught)
    assert "apgd-t1" not in [s.label for s in cb.test_specs]
    with_k = RobustTaskAdapter(owner, owner, lambda o, y: o.sum(1), {"acc": metric}, num_classes=5)
    holder.robust_task = with_k
    cb.resolve_suites(holder)
    assert "apgd-t3" in [s.label for s in cb.test_specs]
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        RobustTaskAdapter(owner, owner, lambda o, y: o.sum(1), {"acc": metric}, num_classes=0)
