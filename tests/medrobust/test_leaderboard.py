"""``medrobust evaluate`` from the command line (a TorchScript classifier on a manifest, no
medrobust training code) and ``medrobust leaderboard`` over several records."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from callbacks.leaderboard import build_board, collect_records
from callbacks.leaderboard import main as leaderboard_main
from callbacks.record import RobustnessRecord
from medrobust.cli import main as cli_main
from medrobust.evaluation import evaluate

CHEAP = [{"name": "pgd", "steps": 2, "random_start": False}, {"name": "fgsm"}]


def three_records(root: Path) -> list[Path]:
    """Three classifiers of different robustness evaluated on the same tensors (intervals on):
    the mean-brightness rule with more and more weight noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 4, 4, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    outs = []
    for i, noise in enumerate((0.0, 1.0, 3.0)):
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        with torch.no_grad():
            w = torch.ones(16) + noise * torch.randn(16, generator=g)
            model[1].weight.copy_(torch.stack([-w, w]))
            model[1].bias.copy_(torch.tensor([0.5, -0.5]) * w.sum())
        out = root / f"model_{i}"
        evaluate(model, (x, y), task="classification", suite=CHEAP, eps=[0.02, 0.1], normalization="none",
                 out=out, sanity="never", progress=False)
        outs.append(out)
    return outs


def test_leaderboard_sorts_and_shows_intervals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dirs = three_records(tmp_path)
    records = collect_records([tmp_path])
    assert len(records) == 3
    board = build_board(records)
    assert sorted(name for name, _, _ in board.rows) == ["model_0", "model_1", "model_2"]
    areas = [RobustnessRecord.load(tmp_path / name / "robustness.json").robust_area.value
             for name, _, _ in board.rows]
    assert len(set(areas)) == 3 and areas == sorted(areas, reverse=True)  # best first
    assert board.rows[0][0] == "model_0"  # the noiseless rule is the most robust
    md = board.markdown()
    assert "robust area" in md and "worst accuracy @ 0.1" in md
    assert md.count("[") >= 3 * 4  # every cell of every row has its interval
    # sort by the worst case at ε = 0.02, and by clean accuracy
    by_eps = build_board(records, sort="accuracy@0.02")
    vals = [r.value("accuracy", "ensemble", 0.02) for r in
            (RobustnessRecord.load(tmp_path / n / "robustness.json") for n, _, _ in by_eps.rows)]
    assert vals == sorted(vals, reverse=True)
    # any metric the records state the direction of (their task's metric objects) sorts; a
    # record without directions (an older file) states only its robust-area metric's
    by_bacc = build_board(records, sort="balanced_accuracy@0.02")
    bacc = [r.value("balanced_accuracy", "ensemble", 0.02) for r in
            (RobustnessRecord.load(tmp_path / n / "robustness.json") for n, _, _ in by_bacc.rows)]
    assert bacc == sorted(bacc, reverse=True)
    older = [(n, dataclasses.replace(r, higher_is_better=None)) for n, r in records]
    assert [n for n, _, _ in build_board(older, sort="accuracy@0.02").rows] == [n for n, _, _ in by_eps.rows]
    with pytest.raises(ValueError, match="do not state whether larger 'balanced_accuracy' is better"):
        build_board(older, sort="balanced_accuracy@0.02")
    # a record file given directly is named by its folder
    assert collect_records([dirs[1] / "robustness.json"])[0][0] == "model_1"
    # CSV: value and interval columns, one row per record
    rows = list(csv.DictReader(io.StringIO(board.csv())))
    assert len(rows) == 3 and float(rows[0]["robust area ci_low"]) <= float(rows[0]["robust area"])
    # the command
    assert leaderboard_main([str(tmp_path), "--csv", str(tmp_path / "board.csv")]) == 0
    printed = capsys.readouterr().out
    assert printed == md
    assert (tmp_path / "board.csv").read_text() == board.csv()
    with pytest.raises(ValueError, match="unknown metric 'dice'"):
        build_board(records, sort="dice@0.02")
    with pytest.raises(ValueError, match="is not a number"):
        build_board(records, sort="accuracy@big")


def test_bad_and_mixed_records_are_named(tmp_path: Path) -> None:
    three_records(tmp_path)
    bad = tmp_path / "broken" / "robustness.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken"):
        collect_records([tmp_path])
    bad.unlink()
    data = json.loads((tmp_path / "model_0" / "robustness.json").read_text())
    data["task"] = "segmentation"
    data["robust_area"]["metric"] = "dice"
    data["clean"]["dice"] = data["clean"].pop("accuracy")
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "robustness.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"mix tasks(.|\n)*seg: task 'segmentation', metric 'dice'"):
        build_board(collect_records([tmp_path]))
    with pytest.raises(SystemExit):
        leaderboard_main([str(tmp_path / "nowhere")])
    # a record a SIGTERM cut short is marked in its row
    (tmp_path / "seg" / "robustness.json").unlink()
    data = json.loads((tmp_path / "model_1" / "robustness.json").read_text())
    data["incomplete"] = {"reason": "SIGTERM", "samples_evaluated": 4, "samples_planned": 12}
    (tmp_path / "model_1" / "robustness.json").write_text(json.dumps(data))
    notes = {name: note for name, _, note in build_board(collect_records([tmp_path])).rows}
    assert notes["model_1"] == "⚠ incomplete (4 of 12 samples)" and notes["model_0"] == ""


def test_cli_evaluate_a_torchscript_classifier_on_a_manifest(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from datamodules.manifest import ManifestDataModule, write_example_manifest

    manifest = write_example_manifest(tmp_path / "data", "classification", n=10, image_size=(4, 4))
    info = ManifestDataModule(manifest=str(manifest), task="classification").info
    # a new user's own loop, in plain PyTorch: read the manifest's rows, train, script the model
    import numpy as np
    from PIL import Image

    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["label"] for r in rows})
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(manifest.parent / r["image"]), dtype=np.float32) / 255)
                     for r in rows]).unsqueeze(1)
    y = torch.tensor([names.index(r["label"]) for r in rows])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * info.in_channels, info.num_classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model((x - 0.5) / 0.25), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    own_accuracy = float((model((x - 0.5) / 0.25).argmax(1) == y).float().mean())
    assert own_accuracy >= 0.8
    script = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(model), str(script))
    args = ["evaluate", "--model", str(script), "--data", str(manifest), "--task", "classification",
            "--suite", "quick", "--eps", "0.01", "0.02", "--out", str(tmp_path / "out"),
            "--mean", "0.5", "--std", "0.25", "--accelerator", "cpu"]
    with pytest.raises(SystemExit) as done:
        cli_main(args)
    assert done.value.code == 0
    assert "clean accuracy" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert record["subset"]["size"] == 10  # every row of the manifest
    assert record["clean"]["accuracy"] == pytest.approx(own_accuracy)  # the user's own number
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"robustness.json", "robustness_samples.csv", "robustness.png", "report.md"} <= written
    # no normalisation stated: one line naming the fix, no traceback
    with pytest.raises(SystemExit) as failed:
        cli_main([a for a in args if a not in ("--mean", "0.5", "--std", "0.25")])
    assert failed.value.code == 2
    err = capsys.readouterr().err
    assert "state the input normalisation" in err and "Traceback" not in err
