"""The own-model path (a LightningModule of the user's own + RobustTaskAdapter) runs the named
suites of every task: the suite is resolved from the adapter's task and classes (not the
LightningModule's, which has neither), targeted members appear for >= 4 classes, the dense
tasks' named attack losses get their (logits, labels) from the adapter, and a torchvision-style
detector gets detection's (the task loss, DAG's matched predictions, per-image AP@0.5, mAP)."""

from __future__ import annotations

import csv
import functools
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from callbacks import AdversarialEvaluation, RobustTaskAdapter
from lightning_modules.tasks import suite_configs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


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
        elif task == "landmarks":  # k heatmaps at the image's size
            self.model = nn.Conv2d(1, k, 3, padding=1)
            loss = lambda o, y: o.flatten(1).pow(2).mean(1)  # noqa: E731
            metrics = {"mre": LowerMeanOf(radial_error)}
            extra = {"per_sample_metric": radial_error}
        else:  # detection: a torchvision FCOS of k classes; loss, metrics: the adapter's defaults
            self.model = trained_detector(k)
            loss, metrics, extra = None, None, {}
        self.robust_task = RobustTaskAdapter(self, self.model, loss, metrics, task=task, **extra)

    def test_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        pass


def tiny_detector(k: int) -> nn.Module:
    """torchvision's FCOS on a one-stage backbone, for 16 × 16 single-channel images."""
    from lightning_modules.nets.detectors import tiny_fcos

    return tiny_fcos(k, in_channels=1, widths=(8,), out_channels=32, head_convs=1, min_size=16,
                     max_size=16, image_mean=[0.0], image_std=[1.0])


