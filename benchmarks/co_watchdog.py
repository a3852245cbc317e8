"""A run engineered to overfit catastrophically, once without and once with the watchdog.

Plain FGSM training (no random start, step ε: the recipe Wong, Rice & Kolter 2020 show to
overfit catastrophically at large ε) of the same net, data, seed and learning rate, twice:

* ``warn``: :class:`callbacks.CatastrophicOverfittingWatchdog` only measures and warns — the
  run is what it would be without a watchdog (the measurement neither touches the weights
  nor the global RNG);
* ``restore``: the watchdog restores the weights of its best multi-step measurement before the
  collapse and stops (Wong et al.'s early stopping).

Every ``--every-n-steps`` optimiser steps the watchdog measures, on a fixed subset of the
*training* split, the accuracy clean, under the training attack (FGSM, single-step) and under
PGD-10 (multi-step). At the end both final models are scored on held-out samples (the
validation split) clean, under FGSM and under PGD-10. Written: ``--png`` (the two runs' curves
side by side) and ``--json`` (histories, held-out scores, the collapse point, seconds).

    MEDROBUST_DATA=../shared/data nice -n 10 python -m benchmarks.co_watchdog \
        --dataset pneumoniamnist --balanced --epochs 12 --num-train 4708 --every-n-steps 16 \
        --eps 0.05 --png docs/co_watchdog.png --json docs/co_watchdog.json     # ~2 CPU minutes
    python -m benchmarks.co_watchdog --replot docs/co_watchdog.json --png docs/co_watchdog.png

(Synthetic data, ``--dataset synthetic``, needs no download, but its small CNN learns too
little at large ε for a clear collapse; PneumoniaMNIST without ``--balanced`` starts with a
constant majority-class prediction whose "robust" accuracy the later, learning model never
beats, so the watchdog's best point would be that constant model.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from attacks import FGSM, PGD
from callbacks import CatastrophicOverfittingWatchdog
from callbacks.co_watchdog import plot_history
from datamodules.base import collate_batch
from lightning_modules import SAT, ClassificationModule


def datamodule(args: argparse.Namespace) -> Any:
    """The data module of ``--dataset`` (PneumoniaMNIST's official splits; synthetic seeded)."""
    if args.dataset == "synthetic":
        from datamodules.synthetic import SyntheticDataModule

        return SyntheticDataModule(task="classification", num_train=args.num_train,
                                   num_val=args.eval_subset, num_test=8,
                                   image_size=(28, 28), seed=0)
    from datamodules.medmnist import MedMNISTDataModule

    root = os.environ.get("MEDROBUST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    return MedMNISTDataModule(root=str(Path(root) / "medmnist"), flag="pneumoniamnist")


def pick(dataset: Any, n: int, balanced: bool, gen: torch.Generator) -> list[int]:
    """``n`` seeded indices of ``dataset``; ``balanced``: as many of each class as the rarest
    allows (at most ``n`` in all). On imbalanced data (PneumoniaMNIST: 26 % normal) a constant
    prediction scores the majority share under any attack, so the best "robust" accuracy of an
    untrained net could hide a collapse; with balanced classes it scores 1/K."""
    order = torch.randperm(len(dataset), generator=gen).tolist()
    if not balanced:
        return order[:n]
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(int(dataset[i]["label"]), []).append(i)
    per = min(min(len(v) for v in by_class.values()), n // len(by_class))
    chosen = [i for v in by_class.values() for i in v[:per]]
    return [chosen[j] for j in torch.randperm(len(chosen), generator=gen).tolist()]


def held_out(model: ClassificationModule, items: list, eps: float, batch_size: int) -> dict[str, float]:
    """Accuracy on held-out items clean, under FGSM (step ε, no start) and PGD-10 (default
    step, random start, seeded)."""
    attacks = {"fgsm": FGSM(eps=eps), "pgd10": PGD(eps=eps, steps=10)}
    correct = {"clean": 0, "fgsm": 0, "pgd10": 0}
    net = model.attack_model()
    model.eval()
    for j in range(0, len(items), batch_size):
        batch = collate_batch(items[j:j + batch_size])
        x, y = batch["image"], batch["label"]
        with torch.no_grad():
            correct["clean"] += int((net(x).argmax(1) == y).sum())
        for name, atk in attacks.items():
            gen = torch.Generator().manual_seed(j)
            x_adv = atk(net, x, batch, loss_fn=model.per_sample_loss, generator=gen)
            with torch.no_grad():
                correct[name] += int((net(x_adv).argmax(1) == y).sum())
    return {k: v / len(items) for k, v in correct.items()}


def run(args: argparse.Namespace, action: str, train_set: Any, eval_items: list,
        info: Any, root: Path, objects: dict[str, Any] | None = None) -> dict[str, Any]:
    """One FGSM training run with the watchdog in ``action`` mode; ``objects`` (when given)
    receives the ``model``, ``trainer`` and ``watchdog``."""
    L.seed_everything(args.seed, verbose=False)
    net = {"class_path": "lightning_modules.nets.SmallCNN",
           "init_args": {"features": list(args.features)}}
    model = ClassificationModule(
        net=net, data_info=info, lr=args.lr,
        method=SAT(eps=args.eps, attack={"name": "fgsm", "norm": "linf"}))
    dog = CatastrophicOverfittingWatchdog(
        subset=args.subset, batch_size=args.subset, every_n_epochs=0,
        every_n_train_steps=args.every_n_steps, min_drop=args.min_drop, action=action,
        seed=args.seed, plot=False)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                        collate_fn=collate_batch,
                        generator=torch.Generator().manual_seed(args.seed))
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=str(root / action), callbacks=[dog])
    t0 = time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        trainer.fit(model, train_dataloaders=loader)
    seconds = time.process_time() - t0
    messages = [str(w.message) for w in caught if "catastrophic" in str(w.message)]
    if objects is not None:
        objects.update(model=model, trainer=trainer, watchdog=dog)
    final = held_out(model, eval_items, args.eps, args.batch_size)
    print(f"[{action}] steps {trainer.global_step}, fired {dog.fired is not None}, held-out "
          f"{json.dumps(final)}, {seconds:.0f} CPU s", flush=True)
    return {"action": action, "history": dog.history, "fired": dog.fired, "best": dog.best,
            "steps": trainer.global_step, "held_out": final, "warnings": messages,
            "cpu_seconds": round(seconds, 1)}


def figure(results: dict[str, Any], path: Path) -> None:
    """The two runs' watchdog curves side by side (shared y axis)."""
    from callbacks.plotting import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    s = results["settings"]
    for ax, (action, r) in zip(axes, results["runs"].items(), strict=True):
        title = {"warn": "no intervention (watchdog warns only)",
                 "restore": "watchdog action: restore"}[action]
        end = r["held_out"]
        plot_history(r["history"], path, title=f"{title}\nheld-out at the end: clean "
                     f"{end['clean']:.2f}, FGSM {end['fgsm']:.2f}, PGD-10 {end['pgd10']:.2f}",
                     fired=r["fired"], ax=ax)
        if action == "restore" and r["best"] is not None:
            best = r["best"]
            ax.plot([best["step"]], [best["multi_step"]], "g*", ms=12,
                    label=f"restored (step {int(best['step'])})")
            ax.legend(fontsize=7)
        ax.set_xlim(0, results["runs"]["warn"]["steps"])
    axes[0].set_ylabel(f"training-subset accuracy (n = {s['subset']})")
    fig.suptitle(f"FGSM training without random start, {s['dataset']}, ε = {s['eps']:g} (L∞); "
                 f"multi-step = PGD-10", fontsize=10, y=1.06)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def load(args: argparse.Namespace) -> tuple[list, list, Any]:
    """``(training items, held-out items, data_info)``: drawn from the training and the
    validation split, materialised once (a random augmentation is frozen to one draw, the same
    for every run)."""
    dm = datamodule(args)
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")  # train on train, score on val
    gen = torch.Generator().manual_seed(0)
    train_idx = pick(train, args.num_train, args.balanced, gen)
    eval_idx = pick(val, args.eval_subset, args.balanced, gen)
    return [train[i] for i in train_idx], [val[i] for i in eval_idx], dm.info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["synthetic", "pneumoniamnist"], default="pneumoniamnist")
    p.add_argument("--eps", type=float, default=0.1, help="L∞ budget on [0, 1] images")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-train", type=int, default=2048, help="training samples used")
    p.add_argument("--eval-subset", type=int, default=512, help="held-out samples scored")
    p.add_argument("--balanced", action="store_true",
                   help="as many samples of each class (training and held-out)")
    p.add_argument("--subset", type=int, default=128, help="training samples the watchdog measures")
    p.add_argument("--every-n-steps", type=int, default=8)
    p.add_argument("--min-drop", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--actions", nargs="+", default=["warn", "restore"],
                   choices=["warn", "stop", "restore"])
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--replot", type=Path, default=None,
                   help="only redraw --png from a JSON this script wrote")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.replot:
        results = json.loads(args.replot.read_text())
        figure(results, args.png or args.replot.with_suffix(".png"))
        return results
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train_set, eval_items, info = load(args)
    results: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "splits": {"train": "train", "held_out": "val"}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for action in args.actions:
            results["runs"][action] = run(args, action, train_set, eval_items, info, Path(tmp))
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    if args.png and set(results["runs"]) == {"warn", "restore"}:
        figure(results, args.png)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
