"""The shipped own-data configs (configs/manifest/) say what they do: the image size they resize
to, the split file's real name, and a method switch on the command line that works as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from datamodules.manifest import write_example_manifest
from train import cli_main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "manifest").glob("*.yaml"))
README = Path(__file__).resolve().parents[2] / "README.md"


def header(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


def prose(text: str) -> str:
    """Comment lines as one line of words."""
    return " ".join(line.lstrip("#").strip() for line in text.splitlines())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_header_states_the_resize(path: Path) -> None:
    size = yaml.safe_load(path.read_text())["data"]["init_args"]["image_size"]
    text = prose(header(path))
    assert f"resized to image_size below ({size[0]} x {size[1]};" in text
    assert "image size are inferred" not in text


def sat_flags(text: str) -> list[str]:
    line = next(x for x in text.splitlines() if "--model.init_args.method lightning_modules.methods.SAT" in x)
    return shlex.split(line.lstrip("#").strip().strip("`"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_documented_sat_switch_works(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = sat_flags(header(path))
    assert flags == sat_flags(README.read_text().replace("`\n(AMAT", "\n(AMAT"))  # the README says the same
    task = "segmentation" if path.stem.startswith("segmentation") else path.stem
    manifest = write_example_manifest(tmp_path / "data", task, n=10, image_size=(16, 16))
    if path.stem == "segmentation_folders":
        data = ["--data.init_args.images_dir", str(tmp_path / "data" / "images"),
                "--data.init_args.masks_dir", str(tmp_path / "data" / "masks")]
    else:
        data = ["--data.init_args.manifest", str(manifest)]
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--config", str(path), *data, *flags, "--print_config"])
    assert exc.value.code in (0, None)
    method = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["method"]
    assert method["class_path"] == "lightning_modules.methods.SAT" and method["init_args"]["eps"] == 0.004


def test_readme_names_the_split_file_the_code_writes(tmp_path: Path) -> None:
    from datamodules.manifest import ManifestDataModule

    text = " ".join(README.read_text().split())
    assert re.search(r"written to `<manifest stem>\.split\.json` beside the manifest "
                     r"\(`data/manifest\.csv` → `data/manifest\.split\.json`\)", text)
    manifest = write_example_manifest(tmp_path / "data", "classification", n=10, image_size=(8, 8))
    ManifestDataModule(manifest=str(manifest), task="classification").setup("fit")
    assert (tmp_path / "data" / "manifest.split.json").is_file()
