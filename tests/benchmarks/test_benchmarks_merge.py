"""A suite run in parts: ``run.py`` names files so that another checkout can read them
(``repo_path``), and ``benchmarks/merge_results.py`` joins the parts' ``results.json`` into one
whose per-sample files are found from anywhere, so that rules spanning groups are decided."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import common, merge_results, paper_run
from benchmarks.paper_evidence import run_tables
from callbacks.per_sample import SampleTable


def _entry(folder: Path, log_dir: str, seed: int, n: int = 6) -> dict[str, Any]:
    """One seed's entry of ``results.json`` naming ``log_dir``; its per-sample file in ``folder``."""
    folder.mkdir(parents=True)
    values = np.arange(n) % 2 == seed % 2
    SampleTable(np.arange(n), {"clean/accuracy": values.astype(float)}).save(folder / "robustness_samples.csv")
    rec = {"task": "classification", "method": "clean", "epoch": 0, "split": "test",
           "clean": {"accuracy": float(values.mean())}, "subset": {"size": n}, "attacks": [], "ensemble": []}
    return {"label": "naive", "seed": seed, "log_dir": log_dir, "ckpt": "last", "test": rec}


def _part(path: Path, runs: dict[str, Any], **meta: Any) -> Path:
    base = {"command": f"python benchmarks/run.py --only {path.parent.name}", "mode": "quick", "threads": 1,
            "machine": "m", "load_start": "1.0", "load_end": "2.0", "wall_s": 10.0, "n_seeds": 2, "seeds": [0, 1],
            "note": ""}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": {**base, **meta}, "runs": runs}))
    return path


def _two_seeds(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {**entries[0], "seed": [e["seed"] for e in entries], "seeds": entries}


def test_repo_path_is_relative_inside_the_checkout_and_absolute_outside(tmp_path: Path) -> None:
    inside = common.ROOT / "results" / "joel2022" / "runs"
    assert paper_run.repo_path(inside) == str(Path("results") / "joel2022" / "runs")
    outside = tmp_path / "out" / "runs"
    assert paper_run.repo_path(outside) == str(outside.resolve())
    for p in (inside, outside):  # readers join with their root: both give the file back
        assert (common.ROOT / paper_run.repo_path(p)).resolve() == p.resolve()


def test_merge_makes_paths_absolute_and_finds_every_per_sample_file(tmp_path: Path) -> None:
    # part A: written by a checkout at tmp/ck with --out inside it (paths relative to tmp/ck)
    ck = tmp_path / "ck"
    a = [_entry(ck / "results" / "s" / "runs" / f"seed{s}" / "a", f"results/s/runs/seed{s}/a", s) for s in (0, 1)]
    part_a = _part(ck / "results" / "s" / "results.json", {"g1/naive": _two_seeds(a)}, load_start="9.0")
    # part B: paths relative to a checkout that is neither this one nor above its results.json
    # (run.py before repo_path, with --out outside its checkout): an error; then absolute, as now
    b = [_entry(tmp_path / "out" / "s" / "runs" / f"seed{s}" / "b", f"../../../out/s/runs/seed{s}/b", s)
         for s in (0, 1)]
    assert not (common.ROOT / b[0]["log_dir"]).exists()
    part_b = _part(tmp_path / "out" / "s" / "results.json", {"g2/naive": _two_seeds(b)}, wall_s=5.0, note="busy")
    # the folders above part B do not hold "../../../out/…" either: the merge must say so
    with pytest.raises(SystemExit, match="g2/naive.*log_dir"):
        merge_results.merge([part_a, part_b])
    b_ok = [{**e, "log_dir": str(tmp_path / "out" / "s" / "runs" / f"seed{s}" / "b")} for s, e in enumerate(b)]
    part_b = _part(part_b, {"g2/naive": _two_seeds(b_ok)}, wall_s=5.0, note="busy")

    target = merge_results.main(["--suite", "s", "--out", str(tmp_path / "merged"), "--note", "loaded.",
                                 str(part_a), str(part_b)])
    merged = json.loads(target.read_text())
    assert list(merged["runs"]) == ["g1/naive", "g2/naive"]
    for key, entry in merged["runs"].items():
        for e in entry["seeds"]:
            assert Path(e["log_dir"]).is_absolute() and Path(e["log_dir"]).is_dir(), (key, e["log_dir"])
            assert e["ckpt"] == "last"
        tables, reason = run_tables(entry)
        assert reason is None and len(tables) == 2
    assert merged["runs"]["g1/naive"]["log_dir"] == str(ck / "results" / "s" / "runs" / "seed0" / "a")
    meta = merged["meta"]
    assert meta["wall_s"] == 15.0 and meta["seeds"] == [0, 1] and meta["n_seeds"] == 2
    assert meta["load_start"] == "9.0, 1.0" and meta["load_end"] == "2.0, 2.0"
    assert meta["command"].count("benchmarks/run.py") == 2 and meta["note"].startswith("loaded. busy Merged from 2 runs")


def test_merge_refuses_a_run_twice_and_parts_that_differ_in_seeds(tmp_path: Path) -> None:
    e = [_entry(tmp_path / "r" / f"seed{s}", str(tmp_path / "r" / f"seed{s}"), s) for s in (0, 1)]
    one = _part(tmp_path / "a" / "results.json", {"g/naive": _two_seeds(e)})
    two = _part(tmp_path / "b" / "results.json", {"g/naive": _two_seeds(e)})
    with pytest.raises(SystemExit, match="`g/naive` is in two parts"):
        merge_results.merge([one, two])
    three = _part(tmp_path / "c" / "results.json", {"h/naive": _two_seeds(e)}, n_seeds=3)
    with pytest.raises(SystemExit, match="meta `n_seeds`"):
        merge_results.merge([one, three])
    with pytest.raises(SystemExit, match="is one of the parts"):
        merge_results.main(["--suite", "a", "--out", str(tmp_path), str(one)])
