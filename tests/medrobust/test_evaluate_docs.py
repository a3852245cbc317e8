"""docs/evaluate.md's recipes run as written (on tiny data, the ``quick`` suite in place of
``standard``), Python and command line, and the line counts the page states are the snippets'."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from datamodules.manifest import write_example_manifest
from medrobust.cli import main as cli_main

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluate.md"
BLOCK = re.compile(r"<!-- (run|file): (\S+) -->\n```(\w+)\n(.*?)```", re.S)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def blocks() -> dict[str, tuple[str, str]]:
    """``name → (language, code)`` of every marked block of the page."""
    found = {name: (lang, code) for _, name, lang, code in BLOCK.findall(DOC.read_text())}
    assert set(found) == {"torchscript", "torchscript-cli", "monai", "monai-cli", "my_detector.py",
                          "detector", "detector-cli"}, sorted(found)
    return found


def code_lines(code: str) -> int:
    """Non-blank lines that are not comments."""
    return sum(1 for line in code.splitlines() if line.strip() and not line.strip().startswith("#"))


def stated_lines(name: str) -> int:
    """The ``N lines:`` the page states in the paragraph before the block ``name``."""
    text = DOC.read_text()
    before = text[: text.index(f"<!-- run: {name} -->")]
    return int(re.findall(r"(\d+) lines:", before)[-1])


def test_stated_line_counts_are_the_snippets() -> None:
    found = blocks()
    counts = {name: code_lines(found[name][1]) for name in ("torchscript", "monai", "detector")}
    assert counts == {name: stated_lines(name) for name in counts}
    table = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| ([^|]+?) \|.*\| (\d+) \(or one command\) \|$",
                                                             DOC.read_text(), re.M)}
    assert table == {"TorchScript classifier": counts["torchscript"],
                     "MONAI segmentation state dict": counts["monai"],
                     "torchvision detector": counts["detector"]}


def prepare(name: str, folder: Path) -> None:
    """What the user has before the recipe: a model file and a test set's manifest."""
    torch.manual_seed(0)
    if name == "torchscript":
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                            nn.Linear(16, 2))
        torch.jit.script(net).save(str(folder / "classifier.ts"))
        write_example_manifest(folder / "xray_test", "classification", n=6, image_size=(16, 16))
    elif name == "monai":
        from monai.networks.nets import BasicUNet

        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(8, 8, 16, 32, 64, 8))
        torch.save(net.state_dict(), folder / "unet_state_dict.pt")
        write_example_manifest(folder / "lesions_test", "segmentation", n=4, image_size=(32, 32))
    else:
        (folder / "my_detector.py").write_text(blocks()["my_detector.py"][1])
        import importlib
        import sys

        sys.modules.pop("my_detector", None)
        torch.save(importlib.import_module("my_detector").build_detector().state_dict(),
                   folder / "detector_state_dict.pt")
        write_example_manifest(folder / "cells_test", "detection", n=4, image_size=(32, 32))


def quick(text: str) -> str:
    """The recipe with the quick suite (the same members, 20 steps / 100 queries)."""
    assert text.count("standard") == 1
    return text.replace("standard", "quick")


@pytest.mark.parametrize("name", ["torchscript", "monai", "detector"])
def test_recipe_runs_as_written(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    if name == "monai":
        pytest.importorskip("monai")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the user's my_detector.py, as `python script.py` finds it
    monkeypatch.setenv("MEDROBUST_PROGRESS", "0")
    prepare(name, tmp_path)
    lang, code = blocks()[name]
    assert lang == "python"
    exec(compile(quick(code), f"docs/evaluate.md:{name}", "exec"), {"__name__": "__recipe__"})  # noqa: S102
    out = next((tmp_path / "results").iterdir())
    record = json.loads((out / "robustness.json").read_text())
    assert record["suite_name"] == "quick" and record["task"] in ("classification", "segmentation", "detection")
    assert {p.name for p in out.iterdir()} >= {"robustness.json", "robustness_samples.csv", "robustness.png",
                                               "report.md"}
    assert capsys.readouterr().out.strip()  # the robust area, printed

    # the same recipe from the command line (which finds my_detector.py in the working
    # directory itself: a console script's sys.path does not hold it)
    import sys

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(tmp_path), "")])
    sys.modules.pop("my_detector", None)
    lang, command = blocks()[f"{name}-cli"]
    assert lang == "bash"
    args = shlex.split(quick(command).replace("\\\n", " "))
    assert args[:2] == ["medrobust", "evaluate"]
    cli_out = tmp_path / "cli_results"
    args[args.index("--out") + 1] = str(cli_out)
    with pytest.raises(SystemExit) as exc:
        cli_main(args[1:] + ["--accelerator", "cpu"])
    assert exc.value.code == 0
    from_cli = json.loads((cli_out / "robustness.json").read_text())
    assert from_cli["task"] == record["task"] and from_cli["suite_name"] == "quick"
    assert from_cli["clean"] == record["clean"]  # the same model and samples either way
