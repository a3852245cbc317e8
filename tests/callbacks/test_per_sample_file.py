"""The evaluation writes each sample's metric values (``robustness_samples.csv`` beside
``robustness.json``; issue 23): what the columns hold, that they agree with the record's
aggregates, that the worst case is never better than a member on any sample, and that the same
evaluation gives byte-identical files."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from attacks import parse_attack_specs
from benchmarks.fault_compare import strip_timing
from callbacks import AdversarialEvaluation
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.per_sample import FILE_NAME, SampleTable
from datamodules.synthetic import SyntheticDataModule
from tests.support.attack_models import trained

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = [{"name": "fgsm"}, {"name": "pgd", "steps": 3}]


def _evaluate(task: str, eps: list[float]) -> tuple[RobustnessEvaluator, dict]:
    module, batch = trained(task)
    ev = RobustnessEvaluator(module, parse_attack_specs(SPECS, "t"), eps, keep_per_sample=True)
    ev.run_batch(0, batch)
    return ev, batch


def test_classification_columns_match_the_record_and_the_worst_case_is_per_sample_minimum() -> None:
    ev, batch = _evaluate("classification", [0.01, 0.03])
    out = ev.compute()
    table: SampleTable = out.per_sample
    assert table is not None
    np.testing.assert_array_equal(table.sample_ids, np.sort(batch["index"].numpy()))
    expected = ["clean/accuracy"] + [f"{a}/{e:g}/accuracy" for e in (0.01, 0.03) for a in ("fgsm", "pgd")] \
        + ["worst/0.01/accuracy", "worst/0.03/accuracy"]
    assert sorted(table.columns) == sorted(expected)
    # per-sample accuracy is 1 / 0; its mean is the record's (micro) accuracy
    assert out.clean["accuracy"] == pytest.approx(table.column("clean/accuracy").mean(), abs=1e-6)
    for e in (0.01, 0.03):
        worst = table.column(f"worst/{e:g}/accuracy")
        assert set(np.unique(worst)) <= {0.0, 1.0}
        assert out.ensemble[e]["accuracy"] == pytest.approx(worst.mean(), abs=1e-6)
        for a in ("fgsm", "pgd"):
            col = table.column(f"{a}/{e:g}/accuracy")
            assert out.attacks[(a, e)]["accuracy"] == pytest.approx(col.mean(), abs=1e-6)
            assert (worst <= col).all()  # never better than a member, on any sample
        assert (worst <= table.column("clean/accuracy")).all()
    assert table.column("worst/0.03/accuracy").mean() < table.column("clean/accuracy").mean()  # attacks bite


def test_segmentation_worst_dice_is_never_above_a_member() -> None:
    ev, _ = _evaluate("segmentation", [0.03])
    table = ev.compute().per_sample
    worst = table.column("worst/0.03/dice")
    for col in ("clean/dice", "fgsm/0.03/dice", "pgd/0.03/dice"):
        assert (worst <= table.column(col) + 1e-7).all(), col
    assert worst.mean() < table.column("clean/dice").mean()


def test_ids_come_from_run_batch_and_bad_ids_are_named() -> None:
    module, batch = trained("classification")
    ev = RobustnessEvaluator(module, parse_attack_specs(SPECS, "t"), [0.01], keep_per_sample=True)
    ids = list(range(100, 100 + batch["image"].shape[0]))
    ev.run_batch(0, batch, ids=ids[::-1])
    np.testing.assert_array_equal(ev.compute().per_sample.sample_ids, np.array(ids))
    ev = RobustnessEvaluator(module, parse_attack_specs(SPECS, "t"), [0.01], keep_per_sample=True)
    with pytest.raises(ValueError, match="3 sample ids for a batch of 32"):
        ev.run_batch(0, batch, ids=[1, 2, 3])
    no_index = {k: v for k, v in batch.items() if k != "index"}
    with pytest.raises(ValueError, match="no 'index' entry"):
        ev.run_batch(0, no_index)
    # off by default: no table, nothing kept
    ev = RobustnessEvaluator(module, parse_attack_specs(SPECS, "t"), [0.01])
    ev.run_batch(0, no_index)
    assert ev.compute().per_sample is None


def _validate(root: Path, **callback: object) -> L.Trainer:
    """``trainer.validate`` of the trained tiny classifier with ``AdversarialEvaluation`` (FGSM,
    PGD-3 at ε 0.01 and 0.02 on 20 of 24 samples unless ``callback`` says otherwise); files
    under ``root``."""
    torch.manual_seed(0)
    dm = SyntheticDataModule(task="classification", num_train=64, num_val=24, num_test=8,
                             image_size=(16, 16), seed=0, batch_size=8, num_classes=4)
    module, _ = trained("classification")
    kwargs = {"attacks": SPECS, "eps": [0.01, 0.02], "subset": 20, "plot": False, "report": False, **callback}
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[AdversarialEvaluation(**kwargs)],
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    trainer.validate(module, datamodule=dm, verbose=False)
    return trainer


def test_callback_writes_the_file_beside_the_record_and_repeats_it_byte_for_byte(tmp_path) -> None:
    """Same seed, same machine, same thread count: a byte-identical per-sample file and a
    ``robustness.json`` identical but for its wall-clock fields (``eval_seconds`` and the
    compute accounting's seconds, which no run can repeat)."""
    _validate(tmp_path / "a")
    _validate(tmp_path / "b")
    rec_a, samples_a = tmp_path / "a" / "robustness.json", tmp_path / "a" / FILE_NAME
    rec_b, samples_b = tmp_path / "b" / "robustness.json", tmp_path / "b" / FILE_NAME
    assert samples_a.read_bytes() == samples_b.read_bytes()
    record_a, record_b = json.loads(rec_a.read_text()), json.loads(rec_b.read_text())
    assert strip_timing(record_a) == strip_timing(record_b)
    table = SampleTable.load(samples_a)
    assert table.sample_ids.tolist() == record_a["subset"]["indices"]  # the record's subset, in order
    assert len(table.sample_ids) == 20
    assert table.column("clean/accuracy").mean() == pytest.approx(record_a["clean"]["accuracy"], abs=1e-6)
    worst = {e["eps"]: e["metrics"]["accuracy"] for e in record_a["ensemble"]}
    for eps, value in worst.items():
        assert table.column(f"worst/{eps:g}/accuracy").mean() == pytest.approx(value, abs=1e-6)


# ----------------------------------------------------------------------------- intervals
def test_record_intervals_from_a_constructed_table() -> None:
    """Accuracy columns get the Agresti–Coull interval of the proportion, other per-sample means
    the BCa bootstrap; the robust area's estimate is the record's area of the means (it is
    linear in them); undefined (NaN) samples are left out and ``n`` says so."""
    from callbacks.evaluation_writers import robust_area
    from callbacks.record_intervals import record_intervals
    from callbacks.uncertainty import mean_interval, proportion_interval

    rng = np.random.default_rng(0)
    n = 50
    table = SampleTable(np.arange(n))
    clean = (rng.random(n) < 0.9).astype(float)
    table.add("clean/accuracy", clean)
    worst = {0.01: clean * (rng.random(n) < 0.7), 0.02: None}
    worst[0.02] = worst[0.01] * (rng.random(n) < 0.6)
    for e, v in worst.items():
        table.add(f"pgd/{e:g}/accuracy", v)
        table.add(f"worst/{e:g}/accuracy", v)
    iv = record_intervals(table, "accuracy", [0.01, 0.02], [("pgd", 0.01), ("pgd", 0.02)], False, 0.95, 0)
    assert iv["clean"] == proportion_interval(int(clean.sum()), n).to_dict()
    assert [w["eps"] for w in iv["worst"]] == [0.01, 0.02] and len(iv["attacks"]) == 2
    assert iv["worst"][1]["estimate"] == pytest.approx(worst[0.02].mean())
    means = {e: float(v.mean()) for e, v in worst.items()}
    assert iv["robust_area"]["estimate"] == pytest.approx(robust_area(float(clean.mean()), means, False))
    assert iv["robust_area"]["method"] == "bca-expanded"
    for part in (iv["clean"], *iv["worst"], *iv["attacks"], iv["robust_area"]):
        assert part["low"] <= part["estimate"] <= part["high"] and part["low"] < part["high"]

    dice = SampleTable(np.arange(n))
    d = rng.beta(5, 2, n)
    d[3] = np.nan
    dice.add("clean/dice", d)
    dice.add("worst/0.01/dice", np.clip(d - 0.2, 0, 1))
    iv = record_intervals(dice, "dice", [0.01], [], False, 0.95, 0)
    assert iv["clean"]["n"] == n - 1 and iv["clean"]["method"] == "bca-expanded"
    assert iv["clean"] == mean_interval(d[np.isfinite(d)], 0.95, 0).to_dict()
    assert record_intervals(dice, "dice", [0.01], [], False, 0.95, 0) == iv  # seeded
    with pytest.raises(ValueError, match="no column 'clean/mre'"):
        record_intervals(dice, "mre", [0.01], [], True)


def test_validate_puts_intervals_in_the_record_report_summary_and_curve(tmp_path) -> None:
    from callbacks.record import RobustnessRecord
    from callbacks.report import write_report
    from medrobust.cli_summary import summarise_record

    trainer = _validate(tmp_path, subset=24, plot=True)
    record = RobustnessRecord.load(tmp_path / "robustness.json")
    clean = record.interval("clean")
    assert clean is not None and clean.n == 24 and clean.method == "agresti_coull"
    assert clean.estimate == pytest.approx(record.clean["accuracy"], abs=1e-6)
    for entry in record.ensemble:
        ci = record.interval("worst", entry.eps)
        assert ci.low <= entry.metrics["accuracy"] <= ci.high
        assert ci.estimate == pytest.approx(entry.metrics["accuracy"], abs=1e-6)
    assert record.interval("robust_area").estimate == pytest.approx(record.robust_area.value, abs=1e-6)
    line = summarise_record(record, "accuracy")
    assert f"clean accuracy {record.clean['accuracy']:.3f} [{clean.low:.3f}, {clean.high:.3f}]" in line
    report = write_report(record, tmp_path / "report.md").read_text()
    assert f"[{clean.low:.3f}, {clean.high:.3f}]" in report and "confidence intervals" in report
    assert (tmp_path / "robustness.png").stat().st_size > 0
    logged = trainer.callback_metrics
    assert float(logged["adv/clean/accuracy_ci_low"]) == pytest.approx(clean.low)
    assert float(logged["adv/robust_area_ci_high"]) == pytest.approx(record.interval("robust_area").high)

    # intervals="never": the per-sample file still, no intervals
    _validate(tmp_path / "never", eps=[0.01], intervals="never")
    assert RobustnessRecord.load(tmp_path / "never" / "robustness.json").intervals is None
    assert (tmp_path / "never" / FILE_NAME).exists()
    with pytest.raises(ValueError, match="intervals must be"):
        AdversarialEvaluation(intervals="sometimes")
    with pytest.raises(ValueError, match="interval_level must be in"):
        AdversarialEvaluation(interval_level=95)


def test_sample_area_is_the_records_area_per_sample() -> None:
    from callbacks.evaluation_writers import robust_area
    from callbacks.record_intervals import sample_area

    rng = np.random.default_rng(1)
    clean = rng.random(20)
    curve = {0.03: rng.random(20), 0.01: rng.random(20), 0.02: rng.random(20)}
    for lower in (False, True):
        got = sample_area(clean, curve, lower)
        want = [robust_area(float(clean[i]), {e: float(v[i]) for e, v in curve.items()}, lower) for i in range(20)]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    clean[4] = np.nan
    assert np.isnan(sample_area(clean, curve, False)[4])
