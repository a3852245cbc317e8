"""Reproduce the papers behind medrobust with one command per paper, on the real data.

    python benchmarks/run.py --suite xue2019 --quick          # ~20 min on 2 CPU cores
    python benchmarks/run.py --suite amat --quick --threads 1
    python benchmarks/run.py --suite joel2022                 # full settings (a GPU run)
    python benchmarks/run.py --suite all --quick --docs docs/benchmarks.md
    python benchmarks/run.py --suite joel2022 --quick --seeds 3    # 3 trainings per run

Suites (:mod:`benchmarks.paper_suites`): ``xue2019`` (clean vs SAT vs denoise, FGSM/BIM/PGD and
general noises, PneumoniaMNIST and PH2), ``amat`` (clean vs SAT at several ε vs AMAT under L2
PGD: PH2 segmentation, cephalometric landmarks, BCCD detection), ``joel2022`` (naive vs staged
adversarial training, accuracy vs ε from 1e-4 to 0.02, headline ε = 0.004).

Each run is a shipped ``configs/experiment/*-<paper>.yaml`` trained with ``train.py``'s CLI
(``fit``), then tested on the whole test split with the config's test-time attack suite
(``trainer.test`` on the best checkpoint, as the config's ``ModelCheckpoint`` chose it). The
report is built from the ``robustness.json`` records those runs wrote. ``--quick`` overrides
only sizes (networks, epochs, images, training PGD steps; L2 budgets scaled with the image) —
the overrides are listed in the report; the full settings are the configs as shipped.
``--smoke`` (tests) runs the same machinery for a couple of steps.

``--seeds N`` trains and tests every run N times (``seed_everything`` = the config's + 0 … N−1),
each seed in its own run root ``runs/seed<s>/`` with its own derived config; ``results.json``
keeps every seed's entry under the run's ``seeds``. The tables show the mean over seeds, an
uncertainty table per group gives mean ± SD over seeds and a two-level (seeds × samples)
interval, and every paper claim is decided on intervals from the runs' per-sample files
(:mod:`benchmarks.paper_evidence`): confirmed / refuted / inconclusive.

Writes ``<out>/<suite>/report.md``, ``<group>_curves.png``, ``results.json``, the derived configs
(``configs/``) and the runs' folders (``runs/``). Data: ``$MEDROBUST_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from benchmarks.paper_suites import SMOKE, SUITES, Group, Overrides, Run, Suite
from callbacks.atomic import atomic_write_text
from medrobust.config_pieces import load_config

ROOT = Path(__file__).resolve().parents[1]

_SELECTOR = re.compile(r"^(?P<key>[^\[]+)\[(?P<cls>[^:\]]+)(?::(?P<prefix>[^\]]+))?\]$")
_ADV_EVAL = "AdversarialEvaluation"


# ------------------------------------------------------------------------------ config editing
def _child(node: Any, part: str) -> Any:
    """``node[part]``; ``callbacks[Class]`` / ``callbacks[Class:prefix]`` pick a callback of a
    list by class name (and ``prefix`` init arg, default ``adv``); ``method[Class]`` is the
    method only when it is of that class. ``None`` when absent."""
    m = _SELECTOR.match(part)
    if m is None:
        return node.get(part) if isinstance(node, dict) else None
    items = node.get(m["key"]) if isinstance(node, dict) else None
    for item in [items] if isinstance(items, dict) else items or []:
        if not str(item.get("class_path", "")).endswith(m["cls"]):
            continue
        prefix = (item.get("init_args") or {}).get("prefix", "adv")
        if m["cls"] != _ADV_EVAL or prefix == (m["prefix"] or "adv"):
            return item
    return None


def set_path(cfg: dict[str, Any], path: str, value: Any) -> bool:
    """Set a dotted ``path`` of a config (see :func:`_child`) when its parent exists; returns
    whether it was set. A leaf may be new (``trainer.limit_train_batches``); a missing parent
    means the setting does not apply to this config (a clean method has no ``attack``). A
    training method's ``attack`` spec that the config leaves to the method's default is filled
    in with that default first (``method.init_args.attack.steps`` then applies to it)."""
    parts = path.split(".")
    node: Any = cfg
    parent: Any = None
    for part in parts[:-1]:
        child = _child(node, part)
        if child is None and part == "attack" and isinstance(node, dict):
            child = _default_attack(parent, node)
        parent, node = node, child
        if not isinstance(node, dict):
            return False
    node[parts[-1]] = copy.deepcopy(value)
    return True


def _default_attack(method: Any, init_args: dict[str, Any]) -> dict[str, Any] | None:
    """The default attack spec of the training method ``{class_path, init_args}`` (written into
    ``init_args``), or ``None`` when ``init_args`` is not a method's or it has no attack."""
    if not (isinstance(method, dict) and method.get("init_args") is init_args
            and str(method.get("class_path", "")).startswith("lightning_modules.methods")):
        return None
    from lightning_modules.nets.builder import import_object

    default = getattr(import_object(method["class_path"]), "default_attack", None)
    if not isinstance(default, dict):
        return None
    init_args["attack"] = copy.deepcopy(default)
    return init_args["attack"]


