"""The runs of the fault-injection benchmark (:mod:`benchmarks.fault_resume`): a tiny synthetic
config per training method, ``train.py fit`` in a subprocess (or a fork), the :class:`KillAt`
callback that SIGKILLs a run mid-epoch, and one uninterrupted / killed-and-resumed pair
(:func:`run_pair`)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback

from benchmarks.common import ROOT

PYTHON = sys.executable


METHODS: dict[str, dict[str, Any]] = {
    "clean": {"class_path": "lightning_modules.methods.Clean"},
    "sat-staged": {"class_path": "lightning_modules.methods.SAT",
                   "init_args": {"attack": {"name": "pgd", "norm": "linf", "steps": 2, "rel_step_size": 0.25},
                                 "beta": 1.0,
                                 "schedule": "staged", "stages": [[0.01, 1], [0.02, 10]]}},
    "amat": {"class_path": "lightning_modules.methods.AMAT",
             "init_args": {"delta": 0.05, "max_margin": 1.0, "attack": {"name": "pgd", "norm": "l2", "steps": 2},
                           "alpha": 4.0, "beta": 0.5}},
    "denoise": {"class_path": "lightning_modules.methods.Denoise",
                "init_args": {"noises": ["gaussian", "salt_pepper"], "adversarial_fraction": 0.25,
                              "adv_eps": 0.015, "attack": {"name": "pgd", "steps": 2}, "lambda_rec": 1.0, "lambda_inv": 0.1}},
}


class KillAt(Callback):
    """Fault injection: ``SIGKILL`` this process at the start of training batch ``batch`` of
    epoch ``epoch`` (0-based), as a pre-empting scheduler would. Nothing is flushed or saved.
    ``marker``: a file touched just before, so the caller knows the kill was the injected one."""

    def __init__(self, epoch: int, batch: int, marker: str | None = None) -> None:
        self.epoch, self.batch, self.marker = int(epoch), int(batch), marker

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if self.marker:
                Path(self.marker).write_text(f"killed at epoch {self.epoch} batch {self.batch}\n")
            os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------- configs and runs
def tiny_config(method: str, epochs: int, boundary: str = "epoch", batches: int = 4,
                batch_size: int = 8, image_size: int = 16) -> dict[str, Any]:
    """A train.py config small enough for a test: ``batches`` batches per epoch."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if boundary not in ("epoch", "step"):
        raise ValueError(f"boundary must be 'epoch' or 'step', got {boundary!r}")
    ckpt: dict[str, Any] = {"save_last": True, "save_top_k": 1, "monitor": "adv/robust_area",
                            "mode": "max", "filename": "best-{epoch:03d}",
                            "auto_insert_metric_name": False}
    if boundary == "step":
        ckpt.update(every_n_train_steps=1, save_top_k=-1, monitor=None,
                    filename="step-{epoch:03d}-{step:04d}")
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": epochs, "log_every_n_steps": 1,
            "deterministic": True, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "callbacks": [
                {"class_path": "callbacks.ModelCheckpoint", "init_args": ckpt},
                {"class_path": "callbacks.AdversarialEvaluation",
                 "init_args": {"attacks": [{"name": "pgd", "norm": "linf", "steps": 2}],
                               "eps": [0.02], "subset": 16, "every_n_epochs": 1, "plot": False}},
            ],
        },
        "data": {"class_path": "datamodules.synthetic.SyntheticDataModule",
                 "init_args": {"task": "classification", "num_train": batches * batch_size,
                               "num_val": 16, "num_test": 16, "image_size": [image_size, image_size],
                               "num_classes": 2, "batch_size": batch_size}},
        "model": {"class_path": "lightning_modules.ClassificationModule",
                  "init_args": {"net": {"class_path": "lightning_modules.nets.SmallCNN",
                                        "init_args": {"features": [4, 8], "dropout": 0.25}},
                                "lr": 0.003, "scheduler": "cosine",
                                "method": copy.deepcopy(METHODS[method])}},
    }


