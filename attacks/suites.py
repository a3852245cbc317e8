"""Named attack suites: ``AdversarialEvaluation(test_attacks="standard")``.

The ``standard`` suite of each task is chosen as AutoAttack (Croce & Hein 2020) and SEA
(Croce et al. 2024) choose theirs: diverse losses, a parameter-free step size (APGD), and a
gradient-free attack (Square) that gradient masking cannot stop. The evaluator keeps each
sample's worst case over the members *by the task's per-sample metric* (the loss only breaks
ties; ``attacks/worst_case.py``), so the suite is never weaker than its strongest member on
any sample; in a *sequential* suite (classification, as AutoAttack)
a member only attacks the samples that no earlier member has broken, so later members cost
nothing on broken samples. Segmentation and landmark metrics are continuous (a "broken"
sample can still lose Dice), so there every member attacks every sample, as SEA does.

==============  ==========================================================================
task            standard suite
==============  ==========================================================================
classification  APGD-CE 100, APGD-DLR 100 (CW margin for 2 classes), APGD-T-DLR 100 on the
                top-3 wrong classes (only with >= 4 classes), Square 1000 queries — sequential
segmentation    APGD 100 with Mask-CE, balanced CE, JS, SegPGD and 1 − soft Dice losses;
                Square 300
landmarks       APGD 100 on the task loss, on the soft-argmax distance and on the expected
                distance under the heatmap's softmax; Square 300
detection       APGD 100 on the task loss and on DAG (Xie et al. 2017: GT-matched locations
                flipped to a wrong class, boxes off their objects); Square 300. TOG-vanishing
                is not a member: it silences the detector but lowers mAP and recall less
                than PGD on the task loss (docs/attacks.md)
==============  ==========================================================================

``quick`` is the same with 20 steps / 100 queries, for tests and per-epoch use.
"""

from __future__ import annotations

from typing import Any

SEQUENTIAL = {"classification"}


def _classification(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "apgd", "steps": steps, "loss": "ce", "label": "apgd-ce"},
        {"name": "apgd", "steps": steps, "loss": "dlr", "label": "apgd-dlr"},
    ]
    if num_classes is not None and num_classes >= 4:
        for r in range(1, min(3, num_classes - 1) + 1):
            out.append({"name": "apgd", "steps": steps, "label": f"apgd-t{r}",
                        "loss": {"name": "dlr_targeted", "target_rank": r}})
    out.append({"name": "square", "steps": queries, "label": "square"})
    return out


def _segmentation(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    return [{"name": "apgd", "steps": steps, "loss": loss, "label": f"apgd-{loss}"}
            for loss in ("mask_ce", "balanced_ce", "js", "segpgd", "dice")] + [
        {"name": "square", "steps": queries, "label": "square"}]


def _landmarks(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    return [{"name": "apgd", "steps": steps, "label": "apgd-task"},
            {"name": "apgd", "steps": steps, "loss": "soft_argmax", "label": "apgd-soft_argmax"},
            {"name": "apgd", "steps": steps, "loss": "expected_distance", "label": "apgd-expected_distance"},
            {"name": "square", "steps": queries, "label": "square"}]


def _detection(steps: int, queries: int, num_classes: int | None) -> list[dict[str, Any]]:
    return [{"name": "apgd", "steps": steps, "label": "apgd-task"},
            {"name": "apgd", "steps": steps, "loss": "dag", "label": "apgd-dag"},
            {"name": "square", "steps": queries, "label": "square"}]


_TASKS = {"classification": _classification, "segmentation": _segmentation,
          "landmarks": _landmarks, "detection": _detection}
SUITES = {"standard": (100, 1000), "quick": (20, 100)}


def suite_configs(name: str, task: str | None, where: str = "attacks",
                  num_classes: int | None = None) -> list[dict[str, Any]]:
    """The attack list of suite ``name`` for ``task`` (``{name, label, loss?, **params}``)."""
    if name not in SUITES:
        raise ValueError(f"{where}: unknown suite {name!r}; known suites: {sorted(SUITES)}")
    if task not in _TASKS:
        raise ValueError(f"{where}: suite {name!r} needs the task, one of {sorted(_TASKS)}; got {task!r}")
    steps, queries = SUITES[name]
    if task != "classification":
        queries = min(queries, 300)
    return _TASKS[task](steps, queries, num_classes)


def is_sequential(task: str | None) -> bool:
    """Whether the suite skips samples that earlier members broke (see module docstring)."""
    return task in SEQUENTIAL
