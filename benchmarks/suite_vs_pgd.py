"""How much PGD-10 overestimates robustness: PGD-10 against the task's ``standard`` suite
(attacks/suites.py), side by side, on the same subset, with the suite's cost.

Trains the shipped synthetic experiments (clean and SAT, classification and segmentation) for
a few epochs with ``train.py fit`` (their own configs, only ``max_epochs`` / the output folder
/ the CPU overridden), loads ``last.ckpt``, and evaluates both on the first ``--subset``
validation samples with :class:`callbacks.evaluation_loop.RobustnessEvaluator` (the same loop
as ``AdversarialEvaluation``), at the configs' own ε grid.

    python benchmarks/suite_vs_pgd.py --epochs 8 --seg-epochs 3 --subset 32 --out results/suite_vs_pgd

Prints a markdown table (also written to ``<out>/table.md``): clean, PGD-10 and suite
robust metric per ε, the gap, and seconds of each evaluation (suite / PGD-10 cost ratio).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from attacks import parse_attack_specs
from benchmarks.common import ROOT, trained_checkpoint
from callbacks.evaluation_loop import RobustnessEvaluator
from datamodules.base import collate_batch
from lightning_modules.nets.builder import import_object
from lightning_modules.tasks import model_task, suite_specs
from medrobust.config_pieces import load_config

#: (task, method, the option giving its training epochs)
RUNS = [("classification", "clean", "epochs"), ("classification", "sat", "epochs"),
        ("segmentation", "clean", "seg_epochs"), ("segmentation", "sat", "seg_epochs")]


def train(task: str, method: str, epochs: int, out: Path) -> tuple[Path, dict[str, Any]]:
    cfg_path = ROOT / "configs" / "experiment" / f"{task}_synthetic_{method}.yaml"
    return trained_checkpoint(cfg_path, epochs, out / f"{task}_{method}"), load_config(cfg_path)


def evaluate(task: str, method: str, epochs: int, args: argparse.Namespace) -> dict[str, Any]:
    ckpt, cfg = train(task, method, epochs, args.out)
    metric = model_task(task).module.main_metric
    data = cfg["data"]
    dm = import_object(data["class_path"])(**data["init_args"])
    dm.setup("validate")
    module = import_object(cfg["model"]["class_path"]).load_from_checkpoint(str(ckpt), map_location="cpu")
    module.eval()
    eps = next(cb["init_args"]["eps"] for cb in cfg["trainer"]["callbacks"]
               if cb["class_path"].endswith("AdversarialEvaluation"))
    ds = dm.dataset("val")
    n = min(args.subset, len(ds))
    batches = [collate_batch([ds[i] for i in range(s, min(s + args.batch, n))]) for s in range(0, n, args.batch)]
    k = getattr(module, "num_classes", None)
    rows: dict[str, Any] = {"task": task, "method": method, "metric": metric, "eps": eps, "n": n}
    for name, specs, seq in (
        ("pgd10", parse_attack_specs([{"name": "pgd", "steps": 10}], "pgd"), False),
        ("standard", suite_specs("standard", "standard", task, k), model_task(task).sequential_suite),
    ):
        torch.manual_seed(0)
        ev = RobustnessEvaluator(module, specs, eps, sequential=seq)
        t0 = time.process_time()
        with torch.inference_mode(False), torch.enable_grad():
            for i, b in enumerate(batches):
                ev.run_batch(i, b)
        out = ev.compute()
        rows[name] = {"seconds": time.process_time() - t0, "clean": out.clean[metric],
                      "curve": {e: out.ensemble[e][metric] for e in eps},
                      "members": [s.label for s in specs]}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seg-epochs", type=int, default=3, help="training epochs of segmentation")
    p.add_argument("--subset", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "suite_vs_pgd")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| task | method | metric | clean | ε | PGD-10 | standard | PGD-10 − standard | "
             "PGD-10 s | standard s | cost ratio |", "|" + "---|" * 11]
    for task, method, epochs in RUNS:
        r = evaluate(task, method, getattr(args, epochs), args)
        pg, st = r["pgd10"], r["standard"]
        for e in r["eps"]:
            lines.append(
                f"| {task} | {method} | {r['metric']} | {pg['clean']:.3f} | {e:g} | {pg['curve'][e]:.3f} | "
                f"{st['curve'][e]:.3f} | {pg['curve'][e] - st['curve'][e]:+.3f} | {pg['seconds']:.1f} | "
                f"{st['seconds']:.1f} | {st['seconds'] / max(pg['seconds'], 1e-9):.1f} |")
        print("\n".join(lines[-len(r["eps"]):]), flush=True)
    table = "\n".join(lines)
    note = (f"\n\n{args.epochs} (classification) / {args.seg_epochs} (segmentation) training epochs, first {args.subset} validation samples, "
            f"{args.threads} thread(s), CPU seconds (process time) of the whole evaluation "
            "(clean + attacks + ensemble). standard members: see attacks/suites.py.\n")
    (args.out / "table.md").write_text(table + note)
    print(table + note)


if __name__ == "__main__":
    main()
