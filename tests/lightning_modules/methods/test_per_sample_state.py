"""Per-sample records of a training method: named fields, first occurrence kept, checkpoint rows;
AMAT's threshold strategies and its checkpoint keys."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lightning_modules import AMAT
from lightning_modules.methods import per_sample_state
from lightning_modules.methods.amat_thresholds import (
    CleanCheckpointThreshold,
    FixedThreshold,
    NoThreshold,
    RunningThreshold,
    make_threshold,
    threshold_of,
)
from lightning_modules.methods.per_sample_state import SampleRecords

CPU = torch.device("cpu")


def test_records_keep_each_samples_first_occurrence_by_name() -> None:
    rec = SampleRecords(("margin", "grew"))
    f64 = torch.float64
    rec.add(torch.tensor([2, 0]), margin=torch.tensor([0.2, 0.0], dtype=f64),
            grew=torch.tensor([1.0, 0.0]))
    rec.add(torch.tensor([2, 1]), margin=torch.tensor([0.9, 0.1], dtype=f64),
            grew=torch.tensor([0.0, 1.0]))
    assert rec.seen == 4
    out = rec.gather(size=3, device=CPU)
    assert rec.seen == 0 and rec.rows(CPU).shape == (0, 4)  # reset for the next epoch
    assert out.index.tolist() == [2, 0, 1]  # index 2's second record (key 2) is dropped
    assert out["margin"].tolist() == [0.2, 0.0, 0.1]
    assert out["grew"].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(KeyError, match="fields: \\['margin', 'grew'\\]"):
        out["statistic"]
    with pytest.raises(ValueError, match="expected the fields"):
        rec.add(torch.tensor([0]), margin=torch.tensor([0.0]))


def test_keys_interleave_ranks_like_the_distributed_sampler(monkeypatch) -> None:
    monkeypatch.setattr(per_sample_state, "world_size", lambda: 2)
    monkeypatch.setattr(per_sample_state, "rank", lambda: 1)
    rec = SampleRecords(("v",))
    rec.add(torch.tensor([5, 6, 7]), v=torch.zeros(3))
    assert rec.rows(CPU)[:, 0].tolist() == [1.0, 3.0, 5.0]  # position p of rank 1 → 2p + 1


def test_empty_gather_and_empty_state() -> None:
    rec = SampleRecords(("v",))
    out = rec.gather(size=4, device=CPU)
    assert len(out) == 0 and out["v"].shape == (0,)
    assert rec.state(CPU).shape == (0, 3)
    rec.load_state(None, CPU)
    assert rec.seen == 0


def test_threshold_strategies() -> None:
    stats = torch.tensor([0.2, 0.4, float("nan"), 0.6], dtype=torch.float64)
    assert isinstance(make_threshold(None, threshold=0.3, threshold_from="running",
                                     clean_checkpoint=None, initial=None, z=0.0, centre="mean"),
                      NoThreshold)
    fixed = make_threshold("below", threshold=0.3, threshold_from="running", clean_checkpoint=None,
                           initial=None, z=0.0, centre="mean")
    assert isinstance(fixed, FixedThreshold) and fixed.current(math.nan) == 0.3
    assert fixed.at_epoch_end(stats) is None
    running = make_threshold("below", threshold=None, threshold_from="running",
                             clean_checkpoint=None, initial=0.1, z=1.0, centre="mean")
    assert isinstance(running, RunningThreshold) and running.running
    assert running.current(math.nan) == 0.1 and running.current(0.5) == 0.5
    finite = stats[~torch.isnan(stats)]
    assert running.at_epoch_end(stats) == pytest.approx(
        float(finite.mean() - finite.std(unbiased=False)), abs=1e-12)
    assert running.at_epoch_end(torch.tensor([math.nan])) is None
    with pytest.warns(UserWarning, match="without clean_checkpoint"):
        fallback = make_threshold("above", threshold=None, threshold_from="clean_checkpoint",
                                  clean_checkpoint=None, initial=None, z=0.0, centre="median")
    assert type(fallback) is RunningThreshold
    clean = make_threshold("above", threshold=None, threshold_from="clean_checkpoint",
                           clean_checkpoint="x.ckpt", initial=None, z=2.0, centre="mean")
    assert isinstance(clean, CleanCheckpointThreshold) and not clean.running
    assert clean.at_epoch_end(stats) is None  # the clean model's value is never recomputed
    assert threshold_of(finite, 2.0, "above") == pytest.approx(0.4 + 2 * float(finite.std(unbiased=False)))


def test_amat_checkpoint_keys_are_unchanged() -> None:
    """Checkpoints hold AMAT's state under the keys earlier versions wrote (``margins``,
    ``threshold_value``), and a state dict of that form loads back bit for bit."""
    m = AMAT(threshold_from="running")
    m.setup(SimpleNamespace(data_info=SimpleNamespace(num_train=5), violation_direction="below"))
    assert set(m.state_dict()) == {"margins", "threshold_value"}
    old = {"margins": torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), "threshold_value": torch.tensor(0.7)}
    m.load_state_dict(old)
    assert torch.equal(m.margins, old["margins"]) and m.current_threshold() == pytest.approx(0.7)
