"""Time per training epoch of clean, SAT-k and AMAT-k training on the same data and net.

    python benchmarks/method_cost.py                 # k = 10, synthetic 32x32, 512 samples
    python benchmarks/method_cost.py --steps 20 --epochs 3 --out results/method_cost.json
    python benchmarks/method_cost.py --task segmentation --steps 3 --threads 1

Each method trains the same small CNN (same seed, same in-memory data, same batch order) for
``--epochs`` epochs, exactly as ``TaskModule.training_step`` does (method loss, backward,
optimizer step, the method's epoch hooks); the methods take turns epoch by epoch so that a
change in machine load affects all of them alike. The first epoch is a warm-up and is excluded;
the reported time is the median of the others. Data are generated once before timing.
On a shared CPU use ``--threads 1``: oversubscribed OpenMP threads make timings erratic; with
one thread on the CPU the clock is the process's CPU time (the work done, without the waiting
for cores that other processes hold), otherwise wall time; both are in ``--out``.
Printed: seconds per epoch per method and the ratios AMAT/SAT (the AMAT paper reports AMAT ≈
SAT; target ≤ 1.05 against the β = 0.5 SAT that the amat suite compares with) and SAT/clean. SAT is timed twice: adversarial-only batches (Madry et al.,
``beta=1``) and the ``0.5·clean + 0.5·adv`` mix AMAT uses (``beta=0.5``), so the ratio isolates
AMAT's own overhead (per-sample budgets, early stopping, margin bookkeeping) from the cost of
its extra clean term. AMAT is timed as shipped (the reference: all PGD steps, no early stop)
and with ``early_stop=True`` (the earlier variant). ``--task segmentation``: a small U-Net on
synthetic segmentation (AMAT with a fixed Dice threshold, which costs what a computed one does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from datamodules.base import collate_batch
from datamodules.synthetic import SyntheticDataModule
from lightning_modules import AMAT, SAT, Clean, TaskModule
from lightning_modules.tasks import model_task


def train_epoch(model: TaskModule, optimizer: torch.optim.Optimizer,
                batches: list[dict]) -> tuple[float, float]:
    """One training epoch exactly as ``TaskModule.training_step`` runs it (method loss,
    backward, step, the method's epoch hooks); returns its ``(wall, cpu)`` time in seconds.

    The CPU time of this process is what the method costs when other processes share the
    cores (wall time then also counts the waiting); with ``--threads 1`` it is the work done."""
    device = next(model.parameters()).device
    model.train()
    model.method.on_train_epoch_start(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.method.training_loss(model, batch)
        loss.backward()
        optimizer.step()
    model.method.on_train_epoch_end(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="PGD steps k of SAT and AMAT")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="epochs per method (first excluded)")
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    p.add_argument("--accelerator", default="cpu", help="cpu | gpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dm = SyntheticDataModule(task=args.task, num_train=args.num_train, num_val=8,
                             num_test=8, image_size=(args.image_size, args.image_size))
    items = [dm.dataset("train")[i] for i in range(args.num_train)]  # generated once
    module = model_task(args.task).module
    net = {"class_path": module.default_net, "init_args": {"features": list(args.features)}}  # SmallCNN / SmallUNet
    # a task whose violation is a statistic crossing a threshold (Dice below it): a fixed one
    amat_extra = {"threshold": 0.5} if module.violation_direction is not None else {}
    k = args.steps
    methods = {
        "clean": lambda: Clean(),
        f"sat-{k} (adv only)": lambda: SAT(eps=0.02, attack={"steps": k}, beta=1.0),
        f"sat-{k} (0.5 clean + 0.5 adv)": lambda: SAT(eps=0.02, attack={"steps": k}, beta=0.5),
        f"amat-{k}": lambda: AMAT(delta=0.05, max_margin=1.0, attack={"steps": k}, **amat_extra),
        f"amat-{k} (early stop)": lambda: AMAT(delta=0.05, max_margin=1.0, attack={"steps": k}, early_stop=True,
                                               **amat_extra),
    }
    # Interleave the methods epoch by epoch, so a change in machine load hits all of them
    # alike; each method keeps its own model, optimizer and data order.
    device = torch.device("cuda" if args.accelerator == "gpu" else args.accelerator)
    runs = {}
    for name, make in methods.items():
        L.seed_everything(0, verbose=False)
        model = module(net=net, data_info=dm.info, method=make()).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        runs[name] = (model, opt, gen, [], [])
    for _ in range(args.epochs):
        for model, opt, gen, times, cpu_times in runs.values():
            order = torch.randperm(len(items), generator=gen).tolist()
            batches = [collate_batch([items[i] for i in order[j:j + args.batch_size]])
                       for j in range(0, len(order), args.batch_size)]
            wall, cpu = train_epoch(model, opt, batches)
            times.append(wall)
            cpu_times.append(cpu)
    # On the GPU, or on an idle CPU with several threads, wall time is the cost; on a shared
    # CPU with one thread, the process's CPU time is (it leaves out the waiting for the cores).
    use_cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    clock = "CPU" if use_cpu_time else "wall"
    results: dict[str, float] = {}
    wall_results: dict[str, float] = {}
    for name, (_, _, _, times, cpu_times) in runs.items():
        wall_results[name] = statistics.median(times[1:] or times)
        timed = (cpu_times if use_cpu_time else times)
        results[name] = statistics.median(timed[1:] or timed)
        print(f"{name:32s} {results[name]:8.2f} s/epoch {clock}   (epochs: "
              + ", ".join(f"{t:.2f}" for t in timed) + f"; wall median {wall_results[name]:.2f})", flush=True)

    clean = results["clean"]
    sat1 = results[f"sat-{k} (adv only)"]
    sat05 = results[f"sat-{k} (0.5 clean + 0.5 adv)"]
    amat = results[f"amat-{k}"]
    ratios = {"amat/sat": amat / sat1, "amat/sat(beta=0.5)": amat / sat05, "sat/clean": sat1 / clean,
              "amat(early stop)/sat(beta=0.5)": results[f"amat-{k} (early stop)"] / sat05}
    print(f"\n{clock} time ratios:")
    print(f"AMAT/SAT(beta=0.5) = {ratios['amat/sat(beta=0.5)']:.3f}   (target <= 1.05: the SAT of the amat suite)")
    print(f"AMAT/SAT(beta=1)   = {ratios['amat/sat']:.3f}   (AMAT also pays for its clean term)")
    print(f"AMAT(early stop)/SAT(beta=0.5) = {ratios['amat(early stop)/sat(beta=0.5)']:.3f}")
    print(f"SAT/clean          = {ratios['sat/clean']:.2f}")
    report = {"settings": vars(args) | {"out": str(args.out) if args.out else None},
              "clock": clock, "seconds_per_epoch": results, "wall_seconds_per_epoch": wall_results,
              "ratios": ratios,
              "device": str(torch.device(args.accelerator)), "torch_threads": torch.get_num_threads()}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
