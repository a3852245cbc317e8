"""benchmarks/run.py: the paper-suite runner end to end on a sliver of the real data (--smoke),
and its config-override machinery."""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import pytest

from benchmarks import config_edit
from benchmarks import run as runner
from benchmarks.paper_amat import AMAT
from benchmarks.paper_joel import JOEL
from benchmarks.paper_suites import SUITES
from benchmarks.paper_tables import fmt
from benchmarks.paper_xue import XUE
from callbacks.uncertainty import Interval
from medrobust.config_pieces import load_config
from tests.conftest import PROJECT_ROOT


def test_every_suite_run_names_a_shipped_config() -> None:
    for suite in SUITES.values():
        groups = {g.name for g in suite.groups}
        for run in suite.runs:
            assert (PROJECT_ROOT / "configs" / "experiment" / f"{run.config}.yaml").is_file(), run.config
            assert run.group in groups
    assert len({r.key for r in AMAT.runs}) == len(AMAT.runs)


def test_set_path_selects_callbacks_and_skips_missing_parents() -> None:
    cfg = load_config(PROJECT_ROOT / "configs/experiment/classification_ph2_clean-xue2019.yaml")
    assert config_edit.set_path(cfg, "trainer.callbacks[AdversarialEvaluation:noise].init_args.test_subset", 5)
    assert config_edit.set_path(cfg, "trainer.callbacks[AdversarialEvaluation].init_args.subset", 3)
    assert not config_edit.set_path(cfg, "model.init_args.method.init_args.attack.steps", 3)  # Clean has no args
    sat = load_config(PROJECT_ROOT / "configs/experiment/classification_ph2_sat-xue2019.yaml")
    assert not config_edit.set_path(sat, "model.init_args.method[Denoise].init_args.denoiser", {})
    assert config_edit.set_path(sat, "model.init_args.method[SAT].init_args.attack.steps", 2)
    assert "denoiser" not in sat["model"]["init_args"]["method"]["init_args"]
    assert sat["model"]["init_args"]["method"]["init_args"]["attack"]["steps"] == 2
    adv, noise = [cb["init_args"] for cb in cfg["trainer"]["callbacks"][1:]]
    assert adv["subset"] == 3 and adv["test_subset"] is None
    assert noise["prefix"] == "noise" and noise["test_subset"] == 5


def test_attack_overrides_fill_in_the_method_default_attack() -> None:
    """``method.init_args.attack.steps`` applies also where a config leaves the attack to the
    method's default: the default spec is written in first, then changed; a non-method node or
    a method without an attack (Clean) is left alone."""
    from lightning_modules.methods import AMAT, SAT

    cfg = {"model": {"init_args": {"method": {"class_path": "lightning_modules.methods.AMAT",
                                              "init_args": {"delta": 0.1}}}}}
    assert config_edit.set_path(cfg, "model.init_args.method.init_args.attack.steps", 3)
    assert cfg["model"]["init_args"]["method"]["init_args"]["attack"] == {**AMAT.default_attack, "steps": 3}
    assert AMAT.default_attack["steps"] == 20  # the class default itself is not modified
    sat = {"model": {"init_args": {"method": {"class_path": "lightning_modules.methods.SAT",
                                              "init_args": {"eps": 0.01}}}}}
    assert config_edit.set_attack_steps(sat, 4) == {}  # no attack spec written: nothing to change
    assert config_edit.set_path(sat, "model.init_args.method.init_args.attack.norm", "l2")
    assert sat["model"]["init_args"]["method"]["init_args"]["attack"] == {**SAT.default_attack, "norm": "l2"}
    assert config_edit.set_attack_steps(sat, 4) == {"method.attack.steps": 4}
    clean = {"model": {"init_args": {"method": {"class_path": "lightning_modules.methods.Clean",
                                                "init_args": {}}}}}
    assert not config_edit.set_path(clean, "model.init_args.method.init_args.attack.steps", 3)
    assert not config_edit.set_path({"trainer": {}}, "trainer.attack.steps", 3)


