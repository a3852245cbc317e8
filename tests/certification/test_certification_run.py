"""Certification of a whole model on a dataset (``medrobust.certify``): the record's new
``certified`` key with n0, n, α, σ, batch and intervals, the per-sample columns on the evaluated
samples, the curve beside the empirical L2 curve, the report section; denoised smoothing; the task
modules' certifications; and a cross-check against IBM ART's randomized smoothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from callbacks.certified_record import certify_samples
from callbacks.per_sample import SampleTable
from callbacks.record import RobustnessRecord
from certification import NoiseSampler, SmoothedClassifier, certification_for
from certification.statistics import clopper_pearson_lower
from datamodules.info import DataInfo
from lightning_modules import ClassificationModule, Denoise, LandmarkModule, SegmentationModule
from lightning_modules.batch import DictDataset
from lightning_modules.methods import GaussianAugment
from medrobust.smoothing import certify, denoised_model

CHEAP = [{"name": "pgd", "norm": "l2", "steps": 3, "random_start": False}]


def blobs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 1×6×6 images in [0, 1]: a bright square top-left or bottom-right."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.1 * torch.rand(n, 1, 6, 6, generator=g)
    x[y == 0, :, :3, :3] += 0.8
    x[y == 1, :, 3:, 3:] += 0.8
    return x, y


def fit(module: L.LightningModule, x: torch.Tensor, y: torch.Tensor, root: Path, steps: int = 30) -> Path:
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=root, max_steps=steps,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    loader = torch.utils.data.DataLoader(DictDataset(torch.utils.data.TensorDataset(x, y)), batch_size=16,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer.fit(module, loader)
    path = root / f"{module.method.name}.ckpt"
    trainer.save_checkpoint(path)
    return path


def small_net() -> dict:
    return {"class_path": "lightning_modules.nets.SmallCNN", "init_args": {"features": [8], "convs_per_stage": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("certify_models")
    torch.manual_seed(0)
    info = DataInfo(task="classification", in_channels=1, image_size=(6, 6), num_classes=2, num_train=64)
    x, y = blobs(64)
    noise = ClassificationModule(net=small_net(), data_info=info, method=GaussianAugment(sigma=0.25), lr=0.01)
    torch.manual_seed(0)
    clean = ClassificationModule(net=small_net(), data_info=info, lr=0.01)
    torch.manual_seed(0)
    den = ClassificationModule(net=small_net(), data_info=info, lr=0.01,
                               method=Denoise(noises=["gaussian"], gaussian_std=0.5))
    return {"noise": fit(noise, x, y, root), "clean": fit(clean, x, y, root), "denoise": fit(den, x, y, root, 10)}


def test_certify_writes_record_samples_curve_and_report(trained: dict[str, Path], tmp_path: Path) -> None:
    x, y = blobs(24, seed=1)
    out = tmp_path / "noise"
    record = certify(trained["noise"], (x, y), task="classification", sigmas=[0.12, 0.25], radii=[0.1, 0.3],
                     n0=20, n=200, alpha=0.001, batch=100, out=out, suite=CHEAP, subset=16, sanity="never", progress=False)
    assert isinstance(record, RobustnessRecord)
    # new keys only: the empirical record is intact, "certified" holds one entry per σ
    assert [e["sigma"] for e in record.certified] == [0.12, 0.25]
    entry = record.certification(0.25)
    for key, value in {"n0": 20, "n": 200, "alpha": 0.001, "batch": 100, "samples": 16, "seed": 0}.items():
        assert entry[key] == value, key
    assert [row["radius"] for row in entry["curve"]] == [0.0, 0.1, 0.3]
    assert all(a.norm == "l2" for a in record.attacks) and sorted({a.eps for a in record.attacks}) == [0.1, 0.3]
    # the per-sample file: the evaluated samples, certified columns consistent with the record
    table = SampleTable.load(out / "robustness_samples.csv")
    assert sorted(table.sample_ids.tolist()) == sorted(record.subset.indices)
    radius = table.column("certified-s0.25/radius")
    for row in entry["curve"]:
        col = table.column(f"certified-s0.25/{row['radius']:g}/accuracy")
        assert row["accuracy"] == pytest.approx(col.mean())
        assert set(np.unique(col)) <= {0.0, 1.0}
        # certified at R ⇒ a radius ≥ R
        assert np.all(np.nan_to_num(radius, nan=-1)[col == 1] >= row["radius"])
        ci = row["accuracy_interval"]
        assert ci["low"] <= row["accuracy"] <= ci["high"] and ci["n"] == 16
    # a larger radius never certifies more
    accs = [row["accuracy"] for row in entry["curve"]]
    assert accs == sorted(accs, reverse=True)
    assert (out / "certified.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Certified robustness (randomized smoothing)" in report and "n0=20, n=200" in report
    assert RobustnessRecord.load(out / "robustness.json").certified == record.certified
    # the same seed: the same certificates (wall times aside)
    again = certify(trained["noise"], (x, y), task="classification", sigmas=[0.25], radii=[0.1, 0.3],
                    n0=20, n=200, alpha=0.001, batch=100, out=tmp_path / "again", suite=CHEAP, subset=16,
                    sanity="never", progress=False)
    assert again.certification(0.25)["curve"] == entry["curve"]
    # benchmarks/certify_table.py: one row per σ and radius, the record's values and intervals
    from benchmarks.certify_table import table

    lines = table([out]).splitlines()
    assert len(lines) == 2 + 2 * 3 and lines[0].count("|") == 7
    row = entry["curve"][2]
    ci = row["accuracy_interval"]
    assert lines[-1].startswith(f"| noise | 0.25 | 0.3 | {row['accuracy']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] |")
    # a task's extra certified metric (segmentation's pixel accuracy) gets its own column
    data = json.loads((out / "robustness.json").read_text())
    for e in data["certified"]:
        for r in e["curve"]:
            r["pixel_accuracy"], r["pixel_accuracy_interval"] = 0.875, {"low": 0.5, "high": 0.95}
    (out / "robustness.json").write_text(json.dumps(data))
    lines = table([out]).splitlines()
    assert "certified pixel_accuracy" in lines[0] and lines[0].count("|") == 8
    assert "| 0.875 [0.500, 0.950] |" in lines[-1]


def test_denoised_smoothing_puts_the_denoiser_in_front_of_the_clean_net(trained: dict[str, Path], tmp_path: Path) -> None:
    from medrobust.model_loading import load_model

    _, clean = load_model(str(trained["clean"]))
    _, den = load_model(str(trained["denoise"]))
    composite = denoised_model(clean, trained["denoise"]).eval()
    x, _ = blobs(4, seed=2)
    with torch.no_grad():
        expected = clean.net(den.method.denoiser(clean.normalizer(x)))
        assert torch.allclose(composite(x), expected)
        assert not torch.allclose(composite(x), clean.attack_model()(x))
    with pytest.raises(ValueError, match="Denoise method"):
        denoised_model(clean, trained["clean"])
    x, y = blobs(12, seed=3)
    record = certify(trained["clean"], (x, y), task="classification", sigmas=[0.25], radii=[0.2], n0=10, n=100,
                     batch=100, out=tmp_path / "den", denoiser=trained["denoise"], suite=CHEAP, sanity="never",
                     progress=False)
    assert record.certification(0.25)["samples"] == 12


def test_task_modules_name_their_certification() -> None:
    torch.manual_seed(0)
    seg_info = DataInfo(task="segmentation", in_channels=1, image_size=(8, 8), num_classes=2, num_train=4)
    seg = SegmentationModule(net={"class_path": "lightning_modules.nets.SmallUNet",
                                  "init_args": {"features": [4, 8]}}, data_info=seg_info).eval()
    cert = certification_for(seg, seg.attack_model(), NoiseSampler(0.25, 64), n0=8, n=64, alpha=0.01)
    item = {"image": torch.rand(1, 8, 8), "mask": torch.zeros(8, 8, dtype=torch.long), "index": torch.tensor(5)}
    ids, cols, _ = certify_samples(cert, [item], [0], [0.0, 0.25])
    assert ids.tolist() == [5]
    assert set(cols) == {f"{r}/{m}" for r in ("0", "0.25") for m in ("dice", "pixel_accuracy", "abstain")}
    assert np.all(cols["0.25/abstain"] >= cols["0/abstain"])

    lm_info = DataInfo(task="landmarks", in_channels=1, image_size=(16, 16), num_landmarks=2, num_train=4,
                       pixel_spacing_mm=0.5)
    lm = LandmarkModule(data_info=lm_info).eval()
    cert = certification_for(lm, lm.attack_model(), NoiseSampler(0.25, 32), n0=0, n=64, alpha=0.01)
    item = {"image": torch.rand(1, 16, 16), "landmarks": torch.tensor([[3.0, 4.0], [10.0, 12.0]]),
            "visible": torch.tensor([True, True]), "spacing": torch.tensor(0.5), "index": torch.tensor(1)}
    _, cols, _ = certify_samples(cert, [item], [0], [0.0, 0.5])
    # a certified bound on the radial error grows with the radius; mm = px × spacing
    assert cols["0.5/mre"][0] >= cols["0/mre"][0] > 0
    assert cols["0.5/mre_mm"][0] == pytest.approx(0.5 * cols["0.5/mre"][0])

    from lightning_modules import DetectionModule

    assert DetectionModule.certification is None


def test_art_randomized_smoothing_agrees(trained: dict[str, Path]) -> None:
    """IBM ART's ``PyTorchRandomizedSmoothing.certify`` (Cohen et al.'s procedure) on the same
    model, σ, n and samples: the same Clopper–Pearson bound for the same counts, and radii and
    certified accuracy within Monte-Carlo error."""
    art_rs = pytest.importorskip("art.estimators.certification.randomized_smoothing",
                                 reason="adversarial-robustness-toolbox is not installed")
    from medrobust.model_loading import load_model

    _, module = load_model(str(trained["noise"]))
    model = module.attack_model().eval()
    sigma, n0, n, alpha = 0.25, 100, 1000, 0.001
    art = art_rs.PyTorchRandomizedSmoothing(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 6, 6),
                                            nb_classes=2, channels_first=True, sample_size=n0, scale=sigma,
                                            alpha=alpha, device_type="cpu")
    for k in (0, 1, 500, 987, 1000):
        assert float(clopper_pearson_lower(k, n, alpha)) == pytest.approx(art._lower_confidence_bound(k, n), abs=1e-12)
    x, y = blobs(30, seed=4)
    np.random.seed(0)  # noqa: NPY002 — ART draws its noise from the legacy global generator
    art_pred, art_radius = art.certify(x.numpy(), n=n, batch_size=500)
    ours = SmoothedClassifier(lambda z: model(z).argmax(1), 2, NoiseSampler(sigma, batch_size=500, seed=0))
    certs = [ours.certify(x[i], n0, n, alpha, sample_id=i) for i in range(len(x))]
    our_pred = np.array([c.label for c in certs])
    our_radius = np.array([max(c.radius, 0.0) for c in certs])
    assert np.mean(our_pred == art_pred) >= 0.9
    # Monte-Carlo error of σ·Φ⁻¹(p̲) with n = 1000 at these radii: a few hundredths
    both = (our_pred >= 0) & (art_pred >= 0)
    assert both.sum() >= 20 and np.max(np.abs(our_radius[both] - art_radius[both])) < 0.1
    for r in (0.0, 0.2, 0.4):
        ours_acc = np.mean((our_pred == y.numpy()) & (our_radius >= r))
        art_acc = np.mean((art_pred == y.numpy()) & (art_radius >= r))
        assert math.isclose(ours_acc, art_acc, abs_tol=0.1), (r, ours_acc, art_acc)


def test_certification_callback_after_test_adds_to_the_evaluation(tmp_path: Path) -> None:
    """``train.py test`` with ``callbacks.Certification`` after ``AdversarialEvaluation``: the
    test record gains ``certified`` on the evaluation's samples; listed before it, an error."""
    from callbacks import AdversarialEvaluation, Certification
    from datamodules.synthetic import SyntheticDataModule

    torch.manual_seed(0)
    dm = SyntheticDataModule(task="classification", num_train=32, num_val=8, num_test=12, image_size=[8, 8],
                             batch_size=8)
    dm.setup("fit")
    module = ClassificationModule(net=small_net(), data_info=dm.info, method=GaussianAugment(sigma=0.25), lr=0.01)
    ev = AdversarialEvaluation(attacks=CHEAP, eps=[0.3], test_attacks=CHEAP, test_eps=[0.3], test_subset=10,
                               sanity="never", plot=False)
    cert = Certification(sigmas=[0.25], radii=[0.3], n0=10, n=100, batch=100)
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, max_steps=5,
                        limit_val_batches=0, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, callbacks=[ev, cert])
    trainer.fit(module, dm)
    trainer.test(module, dm, verbose=False)
    record = RobustnessRecord.load(tmp_path / "robustness.json")
    entry = record.certification(0.25)
    assert entry["samples"] == 10 and entry["n"] == 100 and [r["radius"] for r in entry["curve"]] == [0.0, 0.3]
    table = SampleTable.load(tmp_path / "robustness_samples.csv")
    assert "certified-s0.25/0.3/accuracy" in table.columns and len(table.sample_ids) == 10
    assert "Certified robustness" in (tmp_path / "report.md").read_text()
    wrong = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path / "w", enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[Certification(sigmas=[0.25]), ev])
    with pytest.raises(ValueError, match="listed after the AdversarialEvaluation"):
        wrong.test(module, dm, verbose=False)


