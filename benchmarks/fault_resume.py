"""Fault injection: does a run SIGKILLed mid-epoch and resumed with ``--ckpt_path last`` end
where an uninterrupted run ends?

For each method (clean, staged SAT, AMAT, denoise) on a tiny synthetic classification config
(dropout, cosine LR schedule, per-epoch robustness evaluation, ``last.ckpt`` saving):

1. train ``--epochs`` epochs uninterrupted (``train.py fit`` in a subprocess);
2. train the same config again with the :class:`KillAt` callback, which sends the process
   ``SIGKILL`` at the start of training batch ``--kill-batch`` of epoch ``--kill-epoch`` —
   after a checkpoint was written, before the next one;
3. resume it with ``train.py fit ... --ckpt_path last`` to the end;
4. compare the two final ``last.ckpt`` tensor by tensor (weights, buffers such as AMAT's
   margins and threshold, optimizer and LR-scheduler state, loop progress, RNG states, callback
   states), the ε position, the logged per-epoch metrics and ``robustness.json`` /
   ``robustness_history.jsonl``.

``--boundary epoch`` resumes from the end-of-epoch checkpoint (``ModelCheckpoint`` after
validation, the default of every config); ``--boundary step`` saves ``last.ckpt`` after every
training batch (``every_n_train_steps: 1``), so the resume starts inside the epoch.

    python benchmarks/fault_resume.py --out results/fault_resume            # table + JSON
    python benchmarks/fault_resume.py --methods amat --boundary step --epochs 3

The same functions back ``tests/lightning_modules/test_faults.py``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
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

#: checkpoint entries that name files or folders of one run (they differ between runs by design)
PATH_LIKE = ("dirpath", "best_model_path", "last_model_path", "kth_best_model_path", "best_k_models")


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
    spec = {"class_path": "benchmarks.fault_resume.KillAt",
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


# ---------------------------------------------------------------------- comparisons
def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.path, leaf)`` of nested dicts / lists / tuples."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


@dataclass
class Comparison:
    """Leaf-by-leaf comparison of two checkpoints (or any nested structures)."""

    equal: int = 0
    total: int = 0
    max_abs_diff: float = 0.0
    different: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"equal": self.equal, "total": self.total, "max_abs_diff": self.max_abs_diff,
                "different": self.different, "skipped": self.skipped}


def _leaf_diff(a: Any, b: Any) -> float | None:
    """0.0 when bit-equal, else the largest absolute difference (``inf`` when incomparable)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return math.inf
        if torch.equal(a, b) or (a.is_floating_point() and bool(
                torch.equal(torch.nan_to_num(a, nan=1.5e300), torch.nan_to_num(b, nan=1.5e300)))):
            return 0.0
        if a.is_floating_point() or a.is_complex():
            return float((a.double() - b.double()).abs().nan_to_num(nan=math.inf).max())
        return float((a.long() - b.long()).abs().max()) if a.numel() else 0.0
    if isinstance(a, bool | int | float) and isinstance(b, bool | int | float):
        if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            return 0.0
        return abs(float(a) - float(b))
    return None


def compare_trees(a: Any, b: Any, skip: tuple[str, ...] = PATH_LIKE) -> Comparison:
    """Compare every tensor and number leaf of ``a`` and ``b`` (strings and paths of one run
    are listed in ``skipped``)."""
    out = Comparison()
    fa, fb = dict(flatten(a)), dict(flatten(b))
    for key in sorted(set(fa) | set(fb)):
        if any(part in key for part in skip):
            out.skipped.append(key)
            continue
        va, vb = fa.get(key), fb.get(key)
        if isinstance(va, str | type(None)) and isinstance(vb, str | type(None)):
            if va != vb:
                out.different.append(key)
            continue
        out.total += 1
        diff = _leaf_diff(va, vb) if key in fa and key in fb else math.inf
        if diff is None:
            diff = 0.0 if va == vb else math.inf
        if diff == 0.0:
            out.equal += 1
        else:
            out.different.append(key)
            out.max_abs_diff = max(out.max_abs_diff, diff)
    return out


def load_last(run_dir: Path) -> dict[str, Any]:
    """``run_dir/checkpoints/last.ckpt``, loaded with ``weights_only=True``."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def checkpoint_groups(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a checkpoint compared separately in the table."""
    extra = ckpt.get("medrobust", {})
    sd = ckpt["state_dict"]
    return {
        "weights": {k: v for k, v in sd.items() if not k.startswith("method.")
                    and "running_" not in k and "num_batches_tracked" not in k},
        "buffers": {k: v for k, v in sd.items() if k.startswith("method.")
                    or "running_" in k or "num_batches_tracked" in k},
        "optimizer": ckpt.get("optimizer_states"),
        "scheduler": ckpt.get("lr_schedulers"),
        "loops": {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"),
                  "loops": ckpt.get("loops")},
        "rng": extra.get("rng"),
        "method_epoch_state": extra.get("method_epoch_state"),
        "callbacks": ckpt.get("callbacks"),
    }


def epoch_metrics(run_dirs: list[Path]) -> dict[int, dict[str, float]]:
    """Epoch-level metrics from the ``metrics.csv`` of the run folders, later folders winning:
    rows with an ``epoch`` and no ``step``-level key (``*_step``)."""
    out: dict[int, dict[str, float]] = {}
    for run_dir in run_dirs:
        path = run_dir / "metrics.csv"
        if not path.exists():
            continue
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                for key, value in row.items():
                    if key in ("epoch", "step") or not value or key.endswith("_step"):
                        continue
                    if "eval_seconds" in key:  # wall time, not a result
                        continue
                    out.setdefault(epoch, {})[key] = float(value)
    return out


