"""A SIGTERM stops a long evaluation cleanly: after the member × ε that is running, with the
record of the whole batches done written (marked incomplete, naming what did not run) and a
non-zero exit; and the progress bar names the batch, member and ε."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from attacks import parse_attack_specs
from callbacks.evaluation_loop import EvaluationStopped, RobustnessEvaluator
from datamodules.info import DataInfo
from lightning_modules import ClassificationModule, SegmentationModule
from tests.support.tiny_configs import tiny_experiment, write_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EPS = [0.02, 0.05]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per module


def module_and_batches(task: str) -> tuple[Any, list[dict[str, Any]]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batches = []
    if task == "classification":
        info = DataInfo(task=task, in_channels=1, image_size=(8, 8), num_classes=3)
        module = ClassificationModule(data_info=info, mean=0.0, std=1.0)
        for b in range(2):
            batches.append({"image": torch.rand(4, 1, 8, 8, generator=g), "label": torch.arange(4) % 3,
                            "index": torch.arange(4 * b, 4 * b + 4)})
    else:
        info = DataInfo(task=task, in_channels=1, image_size=(8, 8), num_classes=2)
        module = SegmentationModule(data_info=info, mean=0.0, std=1.0)
        for b in range(2):
            x = torch.rand(4, 1, 8, 8, generator=g)
            batches.append({"image": x, "mask": (x[:, 0] > 0.5).long(), "index": torch.arange(4 * b, 4 * b + 4)})
    return module.eval(), batches


def evaluator(module: Any, task: str) -> RobustnessEvaluator:
    specs = parse_attack_specs([{"name": "fgsm"}, {"name": "pgd", "steps": 2, "random_start": True}],
                               "t", task, 3)
    return RobustnessEvaluator(module, specs, EPS, seed=3, keep_per_sample=True, large_eps=0.25)


def plain(outcome: Any) -> dict[str, Any]:
    table = outcome.per_sample
    return {"clean": outcome.clean, "attacks": outcome.attacks, "ensemble": outcome.ensemble,
            "n": outcome.num_samples, "gradients": outcome.gradients, "large": outcome.large_eps,
            "ids": table.sample_ids.tolist(), "columns": {k: np.asarray(v).tolist() for k, v in table.columns.items()}}


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_a_stopped_batch_counts_for_nothing(task: str) -> None:
    module, batches = module_and_batches(task)
    whole = evaluator(module, task)
    whole.run_batch(0, batches[0])
    expected = plain(whole.compute())

    stopped = evaluator(module, task)
    started: list[tuple[str, float | None]] = []
    stopped.on_member = lambda label, eps: started.append((label, eps))
    stopped.should_stop = lambda: len(started) == 5 + 3  # batch 1: after fgsm at the second ε
    stopped.run_batch(0, batches[0])
    assert started == [("fgsm", 0.02), ("pgd", 0.02), ("fgsm", 0.05), ("pgd", 0.05), ("sanity", None)]
    with pytest.raises(EvaluationStopped, match="stopped before pgd at ε=0.05") as info:
        stopped.run_batch(1, batches[1])
    assert (info.value.attack, info.value.eps) == ("pgd", 0.05)
    assert started[5:] == [("fgsm", 0.02), ("pgd", 0.02), ("fgsm", 0.05)]  # pgd at 0.05 never started
    got = plain(stopped.compute())
    assert got == expected  # batch 1's clean, member, worst-case and per-sample updates were undone
    assert got["n"] == 4 and got["ids"] == [0, 1, 2, 3]


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """A TorchScript classifier and a 12-image manifest, as a user has them."""
    from datamodules.manifest import write_example_manifest

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    model = folder / "model.ts"
    torch.jit.script(net).save(str(model))
    manifest = write_example_manifest(folder / "data", "classification", n=12, image_size=(8, 8))
    return model, manifest


def terminate_when(cmd: list[str], cwd: Path, env: dict[str, str], marker: bytes,
                   timeout: float = 240) -> tuple[subprocess.Popen, str, float]:
    """Run ``cmd``, send SIGTERM once ``marker`` appears on its stderr (the progress bar), wait
    for it; ``(process, all its stderr then stdout, seconds from the signal to its exit)``."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert proc.poll() is None, seen.decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, rest = proc.communicate(timeout=timeout)
    text = (seen + (rest or b"")).decode(errors="replace") + (out or b"").decode(errors="replace")
    return proc, text, time.monotonic() - sent