def _eval_callbacks(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return [cb for cb in (cfg.get("trainer", {}).get("callbacks") or [])
            if str(cb.get("class_path", "")).endswith(_ADV_EVAL)]


def _method_args(cfg: dict[str, Any]) -> dict[str, Any] | None:
    method = (cfg.get("model", {}).get("init_args") or {}).get("method") or {}
    return method.get("init_args")


def set_attack_steps(cfg: dict[str, Any], steps: int) -> dict[str, Any]:
    """Every multi-step attack of the evaluation callbacks and of the training method → ``steps``."""
    changed: dict[str, Any] = {}
    for cb in _eval_callbacks(cfg):
        args = cb.get("init_args") or {}
        for key in ("attacks", "test_attacks"):
            for a in args.get(key) or []:
                if a.get("steps", 10 if a.get("name") in ("pgd", "bim") else 1) > 1:
                    a["steps"] = steps
                    changed[f"{args.get('prefix', 'adv')}.{key}.steps"] = steps
    attack = (_method_args(cfg) or {}).get("attack")
    if isinstance(attack, dict) and "steps" in attack:
        attack["steps"] = steps
        changed["method.attack.steps"] = steps
    return changed


def scale_l2(cfg: dict[str, Any], factor: float) -> dict[str, Any]:
    """Multiply every L2 budget (evaluation ε grids of L2-only suites, SAT/denoise L2 ε, AMAT
    margins) by ``factor``; returns the new values by name."""
    changed: dict[str, Any] = {}
    if factor == 1.0:
        return changed
    for cb in _eval_callbacks(cfg):
        args = cb.get("init_args") or {}
        attacks = list(args.get("attacks") or []) + list(args.get("test_attacks") or [])
        if attacks and all(a.get("norm") == "l2" for a in attacks):
            for key in ("eps", "test_eps"):
                if args.get(key) is not None:
                    args[key] = [round(e * factor, 6) for e in args[key]]
                    changed[f"{args.get('prefix', 'adv')}.{key}"] = args[key]
    margs = _method_args(cfg) or {}
    keys = []
    if "delta" in margs and "max_margin" in margs:  # AMAT margins are L2
        keys += ["delta", "max_margin"]
    elif ((margs.get("attack") or {}).get("norm")) == "l2":  # SAT / TRADES eps, Denoise adv_eps
        keys += ["eps", "adv_eps"]
    for key in keys:
        if key in margs:
            margs[key] = round(float(margs[key]) * factor, 6)
            changed[f"method.{key}"] = margs[key]
    return changed


def derive_config(run: Run, group: Group, mode: str) -> tuple[dict[str, Any], Overrides]:
    """The shipped config of ``run`` with its per-run overrides and those of ``mode``
    (``full`` | ``quick`` | ``smoke``); returns the config and every override applied."""
    path = ROOT / "configs" / "experiment" / f"{run.config}.yaml"
    cfg = load_config(path)  # shared pieces inlined: the derived copy lives elsewhere
    applied: Overrides = {}

    def apply(overrides: Overrides) -> None:
        for key, value in overrides.items():
            if key == "attack_steps":
                applied.update(set_attack_steps(cfg, int(value)))
            elif set_path(cfg, key, value):
                applied[key] = value

    apply(run.overrides)
    if mode in ("quick", "smoke"):
        apply(group.quick)
        applied.update({f"L2 ×{group.quick_l2_scale:g}: {k}": v
                        for k, v in scale_l2(cfg, group.quick_l2_scale).items()})
    if mode == "smoke":
        apply(SMOKE)
    return cfg, applied


def run_label(run: Run, cfg: dict[str, Any]) -> str:
    """The table label; SAT variants show the ε actually used (after L2 scaling)."""
    margs = _method_args(cfg) or {}
    return run.method.format(eps=margs.get("eps", math.nan)) if "{" in run.method else run.method


# ------------------------------------------------------------------------------ one run
def _best_epoch(path: str) -> int | None:
    m = re.search(r"best-(\d+)", Path(path).name)
    return int(m.group(1)) if m else None


def _read(path: Path) -> Any:
    """A run's ``robustness*.json`` (a validated :class:`callbacks.record.RobustnessRecord`)."""
    from callbacks.record import RobustnessRecord

    return RobustnessRecord.load(path) if path.is_file() else None


def _read_json(data: dict[str, Any]) -> Any:
    """A record kept in ``results.json``, typed again."""
    from callbacks.record import RobustnessRecord

    return RobustnessRecord.coerce(data, "results.json record")


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


# ------------------------------------------------------------------------------ a suite
def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; "
            f"python {platform.python_version()}, torch {torch.__version__}")


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def rebuild_report(suite: Suite, args: argparse.Namespace) -> Path:
    """``--report-only``: report.md, curves and docs again from a suite's ``results.json``."""
    from benchmarks.paper_report import update_docs, write_report

    out = Path(args.out) / suite.name
    saved = json.loads((out / "results.json").read_text())
    report = write_report(suite, saved["runs"], saved["meta"], out)
    _append_failures(report, saved["runs"])
    if args.docs:
        update_docs(Path(args.docs), suite, saved["runs"], saved["meta"])
    print(f"[run.py] rebuilt {report} from {out / 'results.json'}", flush=True)
    return report


