"""Intervals of dataset-level metrics (AUROC, balanced accuracy, F1, mAP; issue 23): the
evidence file the evaluation keeps (``robustness_evidence.json``), the metrics recomputed from it
(equal to the record's torchmetrics numbers), BCa over images with its coverage, determinism,
and records written before it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from callbacks.dataset_metrics import dataset_intervals, metric_draws, weighted_bca_interval
from callbacks.dataset_statistics import auroc_statistic, statistics
from callbacks.evidence import FILE_NAME, Evidence
from callbacks.image_bootstrap import weighted_auroc
from lightning_modules.metrics.detection import (
    DetectionMAP,
    average_precision_from_matches,
    coco_matches,
    coco_thresholds,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auroc_interval_covers_the_binormal_truth() -> None:
    """Binormal scores (negatives N(0, 1), positives N(d, 1): AUROC = Φ(d/√2) = 0.90), n = 60
    (24 positives), 500 resamples: the 95 % BCa interval covers the true AUROC in 93–97 % of
    1000 seeded replications (measured 95.3 %; the plain percentile interval covers 92.4 % at
    n = 100, AUROC 0.94, where BCa covers 94.2 %)."""
    auc, n = 0.90, 60
    d = np.sqrt(2) * stats.norm.ppf(auc)
    y = np.arange(n) < 24
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(1000):
        s = rng.normal(size=n) + d * y
        iv = weighted_bca_interval(auroc_statistic(s, y), n, seed=rep, n_resamples=500)
        assert iv.low <= iv.estimate <= iv.high
        hits += iv.low <= auc <= iv.high
    assert 0.93 <= hits / 1000 <= 0.97


def _detections(n: int = 30, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Constructed images: 0–3 objects of 3 classes, detections near them (some of another
    class, some duplicates, some images without objects), random scores."""
    g = torch.Generator().manual_seed(seed)
    preds, target = [], []
    for _ in range(n):
        m = int(torch.randint(0, 4, (1,), generator=g))
        gb = torch.rand(m, 2, generator=g) * 50
        gb = torch.cat([gb, gb + 5 + torch.rand(m, 2, generator=g) * 20], 1)
        gl = torch.randint(0, 3, (m,), generator=g)
        nd = int(torch.randint(0, 12, (1,), generator=g))
        src = torch.randint(0, max(m, 1), (nd,), generator=g)
        db = (gb[src] if m else torch.rand(nd, 4, generator=g) * 50) + torch.randn(nd, 4, generator=g) * 3
        db = torch.cat([torch.minimum(db[:, :2], db[:, 2:]), torch.maximum(db[:, :2], db[:, 2:]) + 0.5], 1)
        dl = gl[src] if m else torch.randint(0, 3, (nd,), generator=g)
        dl = torch.where(torch.rand(nd, generator=g) < 0.2, torch.randint(0, 4, (nd,), generator=g), dl)
        preds.append({"boxes": db, "scores": torch.rand(nd, generator=g), "labels": dl})
        target.append({"boxes": gb, "labels": gl})
    return preds, target


def _torchmetrics_map(preds: list[dict], target: list[dict]) -> dict[str, float]:
    metric = DetectionMAP()
    metric.update(preds, target)
    return {k: float(v) for k, v in metric.compute().items()}


def test_map_from_matches_equals_torchmetrics_on_the_set_and_on_resamples() -> None:
    """The AP of the matched lists equals torchmetrics' ``MeanAveragePrecision`` (pycocotools)
    on the evaluated set and on image multisets given as weights (an image drawn k times)."""
    preds, target = _detections()
    iou, rec = coco_thresholds()
    matches = [coco_matches(p, t, iou) for p, t in zip(preds, target)]
    dets, gts = [m[0] for m in matches], [m[1] for m in matches]
    got = average_precision_from_matches(dets, gts, np.ones((1, 30)), iou, rec)
    ref = _torchmetrics_map(preds, target)
    assert 0.02 < ref["map"] < ref["map_50"] < 1  # a case where matching matters
    for k in ("map", "map_50", "map_75"):
        assert got[k][0] == pytest.approx(ref[k], abs=1e-6)  # torchmetrics returns float32
    rng = np.random.default_rng(1)
    draws = [np.sort(rng.integers(0, 30, 30)) for _ in range(4)]
    w = np.stack([np.bincount(i, minlength=30) for i in draws]).astype(float)
    got = average_precision_from_matches(dets, gts, w, iou, rec)
    for r, idx in enumerate(draws):
        ref = _torchmetrics_map([preds[i] for i in idx], [target[i] for i in idx])
        for k in ("map", "map_50", "map_75"):
            assert got[k][r] == pytest.approx(ref[k], abs=1e-6), (r, k)
    # no ground truth in a multiset: undefined, as COCO's -1
    empty = [i for i, t in enumerate(target) if t["labels"].numel() == 0]
    w = np.zeros((1, 30))
    w[0, empty] = 1.0
    assert np.isnan(average_precision_from_matches(dets, gts, w, iou, rec)["map"][0])