def test_sigterm_writes_what_was_finished_and_exits_143(tmp_path: Path) -> None:
    model, manifest = write_inputs(tmp_path)
    out = tmp_path / "out"
    slow = json.dumps([{"name": "pgd", "steps": 4000, "random_start": False},
                       {"name": "pgd", "steps": 4000, "random_start": True, "label": "pgd-rs"}])
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MEDROBUST_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from medrobust.cli import main; main()", "evaluate", "--model", str(model),
           "--data", str(manifest), "--task", "classification", "--suite", slow, "--eps", "0.01", "0.02",
           "--no-normalization", "--out", str(out), "--batch-size", "2", "--accelerator", "cpu",
           "--sanity", "never"]
    proc, text, waited = terminate_when(cmd, tmp_path, env, b"batch 2/6")  # batch 1 of 6 is done
    assert proc.returncode == 143, text[-3000:]
    assert "stopped by SIGTERM" in text
    assert re.search(r"\[medrobust\] test: ⚠ INCOMPLETE \(SIGTERM: \d+ of 12 samples\)", text)  # the summary
    # the progress bar named the batch, the member and ε
    for member in ("pgd ε=0.01", "pgd-rs ε=0.01", "pgd ε=0.02", "pgd-rs ε=0.02"):
        assert f"batch 1/6 · {member}" in text, text[-2000:]
    assert re.search(r"adv test: 2 attack\(s\) × 2 ε: +\d+%.*\| *\d+/24", text)  # 6 batches × 2 × 2 steps
    record = json.loads((out / "robustness.json").read_text())
    inc = record["incomplete"]
    assert inc["reason"] == "SIGTERM" and inc["samples_planned"] == 12
    assert 2 <= inc["samples_evaluated"] < 12 and inc["samples_evaluated"] % 2 == 0
    assert inc["batches_evaluated"] == inc["samples_evaluated"] // 2
    assert f"batches {inc['batches_evaluated'] + 1}–6" in inc["not_run"]
    assert record["subset"]["size"] == 12  # the subset that was planned; the record says what ran
    lines = [x for x in (out / "robustness_samples.csv").read_text().splitlines() if not x.startswith("#")]
    assert len(lines) - 1 == inc["samples_evaluated"]
    assert "**Incomplete** (SIGTERM)" in (out / "report.md").read_text()
    # it stopped after the member × ε that was running, not at the end: far fewer than the
    # remaining batches' work (each member × ε of a batch is 4000 steps)
    assert inc["batches_evaluated"] < 6
    assert waited < 120, waited


def test_sigterm_during_train_py_validate(tmp_path: Path) -> None:
    """The same through the training CLI: the run folder keeps the incomplete record, exit 143."""
    cfg = tiny_experiment("classification_synthetic_clean", features=[4], only_callback="AdversarialEvaluation",
                          data=dict(num_train=8, num_val=8, num_test=8, image_size=[8, 8], batch_size=2))
    evaluation = cfg["trainer"]["callbacks"][0]["init_args"]
    evaluation.update(test_attacks=[{"name": "pgd", "steps": 4000, "random_start": False}], test_eps=[0.01],
                      batch_size=2, sanity="never", test_subset=None)
    path = write_config(cfg, tmp_path / "tiny.yaml")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MEDROBUST_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(PROJECT_ROOT / "train.py"), "validate", "--config", str(path),
           "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
           "--trainer.enable_progress_bar", "false"]
    proc, text, waited = terminate_when(cmd, tmp_path, env, b"batch 2/4")
    assert proc.returncode == 143, text[-3000:]
    folder = tmp_path / "runs" / "tiny" / "version_0"
    record = json.loads((folder / "robustness.json").read_text())
    assert record["split"] == "val" and record["incomplete"]["samples_evaluated"] in (2, 4, 6)
    assert record["incomplete"]["samples_planned"] == 8
    assert waited < 120, waited


def test_the_stop_is_armed_in_validate_and_test_but_not_in_fits_per_epoch_evaluation(tmp_path: Path) -> None:
    """Fit's per-epoch evaluation is short (Lightning ends the fit right after it), so it runs
    without the stop and its per-batch copy of every metric state; validate / test arm it."""
    import lightning as L

    from callbacks import AdversarialEvaluation
    from tests.support.callback_models import make_datamodule, make_module

    armed: list[bool] = []
    original = RobustnessEvaluator.run_batch

    def spy(self: RobustnessEvaluator, *args: Any, **kwargs: Any) -> None:
        armed.append(self.should_stop is not None)
        return original(self, *args, **kwargs)

    ev = AdversarialEvaluation(attacks=[{"name": "fgsm"}], eps=[0.01], subset=4, batch_size=4,
                               plot=False, write_json=False, report=False)
    dm = make_datamodule()
    model = make_module(dm)
    tr = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                   limit_train_batches=1, num_sanity_val_steps=0, callbacks=[ev])
    RobustnessEvaluator.run_batch = spy  # type: ignore[method-assign]
    try:
        tr.fit(model, dm)
        in_fit = list(armed)
        armed.clear()
        tr.validate(model, dm, verbose=False)
    finally:
        RobustnessEvaluator.run_batch = original  # type: ignore[method-assign]
    assert in_fit == [False] and armed == [True], (in_fit, armed)
