"""What a suite costs per sample, from the record's compute accounting: time and forward /
backward sample passes of any named suite (``standard``, ``quick``, or one added later such as
``aa_budget``) and of PGD-10, on a shipped SAT experiment, beside AutoAttack's published budget.

Trains ``--config`` (default ``configs/experiment/classification_synthetic_sat.yaml``) for
``--epochs`` epochs with ``train.py fit`` (its own config; only ``max_epochs``, the output
folder, the CPU and — for a real-data config — ``MEDROBUST_DATA`` differ), loads ``last.ckpt``
and evaluates each suite on the first ``--subset`` validation samples with
:class:`callbacks.evaluation_loop.RobustnessEvaluator` (the loop of ``AdversarialEvaluation``;
a named classification suite is sequential, as there) at the config's ε grid.

    python benchmarks/suite_cost.py --epochs 2 --subset 64 --suites pgd10 standard
    python benchmarks/suite_cost.py --config configs/experiment/classification_pneumoniamnist_sat.yaml \\
        --epochs 1 --suites pgd10 standard aa_budget

AutoAttack's budget (Croce & Hein 2020, version "standard", L∞), per sample that no member
breaks (a violated sample leaves the later members, so this is the most a sample can cost):
APGD-CE ``N`` iterations, APGD-T ``T × N``, FAB-T ``T × N``, Square ``Q`` queries, each APGD /
FAB iteration one forward and one input-gradient backward, each Square query one forward:

    forward  = N + T·N + T·N + Q        backward = N + T·N + T·N
    N = 100, T = 9, Q = 5000:  forward = 6900, backward = 1900

(initial and scoring forwards, a few per attack, are left out; FAB-T's per-iteration forwards
beyond its gradient are left out, so its share is a lower bound). ``--aa-n/--aa-t/--aa-q``
change the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, trained_checkpoint
from lightning_modules.nets.builder import import_object


def autoattack_budget(n: int = 100, t: int = 9, q: int = 5000) -> dict[str, int]:
    """Forward and backward sample passes of AutoAttack's standard budget for a sample that no
    member breaks (see the module docstring for the formula)."""
    grad_iters = n + t * n + t * n
    return {"forward": grad_iters + q, "backward": grad_iters}


def specs_for(name: str, task: str, num_classes: int | None) -> tuple[list[Any], bool]:
    """``(specs, sequential)`` of a suite name or ``pgd<k>`` (PGD-k L∞ with a random start)."""
    from attacks import parse_attack_specs
    from attacks.suites import SUITES
    from lightning_modules.tasks import model_task

    if name.startswith("pgd") and name[3:].isdigit():
        return parse_attack_specs([{"name": "pgd", "norm": "linf", "steps": int(name[3:])}], name), False
    if name not in SUITES:
        raise SystemExit(f"--suites: unknown suite {name!r}; known: pgd<k>, {sorted(SUITES)}")
    kind = model_task(task)
    return parse_attack_specs(name, name, kind.suite, num_classes), kind.sequential_suite


def measure(module: Any, batches: list[dict[str, Any]], eps: list[float], name: str) -> dict[str, Any]:
    from callbacks.evaluation_loop import RobustnessEvaluator

    task = module.task
    specs, sequential = specs_for(name, task, getattr(module, "num_classes", None))
    torch.manual_seed(0)
    ev = RobustnessEvaluator(module, specs, eps, sequential=sequential, check_randomness=False)
    t0, w0 = time.process_time(), time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        for i, b in enumerate(batches):
            ev.run_batch(i, b)
    out = ev.compute()
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    acc = out.compute.to_dict()
    main = module.main_metric
    return {"suite": name, "sequential": sequential, "members": [s.label for s in specs],
            "samples": acc["samples"], "cpu_s": cpu, "wall_s": wall, "ms_per_sample": 1000 * cpu / acc["samples"],
            "forward_per_sample": acc["total"]["forward_per_sample"],
            "backward_per_sample": acc["total"]["backward_per_sample"],
            "clean": out.clean[main], "robust": {e: out.ensemble[e][main] for e in eps} if out.ensemble else
            {e: min(m[main] for (_, ee), m in out.attacks.items() if ee == e) for e in eps},
            "saved_by_skipping": acc.get("saved_by_skipping"), "compute": acc}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "experiment" / "classification_synthetic_sat.yaml")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eps", type=float, nargs="*", default=None, help="default: the config's evaluation grid")
    p.add_argument("--suites", nargs="+", default=["pgd10", "standard"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--aa-n", type=int, default=100)
    p.add_argument("--aa-t", type=int, default=9)
    p.add_argument("--aa-q", type=int, default=5000)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "suite_cost")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from datamodules.base import collate_batch
    from medrobust.config_pieces import load_config

    run_dir = args.out / args.config.stem
    ckpt = trained_checkpoint(args.config, args.epochs, run_dir)
    cfg = load_config(args.config)
    data = cfg["data"]
    dm = import_object(data["class_path"])(**data["init_args"])
    dm.setup("validate")
    module = import_object(cfg["model"]["class_path"]).load_from_checkpoint(str(ckpt), map_location="cpu")
    module.eval()
    eps = args.eps or next(cb["init_args"]["eps"] for cb in cfg["trainer"]["callbacks"]
                           if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("AdversarialEvaluation"))
    ds = dm.dataset("val")
    n = min(args.subset, len(ds))
    batches = [collate_batch([ds[i] for i in range(s, min(s + args.batch, n))]) for s in range(0, n, args.batch)]
    rows = [measure(module, batches, list(eps), name) for name in args.suites]
    aa = autoattack_budget(args.aa_n, args.aa_t, args.aa_q)
    ref = next((r for r in rows if r["suite"].startswith("pgd")), rows[0])
    lines = [f"{args.config.name}, {args.epochs} epoch(s), first {n} validation samples, ε {list(eps)}, "
             f"{args.threads} thread(s), load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", "",
             "| suite | members | sequential | clean | robust per ε | ms / sample (CPU) | forward / sample | "
             "backward / sample | × time of " + ref["suite"] + " |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        robust = ", ".join(f"{e:g}: {v:.3f}" for e, v in r["robust"].items())
        lines.append(f"| {r['suite']} | {len(r['members'])} | {r['sequential']} | {r['clean']:.3f} | {robust} | "
                     f"{r['ms_per_sample']:.1f} | {r['forward_per_sample']:.0f} | {r['backward_per_sample']:.0f} | "
                     f"{r['cpu_s'] / max(ref['cpu_s'], 1e-9):.1f} |")
    lines.append(f"| AutoAttack budget (N={args.aa_n}, T={args.aa_t}, Q={args.aa_q}), per unviolated sample | 4 | "
                 f"True | | | | {aa['forward']} | {aa['backward']} | |")
    lines.append("")
    lines.append("Passes are per evaluated sample, over the whole ε grid (a suite runs once per ε); the "
                 "AutoAttack row is per ε and per sample no member breaks (its most).")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    summary = {"config": str(args.config), "epochs": args.epochs, "eps": list(eps), "rows": rows, "autoattack": aa}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
