"""Attack losses per task, by name, for :class:`attacks.AttackSpec` ``loss:`` entries.

An attack loss is what an attack *ascends*; it need not be the training loss. Each factory
here takes plain tensors (no task objects) and returns a per-sample loss ``-> [B]``:

========================  ==============  ==========================================================================
name                      task            paper
========================  ==============  ==========================================================================
``ce``                    classification  cross-entropy (Madry et al. 2018)
``dlr``                   classification  difference of logits ratio (Croce & Hein 2020)
``dlr_targeted``          classification  targeted DLR, APGD-T (Croce & Hein 2020)
``ce_targeted``           classification  targeted CE (Croce & Hein 2020, APGD-T with CE)
``margin``                classification  CW margin (Carlini & Wagner 2017)
``mask_ce``               segmentation    CE on still-correct pixels (Croce et al. 2024, SEA)
``balanced_ce``           segmentation    class-balanced CE (Croce et al. 2024, SEA; our reading)
``js``                    segmentation    Jensen–Shannon divergence to the label (Croce et al. 2024)
``segpgd``                segmentation    SegPGD's correct/wrong weighting (Gu et al. 2022)
``seg_margin``            segmentation    class-balanced per-pixel logit margin, clipped at 0 (Square's loss; ours)
``seg_targeted``          segmentation    targeted: pixels to a class map (Xie et al. 2017; Metzen et al. 2017)
``dice``                  segmentation    1 − soft Dice over the foreground classes (Milletari et al. 2016, V-Net)
``soft_argmax``           landmarks       distance of the soft-argmax point from the truth (ours)
``expected_distance``     landmarks       expected distance from the truth under the heatmap's softmax (ours)
``soft_argmax_targeted``  landmarks       pull the points to truth + a shift (targeted; ours)
``peak_margin``           landmarks       best heatmap value off the truth minus best near it (Square's loss; ours)
``vanishing``             detection       TOG-vanishing: suppress confident detections (Chow et al. 2020)
``dag``                   detection       DAG: GT-matched locations to a wrong class, boxes off (Xie et al. 2017)
========================  ==============  ==========================================================================

Factories are called once per attack call as ``factory(clean_logits, steps, **args)`` and
return ``loss(logits, labels) -> [B]``. ``clean_logits`` (the model's output on the clean
batch) picks the targets of targeted losses; ``steps`` lets SegPGD schedule its weight over
the attack's iterations (it counts its own calls).

Each task family's losses live in their own module (:mod:`.classification`,
:mod:`.segmentation`, :mod:`.landmarks`, :mod:`.detection`, each with its ``LOSSES`` table);
this package merges them into :data:`ATTACK_LOSSES`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from . import classification, detection, landmarks, segmentation
from .base import AttackLoss, Loss
from .landmarks import soft_argmax

__all__ = ["ATTACK_LOSSES", "AttackLoss", "Loss", "make_attack_loss", "soft_argmax"]

ATTACK_LOSSES: dict[str, AttackLoss] = {**classification.LOSSES, **segmentation.LOSSES, **landmarks.LOSSES,
                                        **detection.LOSSES}


def make_attack_loss(name: str, clean_logits: Tensor | None, steps: int, **args: Any) -> Loss:
    """The per-call loss ``(logits, labels) -> [B]`` of attack loss ``name``."""
    if name not in ATTACK_LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; known: {sorted(ATTACK_LOSSES)}")
    return ATTACK_LOSSES[name].factory(clean_logits, steps, **args)
