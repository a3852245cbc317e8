"""Fast adversarial training side by side: clean, PGD-10 SAT, FGSM-RS, N-FGSM (and GradAlign)
on the same data, net and seed, in one run — accuracy (or Dice) clean, under PGD-10 and under a
named suite, and the training cost per epoch relative to clean training.

    python benchmarks/fast_at.py --dataset synthetic --threads 1
    MEDROBUST_DATA=../shared/data python benchmarks/fast_at.py --dataset pneumoniamnist --threads 1
    MEDROBUST_DATA=../shared/data python benchmarks/fast_at.py --dataset ph2 --threads 1 --suite quick
    python benchmarks/fast_at.py --dataset synthetic --methods clean sat nfgsm gradalign --epochs 10

Training is :func:`benchmarks.method_cost.train_epoch` (exactly ``TaskModule.training_step``:
method loss, backward, optimizer step, epoch hooks) on in-memory batches; the methods take turns
epoch by epoch so that load changes hit all alike; the cost is the median CPU time of the
epochs after the first (with ``--threads 1`` the process's CPU time is the work done, without
the waiting for cores that other processes hold). Evaluation is the project's own
:class:`callbacks.AdversarialEvaluation` (one ``validate`` with two instances: the named suite,
whose per-sample worst case is the robust number, and PGD-10 alone) on the first
``--eval-subset`` samples of the validation split (training draws only from the training
split, never from validation or test). Accuracies carry a 95 % Agresti–Coull interval over the
n evaluated samples; Dice the BCa bootstrap interval of the mean per-image Dice — both from
the evaluation records (``RobustnessRecord.interval``, computed from the per-sample values).

Target (issue 27): N-FGSM within 2 points of PGD-10 SAT (or inside its interval) at ≤ 0.3× its
training cost. Written: ``--out`` JSON and a Markdown table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from benchmarks.method_cost import train_epoch
from callbacks import AdversarialEvaluation
from datamodules.base import collate_batch
from lightning_modules import (
    FGSMRS,
    NFGSM,
    SAT,
    ClassificationModule,
    Clean,
    GradAlign,
    SegmentationModule,
)

METHODS = {
    "clean": lambda eps: Clean(),
    "sat": lambda eps: SAT(eps=eps, attack={"name": "pgd", "steps": 10}),
    "fgsm_rs": lambda eps: FGSMRS(eps=eps),
    "nfgsm": lambda eps: NFGSM(eps=eps),
    "gradalign": lambda eps: GradAlign(eps=eps),
}
LABELS = {"clean": "clean", "sat": "SAT PGD-10", "fgsm_rs": "FGSM-RS", "nfgsm": "N-FGSM",
          "gradalign": "GradAlign"}


def load_data(args: argparse.Namespace) -> tuple[Any, list, list]:
    """``(data_info, train items, eval items)`` held in memory."""
    root = os.environ.get("MEDROBUST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    if args.dataset == "synthetic":
        from datamodules.synthetic import SyntheticDataModule

        dm = SyntheticDataModule(task="classification", num_train=args.num_train,
                                 num_val=args.eval_subset, num_test=8,
                                 image_size=(args.image_size, args.image_size), seed=0)
    elif args.dataset == "pneumoniamnist":
        from datamodules.medmnist import MedMNISTDataModule

        dm = MedMNISTDataModule(root=str(Path(root) / "medmnist"), flag="pneumoniamnist")
    else:
        from datamodules.ph2 import PH2DataModule

        dm = PH2DataModule(root=str(Path(root) / "ph2"), task="segmentation",
                           image_size=(args.image_size, args.image_size))
    dm.setup("fit")
    # train on the training split; score on the validation split (the test split is untouched)
    train, val = dm.dataset("train"), dm.dataset("val")
    gen = torch.Generator().manual_seed(0)
    tr_idx = torch.randperm(len(train), generator=gen)[: args.num_train].tolist()
    ev_idx = torch.randperm(len(val), generator=gen)[: args.eval_subset].tolist()
    return dm.info, [train[i] for i in tr_idx], [val[i] for i in ev_idx]


def evaluate(model: Any, items: list, eps: float, suite: str, batch_size: int) -> dict[str, Any]:
    """Clean, PGD-10 and suite-ensemble values of the task's main metric (and the suite's
    members) from :class:`callbacks.AdversarialEvaluation`."""
    suite_cb = AdversarialEvaluation(attacks=suite, eps=[eps], subset=None, plot=False,
                                     write_json=False, report=False, batch_size=batch_size,
                                     prefix="suite")
    pgd_cb = AdversarialEvaluation(attacks=[{"name": "pgd", "norm": "linf", "steps": 10,
                                             "label": "pgd-10"}],
                                   eps=[eps], subset=None, plot=False, write_json=False,
                                   report=False, batch_size=batch_size, prefix="pgd",
                                   ensemble=False)
    loader = DataLoader(items, batch_size=batch_size, collate_fn=collate_batch)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[suite_cb, pgd_cb])
    t0 = time.perf_counter()
    trainer.validate(model, dataloaders=loader, verbose=False)
    seconds = time.perf_counter() - t0
    metric = model.main_metric
    s, p = suite_cb.last_record["val"], pgd_cb.last_record["val"]
    members = {label: s.value(metric, label, eps) for label in s.attack_labels()}
    # 95 % intervals from the records (validate computes them from the per-sample values:
    # Agresti–Coull for accuracy, BCa of the mean per-image value for Dice)
    cis = {"clean": s.interval("clean"), "pgd10": p.interval("attack", eps, "pgd-10"),
           "suite": s.interval("worst", eps)}
    intervals = {k: (ci.low, ci.high) for k, ci in cis.items() if ci is not None}
    per_sample_mean = {k: ci.estimate for k, ci in cis.items() if ci is not None}
    return {"metric": metric, "clean": s.value(metric), "pgd10": p.value(metric, "pgd-10", eps),
            "suite": s.value(metric, "ensemble", eps), "members": members,
            "intervals": intervals, "interval_estimates": per_sample_mean,
            "eval_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["synthetic", "pneumoniamnist", "ph2"], default="synthetic")
    p.add_argument("--methods", nargs="+", choices=list(METHODS),
                   default=["clean", "sat", "fgsm_rs", "nfgsm"])
    p.add_argument("--eps", type=float, default=None,
                   help="L∞ budget (default 0.02 classification, 0.008 PH2 segmentation)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--num-train", type=int, default=1024)
    p.add_argument("--eval-subset", type=int, default=200)
    p.add_argument("--image-size", type=int, default=None, help="synthetic 28, PH2 64")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--features", type=int, nargs="+", default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--suite", default="standard", help="named suite of attacks.suites")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = args.dataset == "ph2"
    args.eps = args.eps if args.eps is not None else (0.008 if seg else 0.02)
    args.image_size = args.image_size or (64 if seg else 28)
    args.features = args.features or ([8, 16, 32, 64] if seg else [16, 32, 64])
    t_start = time.perf_counter()
    info, train_items, eval_items = load_data(args)
    module = SegmentationModule if seg else ClassificationModule
    net = {"class_path": "lightning_modules.nets.SmallUNet" if seg else "lightning_modules.nets.SmallCNN",
           "init_args": {"features": list(args.features)}}
    runs: dict[str, Any] = {}
    for name in args.methods:
        L.seed_everything(0, verbose=False)
        model = module(net=net, data_info=info, method=METHODS[name](args.eps))
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
        runs[name] = {"model": model, "opt": opt, "gen": torch.Generator().manual_seed(0),
                      "cpu": [], "wall": []}
    for epoch in range(args.epochs):
        for r in runs.values():
            order = torch.randperm(len(train_items), generator=r["gen"]).tolist()
            batches = [collate_batch([train_items[i] for i in order[j:j + args.batch_size]])
                       for j in range(0, len(order), args.batch_size)]
            r["model"].trainer = None
            wall, cpu = train_epoch(r["model"], r["opt"], batches)
            r["wall"].append(wall)
            r["cpu"].append(cpu)
        print(f"epoch {epoch}: " + ", ".join(f"{n} {r['cpu'][-1]:.1f}s" for n, r in runs.items()),
              flush=True)
    results: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                            for k, v in vars(args).items()},
                               "splits": {"train": "train", "evaluated": "val"},
                               "loadavg_start": open("/proc/loadavg").read().split()[:3],
                               "methods": {}}
    clean_cost = statistics.median(runs["clean"]["cpu"][1:] or runs["clean"]["cpu"]) if "clean" in runs else None
    for name, r in runs.items():
        cost = statistics.median(r["cpu"][1:] or r["cpu"])
        ev = evaluate(r["model"], eval_items, args.eps, args.suite, args.batch_size)
        n = len(eval_items)
        entry = {"cpu_s_per_epoch": round(cost, 2), "cpu_epochs": [round(c, 2) for c in r["cpu"]],
                 "cost_vs_clean": round(cost / clean_cost, 2) if clean_cost else None, "n_eval": n,
                 **ev}
        results["methods"][name] = entry
        print(f"{name}: {json.dumps(entry)}", flush=True)
    results["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    s = results["settings"]
    methods = results["methods"]
    metric = next(iter(methods.values()))["metric"]
    lines = [f"{s['dataset']}, ε = {s['eps']:g} (L∞), {s['epochs']} epochs, {s['num_train']} training "
             f"samples, n = {next(iter(methods.values()))['n_eval']} evaluated, suite `{s['suite']}`",
             "", f"| method | clean {metric} | PGD-10 | `{s['suite']}` suite (worst case) | "
             "CPU s/epoch | cost / clean | cost / SAT |", "| --- | --- | --- | --- | --- | --- | --- |"]
    sat = methods.get("sat", {}).get("cpu_s_per_epoch")
    for name, m in methods.items():
        def cell(key: str, m: dict = m) -> str:
            v = m[key]
            if key in m.get("intervals", {}):
                lo, hi = m["intervals"][key]
                return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            return f"{v:.3f}"
        rel_sat = f"{m['cpu_s_per_epoch'] / sat:.2f}" if sat else "–"
        lines.append(f"| {LABELS[name]} | {cell('clean')} | {cell('pgd10')} | {cell('suite')} | "
                     f"{m['cpu_s_per_epoch']:.2f} | {m['cost_vs_clean']} | {rel_sat} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
