"""``medrobust.evaluate``: any model form, any data form, the same record as the callback, and a
clear error for each wrong input (a model file is code: a pickle never runs without trust)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from callbacks import AdversarialEvaluation
from datamodules.info import DataInfo
from lightning_modules import ClassificationModule
from lightning_modules.batch import DictDataset
from medrobust.evaluation import evaluate
from medrobust.model_loading import load_model

MEAN_STD = {"mean": 0.5, "std": 0.25}


def classifier(k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, k))


def tensors(n: int = 6, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % k


#: a cheap suite for the tests of model and data forms (the named suites: the callback test)
CHEAP = [{"name": "pgd", "steps": 2, "random_start": False}, {"name": "fgsm"}]


def run(model, data=None, **kw):  # noqa: ANN001, ANN201
    kw.setdefault("normalization", MEAN_STD)
    kw.setdefault("suite", CHEAP)
    kw.setdefault("sanity", "never")
    kw.setdefault("eps", [0.05, 0.1])
    return evaluate(model, data if data is not None else tensors(), task=kw.pop("task", "classification"),
                    progress=False, **kw)


def numbers(record) -> dict:  # noqa: ANN001
    """The record without what changes from run to run (wall times, compute seconds, dates)."""
    d = record.to_dict()
    return {k: d.get(k) for k in ("clean", "attacks", "ensemble", "robust_area", "intervals", "sanity", "task")}


def test_same_record_as_the_callback(tmp_path: Path) -> None:
    model = classifier()
    x, y = tensors()
    mine = run(model, (x, y), out=tmp_path / "ev", seed=1, suite="quick", sanity="test")
    # by hand: the task module around the same model (same normalisation) + the callback
    cb = AdversarialEvaluation(test_attacks="quick", test_eps=[0.05, 0.1], subset=None, seed=1)
    info = DataInfo(task="classification", in_channels=1, image_size=(4, 4), num_classes=3)
    module = ClassificationModule(net=model, data_info=info, mean=0.5, std=0.25)
    L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path / "cb", enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=False, callbacks=[cb]).test(
        module, torch.utils.data.DataLoader(DictDataset(torch.utils.data.TensorDataset(x, y)), batch_size=32))
    theirs = cb.last_record["test"]
    assert numbers(mine) == numbers(theirs)
    assert mine.intervals  # intervals and sanity flags, as the callback writes them at test
    written = {p.name for p in (tmp_path / "ev").iterdir()}
    assert {"robustness.json", "robustness_samples.csv", "robustness.png", "report.md"} <= written
    assert json.loads((tmp_path / "ev" / "robustness.json").read_text())["clean"] == mine.to_dict()["clean"]


def test_model_files(tmp_path: Path) -> None:
    import medrobust

    assert medrobust.evaluate is evaluate  # exported from the package
    model = classifier()
    reference = numbers(run(model))
    script = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(model), str(script))
    assert numbers(run(str(script))) == reference
    exported = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 4, 4),), dynamic_shapes=({0: batch},)),
                      str(exported))
    assert numbers(run(exported)) == reference
    state = tmp_path / "weights.pt"
    torch.save(model.state_dict(), state)
    with pytest.raises(ValueError, match="is a state dict; give the network"):
        run(state)
    spec = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 16, "out_features": 3}}
    with pytest.raises(RuntimeError, match="state_dict"):  # keys 0.weight… do not fit a bare Linear
        run(state, net=spec)
    assert numbers(run(state, net=classifier(3))) == reference


def test_a_pickle_runs_no_code_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Payload(), protocol=4))
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"model": Payload()}, zipped)
    for path in (evil, zipped):
        with pytest.raises(ValueError, match="unpickling runs code.*trusted=True"):
            run(path)
        assert not marker.exists()
    whole = tmp_path / "whole.pt"
    torch.save(classifier(), whole)
    with pytest.raises(ValueError, match="trusted=True"):
        load_model(whole)
    loaded, _ = load_model(whole, trusted=True)
    assert isinstance(loaded, nn.Sequential)


def test_not_a_model_and_wrong_forms(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="is not a model file"):
        run(text)
    tensor_file = tmp_path / "t.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="holds a Tensor, not a model"):
        run(tensor_file)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="nn.Module or a file path"):
        run(42)
    with pytest.raises(TypeError, match="data must be a datamodule"):
        run(classifier(), data=42)


def test_normalisation_is_stated_and_checked() -> None:
    with pytest.raises(ValueError, match="state the input normalisation"):
        run(classifier(), normalization=None)
    # a callable and (mean, std) give the same numbers as the dict
    ref = numbers(run(classifier()))
    assert numbers(run(classifier(), normalization=lambda x: (x - 0.5) / 0.25)) == ref
    assert numbers(run(classifier(), normalization=(0.5, 0.25))) == ref
    # a wrapper that does not reproduce the bare model's output is refused
    calls = {"n": 0}

    def drifting(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return x + calls["n"]

    with pytest.raises(ValueError, match="clean output differs from the bare model"):
        run(classifier(), normalization=drifting)


def test_clean_accuracy_is_the_bare_models() -> None:
    """The issue's case: a model that is right on every sample scores 1.0 clean (no silent
    Normalize(0.5, 0.25) in front of it)."""
    x, _ = tensors(8)
    model = classifier(2)
    y = model(x).argmax(dim=1)
    record = run(model, (x, y), normalization="none")
    assert record.clean["accuracy"] == 1.0


def test_output_and_labels_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="labels out of range \\[0, 3\\).*samples \\[5\\]"):
        x, y = tensors(6)
        y[5] = 7
        run(classifier(3), (x, y))
    with pytest.raises(ValueError, match="does not fit the classification task"):
        run(nn.Conv2d(1, 3, 1), tensors())
    with pytest.raises(ValueError, match="num_classes=4 but the model outputs 3"):
        run(classifier(3), num_classes=4)
    with pytest.raises(ValueError, match="task must be one of"):
        run(classifier(3), task="segmenation")
    with pytest.raises(ValueError, match="detection targets y must be a list of 6 dicts"):
        run(classifier(3), task="detection")  # labels where boxes are needed


def test_l2_threat_model_reaches_every_member(tmp_path: Path) -> None:
    record = run(classifier(), norm="l2", eps=[0.5], suite="quick")
    assert {a.norm for a in record.attacks} == {"l2"}


def test_segmentation_and_landmarks_from_tensors() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 6, 6)
    seg_suite = [{"name": "apgd", "steps": 3, "loss": "dice", "label": "apgd-dice"},
                 {"name": "square", "steps": 5, "loss": "seg_margin", "label": "square"}]
    seg = run(nn.Conv2d(1, 2, 3, padding=1), (x, (x[:, 0] > 0.5).long()), task="segmentation",
              normalization="none", eps=[0.05], suite=seg_suite)
    assert "dice" in seg.clean
    assert {a.attack for a in seg.attacks} == {"apgd-dice", "square"}
    pts = torch.tensor([[[1.0, 2.0], [4.0, 3.0]]]).repeat(4, 1, 1)
    pts[0, 1] = float("nan")  # a missing point
    lm_suite = [{"name": "apgd", "steps": 3, "loss": "soft_argmax", "label": "apgd-soft_argmax"},
                {"name": "square", "steps": 5, "loss": "peak_margin", "label": "square"}]
    lm = run(nn.Conv2d(1, 2, 3, padding=1), (x, pts), task="landmarks", normalization="none", eps=[0.05],
             suite=lm_suite)
    assert "mre" in lm.clean
    assert {a.attack for a in lm.attacks} == {"apgd-soft_argmax", "square"}


def test_a_manifest_and_a_datamodule(tmp_path: Path) -> None:
    from datamodules.manifest import ManifestDataModule, write_example_manifest

    path = write_example_manifest(tmp_path, "classification", n=10, image_size=(4, 4))
    # a manifest given by path is the evaluation set: all of its rows (no seeded split, no file)
    dm = ManifestDataModule(manifest=str(path), task="classification", channels=1,
                            split_fractions=(0.0, 0.0, 1.0), split_file=None)
    k = dm.info.num_classes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, k))
    from_path = run(model, path, normalization="none")
    from_dm = run(model, dm, normalization="none")
    assert numbers(from_path) == numbers(from_dm)
    assert from_path.split == "test" and from_path.subset.size == from_path.subset.of == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "manifest.csv"]  # nothing written beside it
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(16, k + 1))  # one class too many for the data
    with pytest.raises(ValueError, match=rf"does not fit the classification task.*\[B, {k}\]"):
        run(wrong, dm, normalization="none")


def test_a_medrobust_checkpoint_carries_its_normalisation(tmp_path: Path) -> None:
    info = DataInfo(task="classification", in_channels=1, image_size=(4, 4), num_classes=3, num_train=6)
    module = ClassificationModule(data_info=info, mean=0.4, std=0.2)  # the default small CNN
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, max_steps=1,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    x, y = tensors()
    trainer.fit(module, torch.utils.data.DataLoader(DictDataset(torch.utils.data.TensorDataset(x, y)), batch_size=6))
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match="carries its own normalisation"):
        run(path)
    from_file = run(path, normalization=None)
    # the same numbers as the trained pipeline (its Normalize(0.4, 0.2) inside) given as a module
    module.eval()
    assert numbers(from_file) == numbers(run(module.attack_model(), normalization="none"))


@pytest.mark.slow  # ~15 s of CPU: a MONAI U-Net under the quick segmentation suite
def test_a_monai_segmentation_state_dict_from_the_cli(tmp_path: Path) -> None:
    """A new user's MONAI network, given as a state dict + its spec, evaluated by the command."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    from medrobust.cli_evaluate import main as evaluate_main

    spec = {"class_path": "monai.networks.nets.BasicUNet",
            "init_args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 4, 4, 4, 4, 4]}}
    torch.manual_seed(0)
    net = monai_nets.BasicUNet(**spec["init_args"])
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    from datamodules.manifest import write_example_manifest

    manifest = write_example_manifest(tmp_path / "data", "segmentation", n=6, image_size=(32, 32))
    code = evaluate_main(["--model", str(tmp_path / "unet.pt"), "--net", json.dumps(spec),
                          "--data", str(manifest), "--task", "segmentation", "--suite", "quick",
                          "--eps", "0.02", "--no-normalization", "--out", str(tmp_path / "out"),
                          "--accelerator", "cpu", "--subset", "2", "--sanity", "never"])
    assert code == 0
    record = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert record["task"] == "segmentation" and "dice" in record["clean"]
    assert {a["attack"] for a in record["attacks"]} >= {"apgd-mask_ce", "apgd-dice", "square"}


def test_a_data_folder(tmp_path: Path) -> None:
    """A folder in a layout medrobust reads: a manifest inside it, or images/ + masks/."""
    from datamodules.manifest import write_example_manifest

    folder = tmp_path / "lesions"
    manifest = write_example_manifest(folder, "segmentation", n=4, image_size=(8, 8))
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1)
    seg = {"task": "segmentation", "normalization": "none", "eps": [0.05]}
    from_manifest = run(model, manifest, **seg)
    from_folder = run(model, folder, **seg)  # finds manifest.csv
    manifest.unlink()
    from_pairs = run(model, folder, **seg)  # images/ + masks/, paired by file stem
    assert numbers(from_folder) == numbers(from_manifest) == numbers(from_pairs)
    assert from_pairs.subset.size == 4
    assert sorted(p.name for p in folder.iterdir()) == ["images", "masks"]  # nothing written there
    with pytest.raises(FileNotFoundError, match="has no layout medrobust reads"):
        run(classifier(), folder / "images")


@pytest.mark.slow  # two runs of the command, one of them with 2 DDP processes (gloo, CPU)
def test_the_command_under_ddp_gives_the_single_process_record(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from datamodules.manifest import write_example_manifest

    torch.manual_seed(0)
    torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 2))).save(str(tmp_path / "model.ts"))
    write_example_manifest(tmp_path / "data", "classification", n=8, image_size=(8, 8))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    records = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        out = tmp_path / f"out{devices}"
        proc = subprocess.run(
            [sys.executable, "-m", "medrobust.cli", "evaluate", "--model", "model.ts", "--data", "data/manifest.csv",
             "--task", "classification", "--suite", "quick", "--eps", "0.004", "0.008", "--no-normalization",
             "--out", str(out), "--accelerator", "cpu", "--devices", str(devices), "--strategy", strategy,
             "--batch-size", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("[medrobust] written to") == 1  # rank 0 only
        record = json.loads((out / "robustness.json").read_text())
        records[devices] = ({k: record[k] for k in ("clean", "attacks", "ensemble", "robust_area", "intervals")},
                            (out / "robustness_samples.csv").read_text())
    assert records[2] == records[1]
