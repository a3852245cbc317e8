"""Robust accuracy behind masked gradients: PGD-10, the ``standard`` suite and ``aa_budget``
(attacks/suites.py) — and, when ``torchattacks`` is importable, its AutoAttack — on one small
PGD-trained CNN wrapped in three gradient maskings (issue 22):

* ``quantised``: ``round(x·k)/k`` before the net (zero gradient almost everywhere, no
  straight-through estimator);
* ``logits_x1000``: logits × 1000 (a saturated softmax: cross-entropy and its gradient are
  exactly 0 on confident samples);
* ``both``.

The CNN (``SmallCNN``) is trained for ``--epochs`` on PneumoniaMNIST (``$MEDROBUST_DATA/
medmnist/pneumoniamnist.npz``; ``--data synthetic`` for the synthetic 2-class task) with
PGD-``--train-steps`` L∞ at ``--train-eps`` (100% adversarial batches), then evaluated on the
first ``--subset`` test samples with :class:`callbacks.evaluation_loop.RobustnessEvaluator` (the
loop of ``AdversarialEvaluation``), the sanity checks and their marks (callbacks/sanity.py).

    python benchmarks/masked_gradients.py --epochs 2 --subset 64 --eps 0.0157 --threads 1

Prints a markdown table (also ``<out>/table.md``): robust accuracy per evaluation and masking,
seconds, and the sanity flags that fired (which mark the suite's number as an upper bound).
torchattacks is never a dependency: without it the AutoAttack column says "not installed".
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks import PGD, parse_attack_specs
from benchmarks.common import ROOT, fit_plain
from benchmarks.masking import Masked, Quantised, Scaled
from callbacks.evaluation_loop import RobustnessEvaluator
from callbacks.sanity import sanity_report
from datamodules.base import collate_batch
from lightning_modules import ClassificationModule
from lightning_modules.tasks import model_task


def datamodule(kind: str) -> Any:
    if kind == "synthetic":
        from datamodules.synthetic import SyntheticDataModule

        dm = SyntheticDataModule(task="classification", num_train=1024, num_val=128, num_test=256,
                                 image_size=(16, 16), seed=0, batch_size=64, num_classes=2)
    else:
        from datamodules.medmnist import MedMNISTDataModule

        dm = MedMNISTDataModule(flag="pneumoniamnist", batch_size=64)  # $MEDROBUST_DATA/medmnist
    dm.setup("fit")
    return dm


def train(dm: Any, args: argparse.Namespace) -> ClassificationModule:
    """SmallCNN trained with PGD (Madry et al. 2018) on every batch."""
    torch.manual_seed(0)
    module = ClassificationModule(net={"class_path": "lightning_modules.nets.SmallCNN",
                                       "init_args": {"features": [16, 32]}}, data_info=dm.info, lr=3e-3)
    ds = dm.dataset("train")
    data = collate_batch([ds[i] for i in range(len(ds))])
    n = data["image"].shape[0]
    pgd = PGD(eps=args.train_eps, steps=args.train_steps, bounds=tuple(dm.info.bounds))
    g = torch.Generator().manual_seed(0)
    batches = ({k: v[idx] if isinstance(v, torch.Tensor) else v for k, v in data.items()}
               for _ in range(args.epochs) for idx in torch.randperm(n, generator=g).split(64))

    def adversary(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        module.eval()  # the attack in eval mode, the step in train mode
        x_adv = pgd(model, batch["image"], batch, loss_fn=module.per_sample_loss,
                    generator=torch.Generator().manual_seed(int(batch["index"][0])))  # its first sample's position
        module.train()
        return x_adv

    fit_plain(module, batches, torch.optim.Adam(module.parameters(), lr=3e-3), adversary)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def autoattack(model: nn.Module, batches: list[dict[str, Any]], eps: float, k: int) -> tuple[str, float]:
    """torchattacks' AutoAttack ("standard"), if importable: robust accuracy and seconds."""
    try:
        import torchattacks
    except ImportError:
        return "not installed", 0.0
    t0 = time.perf_counter()
    correct = total = 0
    try:
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=k, seed=0)
        for b in batches:
            x_adv = atk(b["image"], b["label"].long().reshape(-1))
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == b["label"].reshape(-1)).sum())
            total += b["image"].shape[0]
    except Exception as err:  # noqa: BLE001 - a reference that cannot run is reported, not fatal
        return f"failed: {type(err).__name__}: {str(err)[:60]}", time.perf_counter() - t0
    return f"{correct / total:.3f}", time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["pneumoniamnist", "synthetic"], default="pneumoniamnist")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-eps", type=float, default=2 / 255)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--eps", type=float, default=4 / 255)
    p.add_argument("--levels", type=int, default=16, help="quantisation levels k of round(x·k)/k")
    p.add_argument("--subset", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--suites", default="pgd10,standard,aa_budget,autoattack")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "masked_gradients")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    dm = datamodule(args.data)
    t0 = time.perf_counter()
    module = train(dm, args)
    train_s = time.perf_counter() - t0
    ds = dm.dataset("test")
    n = min(args.subset, len(ds))
    batches = [collate_batch([ds[i] for i in range(s, min(s + args.batch, n))]) for s in range(0, n, args.batch)]
    k = int(module.num_classes)
    maskings = {"none": lambda m: m, "quantised": lambda m: Quantised(m, args.levels), "logits_x1000": Scaled,
                "both": lambda m: Scaled(Quantised(m, args.levels))}
    wanted = args.suites.split(",")
    lines = ["| masking | clean | " + " | ".join(wanted) + " | flags (standard) | seconds |",
             "|" + "---|" * (len(wanted) + 4)]
    for name, wrap in maskings.items():
        task = Masked(module, wrap)
        model = task.attack_model()
        cells: dict[str, str] = {}
        secs: dict[str, float] = {}
        flags = ""
        clean = ""
        for suite in wanted:
            if suite == "autoattack":
                cells[suite], secs[suite] = autoattack(model, batches, args.eps, k)
                continue
            cfg: Any = [{"name": "pgd", "steps": 10}] if suite == "pgd10" else suite
            specs = parse_attack_specs(cfg, suite, model_task(dm.info.task).suite, k)
            ev = RobustnessEvaluator(task, specs, [args.eps], sequential=suite != "pgd10",
                                     large_eps=0.25 if suite == "standard" else None)
            start = time.perf_counter()
            with torch.inference_mode(False), torch.enable_grad():
                for i, b in enumerate(batches):
                    ev.run_batch(i, b)
            out = ev.compute()
            secs[suite] = time.perf_counter() - start
            cells[suite] = f"{out.ensemble[args.eps]['accuracy']:.3f}"
            clean = f"{out.clean['accuracy']:.3f}"
            if suite == "standard":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report = sanity_report(out, "accuracy", False)
                flags = ", ".join(f for f, e in report.items() if e["flag"]) or "–"
        line = (f"| {name} | {clean} | " + " | ".join(cells[s] for s in wanted) + f" | {flags} | "
                + ", ".join(f"{s} {secs[s]:.0f}" for s in wanted) + " |")
        lines.append(line)
        print(line, flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    note = (f"\n\n{args.data}, SmallCNN [16, 32] PGD-{args.train_steps}-trained at L∞ {args.train_eps:.4g} for "
            f"{args.epochs} epoch(s) ({train_s:.0f} s); first {n} test samples; L∞ ε = {args.eps:.4g}; "
            f"quantisation k = {args.levels}; {args.threads} thread(s); wall seconds; load average "
            f"{' '.join(load)}. A fired flag marks the suite's number as an unreliable upper bound "
            "in robustness.json / report.md (callbacks/sanity.py).\n")
    table = "\n".join(lines) + note
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
