"""joel2022's resolution axis: the PH2 groups differ only in image size, and the size claim's
rule gives the verdicts it states."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import config_edit
from benchmarks.paper_joel import JOEL, JOEL_EPS, JOEL_PH2_SIZES, joel_claims, joel_size_claim


@pytest.mark.parametrize("mode", ["full", "quick"])
def test_ph2_groups_differ_only_in_image_size(mode: str) -> None:
    derived = {}
    for run in JOEL.runs:
        if run.group.startswith("ph2"):
            cfg, _ = config_edit.derive_config(run, JOEL.group(run.group), mode)
            derived[run.key] = cfg
    want = {name: (full if mode == "full" else quick) for name, full, quick in JOEL_PH2_SIZES}
    for method in ("naive", "staged"):
        ref = derived[f"ph2/{method}"]
        for name, side in want.items():
            cfg = derived[f"{name}/{method}"]
            assert cfg["data"]["init_args"]["image_size"] == [side, side]
            same = {**cfg, "data": {**cfg["data"], "init_args": {**cfg["data"]["init_args"], "image_size": None}}}
            base = {**ref, "data": {**ref["data"], "init_args": {**ref["data"]["init_args"], "image_size": None}}}
            assert same == base, name


def _record(clean: float, at_eps: float) -> dict[str, Any]:
    grid = [0.001, JOEL_EPS, 0.01]
    acc = {0.001: clean, JOEL_EPS: at_eps, 0.01: 0.0}
    return {"task": "classification", "method": "clean", "epoch": 0, "split": "test",
            "clean": {"accuracy": clean}, "subset": {"size": 40},
            "attacks": [{"attack": "pgd", "eps": e, "metrics": {"accuracy": acc[e]}} for e in grid],
            "ensemble": [{"eps": e, "metrics": {"accuracy": acc[e]}} for e in grid]}


def _results(kept: list[float]) -> dict[str, Any]:
    out = {}
    for (name, _full, quick), k in zip(JOEL_PH2_SIZES, kept):
        out[f"{name}/naive"] = {"test": _record(0.6, 0.6 * k),
                                "overrides": {"data.init_args.image_size": [quick, quick]}}
    return out


@pytest.mark.parametrize("kept", [[0.8, 0.6, 0.4], [0.435, 0.520, 0.542]])  # the 2026-12-02 quick measurement rises
def test_size_claim_reads_records_and_needs_per_sample_files(kept: list[float]) -> None:
    """The size claim shows each side's point values from the records; records without
    per-sample files (results.json written before them) cannot be paired on samples, so every
    part is inconclusive and says why. Its three outcomes on per-sample files:
    tests/benchmarks/test_benchmarks_verdicts.py."""
    res = _results(kept)
    sides = {name: quick for name, _f, quick in JOEL_PH2_SIZES}
    (claim,) = joel_size_claim(res, sides)
    assert claim["verdict"] == "inconclusive" and claim["tests"].count("no interval (") == 3
    assert "32×32" in claim["measured"] and f"kept {kept[0]:.3f}" in claim["measured"]
    # joel_claims reads the sides from the runs' overrides (the quick ones here)
    assert [c for c in joel_claims(res) if c["claim"].startswith("[PH2, sides 32, 64, 128]")]
