"""benchmarks/amat_reevaluate.py: the threat model it repeats, the suite it passes to
``medrobust.evaluate`` and the results it hands to the amat claim rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.amat_reevaluate import ROOT, record_settings, suite_argument, with_records


def _record(norms: list[str], eps: list[float]) -> dict:
    return {"members": [{"label": f"m{i}", "norm": n} for i, n in enumerate(norms)],
            "ensemble": [{"attack": "ensemble", "eps": e, "metrics": {"mre": 1.0}} for e in eps]}


def test_record_settings_reads_the_grid_sorted_and_the_one_norm() -> None:
    assert record_settings(_record(["l2"], [1.0, 0.125, 0.5, 0.25])) == ([0.125, 0.25, 0.5, 1.0], "l2")
    assert record_settings(_record(["l2", "l2"], [0.5]))[1] == "l2"
    with pytest.raises(ValueError, match="several norms"):
        record_settings(_record(["l2", "linf"], [0.5]))


def test_suite_argument_keeps_the_records_norm_in_a_member_list() -> None:
    assert suite_argument("quick", None, None, "l2") == "quick"  # evaluate(norm=…) sets a named suite's norm
    [m] = suite_argument(None, 100, None, "l2")
    assert m == {"name": "apgd", "norm": "l2", "steps": 100, "label": "apgd-task-100"}
    [m] = suite_argument(None, 50, "soft_argmax", "linf")
    assert (m["norm"], m["loss"], m["label"]) == ("linf", "soft_argmax", "apgd-soft_argmax-50")
    for bad in (("quick", 100), (None, None)):
        with pytest.raises(ValueError, match="exactly one"):
            suite_argument(bad[0], bad[1], None, "l2")


def test_with_records_swaps_the_test_record_and_points_log_dir_at_its_folder(tmp_path: Path) -> None:
    runs = {"landmarks/amat": {"label": "AMAT", "test": {"old": True}, "log_dir": "x", "seeds": [{}]},
            "landmarks/clean": {"label": "clean", "test": {"old": True}, "log_dir": "y"}}
    new = with_records(runs, {"landmarks/amat": ({"new": True}, tmp_path / "amat")})
    assert list(new) == ["landmarks/amat"]
    assert new["landmarks/amat"]["test"] == {"new": True} and "seeds" not in new["landmarks/amat"]
    assert (ROOT / new["landmarks/amat"]["log_dir"]).resolve() == (tmp_path / "amat").resolve()
    assert runs["landmarks/amat"]["test"] == {"old": True}  # the input is not changed
    with pytest.raises(KeyError, match="not in results.json"):
        with_records(runs, {"landmarks/sat9": ({}, tmp_path)})