def _evidence(scores: np.ndarray, labels: np.ndarray, worst: np.ndarray) -> Evidence:
    return Evidence("scores", ["auroc", "balanced_accuracy", "f1"], np.arange(scores.size) + 7,
                    labels.tolist(), {"clean": scores.tolist(), "worst/0.01": worst.tolist(),
                                      "pgd/0.01": worst.tolist()}, {"classes": 2, "multilabel": False})


def test_binary_scores_recompute_torchmetrics_and_intervals_contain_their_estimates() -> None:
    from torchmetrics.classification import AUROC, F1Score, MulticlassRecall

    rng = np.random.default_rng(3)
    y = (rng.random(80) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=80) + 1.8 * y - 0.7)))
    p = np.round(p.astype(np.float32).astype(float), 9)
    worst = np.clip(p - 0.3, 0, 1)
    ev = _evidence(p, y, worst)
    st = statistics(ev, "clean")
    pt, yt = torch.tensor(p, dtype=torch.float32), torch.tensor(y)
    ref = {"auroc": AUROC(task="binary")(pt, yt), "f1": F1Score(task="binary")(pt, yt),
           "balanced_accuracy": MulticlassRecall(num_classes=2, average="macro")((pt > 0.5).long(), yt)}
    for m, v in ref.items():
        assert st[m](np.ones((1, 80)))[0] == pytest.approx(float(v), abs=1e-6), m
    out = dataset_intervals(ev, [0.01], [("pgd", 0.01)], level=0.95, seed=0, n_resamples=400)
    assert set(out) == {"auroc", "balanced_accuracy", "f1"}
    for entry in out.values():
        for part in (entry["clean"], *entry["worst"], *entry["attacks"], entry["robust_area"]):
            assert part["low"] <= part["estimate"] <= part["high"] and part["n"] == 80
        assert entry["clean"]["method"] == "bca" and entry["clean"]["low"] < entry["clean"]["high"]
    assert out["auroc"]["worst"][0]["estimate"] == pytest.approx(float(AUROC(task="binary")(
        torch.tensor(worst, dtype=torch.float32), yt)), abs=1e-6)
    area = out["auroc"]["robust_area"]["estimate"]  # trapezoid over ε ∈ [0, 0.01]
    assert area == pytest.approx((out["auroc"]["clean"]["estimate"] + out["auroc"]["worst"][0]["estimate"]) / 2)
    # seeded: the same evidence gives the same intervals; another seed other bounds
    assert dataset_intervals(ev, [0.01], [("pgd", 0.01)], seed=0, n_resamples=400) == out
    assert dataset_intervals(ev, [0.01], [("pgd", 0.01)], seed=1, n_resamples=400) != out


def test_auroc_statistic_equals_the_reference_with_ties_and_missing_classes() -> None:
    """The one-sort AUROC equals :func:`callbacks.image_bootstrap.weighted_auroc` (a sort per call)
    on scores with many ties, under bootstrap and jackknife weights (NaN where a class is
    missing), and torchmetrics' binary AUROC at unit weights."""
    from torchmetrics.classification import AUROC

    from callbacks.dataset_metrics import weight_rows

    rng = np.random.default_rng(4)
    for n in (7, 60):
        s = np.round(rng.normal(size=n), 1)
        y = rng.random(n) < 0.4
        w = np.concatenate(list(weight_rows(n, 200, seed=1)))
        np.testing.assert_allclose(auroc_statistic(s, y)(w), weighted_auroc(s, y, w), rtol=0, atol=1e-12)
        ref = AUROC(task="binary")(torch.tensor(s, dtype=torch.float32), torch.tensor(y.astype(int)))
        assert auroc_statistic(s, y)(np.ones((1, n)))[0] == pytest.approx(float(ref), abs=1e-6)


