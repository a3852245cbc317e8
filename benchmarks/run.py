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
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, typed_record
from benchmarks.config_edit import derive_config, run_label
from benchmarks.paper_run import combine_seeds, run_one, seed_list
from benchmarks.paper_spec import Suite
from benchmarks.paper_suites import SUITES
from callbacks.atomic import atomic_write_text


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


def _progress(key: str, entry: dict[str, Any], done: float, total: int, t_suite: float) -> None:
    clean = typed_record(entry["test"]).clean if entry.get("test") else entry.get("error")
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
            per_seed.append(run_one(run, cfg, applied, label, seed, out, mode, args, tag))
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
