"""``Speedups.merge_updates``: a collection gets one update over all its batches instead of one
per batch — only for a task whose metric states allow it, and with the same numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from attacks import parse_attack_specs
from callbacks.evaluation_loop import RobustnessEvaluator
from lightning_modules import ClassificationModule
from tests.support.attack_models import trained

SPECS = [{"name": "pgd", "steps": 2, "random_start": False}, {"name": "fgsm"}]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module
EPS = [0.02, 0.08]


class Counting:
    """The task, with its ``update_metrics`` calls counted (and an optional override of
    ``metrics_batch_invariant``)."""

    def __init__(self, module: Any, invariant: bool | None = None) -> None:
        self._module, self.updates = module, 0
        if invariant is not None:
            self.metrics_batch_invariant = invariant

    def update_metrics(self, *args: Any) -> None:
        self.updates += 1
        self._module.update_metrics(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _cut(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    n = batch["image"].shape[0]
    step = math.ceil(n / parts)
    return [{k: v[i:i + step] for k, v in batch.items()} for i in range(0, n, step)]


def _evaluate(task: Any, batches: list[dict[str, Any]], merge: bool) -> Any:
    ev = RobustnessEvaluator(task, parse_attack_specs(SPECS, "t"), EPS, merge_updates=merge,
                             check_randomness=False, keep_per_sample=True, stack_eps=True, share_start=True)
    for i, b in enumerate(batches):
        ev.run_batch(i, b)
    return ev.compute()


def test_merged_updates_give_the_same_numbers_with_one_update_per_collection() -> None:
    module, batch = trained("classification")
    batches = _cut(batch, 3)
    per_batch, merged = Counting(module), Counting(module)
    a, b = _evaluate(per_batch, batches, False), _evaluate(merged, batches, True)
    assert (a.clean, a.attacks, a.ensemble) == (b.clean, b.attacks, b.ensemble)
    assert a.per_sample.columns.keys() == b.per_sample.columns.keys()
    collections = 1 + len(SPECS) * len(EPS) + len(EPS)  # clean, member × ε, ensemble per ε
    assert merged.updates == collections
    assert per_batch.updates == collections * len(batches)
    # a task that does not declare it keeps one update per batch
    opted_out = Counting(module, invariant=False)
    c = _evaluate(opted_out, batches, True)
    assert opted_out.updates == per_batch.updates and c.attacks == a.attacks


@pytest.mark.parametrize("num_classes", [2, 3])
def test_a_non_finite_output_keeps_the_updates_per_batch(num_classes: int) -> None:
    """torchmetrics reformats a whole update when its probabilities are not all in [0, 1]
    (a sigmoid over them); so an update merged with a NaN batch would change the finite
    batch's predictions. The kept pairs are then given one by one, as without merging."""
    module, _ = trained("classification", num_classes=num_classes, steps=1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, num_classes, generator=g) * 3
    bad = logits.clone()
    bad[0] = float("nan")
    labels = torch.randint(0, num_classes, (8,), generator=g)
    pairs = [(logits, {"label": labels}), (bad, {"label": labels.flip(0)})]

    ev = RobustnessEvaluator(module, [], [0.01], merge_updates=True, ensemble=False)
    kept, direct, naive = module.build_metrics(), module.build_metrics(), module.build_metrics()
    for out, b in pairs:
        ev.feed.update(kept, out, b)
        module.update_metrics(direct, out, b)
    ev.feed.flush()
    module.update_metrics(naive, torch.cat([o for o, _ in pairs]), {"label": torch.cat([b["label"] for _, b in pairs])})

    def values(c: Any) -> dict[str, float]:
        return {k: float(v) for k, v in c.compute().items()}

    assert values(kept) == pytest.approx(values(direct), nan_ok=True)
    # what the guard prevents: the merged update really differs here
    assert values(naive) != pytest.approx(values(direct), nan_ok=True)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_classification_metrics_keep_only_counts_and_lists(kind: str) -> None:
    """What ``metrics_batch_invariant`` rests on: every state of the classification metrics is
    an integer tensor (a sum of counts) or a list (rows, concatenated at compute)."""
    from datamodules.info import DataInfo

    kw = {"binary": {"num_classes": 2}, "multiclass": {"num_classes": 4},
          "multilabel": {"num_classes": 3, "multilabel": True}}[kind]
    info = DataInfo(task="classification", in_channels=1, spatial_dims=2, image_size=(16, 16), **kw)
    module = ClassificationModule(data_info=info)
    assert module.metrics_batch_invariant
    collection = module.build_metrics()
    states = [(name, value) for metric in collection.values() for name, value in metric.metric_state.items()]
    assert states
    for name, value in states:
        assert isinstance(value, list) or not value.is_floating_point(), (kind, name, value)
