"""AMAT's end-of-epoch margin application (:func:`lightning_modules.methods.amat_margins.
apply_margins`): recorded margins written in place, warm-up rows (NaN) left alone, and the
grown / shrunk / held / clean-violated fractions over the updated samples only."""

from __future__ import annotations

import math

import torch

from lightning_modules.methods.amat_margins import apply_margins
from lightning_modules.methods.per_sample_state import GatheredRecords

NAN = math.nan


def _records(index: list[int], margin: list[float], grew: list[float], clean_violated: list[float]) -> GatheredRecords:
    fields = {"margin": margin, "statistic": [0.0] * len(index), "grew": grew, "clean_violated": clean_violated}
    return GatheredRecords(torch.tensor(index), {k: torch.tensor(v, dtype=torch.float64) for k, v in fields.items()})


def test_recorded_margins_are_applied_and_counted() -> None:
    margins = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    # sample 0 grew to 1.1; 1 shrank to 0.5; 2 held at 0.995 (within 1 %); 3 is a warm-up row
    rec = _records([0, 1, 2, 3], [1.1, 0.5, 0.995, NAN], [1.0, 0.0, 0.0, NAN], [0.0, 1.0, 1.0, NAN])
    diag = apply_margins(margins, rec)
    assert torch.allclose(margins, torch.tensor([1.1, 0.5, 0.995, 1.0, 1.0]))
    assert {k: round(float(v), 6) for k, v in diag.items()} == {
        "margin_grown": round(1 / 3, 6), "margin_shrunk": round(1 / 3, 6), "margin_held": round(1 / 3, 6),
        "clean_violated": round(2 / 3, 6)}


def test_only_warm_up_rows_change_nothing() -> None:
    margins = torch.tensor([0.3, 0.4])
    assert apply_margins(margins, _records([0, 1], [NAN, NAN], [NAN, NAN], [NAN, NAN])) == {}
    assert torch.equal(margins, torch.tensor([0.3, 0.4]))
