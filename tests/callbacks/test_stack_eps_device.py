"""``Speedups.stack_eps`` stacks only on an accelerator: on the CPU the runner evaluates every ε
in its own call (stacking made the one-thread CPU evaluation slower; docs/scaling.md)."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest

import callbacks.evaluation_runner as runner_module
from callbacks import AdversarialEvaluation
from tests.support.callback_models import make_datamodule, make_module

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def test_the_runner_does_not_stack_eps_on_the_cpu(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    original = runner_module.RobustnessEvaluator

    class Watching(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self.stack_eps)

    monkeypatch.setattr(runner_module, "RobustnessEvaluator", Watching)
    ev = AdversarialEvaluation(attacks=[{"name": "pgd", "steps": 2, "random_start": False}], eps=[0.01, 0.03],
                               subset=4, batch_size=4, plot=False, write_json=False, report=False)
    assert ev.runner.speedups.stack_eps  # the flag stays on: it applies on an accelerator
    dm = make_datamodule(num_val=8, num_train=16)
    tr = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                   limit_train_batches=1, num_sanity_val_steps=0, callbacks=[ev])
    tr.fit(make_module(dm), dm)
    assert seen == [False]
