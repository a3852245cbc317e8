"""What changes a robustness number besides the model: repeats, thread counts, and the
statistics' own cost (issue 23).

For each task (classification, segmentation on the synthetic sets) this script

1. trains a small model with a plain loop under ``--threads-a`` torch threads, and again under
   ``--threads-b`` (same seed, same data order): the thread count changes the float reduction
   order, so the two trainings drift apart;
2. evaluates (clean, FGSM, PGD-10 and their per-sample worst case at two ε, the per-sample file
   kept) the first model twice under ``--threads-a`` (a repeat), once under ``--threads-b``
   (same weights, another reduction order), and the second model under ``--threads-b``;
3. prints, per comparison, whether the per-sample files are byte-identical, the largest
   per-sample difference, how many samples changed, and the largest difference of a reported
   mean; then the time of the record's confidence intervals
   (:func:`callbacks.record_intervals.record_intervals`) relative to the evaluation they
   summarise.

    python benchmarks/determinism.py                      # both tasks, 1 vs 2 threads
    python benchmarks/determinism.py --tasks segmentation --n 256
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from attacks import parse_attack_specs
from benchmarks.common import fit_plain
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.per_sample import SampleTable
from callbacks.record_intervals import record_intervals
from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules.tasks import model_task

#: the synthetic data's arguments per task (classification: 4 classes; others: their defaults)
DATA = {"classification": {"num_classes": 4}}
EPS = [0.01, 0.02]
SPECS = [{"name": "fgsm"}, {"name": "pgd", "steps": 10}]


def train(task: str, threads: int, steps: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A small model trained under ``threads`` threads; returns (module, the evaluation batch)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dm = SyntheticDataModule(task=task, num_train=512, num_val=256, num_test=8, image_size=(32, 32),
                             seed=seed, batch_size=32, **DATA.get(task, {}))
    dm.setup("fit")
    cls = model_task(task).module  # its default net (SmallCNN / SmallUNet), smaller
    module = cls(net={"class_path": cls.default_net, "init_args": {"features": [8, 16, 32]}}, data_info=dm.info, lr=3e-3)
    train_set = dm.dataset("train")
    g = torch.Generator().manual_seed(seed)
    batches = (collate_batch([train_set[i] for i in torch.randint(0, len(train_set), (32,), generator=g).tolist()])
               for _ in range(steps))
    fit_plain(module, batches, torch.optim.Adam(module.parameters(), lr=3e-3))
    val = dm.dataset("val")
    return module, collate_batch([val[i] for i in range(len(val))])


def evaluate(module: Any, batch: dict[str, Any], threads: int, chunk: int = 64) -> tuple[SampleTable, Any, float]:
    torch.set_num_threads(threads)
    ev = RobustnessEvaluator(module, parse_attack_specs(SPECS, "determinism"), EPS, keep_per_sample=True)
    n = batch["image"].shape[0]
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, n, chunk)):
        part = {k: v[start:start + chunk] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        ev.run_batch(b, part)
    out = ev.compute()
    return out.per_sample, out, time.perf_counter() - t0


def compare(name: str, a: SampleTable, b: SampleTable) -> None:
    same_bytes = a.to_csv() == b.to_csv()
    diffs = {k: np.abs(a.columns[k] - b.columns[k]) for k in a.columns}
    worst_col = max(diffs, key=lambda k: np.nanmax(diffs[k]))
    changed = int(np.sum(np.any(np.stack([d > 0 for d in diffs.values()]), axis=0)))
    mean_diff = max(abs(float(np.nanmean(a.columns[k]) - np.nanmean(b.columns[k]))) for k in a.columns)
    print(f"  {name:<44} byte-identical {str(same_bytes):<5}  max per-sample diff "
          f"{np.nanmax(diffs[worst_col]):.3g} ({worst_col})  samples changed {changed}/{len(a.sample_ids)}  "
          f"max diff of a mean {mean_diff:.4f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["classification", "segmentation"])
    p.add_argument("--threads-a", type=int, default=1)
    p.add_argument("--threads-b", type=int, default=2)
    p.add_argument("--steps", type=int, default=200, help="training steps")
    args = p.parse_args(argv)
    ta, tb = args.threads_a, args.threads_b
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}")
    for task in args.tasks:
        print(f"[{task}] 256 val images, {SPECS} at ε {EPS}, training {args.steps} steps")
        model_a, batch = train(task, ta, args.steps)
        model_b, _ = train(task, tb, args.steps)
        same_weights = all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
        print(f"  weights trained with {ta} vs {tb} threads identical: {same_weights}")
        t1, out1, sec1 = evaluate(model_a, batch, ta)
        t2, _, _ = evaluate(model_a, batch, ta)
        t3, _, _ = evaluate(model_a, batch, tb)
        t4, _, _ = evaluate(model_b, batch, tb)
        compare(f"repeat ({ta} thread(s), same model)", t1, t2)
        compare(f"evaluation under {tb} vs {ta} threads, same model", t1, t3)
        compare(f"trained and evaluated under {tb} vs {ta} threads", t1, t4)
        metric = next(c.split("/")[-1] for c in t1.columns)
        attacks = [(s["name"], e) for e in EPS for s in SPECS]
        lower = not model_a.metric_higher_is_better()
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            record_intervals(t1, metric, EPS, attacks, lower)
        stats_s = (time.perf_counter() - t0) / reps
        print(f"  intervals of {len(t1.columns)} columns: {1000 * stats_s:.1f} ms = "
              f"{100 * stats_s / sec1:.2f} % of the evaluation ({sec1:.2f} s)")


if __name__ == "__main__":
    main()
