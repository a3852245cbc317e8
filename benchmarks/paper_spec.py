"""What a paper suite of ``benchmarks/run.py`` is: its runs, groups and per-mode overrides.

A :class:`Suite` names a paper, its groups (a dataset or task each: one table and one figure)
and its runs (a file of ``configs/experiment/`` plus per-run overrides); ``--quick`` applies each
group's overrides, ``--smoke`` (the runner's tests) :data:`SMOKE` on top. The three suites are
:mod:`benchmarks.paper_xue`, :mod:`benchmarks.paper_joel` and :mod:`benchmarks.paper_amat`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Overrides = dict[str, Any]


def main_metric(task: str) -> str:
    """The task's main metric, from its module (the one home: ``TaskModule.main_metric``)."""
    from lightning_modules.tasks import model_task

    return model_task(task).module.main_metric


@dataclass
class Run:
    """One training + test run of a suite."""

    key: str                 # unique in the suite, e.g. "pneumoniamnist/sat"
    group: str               # dataset or task: one table and one figure per group
    method: str              # row label in the tables
    config: str              # stem of a file in configs/experiment/
    overrides: Overrides = field(default_factory=dict)  # applied in every mode


@dataclass
class Group:
    """A dataset/task of a suite: its title, main metric and per-mode overrides."""

    name: str
    title: str
    metric: str
    quick: Overrides = field(default_factory=dict)
    #: factor applied to every L2 budget in --quick (the images are smaller: an L2 ball keeps its
    #: per-pixel RMS size when scaled by sqrt(pixels_quick / pixels_full))
    quick_l2_scale: float = 1.0
    secondary: str | None = None


@dataclass
class Suite:
    name: str
    title: str
    paper: str
    groups: list[Group]
    runs: list[Run]
    claims: Callable[[dict[str, Any]], list[dict[str, str]]]
    #: (attack label, ε) columns of the main tables: None → every attack × ε of the record
    log_eps: bool = False
    headline_eps: float | None = None
    noise: bool = False

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)


# ------------------------------------------------------------------------------ overrides
#: applied on top of --quick by --smoke (the test of the runner): a few steps on a sliver of the
#: real data; the numbers mean nothing, the machinery is the same.
SMOKE: Overrides = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "trainer.callbacks[AdversarialEvaluation].init_args.subset": 8,
    "trainer.callbacks[AdversarialEvaluation].init_args.test_subset": 8,
    "trainer.callbacks[AdversarialEvaluation:noise].init_args.test_subset": 8,
    "attack_steps": 2,  # every attack in the evaluation callbacks and the training method
}


CNN_ARGS = "model.init_args.net.init_args"


ADV_ARGS = "trainer.callbacks[AdversarialEvaluation].init_args"


def _stages(epochs: int) -> list[list[float]]:
    half = epochs // 2
    return [[0.001, half], [0.002, epochs - half]]


_SMALL_DENOISER = {"class_path": "lightning_modules.nets.DenoisingAutoEncoder",
                   "init_args": {"features": [8, 16]}}


def classification_groups(staged: bool) -> list[Group]:
    """PneumoniaMNIST and PH2 classification, shared by Xue and Joel. --quick: a smaller CNN
    (one conv per stage) and denoising auto-encoder, 6 / 20 epochs, PH2 at 64×64, the
    per-epoch check (which picks the checkpoint) every 2 epochs; ``staged``: the ε stages follow
    the shorter training (first half 0.001, second half 0.002)."""
    groups = []
    for name, title, secondary, epochs, quick in (
            ("pneumoniamnist", "chest X-ray (PneumoniaMNIST, 28×28)", "auroc", 6,
             {f"{CNN_ARGS}.features": [16, 32, 64]}),
            ("ph2", "skin lesions (PH2, 3 classes)", "balanced_accuracy", 20,
             {"data.init_args.image_size": [64, 64], f"{CNN_ARGS}.features": [8, 16, 32, 64]})):
        quick = {"trainer.max_epochs": epochs, **quick, f"{CNN_ARGS}.convs_per_stage": 1,
                 "model.init_args.method[Denoise].init_args.denoiser": _SMALL_DENOISER,
                 f"{ADV_ARGS}.every_n_epochs": 2,
                 "trainer.callbacks[ModelCheckpoint].init_args.every_n_epochs": 2}
        if staged:
            quick["model.init_args.method[SAT].init_args.stages"] = _stages(epochs)
        groups.append(Group(name, title, main_metric("classification"), quick=quick, secondary=secondary))
    return groups
