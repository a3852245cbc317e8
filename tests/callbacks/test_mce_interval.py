"""The paired bootstrap interval of mCE / relative mCE (``callbacks.corruption_intervals.mce_interval``)
on synthetic per-sample values: seconds, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from callbacks.corruption_intervals import mce_interval
from callbacks.corruption_section import mean_corruption_error

NAMES = ["blur", "noise", "flat"]
SEV = [1, 2, 3]


def _columns(rng: np.random.Generator, labels: np.ndarray, clean_p: float, drop: float,
             flat: bool = True) -> dict[str, np.ndarray]:
    """0/1 correctness: clean with probability ``clean_p``; each corruption lowers it by
    ``drop × severity`` (``flat``: the ``flat`` corruption changes nothing but its own noise)."""
    n = labels.shape[0]
    cols = {"clean/accuracy": (rng.random(n) < clean_p).astype(float)}
    for c in NAMES:
        for s in SEV:
            p = clean_p if (c == "flat" and flat) else clean_p - drop * s
            cols[f"corruption-{c}/{s}/accuracy"] = (rng.random(n) < p).astype(float)
    return cols


def _balanced_error(correct: np.ndarray, labels: np.ndarray) -> float:
    return 1.0 - float(np.mean([correct[labels == k].mean() for k in np.unique(labels)]))


@pytest.fixture
def data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.6).astype(np.int64)
    return labels, _columns(rng, labels, 0.9, 0.1)


def test_point_estimate_is_mean_corruption_error_of_balanced_errors_and_inside_the_interval(data) -> None:
    labels, ref = data
    model = _columns(np.random.default_rng(1), labels, 0.9, 0.07)
    res = mce_interval(model, ref, NAMES, SEV, "accuracy", labels=labels, n_resamples=400)

    def errs(cols):
        return {c: {s: _balanced_error(cols[f"corruption-{c}/{s}/accuracy"], labels) for s in SEV} for c in NAMES}

    want = mean_corruption_error(errs(model), _balanced_error(model["clean/accuracy"], labels),
                                 errs(ref), _balanced_error(ref["clean/accuracy"], labels))
    assert res["error"] == "balanced"
    assert res["mce"].estimate == pytest.approx(want["mce"], abs=1e-12)
    assert res["relative_mce"].estimate == pytest.approx(want["relative_mce"], abs=1e-12)
    for key in ("mce", "relative_mce"):
        ci = res[key]
        assert ci.low < ci.estimate < ci.high, key
        assert ci.n == 400 and ci.method.startswith("percentile")
    # plain error: the same definition on the mean error
    plain = mce_interval(model, ref, NAMES, SEV, "accuracy", n_resamples=400)
    perr = {c: {s: 1 - model[f"corruption-{c}/{s}/accuracy"].mean() for s in SEV} for c in NAMES}
    rerr = {c: {s: 1 - ref[f"corruption-{c}/{s}/accuracy"].mean() for s in SEV} for c in NAMES}
    want_plain = mean_corruption_error(perr, 1 - model["clean/accuracy"].mean(), rerr, 1 - ref["clean/accuracy"].mean())
    assert plain["error"] == "plain"
    assert plain["mce"].estimate == pytest.approx(want_plain["mce"], abs=1e-12)
    assert plain["mce"].low < plain["mce"].estimate < plain["mce"].high


def test_a_model_identical_to_the_reference_has_mce_exactly_one_with_zero_width(data) -> None:
    labels, ref = data
    same = {k: v.copy() for k, v in ref.items()}
    res = mce_interval(same, ref, ["blur", "noise"], SEV, "accuracy", labels=labels, n_resamples=300)
    for key in ("mce", "relative_mce"):
        ci = res[key]
        assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0), key


def test_seeded_determinism(data) -> None:
    labels, ref = data
    model = _columns(np.random.default_rng(2), labels, 0.9, 0.08)
    a = mce_interval(model, ref, NAMES, SEV, "accuracy", labels=labels, seed=3, n_resamples=300)
    b = mce_interval(model, ref, NAMES, SEV, "accuracy", labels=labels, seed=3, n_resamples=300)
    c = mce_interval(model, ref, NAMES, SEV, "accuracy", labels=labels, seed=4, n_resamples=300)
    assert a["mce"] == b["mce"] and a["relative_mce"] == b["relative_mce"] and a["undefined"] == b["undefined"]
    assert (a["mce"].low, a["mce"].high) != (c["mce"].low, c["mce"].high)
    assert a["mce"].estimate == c["mce"].estimate


def test_planted_difference_is_detected_and_an_equal_model_is_not(data) -> None:
    labels, ref = data
    # the corruption-induced drop halved: errors (0.1 + 0.05 s) vs (0.1 + 0.1 s), mCE ≈ 0.67
    better = _columns(np.random.default_rng(5), labels, 0.9, 0.05)
    res = mce_interval(better, ref, ["blur", "noise"], SEV, "accuracy", labels=labels)
    assert res["mce"].high < 1.0
    assert 0.4 < res["mce"].estimate < 0.75
    # the same error rates, independent draws: 1 stays inside
    equal = _columns(np.random.default_rng(6), labels, 0.9, 0.1)
    eq = mce_interval(equal, ref, ["blur", "noise"], SEV, "accuracy", labels=labels)
    assert eq["mce"].contains(1.0)


def test_undefined_relative_ce_is_left_out_per_resample_and_counted(data) -> None:
    labels, ref = data
    ref = dict(ref)
    for s in SEV:  # the reference loses nothing under "flat": its relative CE denominator is 0
        ref[f"corruption-flat/{s}/accuracy"] = ref["clean/accuracy"].copy()
    model = _columns(np.random.default_rng(7), labels, 0.9, 0.07)
    res = mce_interval(model, ref, NAMES, SEV, "accuracy", labels=labels, n_resamples=300)
    assert res["estimate_relative_undefined"] == ["flat"]
    assert res["relative_undefined"]["flat"] == 1.0
    assert res["relative_undefined"]["blur"] == 0.0 and res["undefined"]["flat"] == 0.0
    # the estimate leaves "flat" out: the mean of the other two relative CEs
    full = mce_interval(model, ref, ["blur", "noise"], SEV, "accuracy", labels=labels, n_resamples=300)
    assert res["relative_mce"].estimate == pytest.approx(full["relative_mce"].estimate, abs=1e-12)
    assert math.isfinite(res["relative_mce"].low) and res["relative_defined"] == 300


def test_lower_is_better_metric_and_clear_errors() -> None:
    rng = np.random.default_rng(8)
    ref = {"clean/radial": rng.gamma(2.0, 1.0, 200)}
    model = {"clean/radial": rng.gamma(2.0, 1.0, 200)}
    for s in SEV:
        ref[f"corruption-blur/{s}/radial"] = rng.gamma(2.0 + s, 1.0, 200)
        model[f"corruption-blur/{s}/radial"] = rng.gamma(2.0 + 0.5 * s, 1.0, 200)
    res = mce_interval(model, ref, ["blur"], SEV, "radial", lower_is_better=True, n_resamples=300)
    want = sum(model[f"corruption-blur/{s}/radial"].mean() for s in SEV) / sum(
        ref[f"corruption-blur/{s}/radial"].mean() for s in SEV)
    assert res["mce"].estimate == pytest.approx(want, rel=1e-12)
    assert res["mce"].high < 1.0
    with pytest.raises(KeyError, match="corruption-noise/1/radial"):
        mce_interval(model, ref, ["noise"], SEV, "radial")
    with pytest.raises(ValueError, match="0/1"):
        mce_interval(model, ref, ["blur"], SEV, "radial", labels=np.zeros(200, dtype=np.int64))
    with pytest.raises(ValueError, match="labels"):
        mce_interval(model, ref, ["blur"], SEV, "radial", labels=np.zeros(3, dtype=np.int64))


def test_estimate_from_saved_files_equals_the_records_mce(tmp_path) -> None:
    """End to end on saved files, as ``benchmarks/corruption_robustness.py --from-saved`` uses
    them: two tiny models evaluated by the callback (the second against the first), labels read
    from the split by sample id; the bootstrap's estimate is the record's mCE (torchmetrics'
    balanced accuracy rebuilt from per-sample correctness and labels)."""
    import lightning as L
    import torch

    from callbacks import AdversarialEvaluation
    from callbacks.per_sample import FILE_NAME, SampleTable
    from callbacks.record import RobustnessRecord
    from datamodules.synthetic import SyntheticDataModule
    from tests.support.attack_models import trained

    torch.set_num_threads(1)
    suite = [{"name": "gaussian_noise", "params": [0.05, 0.1, 0.2, 0.3, 0.5], "reference_size": None},
             {"name": "contrast_down", "kind": "contrast", "params": [0.9, 0.75, 0.6, 0.45, 0.3],
              "reference_size": None}]
    dm = SyntheticDataModule(task="classification", num_train=64, num_val=48, num_test=8,
                             image_size=(16, 16), seed=0, batch_size=16, num_classes=4)
    for name, seed in (("ref", 0), ("other", 1)):
        module, _ = trained("classification", steps=60, seed=seed)
        cb = AdversarialEvaluation(attacks=[{"name": "fgsm"}], eps=[0.02], subset=37, report=False, plot=False,
                                   corruptions=suite, corruption_severities=[1, 3, 5], intervals="never",
                                   corruption_reference=None if name == "ref" else str(tmp_path / "ref" / "robustness.json"))
        trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(tmp_path / name))
        trainer.validate(module, datamodule=dm, verbose=False)
    sec = RobustnessRecord.load(tmp_path / "other" / "robustness.json").corruptions
    a, b = SampleTable.load(tmp_path / "other" / FILE_NAME).aligned(SampleTable.load(tmp_path / "ref" / FILE_NAME))
    dm.setup("validate")
    ds = dm.val_dataloader().dataset
    labels = np.array([int(ds[int(i)]["label"]) for i in a.sample_ids])
    counts = np.bincount(labels, minlength=4)
    assert counts.min() > 0 and counts.min() < counts.max()  # unbalanced: balanced error ≠ plain error
    res = mce_interval(a.columns, b.columns, sec.names(), sec.severities, "accuracy", labels=labels,
                       num_classes=4, n_resamples=200)
    data = sec.to_dict()
    assert res["mce"].estimate == pytest.approx(data["mce"], rel=1e-5)
    if math.isfinite(data["relative_mce"]):
        assert res["relative_mce"].estimate == pytest.approx(data["relative_mce"], rel=1e-4)
    assert res["mce"].low <= res["mce"].estimate <= res["mce"].high