def robustness_history(run_dirs: list[Path]) -> dict[int, dict[str, Any]]:
    """``epoch → record`` from ``robustness_history.jsonl`` (later folders winning)."""
    out: dict[int, dict[str, Any]] = {}
    for run_dir in run_dirs:
        path = run_dir / "robustness_history.jsonl"
        if path.exists():
            from callbacks.record import load_history

            for rec in load_history(path):
                out[rec.epoch] = rec.to_dict()
    return out


def strip_timing(rec: Any) -> Any:
    """A robustness record without its wall-clock fields (also the compute accounting's seconds)."""
    if isinstance(rec, dict):
        return {k: strip_timing(v) for k, v in rec.items() if k not in ("eval_seconds", "seconds", "seconds_per_sample")}
    if isinstance(rec, list):
        return [strip_timing(v) for v in rec]
    return rec


def compare_pair(run: FaultRun) -> dict[str, Any]:
    """All comparisons of one :class:`FaultRun`, as a JSON-able dict."""
    ref, res = load_last(run.reference), load_last(run.resumed)
    groups_a, groups_b = checkpoint_groups(ref), checkpoint_groups(res)
    groups = {name: compare_trees(groups_a[name], groups_b[name]).as_dict() for name in groups_a}
    whole = compare_trees({k: v for k, v in ref.items() if k != "hyper_parameters"},
                          {k: v for k, v in res.items() if k != "hyper_parameters"})
    m_ref = epoch_metrics([run.reference])
    m_res = epoch_metrics([run.killed, run.resumed])
    metrics = compare_trees(m_ref, m_res)
    h_ref = {e: strip_timing(r) for e, r in robustness_history([run.reference]).items()}
    h_res = {e: strip_timing(r) for e, r in robustness_history([run.killed, run.resumed]).items()}
    history = compare_trees(h_ref, h_res)
    from callbacks.record import RobustnessRecord

    final_a = strip_timing(RobustnessRecord.load(run.reference / "robustness.json").to_dict())
    final_b = strip_timing(RobustnessRecord.load(run.resumed / "robustness.json").to_dict())
    return {
        "method": run.method, "boundary": run.boundary, "seconds": run.seconds,
        "checkpoint": whole.as_dict(), "groups": groups,
        "buffer_keys": sorted(groups_a["buffers"]),
        "epoch_metrics": metrics.as_dict(), "metric_epochs": sorted(m_ref),
        "robustness_history": history.as_dict(),
        "robustness_json_equal": final_a == final_b,
        "eps_position": {"reference": ref["epoch"], "resumed": res["epoch"]},
    }


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table of the closing note: bit-equal leaves / total, largest difference."""
    lines = ["| method | resume point | checkpoint tensors+numbers bit-equal | largest diff (model, "
             "optimizer, scheduler) | weights | "
             "buffers | optimizer | scheduler | RNG | per-epoch metrics | robustness history | "
             "robustness.json |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        g = r["groups"]

        def cell(c: dict[str, Any]) -> str:
            return f"{c['equal']}/{c['total']}"

        largest = max(g[k]["max_abs_diff"] for k in ("weights", "buffers", "optimizer", "scheduler"))
        lines.append(
            f"| {r['method']} | {r['boundary']} | {cell(r['checkpoint'])} | "
            f"{largest:.3g} | {cell(g['weights'])} | {cell(g['buffers'])} | "
            f"{cell(g['optimizer'])} | {cell(g['scheduler'])} | {cell(g['rng'])} | "
            f"{cell(r['epoch_metrics'])} (max diff {r['epoch_metrics']['max_abs_diff']:.3g}) | "
            f"{cell(r['robustness_history'])} | {'equal' if r['robustness_json_equal'] else 'DIFFERENT'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--boundary", nargs="+", default=["epoch", "step"], choices=["epoch", "step"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4, help="training batches per epoch")
    parser.add_argument("--kill-epoch", type=int, default=1)
    parser.add_argument("--kill-batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fault_resume")
    parser.add_argument("--fork", action="store_true",
                        help="fork this process for each run instead of starting python train.py")
    args = parser.parse_args(argv)
    if args.fork:
        torch.set_num_threads(1)
        LAUNCH["mode"] = "fork"
    results = []
    for boundary in args.boundary:
        for method in args.methods:
            workdir = args.out / f"{method}-{boundary}"
            if workdir.exists():
                import shutil

                shutil.rmtree(workdir)
            run = run_pair(method, workdir, args.epochs, args.kill_epoch, args.kill_batch, boundary,
                           args.batches)
            res = compare_pair(run)
            results.append(res)
            print(f"[fault_resume] {method} ({boundary}): checkpoint {res['checkpoint']['equal']}/"
                  f"{res['checkpoint']['total']} bit-equal, different: {res['checkpoint']['different'][:8]}",
                  flush=True)
    text = table(results)
    print(text)
    from callbacks.atomic import atomic_write_text

    atomic_write_text(args.out / "fault_resume.md", text + "\n")
    atomic_write_text(args.out / "fault_resume.json", json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