def test_certificates_from_copies_checked_certificates_and_runs_only_the_suite(
        trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``certify(certificates_from=DIR)`` (``--certificates-from``): a stronger empirical suite
    beside the certificates of an earlier run, copied sample by sample without a noisy forward;
    refused, naming the field, when model, samples, σ, n0, n, α, batch or radii differ."""
    import callbacks.certified_record
    from medrobust.cli_certify import main

    x, y = blobs(20, seed=5)
    first = tmp_path / "first"
    common = {"task": "classification", "radii": [0.1, 0.3], "n0": 10, "n": 100, "alpha": 0.001, "batch": 100,
              "subset": 12, "sanity": "never", "progress": False}
    before = certify(trained["noise"], (x, y), sigmas=[0.12, 0.25], out=first, suite=CHEAP, **common)

    def no_noise(*args: object, **kwargs: object) -> None:
        raise AssertionError("certificates were recomputed")

    monkeypatch.setattr(callbacks.certified_record, "certify_samples", no_noise)
    stronger = [{"name": "pgd", "norm": "l2", "steps": 5, "random_start": False}, {"name": "fgsm", "norm": "l2"}]
    second = tmp_path / "second"
    after = certify(trained["noise"], (x, y), sigmas=[0.25], out=second, suite=stronger, certificates_from=first,
                    **common)
    entry = after.certification(0.25)
    assert entry["reused_from"] == str(first)
    assert {k: v for k, v in entry.items() if k != "reused_from"} == before.certification(0.25)
    assert after.certification(0.12) is None  # only the σ asked for
    assert sorted({a.attack for a in after.attacks}) == ["fgsm", "pgd"]  # the new suite ran
    old = SampleTable.load(first / "robustness_samples.csv")
    new = SampleTable.load(second / "robustness_samples.csv")
    old, new = old.aligned(new)
    assert len(new.sample_ids) == 12
    certified = [k for k in old.columns if k.startswith("certified-s0.25/")]
    assert len(certified) >= 6 and not any(k.startswith("certified-s0.12/") for k in new.columns)
    for key in certified:  # paired sample by sample (the files' rows may be in another order)
        np.testing.assert_array_equal(new.column(key), old.column(key), err_msg=key)
    np.testing.assert_allclose(new.column("clean/accuracy"), old.column("clean/accuracy"))
    assert "Certified robustness" in (second / "report.md").read_text()
    assert (second / "certified.png").stat().st_size > 1000

    # refusals naming the field; the settings before the evaluation (nothing written)
    for change, field in (({"n": 200}, "n differs"), ({"n0": 20}, "n0 differs"), ({"alpha": 0.01}, "alpha differs"),
                          ({"batch": 50}, "batch differs"), ({"radii": [0.1, 0.5]}, "radii differs"),
                          ({"sigmas": [0.5]}, "sigma differs"), ({"seed": 1}, "seed")):
        kwargs = {**common, "sigmas": [0.25], **change}
        with pytest.raises(ValueError, match=field):
            certify(trained["noise"], (x, y), out=tmp_path / "refused", suite=CHEAP, certificates_from=first, **kwargs)
        assert not (tmp_path / "refused").exists(), field
    with pytest.raises(ValueError, match=r"subset \(sample ids\) differs"):
        certify(trained["noise"], (x, y), sigmas=[0.25], out=tmp_path / "fewer", suite=CHEAP, certificates_from=first,
                **{**common, "subset": 10})
    with pytest.raises(ValueError, match="method differs"):  # another model: the clean net
        certify(trained["clean"], (x, y), sigmas=[0.25], out=tmp_path / "clean", suite=CHEAP, certificates_from=first,
                **common)
    # the same method, another model: a sample's clean value differs (here: edited in the file)
    table = SampleTable.load(first / "robustness_samples.csv")
    table.columns["clean/accuracy"] = table.columns["clean/accuracy"].copy()
    table.columns["clean/accuracy"][3] = 1.0 - table.columns["clean/accuracy"][3]
    table.save(first / "robustness_samples.csv")
    with pytest.raises(ValueError, match=rf"model differs: sample {int(table.sample_ids[3])}'s clean/accuracy"):
        certify(trained["noise"], (x, y), sigmas=[0.25], out=tmp_path / "other", suite=CHEAP, certificates_from=first,
                **common)
    # the command line: one message naming the field, status 2, before the data are read
    assert main(["--model", str(trained["noise"]), "--data", str(tmp_path / "nowhere.yaml"), "--task", "classification",
                 "--sigma", "0.25", "--radii", "0.1", "0.3", "--n0", "10", "--n", "300", "--batch", "100",
                 "--out", str(tmp_path / "cli"), "--certificates-from", str(first)]) == 2
    assert f"medrobust certify: error: certificates-from {first}: n differs (300 here, 100 there)" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess
def test_sigterm_in_the_empirical_evaluation_stops_certify_with_143(trained: dict[str, Path], tmp_path: Path) -> None:
    """``medrobust certify`` stops on SIGTERM during its empirical evaluation as ``evaluate`` does
    (after the running attack × ε, status 143, no certificate computed) — here inside the first
    batch, where nothing is evaluated: a classifier's AUROC on zero samples made it an error
    (status 2, "No samples to concatenate") before."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from datamodules.manifest import write_example_manifest

    manifest = write_example_manifest(tmp_path / "data", "classification", n=12, image_size=(6, 6))
    out = tmp_path / "out"
    slow = json.dumps([{"name": "pgd", "norm": "l2", "steps": 4000, "random_start": False},
                       {"name": "pgd", "norm": "l2", "steps": 4000, "random_start": True, "label": "pgd-rs"}])
    from tests.conftest import PROJECT_ROOT

    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MEDROBUST_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from medrobust.cli import main; main()", "certify", "--model", str(trained["noise"]),
           "--data", str(manifest), "--task", "classification", "--sigma", "0.25", "--radii", "0.1", "--n0", "10",
           "--n", "100", "--batch", "100", "--suite", slow, "--sanity", "never", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 120
    while b"batch 1/1 \xc2\xb7 pgd " not in seen:  # the first member's progress
        assert proc.poll() is None and time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    stdout, rest = proc.communicate(timeout=120)
    text = (seen + (rest or b"") + (stdout or b"")).decode(errors="replace")
    assert proc.returncode == 143, text[-3000:]
    assert "stopped by SIGTERM before the first batch" in text and "no certificate computed" in text
    assert "No samples" not in text and not (out / "robustness.json").exists()
    assert time.monotonic() - sent < 60  # after the running member × ε, not the whole suite
