"""Paper-suite verdicts decided on intervals (benchmarks/paper_evidence.py): each rule of
benchmarks/paper_suites.py gives confirmed, refuted and inconclusive on constructed per-sample
files, through the real claim functions; seeds widen the interval; results without per-sample
files fall back to the records' intervals or say why there is none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.paper_amat import AMAT, amat_claims
from benchmarks.paper_claims import medmnist_check
from benchmarks.paper_evidence import Term, column, run_tables
from benchmarks.paper_intervals import (
    all_of,
    any_of,
    dataset_estimate,
    linear_estimate,
    negate,
    statistic_interval,
)
from benchmarks.paper_joel import JOEL_EPS, joel_claims, joel_size_claim
from benchmarks.paper_report import verdict_summary
from benchmarks.paper_xue import xue_claims
from callbacks.image_bootstrap import weighted_auroc
from callbacks.per_sample import SampleTable, column_name
from callbacks.record_intervals import record_intervals, sample_area

EPS = (0.001, JOEL_EPS)


def _ones(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``[n]`` 0/1 values with exactly ``k`` ones, at seeded random places."""
    v = np.zeros(n)
    v[np.random.default_rng(seed).permutation(n)[:k]] = 1.0
    return v


def _write_run(root: Path, name: str, cols: dict[str, np.ndarray], task: str = "classification",
               metric: str = "accuracy", lower: bool = False, with_file: bool = True,
               with_intervals: bool = False) -> dict[str, Any]:
    """One seed's entry of ``results.json``: a record whose numbers are the means of ``cols``
    (``clean/<m>``, ``<attack>/<ε>/<m>``, ``worst/<ε>/<m>``) and, unless ``with_file`` is
    false, the per-sample file in its run folder."""
    n = len(next(iter(cols.values())))
    table = SampleTable(np.arange(100, 100 + n), dict(cols))
    folder = root / name
    folder.mkdir(parents=True)
    if with_file:
        table.save(folder / "robustness_samples.csv")
    attacks, ensemble, worst = [], [], {}
    for key, v in cols.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "worst":
            ensemble.append({"eps": float(parts[1]), "metrics": {metric: float(v.mean())}})
            worst[float(parts[1])] = v
        elif len(parts) == 3:
            attacks.append({"attack": parts[0], "eps": float(parts[1]), "metrics": {metric: float(v.mean())}})
    clean = cols[column_name("clean", metric)]
    rec: dict[str, Any] = {"task": task, "method": name, "epoch": 0, "split": "test",
                           "clean": {metric: float(clean.mean())}, "subset": {"size": n},
                           "attacks": attacks, "ensemble": ensemble}
    if worst:
        area = sample_area(clean, worst, lower).mean()
        rec["robust_area"] = {"value": float(area), "metric": metric, "metric_lower_is_better": lower}
    if with_intervals:
        rec["intervals"] = record_intervals(table, metric, sorted(worst), [(a["attack"], a["eps"]) for a in attacks],
                                            lower)
    return {"label": name, "log_dir": str(folder), "test": rec, "train_s_per_epoch": 1.0, "params": 10}


