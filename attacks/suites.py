"""Named attack suites: ``AdversarialEvaluation(test_attacks="standard")``.

The ``standard`` suite of each task is chosen as AutoAttack (Croce & Hein 2020) and SEA
(Croce et al. 2024) choose theirs: diverse losses, a parameter-free step size (APGD), and a
gradient-free attack (Square) that gradient masking cannot stop. The evaluator keeps each
sample's worst case over the members *by the task's per-sample metric* (the loss only breaks
ties; ``attacks/worst_case.py``), so the suite is never weaker than its strongest member on
any sample; in a *sequential* suite (classification, as AutoAttack)
a member only attacks the samples that no earlier member has already violated, so later members cost
nothing on violated samples. Segmentation and landmark metrics are continuous (a "violated"
sample can still lose Dice), so there every member attacks every sample, as SEA does.

==============  ==========================================================================
task            standard suite
==============  ==========================================================================
classification  APGD-CE 100, APGD-DLR 100 (CW margin for 2 classes), APGD-T-DLR 100 on the
                top-3 wrong classes (only with >= 4 classes), FMN 100 (Pintor et al. 2021, a
                minimum-norm member in FAB-T's role), Square 5000 queries on the margin —
                sequential
segmentation    APGD 100 with Mask-CE, balanced CE, JS, SegPGD and 1 − soft Dice losses;
                Square 5000 on ``seg_margin``
landmarks       APGD 100 on the task loss (2 random starts), on the soft-argmax distance and on
                the expected distance under the heatmap's softmax; Square 5000 on
                ``peak_margin``
detection       APGD 100 on the task loss (2 random starts), on DAG (Xie et al. 2017:
                GT-matched locations flipped to a wrong class, boxes off their objects) and on
                DAG's untargeted margin (the highest wrong class; 2 starts); Square 5000 on the DAG
                margin (no clip, no box term). TOG-vanishing is not a member: it silences the
                detector but lowers mAP and recall less than PGD on the task loss
                (docs/attacks.md)
==============  ==========================================================================

Square ascends each task's margin-type loss (the recipe's ``square_loss``), never a cross-entropy: a random
search only compares values, and cross-entropy on a saturated softmax is exactly 0 on every
confident sample (the masked-gradient case), while a margin is positively homogeneous in the
output and ranks proposals the same at any logit scale. 5000 queries (AutoAttack's budget):
1000 left samples that 5000 break behind masked gradients (docs/attacks.md).

``quick`` is the same with 20 steps / 100 queries, for tests and per-epoch use. ``aa_budget``
is AutoAttack's published budget for "AutoAttack-equivalent" reports: APGD-CE 100, APGD-T on 9
target classes × 100 (capped by classes − 1), FMN 100 for FAB-T, Square 5000 on the margin; the
dense tasks run their ``standard`` members with Square 5000.

This module knows attacks, not tasks: each kind of model output has a :class:`SuiteRecipe`
(class logits, dense logits, heatmaps, detections), and a task object names its recipe
(``lightning_modules/tasks/``: ``ClassificationTask.suite = LOGIT_SUITES``). The table above
reads "the recipe the task uses".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Square's losses (see module docstring): margin-type, never a saturating cross-entropy
LOGIT_SQUARE_LOSS = "margin"
MASK_SQUARE_LOSS = "seg_margin"
HEATMAP_SQUARE_LOSS = "peak_margin"
DETECTION_SQUARE_LOSS: dict[str, Any] = {"name": "dag", "target_shift": None, "kappa": None, "box_weight": 0.0}


def _square(loss: Any, queries: int) -> dict[str, Any]:
    """Square on a scale-free loss."""
    return {"name": "square", "steps": queries, "label": "square", "loss": loss}


def _classification(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "apgd", "steps": steps, "loss": "ce", "label": "apgd-ce"},
        {"name": "apgd", "steps": steps, "loss": "dlr", "label": "apgd-dlr"},
    ]
    if num_classes is not None and num_classes >= 4:
        for r in range(1, min(3, num_classes - 1) + 1):
            out.append({"name": "apgd", "steps": steps, "label": f"apgd-t{r}",
                        "loss": {"name": "dlr_targeted", "target_rank": r}})
    out.append(_fmn(steps))
    out.append(_square(LOGIT_SQUARE_LOSS, queries))
    return out


def _fmn(steps: int) -> dict[str, Any]:
    """FMN (Pintor et al. 2021): the minimum-norm member, AutoAttack's FAB-T role."""
    return {"name": "fmn", "steps": steps, "label": "fmn", "loss": "margin"}


