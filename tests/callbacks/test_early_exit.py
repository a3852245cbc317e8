"""``Speedups.early_exit``: in fit's per-epoch evaluation, a sample violated at a smaller ε of an
ascending grid (or clean) is not attacked again at the larger ones. The main metric can only
be the same or lower, the passes are exactly those of the samples still unviolated, and nothing
but classification's per-epoch evaluation uses it."""

from __future__ import annotations

from typing import Any

import pytest

from attacks import parse_attack_specs
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.evaluation_shortcuts import ROW_BUCKET
from tests.callbacks.test_accounting import Task
from tests.support.attack_models import trained

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module

EPS = [0.02, 0.05, 0.1]
STEPS = 3


def _evaluate(module: Any, batch: dict[str, Any], early_exit: bool) -> tuple[Any, Task]:
    task = Task(module)
    specs = parse_attack_specs([{"name": "pgd", "steps": STEPS, "random_start": False}], "t")
    ev = RobustnessEvaluator(task, specs, EPS, share_start=True, early_exit=early_exit, check_randomness=False)
    assert ev.early_exit is early_exit
    ev.run_batch(0, batch)
    return ev.compute(), task


def test_only_the_unbroken_samples_are_attacked_and_the_accuracy_is_never_higher() -> None:
    module, batch = trained("classification", steps=60)
    n = batch["label"].shape[0]
    off, _ = _evaluate(module, batch, early_exit=False)
    on, task = _evaluate(module, batch, early_exit=True)
    acc_off = [off.attacks[("pgd", e)]["accuracy"] for e in EPS]
    acc_on = [on.attacks[("pgd", e)]["accuracy"] for e in EPS]
    assert on.clean == off.clean
    assert all(a <= b for a, b in zip(acc_on, acc_off, strict=True)), (acc_on, acc_off)
    assert acc_on == sorted(acc_on, reverse=True)  # monotone in ε: a violated sample stays violated
    # the ensemble (one member) is that member at every ε
    assert [on.ensemble[e]["accuracy"] for e in EPS] == acc_on
    # each ε attacks exactly the samples the previous one (ε = 0: clean) left correct
    before = [on.clean["accuracy"], *acc_on[:-1]]
    attacked = [on.gradients[("pgd", e)]["attacked"] for e in EPS]
    assert attacked == [round(a * n) for a in before]
    assert 0 < attacked[-1] < attacked[0] < n  # the case is not trivial: some skipped, some attacked
    # passes: the shared pass at x (n forward + n backward), then per ε the STEPS - 1 steps after
    # the shared first one and the scoring forward, each on the attacked samples only, padded to
    # a multiple of ROW_BUCKET rows (a few batch shapes: their CPU kernels are built once)
    def rows(k: int) -> int:
        return k if k in (0, n) else min(n, -(-k // ROW_BUCKET) * ROW_BUCKET)

    assert any(rows(k) != k for k in attacked)  # the padding is exercised
    assert task.model.backwards == n + sum((STEPS - 1) * rows(k) for k in attacked)
    assert task.model.forwards == n + sum(STEPS * rows(k) for k in attacked)
    assert on.compute.total()["backward"] == task.model.backwards
    assert on.compute.total()["forward"] == task.model.forwards


def test_ignored_where_a_broken_sample_could_still_get_worse_or_the_grid_is_not_ascending() -> None:
    """Segmentation (Dice can drop further), multi-label, an unsorted grid, a sequential suite,
    no ensemble: the evaluator runs every sample at every ε."""
    module, _ = trained("classification", steps=1)
    specs = parse_attack_specs([{"name": "pgd", "steps": 1}], "t")
    assert RobustnessEvaluator(module, specs, [0.05, 0.02], early_exit=True).early_exit is False
    assert RobustnessEvaluator(module, specs, EPS, early_exit=True, sequential=True).early_exit is False
    assert RobustnessEvaluator(module, specs, EPS, early_exit=True, ensemble=False).early_exit is False
    module.multilabel = True
    assert module.violation_is_final is False
    assert RobustnessEvaluator(module, specs, EPS, early_exit=True).early_exit is False
    seg, _ = trained("segmentation", steps=1)
    assert getattr(seg, "violation_is_final", False) is False
    assert RobustnessEvaluator(seg, specs, EPS, early_exit=True).early_exit is False


def test_fit_uses_it_validate_does_not(tmp_path: Any) -> None:
    """The per-epoch record says it was on and its members attacked fewer samples than the
    subset when some were misclassified; ``validate`` (a reported number) attacks every sample."""
    import lightning as L

    from callbacks import AdversarialEvaluation
    from tests.support.callback_models import make_datamodule, make_module

    ev = AdversarialEvaluation(attacks=[{"name": "pgd", "steps": 2, "random_start": False}], eps=[0.01, 0.03],
                               subset=16, batch_size=8, plot=False, write_json=False, report=False)
    dm = make_datamodule()
    model = make_module(dm)
    tr = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                   limit_train_batches=1, num_sanity_val_steps=0, callbacks=[ev])
    tr.fit(model, dm)
    fit = ev.last_record["val"]
    assert fit.settings["early_exit"] is True
    attacked = [a.gradients["attacked"] for a in fit.attacks]
    wrong_clean = round((1 - fit.clean["accuracy"]) * 16)
    assert wrong_clean > 0  # one training batch: some samples are misclassified clean
    assert attacked[0] == 16 - wrong_clean and attacked[1] <= attacked[0]
    tr.validate(model, dm, verbose=False)
    val = ev.last_record["val"]
    assert val.settings["early_exit"] is False
    assert all(a.gradients["attacked"] == val.subset.size for a in val.attacks)