def test_quick_scales_l2_budgets_with_the_image() -> None:
    """--quick halves the PH2 segmentation image side: every L2 budget is halved with it, the
    L∞ ones of the classification suites are untouched."""
    run = next(r for r in AMAT.runs if r.key == "segmentation/amat")
    full, _ = config_edit.derive_config(run, AMAT.group("segmentation"), "full")
    quick, applied = config_edit.derive_config(run, AMAT.group("segmentation"), "quick")
    f_m, q_m = full["model"]["init_args"]["method"]["init_args"], quick["model"]["init_args"]["method"]["init_args"]
    assert q_m["delta"] == pytest.approx(f_m["delta"] / 2) and q_m["max_margin"] == pytest.approx(f_m["max_margin"] / 2)
    f_eps = full["trainer"]["callbacks"][1]["init_args"]["test_eps"]
    q_eps = quick["trainer"]["callbacks"][1]["init_args"]["test_eps"]
    assert q_eps == pytest.approx([e / 2 for e in f_eps])
    assert quick["data"]["init_args"]["image_size"] == [64, 64] and "trainer.max_epochs" in applied
    sat = next(r for r in XUE.runs if r.key == "ph2/sat")
    q_sat, _ = config_edit.derive_config(sat, XUE.group("ph2"), "quick")
    assert q_sat["model"]["init_args"]["method"]["init_args"]["eps"] == 0.004
    assert q_sat["trainer"]["callbacks"][1]["init_args"]["test_eps"] == [0.001, 0.002, 0.004, 0.008]