def _classification_aa(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    """AutoAttack's published budget (Croce & Hein 2020, "standard" version): APGD-CE 100,
    APGD-T (targeted DLR) on 9 target classes × 100 steps (capped by ``classes − 1``), a
    minimum-norm member in FAB-T's place (FMN 100) and Square 5000 queries on the margin.
    Targeted DLR needs ``>= 4`` classes; with 3 the targets use targeted CE, with 2 (one wrong
    class: targeted = untargeted) the CW margin (APGD-DLR's fallback)."""
    out: list[dict[str, Any]] = [{"name": "apgd", "steps": steps, "loss": "ce", "label": "apgd-ce"}]
    k = num_classes
    if k is None or k <= 2:
        out.append({"name": "apgd", "steps": steps, "loss": "dlr", "label": "apgd-dlr"})
    else:
        loss = "dlr_targeted" if k >= 4 else "ce_targeted"
        for r in range(1, min(9, k - 1) + 1):
            out.append({"name": "apgd", "steps": steps, "label": f"apgd-t{r}",
                        "loss": {"name": loss, "target_rank": r}})
    out.append(_fmn(steps))
    out.append(_square(LOGIT_SQUARE_LOSS, queries))
    return out


def _segmentation(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    return [{"name": "apgd", "steps": steps, "loss": loss, "label": f"apgd-{loss}"}
            for loss in ("mask_ce", "balanced_ce", "js", "segpgd", "dice")] + [_square(MASK_SQUARE_LOSS, queries)]


def _landmarks(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    # two random starts on the task loss: on a SAT cephalometric model at 4× its training ε the
    # one-start suite stayed 0.14 px below a 2-start brute-force ensemble, and the task loss's
    # second start was what it lacked (docs/benchmarks.md); one more APGD run is ≈ 3 % of the
    # suite's passes next to Square's 5000 queries
    return [{"name": "apgd", "steps": steps, "restarts": 2, "label": "apgd-task"},
            {"name": "apgd", "steps": steps, "loss": "soft_argmax", "label": "apgd-soft_argmax"},
            {"name": "apgd", "steps": steps, "loss": "expected_distance", "label": "apgd-expected_distance"},
            _square(HEATMAP_SQUARE_LOSS, queries)]


def _detection(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    # two random starts on the two strongest losses: what the suite lacked against a 2-start
    # brute-force ensemble on a SAT FCOS (docs/benchmarks.md)
    return [{"name": "apgd", "steps": steps, "restarts": 2, "label": "apgd-task"},
            {"name": "apgd", "steps": steps, "loss": "dag", "label": "apgd-dag"},
            # the untargeted margin (the highest wrong class, not a fixed shift), box term kept:
            # the brute-force ensemble's most frequent winner on a SAT FCOS (docs/benchmarks.md)
            {"name": "apgd", "steps": steps, "restarts": 2, "loss": {"name": "dag", "target_shift": None},
             "label": "apgd-dag_untargeted"},
            _square(DETECTION_SQUARE_LOSS, queries)]


#: suite → (gradient steps, Square queries of a sequential suite)
SUITES = {"standard": (100, 5000), "quick": (20, 100), "aa_budget": (100, 5000)}
#: Square queries of a dense suite (every member attacks every sample there, no early stop
#: on a violated sample, so a query costs one forward on the whole batch)
DENSE_QUERIES = {"standard": 5000, "quick": 100, "aa_budget": 5000}


@dataclass(frozen=True)
class SuiteRecipe:
    """How the named suites (:data:`SUITES`) are built for one kind of model output.

    Args:
        members: ``(gradient steps, Square queries, number of classes or None) -> configs``.
        square_loss: the scale-free loss Square ascends (a loss name or ``{name, **args}``).
        sequential: a member attacks only the samples no earlier member broke (AutoAttack).
        dense: Square's budget is :data:`DENSE_QUERIES` (every member attacks every sample).
        aa_budget: the members of ``aa_budget``; ``None``: the ``standard`` members.
    """

    members: Callable[[int, int, int | None], list[dict[str, Any]]]
    square_loss: Any
    sequential: bool = False
    dense: bool = True
    aa_budget: Callable[[int, int, int | None], list[dict[str, Any]]] | None = None


#: class logits ``[B, K]``: AutoAttack's suite, sequential
LOGIT_SUITES = SuiteRecipe(_classification, LOGIT_SQUARE_LOSS, sequential=True, dense=False,
                           aa_budget=_classification_aa)
#: dense logits ``[B, K, *spatial]``: SEA's losses
MASK_SUITES = SuiteRecipe(_segmentation, MASK_SQUARE_LOSS)
#: heatmaps ``[B, L, h, w]``
HEATMAP_SUITES = SuiteRecipe(_landmarks, HEATMAP_SQUARE_LOSS)
#: detections (a ``DetectionOutput``)
DETECTION_SUITES = SuiteRecipe(_detection, DETECTION_SQUARE_LOSS)


def suite_configs(name: str, recipe: SuiteRecipe | None, where: str = "attacks",
                  num_classes: int | None = None) -> list[dict[str, Any]]:
    """The attack list of suite ``name`` built by ``recipe`` (``{name, label, loss?, **params}``);
    the recipe is the task's (``lightning_modules.tasks``: ``model_task(name).suite``)."""
    if name not in SUITES:
        raise ValueError(f"{where}: unknown suite {name!r}; known suites: {sorted(SUITES)}")
    if not isinstance(recipe, SuiteRecipe):
        raise ValueError(f"{where}: suite {name!r} needs the task's suite recipe (a task with named "
                         f"suites); got {recipe!r}")
    steps, queries = SUITES[name]
    if recipe.dense:
        queries = DENSE_QUERIES[name]
    elif name == "aa_budget" and recipe.aa_budget is not None:
        return recipe.aa_budget(steps, queries, num_classes)
    return recipe.members(steps, queries, num_classes)