def _with_seeds(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {**entries[0], "seeds": [{**e, "seed": s} for s, e in enumerate(entries)]}


def _joel_cols(n: int, clean: int, worst: int, seed: int = 0) -> dict[str, np.ndarray]:
    c = _ones(n, clean, seed)
    # the worst case breaks only samples the model got right: worst ⊆ clean
    w = np.zeros(n)
    w[np.flatnonzero(c)[:worst]] = 1.0
    return {"clean/accuracy": c, column_name("pgd", "accuracy", JOEL_EPS): w,
            column_name("worst", "accuracy", JOEL_EPS): w}


# ------------------------------------------------------------------------------ three-valued logic
def test_three_valued_logic() -> None:
    c, r, i = "confirmed", "refuted", "inconclusive"
    assert all_of([c, c]) == c and all_of([c, i]) == i and all_of([c, i, r]) == r and all_of([]) == i
    assert any_of([r, c]) == c and any_of([r, r]) == r and any_of([r, i]) == i and any_of([]) == i
    assert [negate(v) for v in (c, r, i)] == [r, c, i]


# ------------------------------------------------------------------------------ joel2022
@pytest.mark.parametrize(("n", "clean", "worst", "verdict"), [
    (200, 180, 20, "confirmed"),    # 0.10 − 0.45 = −0.35: far below 0
    (200, 180, 160, "refuted"),     # 0.80 − 0.45 = +0.35: far above 0
    (40, 36, 18, "inconclusive"),   # 0.45 − 0.45 = 0 on 40 images
])
def test_joel_collapse_rule_three_outcomes(tmp_path: Path, n: int, clean: int, worst: int, verdict: str) -> None:
    res = {"pneumoniamnist/naive": _write_run(tmp_path, "naive", _joel_cols(n, clean, worst)),
           "pneumoniamnist/staged": _write_run(tmp_path, "staged", _joel_cols(n, clean, clean))}
    claims = joel_claims(res)
    collapse = next(c for c in claims if "lose most" in c["claim"])
    assert collapse["verdict"] == verdict and collapse["basis"] == "interval"
    assert f"n = {n}" in collapse["tests"] and "detects ≥" in collapse["tests"]
    assert f"{worst / n:.3f}" in collapse["measured"]


@pytest.mark.parametrize(("staged_worst", "verdict"), [
    (170, "confirmed"),     # recovers 150 of the 160 lost: far above half
    (25, "refuted"),        # recovers 5 of 160
    (None, "inconclusive"),  # 40 images, recovers about half
])
def test_joel_restore_rule_three_outcomes(tmp_path: Path, staged_worst: int | None, verdict: str) -> None:
    if staged_worst is None:
        naive, staged = _joel_cols(40, 36, 4), _joel_cols(40, 36, 20, seed=1)  # half of 32 lost = 16 back
    else:
        naive, staged = _joel_cols(200, 180, 20), _joel_cols(200, 180, staged_worst, seed=1)
    res = {"ph2/naive": _write_run(tmp_path, "naive", naive), "ph2/staged": _write_run(tmp_path, "staged", staged)}
    restore = next(c for c in joel_claims(res) if "restores" in c["claim"])
    assert restore["verdict"] == verdict


def test_seeds_that_disagree_widen_the_interval(tmp_path: Path) -> None:
    """The same per-sample data decide the rule with one seed; a second seed of the staged model
    that recovers nothing makes it inconclusive (the seed-to-seed variation enters the interval),
    and the report says 2 seeds."""
    naive = _write_run(tmp_path, "naive", _joel_cols(200, 180, 20))
    good = _write_run(tmp_path, "staged0", _joel_cols(200, 180, 170, seed=1))
    bad = _write_run(tmp_path, "staged1", _joel_cols(200, 180, 20, seed=2))
    one = {"ph2/naive": naive, "ph2/staged": good}
    restore = next(c for c in joel_claims(one) if "restores" in c["claim"])
    assert restore["verdict"] == "confirmed"
    two = {"ph2/naive": _with_seeds([naive, naive]), "ph2/staged": _with_seeds([good, bad])}
    restore = next(c for c in joel_claims(two) if "restores" in c["claim"])
    assert restore["verdict"] == "inconclusive" and "2 seeds" in restore["tests"]
    # the mean over seeds alone recovers 0.375 of 0.8 lost: a point reading says refuted
    assert restore["point_verdict"] == "refuted"
    assert "mean of 2 seeds" in restore["measured"]
    # two agreeing seeds stay confirmed
    good2 = _write_run(tmp_path, "staged2", _joel_cols(200, 180, 168, seed=3))
    agree = {"ph2/naive": _with_seeds([naive, naive]), "ph2/staged": _with_seeds([good, good2])}
    assert next(c for c in joel_claims(agree) if "restores" in c["claim"])["verdict"] == "confirmed"


@pytest.mark.parametrize(("worst", "verdict"), [
    ((170, 90, 10), "confirmed"),     # kept 0.94 → 0.50 → 0.06: falls at every step
    ((10, 90, 170), "refuted"),       # rises at every step
    ((100, 96, 92), "inconclusive"),  # falls by 0.02 per step on 200 images
])
def test_joel_size_rule_three_outcomes(tmp_path: Path, worst: tuple[int, int, int], verdict: str) -> None:
    res = {}
    sides = {}
    for k, ((name, side), w) in enumerate(zip((("ph2_half", 32), ("ph2", 64), ("ph2_double", 128)), worst)):
        res[f"{name}/naive"] = _write_run(tmp_path, name, _joel_cols(200, 180, w, seed=k))
        sides[name] = side
    (claim,) = joel_size_claim(res, sides)
    assert claim["verdict"] == verdict
    assert claim["tests"].count(" − kept ") == 3 and "n = 200" in claim["tests"]  # two steps and the whole range


# ------------------------------------------------------------------------------ xue2019
def _xue_cols(n: int, adv: int, seed: int) -> dict[str, np.ndarray]:
    c = _ones(n, int(0.9 * n), seed)
    cols = {"clean/accuracy": c}
    for atk in ("fgsm", "pgd"):
        for e in EPS:
            cols[column_name(atk, "accuracy", e)] = _ones(n, adv, seed + 7)
    return cols


@pytest.mark.parametrize(("sat_adv", "verdict"), [(150, "confirmed"), (20, "refuted"), (85, "inconclusive")])
def test_xue_sat_rule_three_outcomes(tmp_path: Path, sat_adv: int, verdict: str) -> None:
    res = {f"ph2/{m}": _write_run(tmp_path, m, _xue_cols(200, adv, s))
           for m, adv, s in (("clean", 80, 0), ("sat", sat_adv, 1), ("denoise", 80, 2))}
    sat = next(c for c in xue_claims(res) if "(SAT)" in c["claim"])
    assert sat["verdict"] == verdict
    # the point estimates alone: SAT's mean is above clean's in the confirmed and the inconclusive case
    assert sat["point_verdict"] == ("refuted" if verdict == "refuted" else "confirmed")
    if verdict == "inconclusive":
        assert verdict_summary([sat]) == ("Verdicts on intervals: 0 confirmed, 0 refuted, 1 inconclusive. Of the "
                                          "1 rule(s) that the point estimates alone decide (1 confirmed, 0 refuted), "
                                          "1 is inconclusive on intervals.")
    if sat_adv == 85:  # 0/1 paired columns: McNemar's exact p is reported beside the interval
        assert "McNemar p" in sat["tests"]


def test_few_discordant_pairs_stay_inconclusive(tmp_path: Path) -> None:
    """SAT right on 3 more of 200 samples than clean, wrong on none more: the paired bootstrap
    interval lies above 0 (it cannot go below with every discordant pair one way), McNemar's
    exact p is 0.25: the verdict is inconclusive and says why (docs/benchmarks.md); 8 such pairs
    (p = 0.008) confirm."""
    for extra, verdict in ((3, "inconclusive"), (8, "confirmed")):
        base = _xue_cols(200, 80, 0)
        sat = {k: v.copy() for k, v in base.items()}
        for k in sat:
            if k != "clean/accuracy":
                sat[k][np.flatnonzero(sat[k] == 0)[:extra]] = 1.0
        res = {"ph2/clean": _write_run(tmp_path / f"{extra}", "clean", base),
               "ph2/sat": _write_run(tmp_path / f"{extra}", "sat", sat),
               "ph2/denoise": _write_run(tmp_path / f"{extra}", "denoise", base)}
        claim = next(c for c in xue_claims(res) if "(SAT)" in c["claim"])
        assert claim["verdict"] == verdict, claim["tests"]
        assert ("too few discordant pairs" in claim["tests"]) == (verdict == "inconclusive")
        assert f"McNemar p = {0.25 if extra == 3 else 0.0078125:.3g}" in claim["tests"]


# ------------------------------------------------------------------------------ amat
def _seg_cols(n: int, clean: float, robust: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    eps = (0.25, 1.0)
    cols = {"clean/dice": np.clip(clean + 0.05 * rng.standard_normal(n), 0, 1)}
    for e in eps:
        v = np.clip(robust + 0.05 * rng.standard_normal(n), 0, 1)
        cols[column_name("pgd", "dice", e)] = v
        cols[column_name("worst", "dice", e)] = v
    return cols


@pytest.mark.parametrize(("amat", "verdict"), [
    ((0.80, 0.60), "confirmed"),     # above SAT 0.5 on both axes, above SAT 2 on clean
    ((0.50, 0.30), "refuted"),       # below both SAT runs on both axes
    ((0.751, 0.501), "inconclusive"),  # a hair above SAT 0.5 on both: the intervals straddle 0
])
def test_amat_dominance_rule_three_outcomes(tmp_path: Path, amat: tuple[float, float], verdict: str) -> None:
    res = {"segmentation/sat0.5": _write_run(tmp_path, "sat0.5", _seg_cols(40, 0.75, 0.50, 1), "segmentation", "dice"),
           "segmentation/sat2": _write_run(tmp_path, "sat2", _seg_cols(40, 0.60, 0.65, 2), "segmentation", "dice"),
           "segmentation/amat": _write_run(tmp_path, "amat", _seg_cols(40, *amat, 3), "segmentation", "dice")}
    trade, cost = amat_claims(res)
    assert trade["verdict"] == verdict and trade["basis"] == "interval"
    assert trade["tests"].count("AMAT − ") == 4  # two axes × two SAT ε
    assert cost["basis"] == "point" and "point comparison" in cost["claim"] and cost["verdict"] == "confirmed"
    assert AMAT.group("segmentation").metric == "dice"


# ------------------------------------------------------------------------------ medmnist, fallbacks
def test_medmnist_auroc_without_evidence_has_no_interval_so_at_most_inconclusive(tmp_path: Path) -> None:
    high = {"pneumoniamnist/clean": _write_run(tmp_path, "hi", {"clean/accuracy": _ones(600, 590)})}
    (claim,) = medmnist_check(high, ["pneumoniamnist/clean"])
    assert claim["verdict"] == "inconclusive" and "robustness_evidence.json` to resample" in claim["tests"]
    assert "clean accuracy = 0.983" in claim["tests"] and ": confirmed" in claim["tests"]
    low = {"pneumoniamnist/clean": _write_run(tmp_path, "lo", {"clean/accuracy": _ones(600, 300)})}
    assert medmnist_check(low, ["pneumoniamnist/clean"])[0]["verdict"] == "refuted"


def _with_scores(entry: dict[str, Any], separation: float, seed: int = 0) -> dict[str, Any]:
    """``entry`` with a binormal-score evidence file (600 samples, 40 % positive) and the AUROC
    of those scores in its record."""
    from callbacks.evidence import FILE_NAME, Evidence

    rng = np.random.default_rng(seed)
    y = (np.arange(600) % 5 < 2).astype(int)
    p = np.round(1 / (1 + np.exp(-(rng.normal(size=600) + separation * y - separation / 2))), 9)
    ev = Evidence("scores", ["auroc"], np.arange(100, 700), y.tolist(), {"clean": p.tolist()},
                  {"classes": 2, "multilabel": False})
    ev.save(Path(entry["log_dir"]) / FILE_NAME)
    entry["test"]["clean"]["auroc"] = float(weighted_auroc(p, y == 1, np.ones(600)))
    return entry


def test_medmnist_auroc_interval_decides_with_evidence(tmp_path: Path) -> None:
    """With the scores kept, the AUROC rule is decided on its interval: far above 0.924
    confirmed, far below refuted, at the threshold inconclusive; several seeds use the
    two-level bootstrap."""
    def run(name: str, sep: float, seed: int = 0) -> dict[str, Any]:
        return _with_scores(_write_run(tmp_path, name, {"clean/accuracy": _ones(600, 590, seed)}), sep, seed)

    (claim,) = medmnist_check({"pneumoniamnist/clean": run("hi", 3.5)}, ["pneumoniamnist/clean"])
    assert claim["verdict"] == "confirmed" and "clean AUROC = 0.9" in claim["tests"]
    (claim,) = medmnist_check({"pneumoniamnist/clean": run("lo", 1.0)}, ["pneumoniamnist/clean"])
    assert claim["verdict"] == "refuted"
    # binormal AUROC Φ(d/√2) = 0.924 at d ≈ 2.03: the interval straddles the threshold
    (claim,) = medmnist_check({"pneumoniamnist/clean": run("mid", 2.03)}, ["pneumoniamnist/clean"])
    assert claim["verdict"] == "inconclusive"
    seeds = _with_seeds([run(f"s{s}", 3.5, s) for s in range(3)])
    (claim,) = medmnist_check({"pneumoniamnist/clean": seeds}, ["pneumoniamnist/clean"])
    assert claim["verdict"] == "confirmed"
    assert dataset_estimate(seeds, "auroc").interval.method == "two-level percentile"


def test_without_per_sample_files_records_stand_in_or_the_verdict_is_inconclusive(tmp_path: Path) -> None:
    """results.json written before per-sample files: a one-run test uses the record's interval,
    a two-run difference the conservative unpaired interval of the two records, and a quantity
    the records cannot give is inconclusive with the reason."""
    old = {"pneumoniamnist/clean": _write_run(tmp_path, "old", {"clean/accuracy": _ones(600, 300)},
                                              with_file=False, with_intervals=True)}
    assert run_tables(old["pneumoniamnist/clean"])[1].startswith("no per-sample file")
    (claim,) = medmnist_check(old, ["pneumoniamnist/clean"])
    assert claim["verdict"] == "refuted" and "the record's interval" in claim["tests"]

    seg = {k: _write_run(tmp_path, k.split("/")[1], _seg_cols(40, *v, s), "segmentation", "dice",
                         with_file=False, with_intervals=True)
           for k, v, s in (("segmentation/sat0.5", (0.6, 0.3), 1), ("segmentation/amat", (0.8, 0.6), 2))}
    trade, _ = amat_claims(seg)
    assert trade["verdict"] == "confirmed" and "conservative unpaired" in trade["tests"]

    joel = {"ph2/naive": _write_run(tmp_path, "jn", _joel_cols(40, 36, 4), with_file=False, with_intervals=True),
            "ph2/staged": _write_run(tmp_path, "js", _joel_cols(40, 36, 36), with_file=False, with_intervals=True)}
    for claim in joel_claims(joel):
        assert claim["verdict"] == "inconclusive" and "no per-sample file" in claim["tests"]


def test_paired_interval_is_narrower_than_unpaired(tmp_path: Path) -> None:
    """Two models that differ on few samples of a hard/easy mix: pairing removes the shared
    difficulty, so the paired interval is much narrower than the conservative unpaired one."""
    rng = np.random.default_rng(0)
    base = np.clip(rng.uniform(0.2, 1.0, 80), 0, 1)
    a = _write_run(tmp_path, "a", {"clean/dice": base + 0.02}, "segmentation", "dice", with_intervals=True)
    b = _write_run(tmp_path, "b", {"clean/dice": base}, "segmentation", "dice", with_intervals=True)
    paired = linear_estimate([Term(a, column("clean/dice")), Term(b, column("clean/dice"), -1.0)])
    assert paired.interval is not None and paired.interval.low == pytest.approx(0.02)
    a_old, b_old = ({k: v for k, v in e.items() if k != "log_dir"} for e in (a, b))
    unpaired = linear_estimate([Term(a_old, column("clean/dice"), fallback=("clean", None), fallback_metric="dice"),
                                Term(b_old, column("clean/dice"), -1.0, fallback=("clean", None),
                                     fallback_metric="dice")])
    assert unpaired.interval is not None and unpaired.interval.low < 0 < unpaired.interval.high
    ratio = statistic_interval([Term(a, column("clean/dice")), Term(b, column("clean/dice"))],
                               lambda m: m[0] / m[1])
    assert ratio.interval is not None and ratio.interval.low > 1.0


def test_report_only_rebuilds_an_old_results_file(tmp_path: Path) -> None:
    """``--report-only`` on a results.json written before per-sample files and intervals (no
    ``n_seeds`` in its meta, records without ``intervals``): the report is built, the
    uncertainty table and every verdict say why they have no interval."""
    from benchmarks import run as runner

    runs = {"pneumoniamnist/naive": _write_run(tmp_path / "r", "naive", _joel_cols(40, 36, 4), with_file=False),
            "pneumoniamnist/staged": _write_run(tmp_path / "r", "staged", _joel_cols(40, 36, 30), with_file=False)}
    for entry in runs.values():
        entry.update(config="classification_pneumoniamnist_clean-joel2022", overrides={}, seed=0)
    meta = {"command": "python benchmarks/run.py --suite joel2022 --quick", "mode": "quick", "threads": 1,
            "machine": "test", "load_start": "0", "load_end": "0", "wall_s": 1.0, "seeds": [0]}
    out = tmp_path / "out" / "joel2022"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}))
    (report,) = runner.main(["--suite", "joel2022", "--report-only", "--out", str(tmp_path / "out")])
    text = report.read_text()
    assert "Verdicts on intervals: 0 confirmed, 0 refuted, 3 inconclusive." in text
    assert text.count("no per-sample file `robustness_samples.csv`") >= 3  # uncertainty table and verdicts
    assert "(1 per run)" in text


