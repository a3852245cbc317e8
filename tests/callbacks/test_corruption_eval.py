"""Corruptions in the evaluation and the record (callbacks/corruption_*.py): metrics per
corruption × severity on trained tiny models, per-sample columns, mCE, intervals, report,
targets untouched, batch-independence, backward-compatible records."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch

from callbacks import AdversarialEvaluation
from callbacks.corruption_eval import CorruptionEvaluator, condition
from callbacks.corruption_section import mean_corruption_error
from callbacks.per_sample import FILE_NAME, SampleTable
from callbacks.record import RobustnessRecord
from corruptions import corruption_suite
from datamodules.synthetic import SyntheticDataModule
from tests.support.attack_models import trained

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = [
    {"name": "gaussian_noise", "params": [0.03, 0.06, 0.1, 0.15, 0.25], "reference_size": None},
    {"name": "contrast_down", "kind": "contrast", "params": [0.9, 0.75, 0.6, 0.45, 0.3], "reference_size": None},
    {"name": "defocus_blur", "params": [[0.5, 0.1], [0.8, 0.1], [1.2, 0.2], [1.6, 0.3], [2.2, 0.4]],
     "reference_size": None},
]


def _evaluator(task: str, batch_ids=None):  # noqa: ANN001, ANN202
    module, batch = trained(task)
    ev = CorruptionEvaluator(module, module.attack_model(), corruption_suite(SUITE), seed=0)
    return module, batch, ev


@pytest.mark.parametrize("task,metric", [("classification", "accuracy"), ("segmentation", "dice"),
                                         ("landmarks", "mre")])
def test_mean_metric_falls_with_severity_and_targets_stay(task: str, metric: str) -> None:
    module, batch, ev = _evaluator(task)
    before = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    ev.run_batch(batch, True, batch["index"])
    for k, v in before.items():
        assert torch.equal(batch[k], v) or (v.isnan().all() and batch[k].isnan().all()), k  # untouched
    metrics, cost = ev.compute()
    assert cost["samples"] == batch["image"].shape[0]
    assert cost["forwards"] == batch["image"].shape[0] * len(SUITE) * 5
    lower = metric == "mre"
    clean = module.build_metrics()
    module.update_metrics(clean, module.attack_model()(batch["image"]), batch)
    c0 = float(clean.compute()[metric])
    means = [np.mean([metrics[(c["name"], s)][metric] for c in SUITE]) for s in range(1, 6)]
    # the mean over corruptions gets worse with severity, and severity 5 is worse than clean
    sign = 1 if lower else -1
    assert sign * (means[-1] - c0) > 0.05 * (abs(c0) + 1e-3), (c0, means)
    for a, b in zip(means, means[1:]):
        assert sign * (b - a) >= -0.02 * (abs(a) + 1e-3), means


def test_batch_split_gives_the_same_per_sample_values() -> None:
    """A sample's corruption is seeded by its dataset index: two half batches give the values
    of the whole batch."""
    module, batch, ev = _evaluator("classification")
    ev.run_batch(batch, True, batch["index"])
    ids, whole = ev.per_sample_columns("accuracy")
    _, _, ev2 = _evaluator("classification")
    n = batch["image"].shape[0]
    for part in (slice(0, n // 2), slice(n // 2, n)):
        sub = {k: v[part] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        ev2.run_batch(sub, True, sub["index"])
    ids2, halves = ev2.per_sample_columns("accuracy")
    np.testing.assert_array_equal(ids, ids2)
    assert whole.keys() == halves.keys() and len(whole) == len(SUITE) * 5
    for k in whole:
        np.testing.assert_array_equal(whole[k], halves[k])
    assert f"{condition('gaussian_noise')}/5/accuracy" in whole


def test_mce_and_relative_mce_by_hand() -> None:
    errors = {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.1, 2: 0.1}}
    ref = {"a": {1: 0.4, 2: 0.6}, "b": {1: 0.2, 2: 0.3}, "c": {1: 0.5, 2: 0.5}}
    out = mean_corruption_error(errors, 0.05, ref, 0.1)
    assert out["ce"] == pytest.approx({"a": 0.6 / 1.0, "b": 0.2 / 0.5})
    assert out["relative_ce"] == pytest.approx({"a": (0.15 + 0.35) / (0.3 + 0.5), "b": (0.05 + 0.05) / (0.1 + 0.2)})
    assert out["mce"] == pytest.approx((0.6 + 0.4) / 2)
    assert out["missing"] == []
    assert out["undefined"] == []
    out = mean_corruption_error({"z": {1: 0.1}}, 0.0, ref, 0.1)
    assert out["missing"] == ["z"] and math.isnan(out["mce"])
    # the reference does not degrade under "b" (its error there ≤ its clean error): relative CE
    # undefined for "b", left out of the relative mCE
    out = mean_corruption_error(errors, 0.05, {"a": {1: 0.4, 2: 0.6}, "b": {1: 0.1, 2: 0.1}}, 0.1)
    assert math.isnan(out["relative_ce"]["b"]) and out["undefined"] == ["b"]
    assert out["relative_mce"] == pytest.approx((0.15 + 0.35) / (0.3 + 0.5))


def _validate(root, **callback):  # noqa: ANN001, ANN003, ANN202
    torch.manual_seed(0)
    dm = SyntheticDataModule(task="classification", num_train=64, num_val=24, num_test=8,
                             image_size=(16, 16), seed=0, batch_size=8, num_classes=4)
    module, _ = trained("classification")
    kwargs = {"attacks": [{"name": "fgsm"}], "eps": [0.02], "subset": 24, "plot": True, "report": False,
              "corruptions": SUITE, "intervals": "always", **callback}
    cb = AdversarialEvaluation(**kwargs)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(root))
    trainer.validate(module, datamodule=dm, verbose=False)
    return trainer


def test_callback_record_per_sample_file_intervals_report_and_mce(tmp_path) -> None:
    from callbacks.report import write_report

    trainer = _validate(tmp_path / "a", corruption_severities=[1, 3, 5])
    path = tmp_path / "a" / "robustness.json"
    record = RobustnessRecord.load(path)
    sec = record.corruptions
    assert sec is not None and sec.suite == "custom" and sec.severities == [1, 3, 5]
    assert sec.error_metric == "balanced_accuracy" and not sec.lower_is_better
    assert len(sec.entries) == len(SUITE) * 3
    assert sec.clean_error == pytest.approx(1 - record.clean["balanced_accuracy"])
    table = SampleTable.load(tmp_path / "a" / FILE_NAME)
    for e in sec.entries:
        col = table.column(f"corruption-{e['corruption']}/{e['severity']}/accuracy")
        assert col.mean() == pytest.approx(e["metrics"]["accuracy"], abs=1e-6)
    cells = record.intervals["corruptions"]["cells"]
    assert len(cells) == len(SUITE) * 3
    for c in cells:
        assert c["low"] <= sec.value(c["corruption"], c["severity"], "accuracy") + 1e-9 <= c["high"] + 2e-9
    data = json.loads(path.read_text())["corruptions"]
    assert data["mce"] is None and data["seconds_per_sample"] > 0
    assert data["mean"]["accuracy"] == pytest.approx(np.mean([e["metrics"]["accuracy"] for e in sec.entries]))
    logged = trainer.callback_metrics
    assert float(logged["adv/corruption/gaussian_noise/sev=5/accuracy"]) == pytest.approx(
        sec.value("gaussian_noise", 5, "accuracy"))
    assert (tmp_path / "a" / "corruptions.png").stat().st_size > 0
    # the same model against itself as reference: every CE and relative CE is 1
    _validate(tmp_path / "b", corruption_severities=[1, 3, 5], corruption_reference=str(path))
    again = json.loads((tmp_path / "b" / "robustness.json").read_text())["corruptions"]
    assert again["mce"] == pytest.approx(1.0) and again["relative_mce"] == pytest.approx(1.0)
    report = write_report(RobustnessRecord.load(tmp_path / "b" / "robustness.json"), tmp_path / "r.md").read_text()
    assert "## Corruptions" in report and "mCE **1.0000**" in report and "defocus_blur" in report
    # a bad reference: named
    with pytest.raises(ValueError, match="no corruption results"):
        from callbacks.corruption_section import load_reference

        rec = RobustnessRecord.load(path)
        rec.corruptions = None
        load_reference(rec)


def test_records_without_corruptions_read_and_write_as_before(tmp_path) -> None:
    trainer = _validate(tmp_path, corruptions=None, plot=False)
    data = json.loads((tmp_path / "robustness.json").read_text())
    assert "corruptions" not in data
    assert RobustnessRecord.from_dict(data).corruptions is None
    assert not (tmp_path / "corruptions.png").exists()
    assert not any(k.startswith("adv/corruption") for k in trainer.callback_metrics)
    with pytest.raises(ValueError, match="unknown corruption suite"):
        AdversarialEvaluation(corruptions="dermoscpy")
    with pytest.raises(ValueError, match="corruption_severities"):
        AdversarialEvaluation(corruptions="chest_xray", corruption_severities=[0, 6])


def test_corruption_augment_with_sat_trains_and_keeps_targets() -> None:
    from lightning_modules import ClassificationModule
    from lightning_modules.methods import SAT

    dm = SyntheticDataModule(task="classification", num_train=32, num_val=8, num_test=8,
                             image_size=(16, 16), seed=0, batch_size=16, num_classes=4)
    dm.setup("fit")
    module = ClassificationModule(net={"class_path": "lightning_modules.nets.SmallCNN",
                                       "init_args": {"features": [8]}}, data_info=dm.info,
                                  method=SAT(eps=0.01, attack={"name": "pgd", "steps": 2}),
                                  corruption_augment={"suite": "chest_xray", "p": 1.0})
    batch = next(iter(dm.train_dataloader()))
    out = module._corrupt_batch(batch)
    assert torch.equal(out["label"], batch["label"]) and not torch.equal(out["image"], batch["image"])
    assert torch.equal(out["image"], module._corrupt_batch(batch)["image"])  # seeded by the step
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=2, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    with pytest.raises(ValueError, match="unknown keys"):
        ClassificationModule(data_info=dm.info, corruption_augment={"suite": "chest_xray", "prob": 1})


def test_medrobust_evaluate_runs_a_corruption_suite_from_the_command_line(tmp_path) -> None:
    """``medrobust evaluate --corruptions``: a plain torch model, 16×16 grey tensors as a
    manifest, the chest X-ray suite at two severities beside the attack."""
    from datamodules.manifest import write_example_manifest
    from medrobust.cli_evaluate import main as evaluate_main

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 2))
    torch.save(model, tmp_path / "m.pt")
    manifest = write_example_manifest(tmp_path / "data", "classification", n=24, image_size=(16, 16))
    code = evaluate_main(["--model", str(tmp_path / "m.pt"), "--trusted", "--data", str(manifest),
                          "--task", "classification", "--suite", "quick", "--eps", "0.01",
                          "--no-normalization", "--out", str(tmp_path / "out"), "--accelerator", "cpu",
                          "--sanity", "never", "--corruptions", "chest_xray",
                          "--corruption-severities", "1", "5"])
    assert code == 0
    record = RobustnessRecord.load(tmp_path / "out" / "robustness.json")
    assert record.corruptions.suite == "chest_xray" and record.corruptions.severities == [1, 5]
    assert len(record.corruptions.entries) == 13 * 2
    table = SampleTable.load(tmp_path / "out" / FILE_NAME)
    assert "corruption-jpeg_compression/5/accuracy" in table.columns


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_example_panel(task: str, tmp_path) -> None:
    from callbacks.corruption_report import plot_corruption_panel

    module, batch = trained(task)
    path = plot_corruption_panel(module, batch, SUITE, tmp_path / "panel.png", index=3)
    assert path.stat().st_size > 5000


def test_detection_boxes_stay_and_map_falls_with_severity() -> None:
    """The fourth task: on a trained tiny FCOS the boxes and labels are untouched, every
    corruption × severity is scored by the detection metrics, and mAP@0.5 at severity 5 is
    below the clean one on average over the corruptions."""
    from tests.attacks.test_masked_gradients_dense import detector

    module, batch = detector()
    ev = CorruptionEvaluator(module, module.attack_model(), corruption_suite(SUITE), seed=0)
    boxes = [b.clone() for b in batch["boxes"]]
    labels = [lab.clone() for lab in batch["labels"]]
    ev.run_batch(batch, True, batch["index"])
    assert all(torch.equal(a, b) for a, b in zip(batch["boxes"], boxes))
    assert all(torch.equal(a, b) for a, b in zip(batch["labels"], labels))
    metrics, cost = ev.compute()
    assert set(metrics) == {(c["name"], s) for c in SUITE for s in range(1, 6)}
    assert cost["forwards"] == batch["image"].shape[0] * len(SUITE) * 5
    clean = module.build_metrics()
    module.update_metrics(clean, module.attack_model()(batch["image"]), batch)
    c0 = float(clean.compute()["map_50"])
    worst = float(np.mean([metrics[(c["name"], 5)]["map_50"] for c in SUITE]))
    assert c0 > 0.5 and worst < c0 - 0.05, (c0, worst)