def _append_failures(report: Path, results: dict[str, Any]) -> None:
    failed = {k: v["error"] for k, v in results.items() if "error" in v}
    if failed:
        atomic_write_text(report, report.read_text() + "\n## Failed runs\n\n"
                          + "\n".join(f"- `{k}`: {e}" for k, e in failed.items()) + "\n")


def seed_list(base: int, n: int) -> list[int]:
    """``--seeds n``: the config's ``seed_everything`` and the ``n − 1`` following it."""
    if n < 1:
        raise SystemExit(f"--seeds must be at least 1, got {n}")
    return [base + k for k in range(n)]


def _run_one(run: Run, cfg: dict[str, Any], applied: Overrides, label: str, seed: int, out: Path, mode: str,
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


def _progress(key: str, entry: dict[str, Any], done: float, total: int, t_suite: float) -> None:
    clean = _read_json(entry["test"]).clean if entry.get("test") else entry.get("error")
    elapsed = time.perf_counter() - t_suite
    eta = elapsed / done * (total - done)
    print(f"[run.py] {key} seed {entry['seed']}: fit {entry.get('fit_s')} s, test {entry.get('test_s')} s, "
          f"clean {clean} · {done:g}/{total} runs done, {elapsed:.0f} s so far, about {eta:.0f} s left", flush=True)


def run_suite(suite: Suite, args: argparse.Namespace, command: str) -> Path:
    from benchmarks.paper_report import update_docs, write_report

    if args.report_only:
        return rebuild_report(suite, args)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    out = Path(args.out) / suite.name
    (out / "configs").mkdir(parents=True, exist_ok=True)
    runs = [r for r in suite.runs if not args.only or r.group in args.only or r.key in args.only]
    if not runs:
        raise SystemExit(f"--only {args.only}: no run of suite {suite.name} matches "
                         f"(groups: {[g.name for g in suite.groups]})")
    meta: dict[str, Any] = {"command": command, "mode": mode, "threads": args.threads, "machine": machine(),
                            "load_start": _load(), "note": args.note or ""}
    results: dict[str, Any] = {}
    seeds: set[int] = set()
    t_suite = time.perf_counter()
    for i, run in enumerate(runs, 1):
        cfg, applied = derive_config(run, suite.group(run.group), mode)
        base = int(cfg.get("seed_everything", 0))
        label = run_label(run, cfg)
        per_seed: list[dict[str, Any]] = []
        for j, seed in enumerate(seed_list(base, args.seeds)):
            seeds.add(seed)
            tag = f"{i}/{len(runs)} {run.key}" + (f" seed {seed}" if args.seeds > 1 else "")
            per_seed.append(_run_one(run, cfg, applied, label, seed, out, mode, args, tag))
            _progress(run.key, per_seed[-1], i - 1 + (j + 1) / args.seeds, len(runs), t_suite)
        results[run.key] = combine_seeds(per_seed)
    meta["n_seeds"] = args.seeds
    meta.update(wall_s=time.perf_counter() - t_suite, load_end=_load(), seeds=sorted(seeds))
    atomic_write_text(out / "results.json", json.dumps({"meta": meta, "runs": results}, indent=1))
    report = write_report(suite, results, meta, out)
    _append_failures(report, results)
    if args.docs:
        update_docs(Path(args.docs), suite, results, meta)
    print(f"[run.py] wrote {report} ({meta['wall_s']:.0f} s)", flush=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", required=True, choices=[*SUITES, "all"])
    p.add_argument("--quick", action="store_true", help="CPU-sized settings (~20 min per suite on 2 cores)")
    p.add_argument("--smoke", action="store_true", help="a few steps per run: tests of the runner")
    p.add_argument("--only", nargs="+", default=None, help="run only these groups / run keys")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--accelerator", default=None, help="override trainer.accelerator (default: the configs' auto)")
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--docs", default=None, help="also update this suite's section of e.g. docs/benchmarks.md")
    p.add_argument("--note", default=None, help="a sentence for the report (e.g. about machine load)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    p.add_argument("--seeds", type=int, default=1,
                   help="train and test each run with N seeds (seed_everything of the config + 0 … N−1); the "
                        "report gives mean, SD over seeds and an interval over seeds and samples")
    p.add_argument("--report-only", action="store_true",
                   help="no training: rebuild report.md, curves (and --docs) from <out>/<suite>/results.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if "MEDROBUST_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["MEDROBUST_DATA"] = str((ROOT.parent / "shared" / "data").resolve())
    import torch

    torch.set_num_threads(args.threads)
    command = "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    names = list(SUITES) if args.suite == "all" else [args.suite]
    return [run_suite(SUITES[n], args, command) for n in names]


if __name__ == "__main__":
    main()
