"""SIGTERM under DDP (2 CPU processes, gloo): ``medrobust evaluate`` and ``train.py validate``
stop after the member × ε that is running, rank 0 writes the incomplete record once, every
process exits (143), and no rank waits forever in a collective.

The signal is sent as a job scheduler sends it: to the launcher (the process that started the
workers, which forwards it to them) and, as SLURM does on a preemption, to every process of the
job — the worker first, the launcher a moment later, so the worker receives it twice. Lightning's
own SIGTERM handler broadcasts inside the handler, and with this order the ranks' broadcasts did
not pair: before ``callbacks.evaluation_stop.StopSignal`` the command hung (or exited without a
record)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.tiny_configs import tiny_experiment, write_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,  # two DDP launches of 2 processes each
    pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc"),
]


def workers_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (Lightning's DDP workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except FileNotFoundError:
        return False


def terminate_job(cmd: list[str], cwd: Path, marker: bytes, timeout: float = 300) -> tuple[int, str, list[int]]:
    """Start ``cmd`` (2 DDP processes); once ``marker`` is on its stderr, SIGTERM the worker, then
    (0.5 s later) the launcher; wait for every process. ``(launcher's exit code, its output,
    workers still running 60 s after the launcher exited)``. A hang fails the test (killed)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MEDROBUST_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    workers: list[int] = []
    try:
        while marker not in seen:
            assert proc.poll() is None, seen.decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, seen.decode(errors="replace")[-3000:]
            seen += proc.stderr.read() or b""
            time.sleep(0.05)
        workers = workers_of(proc.pid)
        assert len(workers) == 1, workers  # rank 1; rank 0 is the launcher itself
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        try:
            out, rest = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail("the launcher did not exit within 180 s of SIGTERM (a rank waits in a collective)")
        end = time.monotonic() + 60
        while any(running(p) for p in workers) and time.monotonic() < end:
            time.sleep(0.2)
        text = (seen + (rest or b"")).decode(errors="replace") + (out or b"").decode(errors="replace")
        return proc.returncode, text, [p for p in workers if running(p)]
    finally:
        for pid in [*workers, proc.pid]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_to_every_rank_of_a_ddp_evaluate(tmp_path: Path) -> None:
    from datamodules.manifest import write_example_manifest

    torch.manual_seed(0)
    torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))).save(str(tmp_path / "model.ts"))
    manifest = write_example_manifest(tmp_path / "data", "classification", n=12, image_size=(8, 8))
    out = tmp_path / "out"
    slow = json.dumps([{"name": "pgd", "steps": 2000, "random_start": False}])
    # -m, not -c: Lightning's launcher starts the workers with the launcher's own command line
    cmd = [sys.executable, "-m", "medrobust.cli", "evaluate", "--model", "model.ts", "--data", str(manifest),
           "--task", "classification", "--suite", slow, "--eps", "0.01", "0.02", "--no-normalization",
           "--out", str(out), "--batch-size", "2", "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp", "--sanity", "never"]
    code, text, left = terminate_job(cmd, tmp_path, b"batch 2/3")  # rank 0's batch 1 of 3 is done
    assert code == 143, text[-3000:]
    assert not left, f"workers {left} still running after the launcher exited"
    assert text.count("the incomplete record") == 1, text[-3000:]  # rank 0 only
    record = json.loads((out / "robustness.json").read_text())
    inc = record["incomplete"]
    assert inc["reason"] == "SIGTERM" and inc["samples_planned"] == 12 and inc["batches_planned"] == 3
    # whole batches of both ranks (2 samples each); at least rank 0's first, not all of them
    assert 2 <= inc["samples_evaluated"] < 12 and inc["samples_evaluated"] % 2 == 0, inc
    assert 1 <= inc["batches_evaluated"] < 3
    rows = [x for x in (out / "robustness_samples.csv").read_text().splitlines() if not x.startswith("#")]
    assert len(rows) - 1 == inc["samples_evaluated"]  # the per-sample file holds what was counted


def test_sigterm_to_every_rank_of_a_ddp_train_py_validate(tmp_path: Path) -> None:
    cfg = tiny_experiment("classification_synthetic_clean", features=[4], only_callback="AdversarialEvaluation",
                          data=dict(num_train=8, num_val=12, num_test=8, image_size=[8, 8], batch_size=2))
    evaluation = cfg["trainer"]["callbacks"][0]["init_args"]
    evaluation.update(test_attacks=[{"name": "pgd", "steps": 2000, "random_start": False}], test_eps=[0.01],
                      batch_size=2, sanity="never", test_subset=None)
    path = write_config(cfg, tmp_path / "tiny.yaml")
    cmd = [sys.executable, str(PROJECT_ROOT / "train.py"), "validate", "--config", str(path),
           "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false"]
    code, text, left = terminate_job(cmd, tmp_path, b"batch 2/3")
    assert code == 143, text[-3000:]
    assert not left, f"workers {left} still running after the launcher exited"
    folder = tmp_path / "runs" / "tiny" / "version_0"
    record = json.loads((folder / "robustness.json").read_text())
    assert record["split"] == "val" and record["incomplete"]["samples_planned"] == 12
    assert 2 <= record["incomplete"]["samples_evaluated"] < 12
    history = (folder / "robustness_history.jsonl")
    if history.exists():  # written once, by rank 0
        assert len(history.read_text().splitlines()) == 1