def test_evidence_file_round_trip_and_errors(tmp_path: Path) -> None:
    ev = _evidence(np.array([0.2, 0.9, 0.4]), np.array([0, 1, 1]), np.array([0.5, 0.5, 0.1]))
    path = ev.save(tmp_path / FILE_NAME)
    back = Evidence.load(path)
    assert back.to_json() == ev.to_json() and back.columns == ev.columns and back.targets == [0, 1, 1]
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a medrobust dataset-level evidence file"):
        Evidence.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="column 'clean' has 2 entries for 3 samples"):
        Evidence("scores", ["auroc"], [1, 2, 3], [0, 1, 1], {"clean": [0.1, 0.2]})
    with pytest.raises(KeyError, match="no column 'worst/0.5'"):
        statistics(ev, "worst/0.5")


# ----------------------------------------------------------------------------- in an evaluation
def _validate(root: Path, **kwargs: object) -> None:
    from tests.callbacks.test_per_sample_file import _validate as validate

    validate(root, **kwargs)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One validated run of the tiny classifier (24 samples), shared by the tests below."""
    root = tmp_path_factory.mktemp("validated")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' one_thread: the determinism test compares with it
    try:
        _validate(root, subset=24)
    finally:
        torch.set_num_threads(threads)
    return root


def test_evaluation_writes_identical_evidence_and_shows_auroc_intervals(tmp_path: Path, validated: Path) -> None:
    """The callback writes ``robustness_evidence.json`` beside the record, byte-identical for
    the same evaluation; the AUROC of its scores is the record's; the intervals appear in the
    record, ``report.md``'s table, the CLI summary, the leaderboard and the curve data."""
    from callbacks.leaderboard import build_board
    from callbacks.record import RobustnessRecord
    from callbacks.report import interval_section, markdown_table
    from medrobust.cli_summary import summarise_record

    _validate(tmp_path / "b", subset=24)
    assert (validated / FILE_NAME).read_bytes() == (tmp_path / "b" / FILE_NAME).read_bytes()
    rec = RobustnessRecord.load(validated / "robustness.json")
    ev = Evidence.load(validated / FILE_NAME)
    assert ev.sample_ids.tolist() == rec.subset.indices and ev.kind == "scores"
    assert sorted(ev.columns) == sorted(["clean", "fgsm/0.01", "pgd/0.01", "worst/0.01",
                                         "fgsm/0.02", "pgd/0.02", "worst/0.02"])
    for m in ("auroc", "balanced_accuracy", "f1"):
        ci = rec.interval("clean", metric=m)
        assert ci.estimate == pytest.approx(rec.clean[m], abs=1e-6) and ci.low <= ci.estimate <= ci.high
        for e in rec.ensemble:
            w = rec.interval("worst", e.eps, metric=m)
            assert w.estimate == pytest.approx(e.metrics[m], abs=1e-6), (m, e.eps)
        for a in rec.attacks:
            assert rec.interval("attack", a.eps, a.attack, metric=m).estimate == pytest.approx(a.metrics[m], abs=1e-6)
    auc = rec.interval("clean", metric="auroc")
    assert auc.method == "bca" and auc.n == 24 and auc.low < auc.high
    table = markdown_table(rec)
    assert f"{rec.clean['auroc']:.4f} [{auc.low:.3f}, {auc.high:.3f}]" in table
    assert "robustness_evidence.json" in " ".join(interval_section(rec))
    assert f"clean auroc {rec.clean['auroc']:.3f} [{auc.low:.3f}, {auc.high:.3f}]" in summarise_record(rec, "auroc")
    board = build_board([("a", rec)], metric="auroc")
    assert board.rows[0][1][0].low == pytest.approx(auc.low)


