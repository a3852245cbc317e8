"""The one per-sample worst-case rule (attacks/worst_case.py), used by the attacks' restarts
and by the evaluation's ensemble."""

from __future__ import annotations

import torch

import attacks.base
import attacks.worst_case as wc
import callbacks.evaluation_loop


def test_violation_first_then_loss_and_ties_keep_the_current() -> None:
    best_loss = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    best_ok = torch.tensor([False, True, False, True, False])
    loss = torch.tensor([0.5, 5.0, 2.0, 0.5, 1.0])
    ok = torch.tensor([True, False, False, True, False])
    # breaks it | doesn't, best did | both not, higher | both broke, lower | tie
    assert wc.is_worse(loss, best_loss, ok, best_ok).tolist() == [True, False, True, False, False]
    assert wc.is_worse(loss, best_loss).tolist() == [False, True, True, False, False]  # loss only


def test_keep_worst_merges_inputs_losses_and_violations() -> None:
    x_best, x_new = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    best = wc.Worst(x_best, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([False, True, False]))
    worst, took = wc.keep_worst(best, x_new, torch.tensor([2.0, 9.0, 0.0]), torch.tensor([False, False, True]))
    assert took.tolist() == [True, False, True]
    assert worst.x[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert worst.loss.tolist() == [2.0, 1.0, 0.0]
    assert worst.violated.tolist() == [False, True, True]  # a violated sample stays violated


def test_restarts_and_ensemble_share_the_rule() -> None:
    assert attacks.base.keep_worst is wc.keep_worst
    assert callbacks.evaluation_loop.keep_worst is wc.keep_worst