@functools.cache
def _trained_state(k: int) -> dict[str, Tensor]:
    """The detector after 120 plain-PyTorch steps on the 4 test images (clean mAP@0.5 = 1 for
    k = 2, 3, 5; < 1 s of CPU), so that the attacks have detections to break."""
    torch.manual_seed(0)
    det = tiny_detector(k).train()
    opt = torch.optim.Adam(det.parameters(), lr=0.003)
    x, targets = collate_detection(boxes_data(k, 4))
    for _ in range(120):
        loss = sum(det(list(x), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: v.detach().clone() for n, v in det.state_dict().items()}


def trained_detector(k: int) -> nn.Module:
    det = tiny_detector(k)
    det.load_state_dict(_trained_state(k))
    return det.eval()


def boxes_data(k: int, n: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """``n`` images ``[1, 16, 16]`` with one bright square each (class ``i % k``), torchvision's
    ``(image, {"boxes", "labels"})`` samples."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        x = 0.3 * torch.rand(1, 16, 16, generator=g)
        x0, y0 = (int(v) for v in torch.randint(0, 10, (2,), generator=g))
        x[:, y0:y0 + 6, x0:x0 + 6] = 1.0
        out.append((x, {"boxes": torch.tensor([[x0, y0, x0 + 6, y0 + 6]], dtype=torch.float32),
                        "labels": torch.tensor([i % k])}))
    return out


def collate_detection(samples: list) -> tuple[Tensor, list[dict[str, Tensor]]]:  # noqa: ANN001
    return torch.stack([x for x, _ in samples]), [t for _, t in samples]


def data(task: str, k: int, n: int = 4) -> TensorDataset:
    if task == "detection":
        return boxes_data(k, n)  # type: ignore[return-value]
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
        module, DataLoader(data(task, k, n), batch_size=4,
                           collate_fn=collate_detection if task == "detection" else None))
    return cb, cb.last_record["test"].to_dict()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_suites_through_the_adapter(tmp_path: Path, k: int) -> None:
    for suite in ("quick", "aa_budget"):
        cb, record = run(tmp_path, "classification", k, suite)
        labels = [s.label for s in cb.suites.test_specs]
        assert labels == [c["label"] for c in suite_configs(suite, "classification", num_classes=k)]
        assert ("apgd-t1" in labels) == (k >= 4 or suite == "aa_budget" and k >= 3)
        assert {a["attack"] for a in record["attacks"]} == set(labels)
        assert cb.suites.sequential(cb_module := Own("classification", k), "test")
        assert cb_module.robust_task.num_classes == k  # read from the MulticlassAccuracy


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_standard_suite_through_the_adapter(tmp_path: Path, k: int) -> None:
    # a large ε breaks every sample early: the sequential suite then skips the rest (fast)
    cb, record = run(tmp_path, "classification", k, "standard", eps=0.5)
    labels = [s.label for s in cb.suites.test_specs]
    targeted = ["apgd-t1", "apgd-t2", "apgd-t3"][: min(3, k - 1)] if k >= 4 else []
    assert labels == ["apgd-ce", "apgd-dlr", *targeted, "fmn", "square"]
    assert [a["attack"] for a in record["attacks"]] == labels
    assert record["suite_name"] == "standard" and record["sequential"] is True


DENSE = [(task, k) for task in ("segmentation", "landmarks", "detection") for k in (2, 3, 5)]
# the full budget once for detection (20-23 s): its members are those of "quick", which runs
# through the adapter for 2, 3 and 5 classes below
FULL_BUDGET = [(task, k) for task, k in DENSE if task != "detection" or k == 2]
METRIC = {"segmentation": "dice", "landmarks": "mre", "detection": "map"}


@pytest.mark.slow  # ~5 s each on an idle machine (Square 5000 on 2 samples of 4 × 4); detection
# (tiny FCOS, 2 images of 16 × 16): 20-23 s each at load 6 on 2 cores
@pytest.mark.parametrize("task,k", FULL_BUDGET)
def test_every_dense_suite_runs_through_the_adapter(tmp_path: Path, task: str, k: int) -> None:
    """The full budgets (APGD-100, Square 5000) end to end. ``aa_budget`` is the same suite for
    the dense tasks (AutoAttack's budget is classification's), so it is checked, not run twice."""
    suite = "standard"
    assert suite_configs("aa_budget", task) == suite_configs("standard", task)
    cb, record = run(tmp_path, task, k, suite, n=2)
    labels = [s.label for s in cb.suites.test_specs]
    assert labels == [c["label"] for c in suite_configs(suite, task)]
    assert [a["attack"] for a in record["attacks"]] == labels and record["suite_name"] == suite
    assert next(a for a in record["attacks"] if a["attack"] == "square")["steps"] == 5000
    metric = METRIC[task]
    assert all(a["metrics"][metric] == a["metrics"][metric] for a in record["attacks"])  # none NaN


@pytest.mark.parametrize("task,k", DENSE)
def test_dense_suites_through_the_adapter(tmp_path: Path, task: str, k: int) -> None:
    # "quick" on 4 samples (the same members and named losses as "standard", 20 steps / 100
    # queries instead of 100 / 5000; the full budgets: the test above)
    # detection: ε = 0.1 (at 0.05 the trained tiny FCOS keeps every image's AP@0.5)
    cb, record = run(tmp_path, task, k, "quick", eps=0.1 if task == "detection" else 0.05)
    labels = [s.label for s in cb.suites.test_specs]
    assert labels == [c["label"] for c in suite_configs("quick", task)]
    assert labels == [c["label"] for c in suite_configs("standard", task)]
    assert not cb.suites.sequential(Own(task, k), "test")  # dense suites attack every sample
    assert [a["attack"] for a in record["attacks"]] == labels
    metric = METRIC[task]
    members = [a["metrics"][metric] for a in record["attacks"]]
    assert all(v == v for v in members)  # a number from every member, none NaN
    worst = record["ensemble"][0]["metrics"][metric]
    if task == "detection":
        check_detection_worst_case(tmp_path, record, 0.1)
    else:  # the per-sample worst case is never better than any member (in the metric's direction)
        assert (worst <= min(members) + 1e-6) if task == "segmentation" else (worst >= max(members) - 1e-6)
    # the standard suite resolves for the adapter too (not run: see above)
    standard = AdversarialEvaluation(test_attacks="standard")
    standard.resolve_suites(Own(task, k))
    assert [s.label for s in standard.suites.test_specs] == labels


def check_detection_worst_case(folder: Path, record: dict, eps: float) -> None:
    """Detection: the dataset mAP is not monotone in per-image AP (detections of all images are
    ranked together), so the worst case is checked per image, in the per-sample file: never
    above clean or any member; and the attacks do break the trained detector."""
    assert record["clean"]["map_50"] == 1.0  # the trained detector finds every square
    lines = next(folder.rglob("robustness_samples.csv")).read_text().splitlines()
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert len(rows) == 4
    members = [f"{a['attack']}/{eps:g}/ap50" for a in record["attacks"]]
    for row in rows:
        assert float(row[f"worst/{eps:g}/ap50"]) == min(float(row[m]) for m in [*members, "clean/ap50"]), row
    # the DAG members attack the GT-matched locations (a DAG loss without matches would be 0
    # and leave every image at the clean AP), and the worst case breaks what they break
    dag = min(float(row[f"{m}/{eps:g}/ap50"]) for row in rows for m in ("apgd-dag", "apgd-dag_untargeted"))
    assert dag < 1.0, rows
    assert min(float(row[f"worst/{eps:g}/ap50"]) for row in rows) <= dag
    assert record["ensemble"][0]["metrics"]["map"] < record["clean"]["map"]


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
    assert "apgd-t1" not in [s.label for s in cb.suites.test_specs]
    with_k = RobustTaskAdapter(owner, owner, lambda o, y: o.sum(1), {"acc": metric}, num_classes=5)
    holder.robust_task = with_k
    cb.resolve_suites(holder)
    assert "apgd-t3" in [s.label for s in cb.suites.test_specs]
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        RobustTaskAdapter(owner, owner, lambda o, y: o.sum(1), {"acc": metric}, num_classes=0)


class CellDetector(nn.Module):
    """A detector of the user's own, not a torchvision class, in torchvision's call convention:
    one candidate box per 8 × 8 cell of a 16 × 16 image, class logits from a conv; in eval mode
    its detections carry ``logits`` (what DAG needs of a detector that is not FCOS / RetinaNet /
    R-CNN); in train mode the cross-entropy of the cell under each object."""

    CELLS = torch.tensor([[0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]], dtype=torch.float32)

    def __init__(self, k: int, logits: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, k, 8, stride=8)
        self.logits = logits

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        z = self.conv(torch.stack(images)).flatten(2).transpose(1, 2)  # [B, 4 cells, k]
        if self.training:
            from torchvision.ops import box_iou

            losses = []
            for zi, t in zip(z, targets or []):
                cell = box_iou(t["boxes"], self.CELLS).argmax(dim=1)
                losses.append(F.cross_entropy(zi[cell], t["labels"]))
            return {"loss_classifier": torch.stack(losses).mean()}
        out = []
        for zi in z:
            score, label = zi.softmax(dim=1).max(dim=1)
            out.append({"boxes": self.CELLS.clone(), "scores": score, "labels": label,
                        **({"logits": zi} if self.logits else {})})
        return out


class OwnDetector(L.LightningModule):
    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.robust_task = RobustTaskAdapter(self, self.detector, None, None, task="detection")

    def test_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        pass


def test_a_detector_of_the_users_own_runs_the_suite_with_its_logits(tmp_path: Path) -> None:
    cb = AdversarialEvaluation(test_attacks="quick", test_eps=[0.1], subset=None, plot=False, batch_size=4,
                               sanity="never", intervals="never", report=False)
    module = OwnDetector(CellDetector(3))
    L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=False, callbacks=[cb]).test(
        module, DataLoader(boxes_data(3, 4), batch_size=4, collate_fn=collate_detection))
    record = cb.last_record["test"].to_dict()
    assert [a["attack"] for a in record["attacks"]] == ["apgd-task", "apgd-dag", "apgd-dag_untargeted", "square"]
    assert all(a["metrics"]["map"] == a["metrics"]["map"] for a in record["attacks"])  # none NaN
    # DAG's inputs: each detection's logits and box beside the object it covers (IoU >= 0.5)
    adapter = module.robust_task
    images = torch.rand(1, 1, 16, 16)
    batch = adapter.as_batch((images, [{"boxes": torch.tensor([[8.0, 8.0, 16.0, 15.0]]), "labels": torch.tensor([2])}]))
    out = adapter.attack_model().eval()(batch["image"])
    pred, target = adapter.attack_loss_inputs(out, batch, inputs="matched")
    assert pred.shape == (1, 4, 3 + 4) and target.shape == (1, 4, 5)
    assert target[0, :, 0].tolist() == [-1, -1, -1, 2]  # only the cell under the object
    assert torch.equal(pred[0, :, :3], module.detector.conv(images).flatten(2).transpose(1, 2)[0])


def test_detection_models_and_batches_that_do_not_fit_are_named() -> None:
    images = torch.rand(2, 1, 16, 16)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([1])} for _ in range(2)]

    def outcome(detector: nn.Module, what: str = "detections") -> Any:  # noqa: ANN401
        adapter = OwnDetector(detector).robust_task
        batch = adapter.as_batch((images, targets))
        out = adapter.attack_model().eval()(batch["image"])
        if what == "detections":
            return adapter.per_sample_metric(out, batch)
        if what == "loss":
            return adapter.per_sample_loss(out, batch)
        return adapter.attack_loss_inputs(out, batch, inputs="matched")

    with pytest.raises(ValueError, match="must take torchvision's detector call"):
        outcome(nn.Conv2d(1, 2, 3))  # a tensor model, not a detector

    class Tensors(CellDetector):
        def forward(self, images, targets=None):  # noqa: ANN001, ANN201
            return self.conv(torch.stack(images)) if not self.training else {"loss": torch.stack(images).sum()}

    with pytest.raises(ValueError, match=r"in eval mode a detector must return one dict per image"):
        outcome(Tensors(2))

    class NoScores(CellDetector):
        def forward(self, images, targets=None):  # noqa: ANN001, ANN201
            out = super().forward(images, targets)
            return out if self.training else [{"boxes": d["boxes"], "labels": d["labels"]} for d in out]

    with pytest.raises(ValueError, match=r"image 0's detections lack \['scores'\]"):
        outcome(NoScores(2))

    class WideBoxes(CellDetector):
        def forward(self, images, targets=None):  # noqa: ANN001, ANN201
            out = super().forward(images, targets)
            return out if self.training else [{**d, "boxes": torch.zeros(4, 5)} for d in out]

    with pytest.raises(ValueError, match=r"image 0's detections have shapes .*'boxes': \(4, 5\)"):
        outcome(WideBoxes(2))

    class LossList(CellDetector):
        def forward(self, images, targets=None):  # noqa: ANN001, ANN201
            out = super().forward(images, targets)
            return list(out.values()) if self.training else out

    with pytest.raises(ValueError, match="in train mode, given \\(images, targets\\), a detector must return a "
                                         "non-empty dict of scalar loss tensors"):
        outcome(LossList(2), "loss")
    with pytest.raises(ValueError, match="DAG attack losses need the class logits"):
        outcome(CellDetector(2, logits=False), "matched")
    with pytest.raises(ValueError, match="TorchScript detector hides the heads"):
        OwnDetector(torch.jit.script(nn.Conv2d(1, 2, 3))).robust_task.attack_model()
    adapter = OwnDetector(CellDetector(2)).robust_task
    with pytest.raises(ValueError, match=r"detection targets \[1\] lack 'boxes' or 'labels'"):
        adapter.as_batch((images, [targets[0], {"boxes": torch.zeros(0, 4)}]))
    with pytest.raises(ValueError, match=r"detection target 0 must have 'boxes' \[N, 4\].*got \(1, 2\)"):
        adapter.as_batch((images, [{"boxes": torch.zeros(1, 2), "labels": torch.tensor([0])}, targets[1]]))
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        adapter.as_batch((images[:1], targets))
    with pytest.raises(ValueError, match="takes no attack_loss_inputs"):
        RobustTaskAdapter(nn.Module(), CellDetector(2), None, None, task="detection",
                          attack_loss_inputs=lambda o, t, x: (o, t))
    with pytest.raises(TypeError, match="None only for task='detection'"):
        RobustTaskAdapter(nn.Module(), nn.Linear(2, 2), None, None)
    # a list of same-size images (torchvision's collate) and dict batches are taken as well
    as_list = adapter.as_batch((list(images), targets))
    as_dict = adapter.as_batch({"image": images, "boxes": [t["boxes"] for t in targets],
                                "labels": [t["labels"] for t in targets]})
    assert torch.equal(as_list["image"], images) and torch.equal(as_dict["image"], images)


def test_an_rcnn_detector_keeps_its_own_labels() -> None:
    """R-CNN's class 0 is background: the user's targets are 1… as the detector trained on them,
    and the adapter shifts nothing (its DAG targets are the head's indices, its detections the
    detector's own labels)."""
    from lightning_modules.nets.detectors import tiny_fasterrcnn

    torch.manual_seed(0)
    detector = tiny_fasterrcnn(3, in_channels=1, widths=(8,), out_channels=32, min_size=16, max_size=16,
                               image_mean=[0.0], image_std=[1.0])
    adapter = OwnDetector(detector).robust_task
    x, targets = collate_detection(boxes_data(2, 2))
    targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 1, 2: object classes
    batch = adapter.as_batch((x, targets))
    wrapper = adapter.attack_model().eval()
    assert wrapper.label_offset == 0 and wrapper.detector is detector and adapter.attack_model() is wrapper
    out = wrapper(batch["image"])
    loss = adapter.per_sample_loss(out, batch)
    assert loss.shape == (2,) and bool(torch.isfinite(loss).all())
    pred, target = adapter.attack_loss_inputs(out, batch, inputs="matched")
    assert pred.shape[-1] == 3 + 4  # background + 2 classes, and the box
    assert set(target[..., 0].unique().tolist()) <= {-1.0, 1.0, 2.0}
    with torch.no_grad():
        bare = detector(list(x))
    shown = adapter.predict_for_display(out)
    assert [torch.equal(a["labels"], b["labels"]) for a, b in zip(shown, bare)] == [True, True]
