"""Where AMAT's violation threshold comes from: one small strategy class per source.

The thresholded tasks (segmentation, landmarks, detection) decide "violated" by comparing a
per-sample statistic (Dice, a loss) with a threshold; classification needs none. The value in
force lives in AMAT's ``threshold_value`` buffer (NaN until set), so it is saved in every
checkpoint and a resumed run keeps it; a strategy reads that stored value and says when and to
what it changes:

* :class:`NoThreshold` — the task has no threshold (classification: misclassified).
* :class:`FixedThreshold` — ``threshold`` given by hand.
* :class:`RunningThreshold` — recomputed at the end of every epoch from that epoch's clean
  statistics (``threshold_from="running"``, the earlier variant; ``initial_threshold`` until
  the first value exists).
* :class:`CleanCheckpointThreshold` — Ma & Liang's reference: the clean model's *training*
  statistics, computed once at the start of the fit by running ``clean_checkpoint``'s net over
  the training loader (``threshold_from="clean_checkpoint"``); without that file it warns and
  runs as :class:`RunningThreshold`.

The computed value is ``centre ± z·scale``: :func:`threshold_of` (mean ± z·std, the authors'
"avg mean" / z-scores) or :func:`robust_threshold` (median ± z·1.4826·MAD).
"""

from __future__ import annotations

import glob
import math
import os
import random
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from attacks.tree import tree_map
from lightning_modules.methods.per_sample_state import SampleRecords
from lightning_modules.protocol import TrainableTask

__all__ = ["MAD_TO_SIGMA", "CleanCheckpointThreshold", "FixedThreshold", "NoThreshold",
           "RunningThreshold", "ThresholdStrategy", "make_threshold", "robust_threshold",
           "threshold_of"]

MAD_TO_SIGMA = 1.4826
Direction = Literal["above", "below"]
Centre = Literal["mean", "median"]
#: where the violation threshold comes from
ThresholdFrom = Literal["clean_checkpoint", "running"]


def robust_threshold(stats: Tensor, z: float, direction: str) -> float:
    """``median ± z·1.4826·MAD`` of ``stats`` ``[N]`` (``+`` for ``"above"``, ``−`` for
    ``"below"``)."""
    s = stats.double()
    med = s.median()
    scale = MAD_TO_SIGMA * (s - med).abs().median()
    sign = 1.0 if direction == "above" else -1.0
    return float(med + sign * z * scale)


def threshold_of(stats: Tensor, z: float, direction: str, centre: str = "mean") -> float:
    """``mean ± z·std`` of ``stats`` ``[N]`` (``centre="mean"``, population std) or
    :func:`robust_threshold`."""
    if centre == "median":
        return robust_threshold(stats, z, direction)
    s = stats.double()
    sign = 1.0 if direction == "above" else -1.0
    std = s.std(unbiased=False) if s.numel() > 1 else s.new_zeros(())
    return float(s.mean() + sign * z * std)


class ThresholdStrategy:
    """Base: the threshold in force given the stored value, and the two moments it may change.

    ``stored`` is AMAT's ``threshold_value`` buffer as a float (NaN: never set).
    """

    #: recomputed from every epoch's clean statistics
    running = False

    def current(self, stored: float) -> float | None:
        """The threshold in force (``None``: not needed, or not available yet)."""
        return None

    def at_epoch_start(self, task: TrainableTask, stored: float, size: int,
                       device: torch.device) -> float | None:
        """A value to store at the start of a training epoch, or ``None`` (keep)."""
        return None

    def at_epoch_end(self, statistics: Tensor) -> float | None:
        """A value to store from this epoch's clean statistics ``[M]`` (one per sample, NaN =
        none; all ranks, de-duplicated), or ``None`` (keep)."""
        return None


class NoThreshold(ThresholdStrategy):
    """The task decides violations without a threshold (classification)."""