def test_size_rule_with_seeds_uses_the_two_level_ratio_bootstrap(tmp_path: Path) -> None:
    """The size rule on two seeds per side: two agreeing seeds keep the verdict, a second seed
    that reverses the trend makes it inconclusive (seed-to-seed variation in the ratio's interval)."""
    sides = {"ph2_half": 32, "ph2": 64, "ph2_double": 128}

    def results(second: tuple[int, int, int]) -> dict[str, Any]:
        res = {}
        for k, (name, w0, w1) in enumerate(zip(sides, (170, 90, 10), second)):
            runs = [_write_run(tmp_path / f"{second}", f"{name}{s}", _joel_cols(200, 180, w, seed=k))
                    for s, w in enumerate((w0, w1))]
            res[f"{name}/naive"] = _with_seeds(runs)
        return res

    (agree,) = joel_size_claim(results((165, 95, 15)), sides)
    assert agree["verdict"] == "confirmed" and agree["tests"].count("2 seeds") == 3
    (split,) = joel_size_claim(results((10, 90, 170)), sides)
    assert split["verdict"] == "inconclusive"


def test_medmnist_auroc_falls_back_to_the_records_interval(tmp_path: Path) -> None:
    """A run folder without the evidence file whose record carries an AUROC interval (one seed):
    the rule tests that interval."""
    entry = _write_run(tmp_path, "rec", {"clean/accuracy": _ones(600, 590)}, with_intervals=True)
    entry["test"]["clean"]["auroc"] = 0.97
    iv = {"estimate": 0.97, "low": 0.955, "high": 0.982, "level": 0.95, "n": 600, "method": "bca"}
    entry["test"]["intervals"]["dataset_metrics"] = {"auroc": {"clean": iv, "worst": [], "attacks": [],
                                                               "robust_area": None}}
    (claim,) = medmnist_check({"pneumoniamnist/clean": entry}, ["pneumoniamnist/clean"])
    assert claim["verdict"] == "confirmed" and "the record's interval" in claim["tests"]
    assert dataset_estimate(entry, "auroc").interval.low == 0.955