def write_config(cfg: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    return path


#: "subprocess": every run is ``python train.py`` (what a user does); "fork": every run is a
#: ``fork()`` of this process after the imports (a fresh process for each run, without paying
#: ~10 s of imports three times per method: what the tests use)
LAUNCH = {"mode": "subprocess"}


def train(config: Path, root: Path, *extra: str, check: bool = True,
          timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python train.py fit --config <config> --trainer.default_root_dir <root> <extra>``."""
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *extra]
    if LAUNCH["mode"] == "fork":
        proc = _train_forked(args, root)
    else:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "WANDB_MODE": "offline", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        cmd = [PYTHON, str(ROOT / "train.py"), *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _train_forked(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``train.cli_main(args)`` in a forked child; its stdout/stderr go to a log file."""
    import traceback

    from medrobust.cli import load_train_module  # train.py is not an installed module

    train_py = load_train_module()  # loaded once, in the parent, before forking

    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"train-{time.time_ns()}.log"
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            train_py.cli_main(list(args))
            code = 0
        except BaseException:  # noqa: BLE001 - report anything, then leave the child
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return subprocess.CompletedProcess(args, rc, text, text)


def kill_args(epoch: int, batch: int, marker: Path) -> list[str]:
    """Command-line flags that add :class:`KillAt` to the config's callbacks."""
    spec = {"class_path": "benchmarks.fault_runs.KillAt",
            "init_args": {"epoch": epoch, "batch": batch, "marker": str(marker)}}
    return ["--trainer.callbacks+=" + json.dumps(spec)]


@dataclass
class FaultRun:
    """The folders of one uninterrupted / killed-and-resumed pair."""

    method: str
    boundary: str
    reference: Path  # version_0 of the uninterrupted run
    killed: Path  # version_0 of the killed run
    resumed: Path  # the resumed run: version_0 again (a resume continues in its run folder)
    seconds: dict[str, float] = field(default_factory=dict)


def run_pair(method: str, workdir: Path, epochs: int = 3, kill_epoch: int = 1, kill_batch: int = 2,
             boundary: str = "epoch", batches: int = 4) -> FaultRun:
    """Uninterrupted run, killed run and its resume, in ``workdir/{reference,faulty}``."""
    cfg = write_config(tiny_config(method, epochs, boundary, batches), workdir / f"{method}.yaml")
    ref_root, bad_root = workdir / "reference", workdir / "faulty"
    seconds = {}
    t = time.perf_counter()
    train(cfg, ref_root)
    seconds["uninterrupted"] = time.perf_counter() - t
    marker = workdir / "killed.txt"
    t = time.perf_counter()
    proc = train(cfg, bad_root, *kill_args(kill_epoch, kill_batch, marker), check=False)
    seconds["until_kill"] = time.perf_counter() - t
    if proc.returncode != -signal.SIGKILL or not marker.exists():
        raise RuntimeError(f"the killed run did not die by the injected SIGKILL (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    t = time.perf_counter()
    resumed = train(cfg, bad_root, "--ckpt_path", "last")
    seconds["resume"] = time.perf_counter() - t
    if "[medrobust] resuming from" not in resumed.stderr:
        raise RuntimeError("the resumed run did not find last.ckpt:\n" + resumed.stderr[-3000:])
    name = cfg.stem
    # `--ckpt_path last` continues in the killed run's own folder (medrobust/run_folders.py);
    # a second version folder would mean the resume opened a new run.
    extra = sorted(p.name for p in (bad_root / name).glob("version_*") if p.name != "version_0")
    if extra:
        raise RuntimeError(f"the resume opened a new run folder {extra} instead of continuing "
                           f"in {bad_root / name / 'version_0'}")
    return FaultRun(method, boundary, ref_root / name / "version_0", bad_root / name / "version_0",
                    bad_root / name / "version_0", seconds)
