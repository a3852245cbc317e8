"""``medrobust.evaluate`` / ``medrobust evaluate`` on a torchvision detector trained in plain
PyTorch (no medrobust training code): a state dict + the user's network spec, the manifest of the
own-data loaders, the task's suite; and a clear error for each wrong input."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from lightning_modules.tasks.detection import detector_classes
from medrobust.evaluation import evaluate

#: a new user's own detector file: torchvision's FCOS on a two-layer backbone (its classes only)
USER_DETECTOR = textwrap.dedent('''
    from torch import nn
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator


    def tiny_fcos(num_classes: int = 2) -> FCOS:
        backbone = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        backbone.out_channels = 32
        anchors = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
        return FCOS(backbone, num_classes, anchor_generator=anchors, min_size=32, max_size=32,
                    image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], score_thresh=0.05)
''')


@pytest.fixture()
def user_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The user's ``user_detector.py``, importable (as their own package would be)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "user_detector.py").write_text(USER_DETECTOR)
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    import user_detector  # type: ignore[import-not-found]

    return importlib.reload(user_detector)


def squares(n: int, seed: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images ``[n, 3, 32, 32]`` in [0, 1] with one bright square each; class 0 large (8 px),
    class 1 small (4 px), as the example manifest draws them."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.rand(n, 3, 32, 32, generator=g)
    targets = []
    for i in range(n):
        side = 8 if i % 2 == 0 else 4
        y0, x0 = (int(v) for v in torch.randint(0, 32 - side, (2,), generator=g))
        x[i, :, y0:y0 + side, x0:x0 + side] = 1.0
        targets.append({"boxes": torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32),
                        "labels": torch.tensor([i % 2])})
    return x, targets


def train_plain(detector: nn.Module, steps: int) -> nn.Module:
    """What a new user's own training loop does (plain PyTorch)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(detector.parameters(), lr=0.003)
    detector.train()
    for step in range(steps):
        x, targets = squares(4, seed=step)
        loss = sum(detector(list(x), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return detector.eval()


FGSM = [{"name": "fgsm"}]


def test_tensors_give_the_bare_detectors_clean_map(user_detector, tmp_path: Path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    det = train_plain(user_detector.tiny_fcos(2), steps=10)
    x, targets = squares(6, seed=100)
    record = evaluate(det, (x, targets), task="detection", suite=FGSM, eps=[0.02, 0.05],
                      normalization="none", sanity="never", progress=False, out=tmp_path / "out")
    assert record.task == "detection"
    # the clean mAP is the bare detector's own on the same images (the wrapper changes nothing)
    with torch.no_grad():
        preds = det(list(x))
    by_hand = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    by_hand.update(preds, targets)
    assert record.clean["map"] == pytest.approx(float(by_hand.compute()["map"]), abs=1e-6)
    assert [a.attack for a in record.attacks] == ["fgsm", "fgsm"]
    # per image, the worst case is never better than clean (per-image AP@0.5; the dataset mAP is
    # not monotone in it: detections of different images are ranked together)
    lines = (tmp_path / "out" / "robustness_samples.csv").read_text().splitlines()
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert len(rows) == 6
    for row in rows:
        for eps in ("0.02", "0.05"):
            assert float(row[f"worst/{eps}/ap50"]) <= float(row["clean/ap50"]) + 1e-9, row


def test_detection_errors(user_detector, tmp_path: Path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    det = user_detector.tiny_fcos(2)
    x, targets = squares(4, seed=0)
    targets[3]["labels"] = torch.tensor([2])  # a class the 2-class detector does not have
    with pytest.raises(ValueError, match=r"box labels out of range \[0, 2\).*samples \[3\]"):
        evaluate(det, (x, targets), task="detection", suite=FGSM, eps=[0.02], normalization="none")
    with pytest.raises(ValueError, match="detection target 1: boxes"):
        bad = [dict(t) for t in targets[:3]] + [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([0])}]
        evaluate(det, (x, [bad[0], bad[3], *bad[1:3]]), task="detection", suite=FGSM, eps=[0.02],
                 normalization="none")
    with pytest.raises(ValueError, match="state the input normalisation"):
        evaluate(det, squares(4, 0), task="detection", suite=FGSM, eps=[0.02])
    # the data's classes must be the detector's
    from datamodules.manifest import ManifestDataModule, write_example_manifest

    manifest = write_example_manifest(tmp_path / "data", "detection", n=4, image_size=(32, 32))
    dm = ManifestDataModule(manifest=str(manifest), task="detection", split_fractions=(0.0, 0.0, 1.0),
                            split_file=None)
    with pytest.raises(ValueError, match="the detector has 3 object classes but the data has 2"):
        evaluate(user_detector.tiny_fcos(3), dm, task="detection", suite=FGSM, eps=[0.02], normalization="none")
    # a TorchScript detector hides the heads the per-image losses need
    scripted = torch.jit.script(user_detector.tiny_fcos(2))
    with pytest.raises(ValueError, match="detector is needed as an nn.Module"):
        evaluate(scripted, squares(4, 0), task="detection", suite=FGSM, eps=[0.02], normalization="none")
    # a model that is not a detector
    with pytest.raises(ValueError, match="cannot tell the object classes of a Sequential"):
        evaluate(nn.Sequential(nn.Conv2d(3, 2, 1)), squares(4, 0), task="detection", suite=FGSM, eps=[0.02],
                 normalization="none")


def test_detector_classes_of_torchvision_families() -> None:
    from torchvision.models.detection import (
        fasterrcnn_mobilenet_v3_large_fpn,
        retinanet_resnet50_fpn,
    )

    rcnn = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=4)
    assert detector_classes(rcnn) == (3, 1)  # class 0 is background
    retina = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    assert detector_classes(retina) == (4, 0)


@pytest.mark.slow  # ~15 s of CPU: 150 plain-PyTorch training steps and the quick suite
def test_a_torchvision_detector_state_dict_from_the_cli(user_detector, tmp_path: Path) -> None:  # noqa: ANN001
    """A new user's torchvision FCOS, trained in plain PyTorch, saved as a state dict and
    evaluated by the command with its network spec, on a detection manifest."""
    from datamodules.manifest import write_example_manifest
    from medrobust.cli_evaluate import main as evaluate_main

    torch.manual_seed(0)
    det = train_plain(user_detector.tiny_fcos(2), steps=150)
    torch.save(det.state_dict(), tmp_path / "detector.pt")
    manifest = write_example_manifest(tmp_path / "data", "detection", n=6, image_size=(32, 32))
    spec = {"class_path": "user_detector.tiny_fcos", "init_args": {"num_classes": 2}}
    out = tmp_path / "out"
    code = evaluate_main(["--model", str(tmp_path / "detector.pt"), "--net", json.dumps(spec),
                          "--data", str(manifest), "--task", "detection", "--suite", "quick",
                          "--eps", "0.02", "--no-normalization", "--out", str(out),
                          "--accelerator", "cpu", "--sanity", "never"])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"robustness.json", "robustness_samples.csv",
                                               "robustness.png", "report.md"}
    record = json.loads((out / "robustness.json").read_text())
    assert record["task"] == "detection" and record["subset"]["size"] == 6  # every manifest row
    assert [a["attack"] for a in record["attacks"]] == ["apgd-task", "apgd-dag", "apgd-dag_untargeted", "square"]
    assert record["clean"]["map"] > 0.1  # it learned something in its own loop
    lines = (out / "robustness_samples.csv").read_text().splitlines()
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert len(rows) == 6
    members = [f"{a['attack']}/0.02/ap50" for a in record["attacks"]]
    for row in rows:  # per image, the worst case is the worst member (and never above clean)
        assert float(row["worst/0.02/ap50"]) == min(float(row[m]) for m in [*members, "clean/ap50"]), row