class FixedThreshold(ThresholdStrategy):
    """A threshold given by hand (``AMAT(threshold=…)``), in the task's units."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def current(self, stored: float) -> float | None:
        return self.value


class RunningThreshold(ThresholdStrategy):
    """``centre ± z·scale`` of each epoch's clean statistics, set at the epoch's end.

    Args:
        direction: ``"above"`` (a loss: violated above) or ``"below"`` (Dice: violated below).
        z, centre: see :func:`threshold_of`.
        initial: the value in force until the first one is computed (``None``: AMAT trains
            clean until then).
    """

    running = True

    def __init__(self, direction: Direction, z: float, centre: Centre,
                 initial: float | None) -> None:
        self.direction, self.z, self.centre, self.initial = direction, float(z), centre, initial

    def current(self, stored: float) -> float | None:
        return stored if not math.isnan(stored) else self.initial

    def at_epoch_end(self, statistics: Tensor) -> float | None:
        s = statistics[~torch.isnan(statistics)]
        return threshold_of(s, self.z, self.direction, self.centre) if s.numel() else None


class CleanCheckpointThreshold(RunningThreshold):
    """The clean model's training statistics, once, at the first training epoch (Ma & Liang).

    At the start of the fit the net weights of ``checkpoint`` run in eval mode over the
    trainer's training loader; the per-sample violation statistics (all ranks, de-duplicated)
    give ``centre ± z·scale``. Once stored it is never recomputed (a resumed run keeps it). The
    pass restores the task's net weights, module modes and every RNG, so it does not change the
    training run's randomness. When ``checkpoint`` names no file the strategy warns and runs as
    :class:`RunningThreshold` (every experiment config must run on its own).

    Args:
        checkpoint: a clean run's Lightning checkpoint of the same net: a path or a glob (its
            newest match), may start with ``{default_root_dir}`` (the trainer's).
        direction, z, centre, initial: see :class:`RunningThreshold`.
    """

    def __init__(self, checkpoint: str, direction: Direction, z: float, centre: Centre,
                 initial: float | None) -> None:
        super().__init__(direction=direction, z=z, centre=centre, initial=initial)
        self.checkpoint = str(checkpoint)
        self.running = False  # until the file turns out to be missing

    def at_epoch_start(self, task: TrainableTask, stored: float, size: int,
                       device: torch.device) -> float | None:
        if self.running or not math.isnan(stored):
            return None
        try:
            self.resolve_checkpoint(task)
        except FileNotFoundError as err:
            warnings.warn(f"{err}; AMAT falls back to threshold_from='running' for this run "
                          "(train the clean experiment first for the reference threshold)",
                          stacklevel=3)
            self.running = True
            return None
        return self.from_clean_model(task, size, device)

    def at_epoch_end(self, statistics: Tensor) -> float | None:
        return super().at_epoch_end(statistics) if self.running else None

    def resolve_checkpoint(self, task: TrainableTask) -> str:
        """The file ``checkpoint`` names (``{default_root_dir}`` filled in; a glob picks its
        newest match).

        Raises:
            FileNotFoundError: no such file, naming the pattern.
        """
        trainer = getattr(task, "_trainer", None)
        root = str(getattr(trainer, "default_root_dir", None) or os.getcwd())
        pattern = self.checkpoint.replace("{default_root_dir}", root)
        matches = sorted(glob.glob(pattern), key=os.path.getmtime) if glob.has_magic(pattern) else (
            [pattern] if os.path.isfile(pattern) else [])
        if not matches:
            raise FileNotFoundError(f"AMAT.clean_checkpoint={self.checkpoint!r}: no file at "
                                    f"{pattern!r} (a clean run's Lightning checkpoint is expected)")
        return matches[-1]

    def from_clean_model(self, task: TrainableTask, size: int, device: torch.device) -> float:
        """``centre ± z·scale`` of the clean checkpoint's per-sample violation statistics on the
        training loader (eval mode, no gradients; all ranks, de-duplicated over ``size``
        training samples). The task's net weights, module modes and every RNG are restored."""
        path = self.resolve_checkpoint(task)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        net_state = {k[4:]: v for k, v in (state or {}).items() if k.startswith("net.")}
        if not net_state:
            raise ValueError(f"AMAT.clean_checkpoint {path}: no 'net.*' weights in its state_dict")
        trainer = getattr(task, "_trainer", None)
        loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        if loader is None:
            raise ValueError("AMAT.threshold_from='clean_checkpoint' needs a trainer with a "
                             "training dataloader (it runs at the start of fit)")
        own = {k: v.detach().clone() for k, v in task.net.state_dict().items()}
        rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
        model = task.attack_model()
        modes = [m.training for m in model.modules()]
        records = SampleRecords(("statistic",))
        try:
            task.net.load_state_dict(net_state)
            model.eval()
            with torch.no_grad():
                for batch in loader:
                    batch = tree_map(lambda t: t.to(device), batch)
                    stats = task.violation_statistic(model(batch["image"]), batch).float()
                    records.add(batch["index"].to(device).long().reshape(-1), statistic=stats)
        finally:
            task.net.load_state_dict(own)
            for m, mode in zip(model.modules(), modes):
                m.training = mode
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])  # noqa: NPY002
            random.setstate(rng[2])
        s = records.gather(size, device)["statistic"]
        s = s[~torch.isnan(s)]
        if not s.numel():
            raise ValueError(f"AMAT.clean_checkpoint {path}: no finite violation statistic on "
                             "the training set")
        return threshold_of(s, self.z, self.direction, self.centre)


def make_threshold(direction: Direction | None, *, threshold: float | None,
                   threshold_from: ThresholdFrom,
                   clean_checkpoint: str | None, initial: float | None, z: float,
                   centre: Centre) -> ThresholdStrategy:
    """The strategy AMAT's options choose for a task whose violations go ``direction``
    (``None``: no threshold). ``threshold_from="clean_checkpoint"`` without a checkpoint (and
    without ``initial``) warns and runs the running statistics."""
    if direction is None:
        return NoThreshold()
    if threshold is not None:
        return FixedThreshold(threshold)
    if threshold_from == "clean_checkpoint" and clean_checkpoint is not None:
        return CleanCheckpointThreshold(clean_checkpoint, direction, z, centre, initial)
    if threshold_from == "clean_checkpoint" and initial is None:
        warnings.warn(
            "AMAT(threshold_from='clean_checkpoint') without clean_checkpoint: falling back "
            "to running statistics of the model being trained (give clean_checkpoint, or "
            "threshold_from='running' to silence this)", stacklevel=3)
    return RunningThreshold(direction, z, centre, initial)
