"""Shared plumbing of the tests that run one training on 1 and on 2 CPU processes (DDP, gloo).

A test writes a small script that defines ``run(devices, out, *args)`` and runs it twice with
:func:`run_on_two_processes_and_one`: once as a subprocess with ``devices=2`` (Lightning's DDP
launcher starts the second rank by re-running the script), once in this process with
``devices=1``. Inside the script, :func:`ddp_fit_trainer` builds the bare CPU trainer both runs
use and :func:`close_process_group` ends the run cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def ddp_fit_trainer(devices: int, callbacks: list[Any], *, max_epochs: int = 1,
                    default_root_dir: str | Path | None = None) -> L.Trainer:
    """A CPU trainer on ``devices`` processes (``ddp`` when more than one) with nothing but the
    given callbacks: no logger, checkpoints, progress bar, validation or sanity steps."""
    return L.Trainer(accelerator="cpu", devices=devices,
                     strategy="ddp" if devices > 1 else "auto", max_epochs=max_epochs,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=default_root_dir)


def close_process_group() -> None:
    """Close gloo before the interpreter exits: its threads, torn down at exit, can abort the
    process ("terminate called without an active exception", seen once in CI-like runs)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_on_two_processes_and_one(script: str, tmp_path: Path, name: str, *args: str) -> tuple[Path, Path]:
    """Run ``script`` (the text of a module defining ``run(devices, out, *args)`` and calling it
    from ``sys.argv`` under ``__main__``) on 2 DDP processes, then here on 1.

    Returns:
        ``(out2, out1)``: the folders the two runs wrote into (``tmp_path/out2``, ``tmp_path/out1``).
    """
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    out2, out1 = tmp_path / "out2", tmp_path / "out1"
    out2.mkdir()
    out1.mkdir()
    proc = subprocess.run([sys.executable, str(path), "2", str(out2), *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} on 2 processes failed:\n{proc.stderr[-3000:]}"
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(script, str(path), "exec"), namespace)
    namespace["run"](1, str(out1), *args)
    return out2, out1


class SaveAtTrainEnd(L.Callback):
    """Saves ``take(pl_module)`` to ``out/{name}_rank{r}.pt`` when training ends, on every rank."""

    def __init__(self, out: str | Path, name: str, take: Any) -> None:
        self.out, self.name, self.take = Path(out), name, take

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(self.take(pl_module), self.out / f"{self.name}_rank{trainer.global_rank}.pt")


def script_main(run: Any) -> None:
    """The ``__main__`` of a script for :func:`run_on_two_processes_and_one`: one torch thread
    per process, then ``run(devices, out, *args)`` from the command line."""
    torch.set_num_threads(1)
    run(int(sys.argv[1]), *sys.argv[2:])