def test_a_record_without_dataset_intervals_still_loads_and_reports(tmp_path: Path, validated: Path) -> None:
    from callbacks.evaluation_writers import scalar_values
    from callbacks.record import RobustnessRecord
    from callbacks.report import markdown_table, write_report
    from medrobust.cli_summary import summarise_record

    data = json.loads((validated / "robustness.json").read_text())
    del data["intervals"]["dataset_metrics"]  # as written before this change
    rec = RobustnessRecord.from_dict(data)
    assert rec.interval("clean", metric="auroc") is None and rec.interval("clean") is not None
    table = markdown_table(rec)
    assert f"| {rec.clean['auroc']:.4f} |" in table or f"{rec.clean['auroc']:.4f} |" in table
    assert "auroc" in summarise_record(rec, "auroc") and "[" not in summarise_record(rec, "auroc")
    write_report(rec, tmp_path / "report.md")
    assert "adv/clean/auroc_ci_low" not in scalar_values(rec, "adv")
    assert "adv/clean/auroc_ci_low" in scalar_values(RobustnessRecord.load(validated / "robustness.json"), "adv")


def test_paper_report_tables_show_the_auroc_interval_of_a_one_seed_run(validated: Path) -> None:
    from benchmarks.paper_joel import JOEL
    from benchmarks.paper_tables import metric_table
    from callbacks.record import RobustnessRecord

    rec = RobustnessRecord.load(validated / "robustness.json")
    results = {"pneumoniamnist/naive": {"label": "naive", "log_dir": str(validated), "test": rec.to_dict()}}
    table = metric_table(JOEL, JOEL.group("pneumoniamnist"), results, "auroc", ensemble_only=True)
    clean, worst = rec.interval("clean", metric="auroc"), rec.interval("worst", 0.02, metric="auroc")
    assert f"{rec.clean['auroc']:.3f} [{clean.low:.3f}, {clean.high:.3f}]" in table
    assert f"[{worst.low:.3f}, {worst.high:.3f}]" in table
    seeds = {"pneumoniamnist/naive": {**results["pneumoniamnist/naive"],
                                      "seeds": [results["pneumoniamnist/naive"]] * 2}}
    assert "[" not in metric_table(JOEL, JOEL.group("pneumoniamnist"), seeds, "auroc", ensemble_only=True)


def test_compare_pairs_the_dataset_level_metrics_of_two_runs(tmp_path: Path) -> None:
    """``medrobust compare`` adds the paired AUROC (etc.) difference where both runs kept
    evidence: a better-separating model is confirmed better; a model against itself differs by
    exactly 0 (inconclusive); the estimates are each run's own AUROC."""
    from callbacks.compare import compare_runs
    from callbacks.per_sample import FILE_NAME as SAMPLES
    from callbacks.per_sample import SampleTable

    rng = np.random.default_rng(5)
    y = (np.arange(150) % 3 == 0).astype(int)
    noise = rng.normal(size=150)
    for name, sep in (("good", 2.5), ("weak", 0.8)):
        folder = tmp_path / name
        folder.mkdir()
        p = np.round(1 / (1 + np.exp(-(noise + rng.normal(size=150) * 0.5 + sep * y - sep / 2))), 9)
        _evidence(p, y, p).save(folder / FILE_NAME)
        SampleTable(np.arange(150) + 7, {"clean/accuracy": ((p > 0.5) == y).astype(float)}).save(folder / SAMPLES)
    rows = {r.column: r for r in compare_runs(tmp_path / "good", tmp_path / "weak")}
    assert {"clean/accuracy", "clean/auroc", "worst/0.01/auroc", "clean/f1"} <= set(rows)
    auc = rows["clean/auroc"]
    good = Evidence.load(tmp_path / "good" / FILE_NAME)
    assert auc.mean_a == pytest.approx(statistics(good, "clean")["auroc"](np.ones((1, 150)))[0])
    assert auc.verdict == "A > B" and auc.p_value is None and auc.n == 150
    same = {r.column: r for r in compare_runs(tmp_path / "good", tmp_path / "good")}
    assert same["clean/auroc"].difference.low == same["clean/auroc"].difference.high == 0.0
    assert same["clean/auroc"].verdict == "inconclusive"
    only = compare_runs(tmp_path / "good", tmp_path / "weak", columns=["clean/auroc"])
    assert [r.column for r in only] == ["clean/auroc"]


