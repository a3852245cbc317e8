"""One run of a paper suite: ``train.py fit`` of its derived config, then ``test`` of the best
checkpoint, per seed (:func:`run_one`), and the ``results.json`` entry of its seeds
(:func:`combine_seeds`)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT
from benchmarks.paper_spec import Overrides, Run


# ------------------------------------------------------------------------------ one run
def _best_epoch(path: str) -> int | None:
    m = re.search(r"best-(\d+)", Path(path).name)
    return int(m.group(1)) if m else None


def _read(path: Path) -> Any:
    """A run's ``robustness*.json`` (a validated :class:`callbacks.record.RobustnessRecord`)."""
    from callbacks.record import RobustnessRecord

    return RobustnessRecord.load(path) if path.is_file() else None


def _as_json(record: Any) -> dict[str, Any] | None:
    """A record as the JSON object that ``results.json`` keeps."""
    return None if record is None else json.loads(record.to_json())


def repo_path(path: str | Path) -> str:
    """How ``results.json`` names a file: relative to the repository root when it lies inside it
    (the results move with the checkout), absolute otherwise. A relative path to an ``--out``
    outside the checkout (``../../models/…``) would resolve only from a checkout at the same
    depth: ``--report-only`` from another checkout would lose the per-sample files and decide
    every verdict as inconclusive. Readers join it to their root (``ROOT / p``), which keeps an
    absolute path as it is."""
    p = Path(path).resolve()
    return os.path.relpath(p, ROOT) if p.is_relative_to(ROOT) else str(p)


def execute(cfg_path: Path, root: Path, accelerator: str | None, label: str = "") -> dict[str, Any]:
    """``train.py fit`` with ``cfg_path`` under ``root``, then ``test`` of the best checkpoint;
    returns timings and the records of the run folder. Progress: one line per epoch
    (``callbacks.progress.EpochLine``) and a bar over the robustness evaluations on a terminal."""
    from medrobust.cli import load_train_module  # train.py is not an installed module

    cli_main = load_train_module().cli_main

    epoch_line = json.dumps({"class_path": "callbacks.progress.EpochLine",
                             "init_args": {"prefix": f"[run.py] {label}".rstrip()}})
    args = ["fit", "--config", str(cfg_path), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            f"--trainer.callbacks+={epoch_line}"]
    if accelerator:
        args += ["--trainer.accelerator", accelerator]
    t0 = time.perf_counter()
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both carry flags
    try:
        cli = cli_main(args)
    finally:
        sys.argv = saved_argv
    fit_s = time.perf_counter() - t0
    trainer = cli.trainer
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    t0 = time.perf_counter()
    trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or "last", verbose=False)
    test_s = time.perf_counter() - t0
    log_dir = Path(trainer.log_dir)
    history = log_dir / "robustness_history.jsonl"
    val_eval_s = 0.0
    if history.is_file():
        from callbacks.record import load_history

        for rec in load_history(history):
            if rec.split == "val" and rec.suite == "per_epoch":
                val_eval_s += float(rec.eval_seconds or 0.0)
    epochs = int(trainer.current_epoch)
    test = _read(log_dir / "robustness.json")
    if test is None or test.split != "test":
        raise RuntimeError(f"{log_dir}: no test record in robustness.json")
    return {
        "log_dir": repo_path(log_dir), "ckpt": repo_path(best) if best else "last",
        "best_epoch": _best_epoch(best) if best else None, "epochs": epochs,
        "fit_s": round(fit_s, 1), "test_s": round(test_s, 1), "val_eval_s": round(val_eval_s, 1),
        "train_s_per_epoch": round((fit_s - val_eval_s) / max(epochs, 1), 2),
        "params": sum(p.numel() for p in cli.model.parameters()),
        "test": _as_json(test), "noise": _as_json(_read(log_dir / "robustness_noise.json")),
    }


def seed_list(base: int, n: int) -> list[int]:
    """``--seeds n``: the config's ``seed_everything`` and the ``n − 1`` following it."""
    if n < 1:
        raise SystemExit(f"--seeds must be at least 1, got {n}")
    return [base + k for k in range(n)]


def run_one(run: Run, cfg: dict[str, Any], applied: Overrides, label: str, seed: int, out: Path, mode: str,
             args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Train and test one seed of ``run``: its derived config (``seed_everything`` = ``seed``)
    and run folder. With one seed the layout is as before (``runs/``, ``configs/<key>.yaml``);
    with several, each seed has its own root ``runs/seed<s>/`` and config
    ``configs/seed<s>/<key>.yaml``. The run folder keeps the run's own name (the config's stem)
    in every seed's root, so a glob such as AMAT's ``{default_root_dir}/<task>_clean/version_*``
    finds that seed's clean model (a ``_seed<s>`` suffix on the name made it miss, and AMAT fell
    back to its running threshold)."""
    several = args.seeds > 1
    cfg = copy.deepcopy(cfg)
    if several or "seed_everything" in cfg:
        cfg["seed_everything"] = seed
    name = run.key.replace("/", "_")
    cfg_path = out / "configs" / (f"seed{seed}" if several else "") / f"{name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(
        f"# derived by benchmarks/run.py ({mode}) from configs/experiment/{run.config}.yaml\n"
        f"# overrides: {json.dumps(applied)}" + (f"; seed_everything {seed}" if several else "") + "\n"
        + yaml.safe_dump(cfg, sort_keys=False))
    print(f"[run.py] {tag} ({label}) …", flush=True)
    entry: dict[str, Any] = {"label": label, "config": run.config, "overrides": applied,
                             "seed": seed, "derived_config": repo_path(cfg_path)}
    root = out / "runs" / f"seed{seed}" if several else out / "runs"
    try:
        entry.update(execute(cfg_path, root, args.accelerator, tag))
    except Exception as err:  # a failed run is reported, the suite goes on
        if args.fail_fast:
            raise
        traceback.print_exc()
        entry["error"] = f"{type(err).__name__}: {err}"
    return entry


def combine_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``results.json`` entry of one run: its single seed's entry as before, or (several
    seeds) the first successful seed's fields plus ``seeds`` (every successful seed's entry, each
    with its own run folder and records) and ``failed_seeds``; ``error`` names failed seeds."""
    if len(per_seed) == 1:
        return per_seed[0]
    ok = [e for e in per_seed if "error" not in e]
    failed = [e for e in per_seed if "error" in e]
    entry = copy.deepcopy(ok[0] if ok else per_seed[0])
    entry["seeds"] = ok
    entry["seed"] = [e["seed"] for e in per_seed]
    if failed:
        entry["failed_seeds"] = failed
        entry["error"] = "; ".join(f"seed {e['seed']}: {e['error']}" for e in failed)
    return entry
