"""benchmarks/suite_vs_ensemble.py: the two worst-case rules it compares, and the spread that
flags a constant landmark predictor (a model that ignores its input, which no attack moves)."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.ensemble_models import spread
from benchmarks.ensemble_rules import combine


class _Points:
    """A stand-in landmark module: the model is the identity, the points are what ``fn`` says."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def attack_model(self) -> Any:
        return lambda x: x

    def decode_points(self, out: torch.Tensor) -> torch.Tensor:
        return self.fn(out)


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(6, 3, 2, generator=g) * 10  # [B, K, 2]
    return [{"image": truth[:3].clone(), "landmarks": truth[:3]},
            {"image": truth[3:].clone(), "landmarks": truth[3:]}]


def test_spread_is_zero_for_a_constant_predictor_and_matches_the_truth_for_a_perfect_one() -> None:
    batches = _batches()
    truth = torch.cat([b["landmarks"] for b in batches])
    mean_shape_mre = float((truth - truth.mean(dim=0, keepdim=True)).norm(dim=-1).mean())
    const = spread(_Points(lambda x: torch.full_like(x, 4.0)), batches)
    assert const is not None and const["pred_spread_px"] == 0.0
    assert abs(const["truth_spread_px"] - mean_shape_mre) < 1e-6
    perfect = spread(_Points(lambda x: x), batches)  # the "image" carries the true points
    assert perfect is not None and abs(perfect["pred_spread_px"] - mean_shape_mre) < 1e-6
    assert spread(_Points(lambda x: x), [{"image": torch.zeros(1, 1, 2, 2)}]) is None


def _cand(metric: list[float], loss: list[float], violated: list[bool]) -> dict[str, torch.Tensor]:
    return {"metric": torch.tensor(metric), "loss": torch.tensor(loss), "violated": torch.tensor(violated)}


def test_old_rule_keeps_the_violating_higher_loss_candidate_new_rule_the_worse_metric() -> None:
    """Two members that disagree (as in issue 22's landmark case): ``a`` violates with the higher
    loss but moves the points little, ``b`` moves them far with a lower loss."""
    clean = _cand([1.0, 1.0], [0.0, 0.0], [False, False])
    a = _cand([2.0, 5.0], [9.0, 9.0], [True, True])
    b = _cand([6.0, 3.0], [1.0, 1.0], [False, True])
    assert combine([clean, a, b], "old", higher=False).tolist() == [2.0, 5.0]
    assert combine([clean, a, b], "new", higher=False).tolist() == [6.0, 5.0]
    # higher-is-better metric (Dice, AP): the new rule keeps the lower value
    assert combine([_cand([0.9], [0.0], [False]), _cand([0.5], [1.0], [True]), _cand([0.25], [0.5], [True])],
                   "new", higher=True).tolist() == [0.25]


def _args(**kw: Any) -> Any:
    import argparse

    base = {"task": "detection", "data": "synthetic", "train_eps": None, "eps": None}
    return argparse.Namespace(**{**base, **kw})


def test_bccd_option_sets_its_own_eps_and_file_names_and_is_detection_only() -> None:
    import pytest

    from benchmarks.ensemble_models import (
        BCCD_EPS,
        SETTINGS,
        attack_eps,
        data_name,
        file_stem,
        train_eps,
    )

    # synthetic detection: as before (the task's ε for training and attack, file "detection")
    syn = _args()
    assert train_eps("detection", syn) == attack_eps("detection", syn) == SETTINGS["detection"]["eps"]
    assert file_stem("detection", syn) == "detection"
    # BCCD: its own ε (the L∞ ε of detection_bccd_sat.yaml) and its own cache / result files
    bccd = _args(data="bccd")
    assert BCCD_EPS == 0.004
    assert train_eps("detection", bccd) == attack_eps("detection", bccd) == BCCD_EPS
    assert file_stem("detection", bccd) == "detection_bccd"
    assert attack_eps("detection", _args(data="bccd", eps=0.016)) == 0.016
    assert file_stem("detection", _args(data="bccd", train_eps=0.008)) == "detection_bccd_train0.008"
    # --train-eps alone leaves the attack at the task's evaluation ε (the landmark runs: trained
    # at 8/255, attacked at 32/255)
    lm = _args(task="landmarks", train_eps=8 / 255)
    assert train_eps("landmarks", lm) == 8 / 255
    assert attack_eps("landmarks", lm) == SETTINGS["landmarks"]["eps"]
    assert data_name(_args(task="segmentation")) == "synthetic"
    with pytest.raises(ValueError, match="--data bccd"):
        data_name(_args(task="landmarks", data="bccd"))


def test_warmup_is_ten_epochs_for_long_runs_and_a_third_of_short_ones() -> None:
    from benchmarks.ensemble_models import warmup_epochs

    assert [warmup_epochs(e) for e in (40, 30, 24, 12, 2)] == [10, 10, 8, 4, 1]


class _AugDM:
    """A stand-in datamodule: ``build_split`` records the augmentation it was built with."""

    def __init__(self, augment: Any) -> None:
        self.augment, self.built = augment, []

    def dataset(self, split: str) -> str:
        return f"cached {split}"

    def build_split(self, split: str) -> str:
        self.built.append((split, self.augment.enabled))
        return f"built {split}"


def test_attacked_training_images_are_built_without_augmentation_and_the_setting_is_restored() -> None:
    from benchmarks.ensemble_models import plain_split
    from datamodules.transforms import AugmentConfig

    aug = AugmentConfig(hflip=0.5, brightness=0.1)
    dm = _AugDM(aug)
    assert plain_split(dm, "train") == "built train" and dm.built == [("train", False)]
    assert dm.augment is aug  # restored
    assert plain_split(dm, "val") == "cached val"  # evaluation splits are never augmented
    plain = _AugDM(AugmentConfig())
    assert plain_split(plain, "train") == "cached train" and plain.built == []