def test_an_undefined_interval_survives_the_record_file(tmp_path: Path) -> None:
    """An interval the bootstrap could not define (fewer than half the resamples defined: NaN
    bounds, said in its method — with one positive image AUROC is still defined on ~63 % of
    resamples, so it is built by hand here) is written as null, read back as NaN, and the
    report shows the number without brackets."""
    from callbacks.dataset_metrics import _interval
    from callbacks.record import RobustnessRecord
    from callbacks.report import markdown_table

    draws = np.r_[0.8, np.full(150, np.nan), np.full(50, 0.7), np.full(24, 0.8)]
    iv = _interval(draws, 0.95, 24, 200)
    assert np.isnan(iv.low) and iv.method == "bca (50 defined resamples)"
    y = np.zeros(24, dtype=int)
    y[3] = 1
    p = np.linspace(0.05, 0.95, 24)
    out = dataset_intervals(_evidence(p, y, p), [0.01], [("pgd", 0.01)], n_resamples=200)
    assert out["auroc"]["clean"]["low"] < out["auroc"]["clean"]["high"]  # one positive: defined, wide
    out["auroc"]["clean"] = iv.to_dict()
    rec = RobustnessRecord.from_dict({"task": "classification", "method": "clean", "epoch": 0, "split": "test",
                                      "clean": {"accuracy": 0.5, "auroc": out["auroc"]["clean"]["estimate"]},
                                      "attacks": [], "intervals": {"metric": "accuracy", "level": 0.95,
                                                                   "dataset_metrics": out}})
    path = rec.save(tmp_path / "robustness.json")
    back = RobustnessRecord.load(path)
    assert np.isnan(back.interval("clean", metric="auroc").low)
    assert "[nan" not in markdown_table(back)


def test_equal_columns_share_their_draws_and_equal_what_each_gives_alone() -> None:
    """A one-member suite's worst case equals that member's column: it is computed once, and
    its draws are exactly those of the column computed on its own."""
    rng = np.random.default_rng(5)
    y = (rng.random(50) < 0.5).astype(int)
    p = np.round(rng.random(50), 9)
    worst = np.clip(p - 0.2, 0, 1)
    ev = _evidence(p, y, worst)
    both = metric_draws(ev, ["clean", "worst/0.01", "pgd/0.01"], n_resamples=100, seed=0)
    for key in ("clean", "worst/0.01", "pgd/0.01"):
        alone = metric_draws(ev, [key], n_resamples=100, seed=0)
        for metric in alone:
            assert np.array_equal(both[metric][key], alone[metric][key], equal_nan=True)
    assert list(both["auroc"]) == ["clean", "worst/0.01", "pgd/0.01"]
    assert not np.array_equal(both["auroc"]["clean"], both["auroc"]["pgd/0.01"])


class _EvidenceTask:
    """A task whose ``sample_evidence`` fails in one of the ways the evaluator tolerates."""

    main_metric = "accuracy"

    def __init__(self, failure: str) -> None:
        self.failure = failure

    def evidence_spec(self) -> dict:
        return {"kind": "scores", "metrics": ["auroc"]}

    def evidence_targets(self, batch: dict) -> list:
        return batch["label"].tolist()

    def sample_evidence(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        if self.failure == "raises":
            raise ValueError("no scores for this output")
        return output[:-1]  # "short": one entry missing


@pytest.mark.parametrize("failure", ["raises", "short"])
def test_failing_sample_evidence_warns_once_and_keeps_no_evidence(failure: str) -> None:
    """``SampleColumns``: a task whose evidence fails (an error, or fewer entries than samples)
    is warned about once; its per-sample values are still kept, and it writes no evidence."""
    from callbacks.sample_columns import SampleColumns

    cols = SampleColumns(_EvidenceTask(failure), evidence=True)
    batch = {"label": torch.tensor([0, 1, 1])}
    out, metric = torch.rand(3), torch.tensor([1.0, 0.0, 1.0])
    cols.add_ids(torch.arange(3))
    with pytest.warns(UserWarning, match="sample_evidence failed"):
        cols.keep(("clean", None), metric, out, batch, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the evidence is off now
        cols.keep(("pgd", 0.01), metric, out, batch, 3)
    assert cols.evidence_ok is False
    assert cols.evidence(ok=True) is None
    assert [v.tolist() for v in cols.values[("clean", None)]] == [[1.0, 0.0, 1.0]]
    assert list(cols.values) == [("clean", None), ("pgd", 0.01)]