def test_smoke_run_writes_report_from_robustness_json(tmp_path: Path, shared_data: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDROBUST_DATA", str(shared_data))
    monkeypatch.setenv("WANDB_MODE", "offline")
    (report,) = runner.main(["--suite", "joel2022", "--smoke", "--only", "pneumoniamnist",
                             "--threads", "1", "--out", str(tmp_path), "--fail-fast"])
    out = tmp_path / "joel2022"
    assert report == out / "report.md" and report.is_file()
    png = out / "pneumoniamnist_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert "![pneumoniamnist curves](pneumoniamnist_curves.png)" in text
    assert "What the paper claims / what we measured" in text and "wall time" in text

    results = json.loads((out / "results.json").read_text())["runs"]
    assert set(results) == {"pneumoniamnist/naive", "pneumoniamnist/staged"}
    table_rows: dict[str, str] = {}  # first table row per label: the worst-case accuracy table
    for line in text.splitlines():
        if line.startswith("| "):
            table_rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    for res in results.values():
        rec = json.loads((PROJECT_ROOT / res["log_dir"] / "robustness.json").read_text())
        assert rec == res["test"] and rec["split"] == "test"
        assert rec["subset"]["size"] == 8  # --smoke: 8 test images
        assert {e["attack"] for e in rec["attacks"]} == {"fgsm", "bim", "pgd"}
        assert len({e["eps"] for e in rec["attacks"]}) == 13  # the fine grid 1e-4 … 0.02
        row = table_rows[res["label"]]  # the worst-case table of the report
        cells = [c.strip() for c in row.strip("| ").split(" | ")]
        worst = [e["metrics"]["accuracy"] for e in sorted(rec["ensemble"], key=lambda e: e["eps"])]
        # a one-seed run's cells: the number and its record's interval, `0.750 [0.401, 0.937]`
        ci = rec["intervals"]["clean"]
        assert cells[1] == f"{fmt(rec['clean']['accuracy'])} [{ci['low']:.3f}, {ci['high']:.3f}]"
        assert [c.split(" [")[0] for c in cells[2:2 + len(worst)]] == [fmt(v) for v in worst]
        assert not math.isnan(res["train_s_per_epoch"])
    headline = [e for e in results["pneumoniamnist/naive"]["test"]["attacks"]
                if e["attack"] == "pgd" and e["eps"] == JOEL.headline_eps]
    assert f"PGD alone {fmt(headline[0]['metrics']['accuracy'])}" in text

    # one seed: the record's own intervals in the uncertainty table, verdicts on intervals
    assert "Uncertainty (one seed" in text and "Verdicts on intervals:" in text
    naive = json.loads((PROJECT_ROOT / results["pneumoniamnist/naive"]["log_dir"] / "robustness.json").read_text())
    assert str(Interval.from_dict(naive["intervals"]["clean"])) in text
    assert (PROJECT_ROOT / results["pneumoniamnist/naive"]["log_dir"] / "robustness_samples.csv").is_file()

    # --report-only rebuilds the same report from results.json, without training
    before = report.read_text().split("\nGenerated ")[0]
    png.unlink()
    (again,) = runner.main(["--suite", "joel2022", "--report-only", "--out", str(tmp_path)])
    assert again == report and png.is_file()
    assert report.read_text().split("\nGenerated ")[0] == before


def test_smoke_run_with_two_seeds(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--seeds 2``: each seed trains and tests in its own folder with its own
    ``seed_everything``; results.json keeps both; the tables show the mean over seeds, the
    uncertainty table mean ± SD with the two-level interval, and the verdicts use both seeds."""
    import numpy as np

    from callbacks.per_sample import SampleTable
    from callbacks.uncertainty import seeds_interval

    monkeypatch.setenv("MEDROBUST_DATA", str(shared_data))
    monkeypatch.setenv("WANDB_MODE", "offline")
    (report,) = runner.main(["--suite", "joel2022", "--smoke", "--only", "pneumoniamnist/naive", "--seeds", "2",
                             "--threads", "1", "--out", str(tmp_path), "--fail-fast"])
    out = tmp_path / "joel2022"
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["n_seeds"] == 2 and saved["meta"]["seeds"] == [0, 1]
    entry = saved["runs"]["pneumoniamnist/naive"]
    assert [e["seed"] for e in entry["seeds"]] == [0, 1] and entry["seed"] == [0, 1]
    dirs = [(PROJECT_ROOT / e["log_dir"]).resolve() for e in entry["seeds"]]
    assert dirs[0] != dirs[1] and [d.relative_to((out / "runs").resolve()).parts[0] for d in dirs] == ["seed0", "seed1"]
    # every seed's run folder keeps the run's own name, so that a glob over the seed's root
    # (AMAT's clean_checkpoint: "{default_root_dir}/<task>_clean/version_*/…") finds that seed's run
    for s, d in enumerate(dirs):
        root = (out / "runs" / f"seed{s}").resolve()
        assert d.relative_to(root).parts[0] == "pneumoniamnist_naive"
        assert [Path(p).resolve() for p in glob.glob(f"{root}/pneumoniamnist_naive/version_*")] == [d]
    for s, e in enumerate(entry["seeds"]):
        cfg = load_config(PROJECT_ROOT / e["derived_config"])
        assert cfg["seed_everything"] == s
    tables = [SampleTable.load(d / "robustness_samples.csv") for d in dirs]
    assert np.array_equal(tables[0].sample_ids, tables[1].sample_ids)  # same test samples for both seeds
    clean = np.stack([t.column("clean/accuracy") for t in tables])
    means = clean.mean(axis=1)
    assert means.tolist() == [e["test"]["clean"]["accuracy"] for e in entry["seeds"]]
    text = report.read_text()
    iv = seeds_interval(clean)
    sd = float(np.std(means, ddof=1))
    assert f"{iv.estimate:.3f} ± {sd:.3f} [{iv.low:.3f}, {iv.high:.3f}]" in text
    assert "Uncertainty: mean ± SD over seeds" in text and "| naive (clean) | 0, 1 | 8 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| naive (clean) |"))
    assert row.split(" | ")[1] == fmt(float(means.mean()))  # the worst-case table shows the mean over seeds
    medmnist = next(line for line in text.splitlines() if line.startswith("| MedMNIST"))
    assert "2 seeds" in medmnist and "mean of 2 seeds" in medmnist
    before = text.split("\nGenerated ")[0]
    (again,) = runner.main(["--suite", "joel2022", "--report-only", "--out", str(tmp_path)])
    assert again.read_text().split("\nGenerated ")[0] == before
