"""The ``standard`` suite against a brute-force ensemble, per image, by the task metric.

Trains (once, cached) a small PGD-trained model on real data, then attacks every image with

* each member of the task's ``standard`` suite (``attacks/suites.py``), one call each, and
  combines them two ways: the **old** rule (the members of the suite before the task-metric
  fix, the worst case chosen by "violation, then the higher loss") and the **new** rule (all
  current members, the worst case chosen by the task metric, ties by the loss). The new rule
  is also run through :class:`callbacks.evaluation_loop.RobustnessEvaluator` itself, to check
  that the shipped loop reports what this script computes;
* an independent **brute-force ensemble**: APGD with ``--starts`` random starts × ``--steps``
  steps on each of at least five losses, per image the worst task metric over all of them.

and prints the mean metric of each and per-image counts where one is worse than the other by
more than ``--margin``.

    MEDROBUST_DATA=/work/shared/data python benchmarks/suite_vs_ensemble.py --task segmentation
    MEDROBUST_DATA=/work/shared/data python benchmarks/suite_vs_ensemble.py --task landmarks \
        --train-eps 0.031372549 --n 24 --batch 24 --square-queries 1000 \
        --losses heatmap_mse soft_argmax radial_error expected_distance peak_suppress
    python benchmarks/suite_vs_ensemble.py --task detection --n 24 --batch 24 \
        --square-queries 1000 [--eps 0.08]                           # synthetic boxes
    MEDROBUST_DATA=/work/shared/data python benchmarks/suite_vs_ensemble.py --task detection \
        --data bccd ...                                              # BCCD (real)

(the runs of docs/benchmarks.md, "Suite against a brute-force ensemble"; ``--square-queries``,
``--n`` and ``--losses`` cut the cost to fit two shared cores, and the record says so).
Also reported: PGD-10 on the task loss (the evaluator's default PGD), which loss of the
ensemble gives each image its worst case, and for landmarks the spread of the predicted
points (a constant predictor, spread ≈ 0, ignores its input and no attack moves it).

Models (small, to fit two shared CPU cores): segmentation — PH2 lesion masks at 48×48,
``SmallUNet(8, 16, 32, 64)``, SAT with PGD-5 L∞ at the evaluation ε (16/255); landmarks — the
cephalometric set at 64×64, 19 landmarks, the same U-Net with the coordinate-regression head
of the cephalometric configs (points read from the head, Gaussian targets σ 3 px, lr 2e-3, 40
epochs), SAT with PGD-5 L∞, ε warmed up linearly over 10 epochs, at 32/255 by default — but
the measured model is ``--train-eps 0.031372549`` (8/255): at 32/255 without the warm-up the
model was a constant predictor, and 32/255 with the warm-up was not tried;
detection — the tiny FCOS and synthetic boxes of ``configs/experiment/detection_synthetic_sat.yaml``
(SAT PGD-5 L∞ at its ε 0.02, warmed up linearly over 10 epochs, 256 training images),
per-image AP@0.5 as the metric; with ``--data bccd`` the real BCCD blood smears (Pascal VOC, RBC /
WBC / platelets) at 144×192 as the BCCD configs load them, the tiny FCOS of the amat suite's
``--quick`` BCCD runs (widths 8, 16, 32; 32 channels), SAT PGD L∞ at ``--train-eps`` (default
:data:`BCCD_EPS`, the L∞ ε of ``configs/experiment/detection_bccd_sat.yaml``), warmed up over the
first third of the epochs.
Models train on the training split; every image of the data set (all splits, up to ``--n``)
is attacked: the question is the attacks' strength, not generalisation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from attacks import APGD, parse_attack_specs
from attacks.worst_case import badness
from benchmarks.common import ROOT
from benchmarks.ensemble_models import (
    SETTINGS,
    attack_eps,
    data_name,
    file_stem,
    images,
    tensor_mean,
    train,
    train_eps,
)
from benchmarks.ensemble_rules import Recording, combine, per_sample
from callbacks.evaluation_loop import RobustnessEvaluator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(SETTINGS), required=True)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default per task)")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--n", type=int, default=None, help="images attacked (default per task)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--suite", default="standard", help="the suite compared (standard | quick)")
    p.add_argument("--steps", type=int, default=100, help="APGD steps per start of the brute-force ensemble")
    p.add_argument("--starts", type=int, default=2, help="random starts per loss of the brute-force ensemble")
    p.add_argument("--margin", type=float, default=None,
                   help="per-image difference counted, metric units (default per task: 0.05 Dice / AP, 0.5 px)")
    p.add_argument("--losses", nargs="+", default=None,
                   help="a subset of the brute-force losses (default: all of the task's)")
    p.add_argument("--data", choices=["synthetic", "bccd"], default="synthetic",
                   help="detection only: synthetic boxes (default) or the real BCCD blood smears")
    p.add_argument("--train-eps", type=float, default=None,
                   help="SAT's training ε (default: the task's evaluation ε); cached separately")
    p.add_argument("--eps", type=float, default=None,
                   help="attack ε (L∞; default per task: its evaluation ε, BCCD 0.004); the model is the same")
    p.add_argument("--square-queries", type=int, default=None,
                   help="override the suite's Square queries (default: the suite's, 5000 in standard)")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "suite_vs_ensemble")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data_name(args)  # --data with a task that has no choice: an error before any work
    args.out.mkdir(parents=True, exist_ok=True)
    args.n = args.n or SETTINGS[args.task]["n"]
    args.epochs = args.epochs or SETTINGS[args.task]["epochs"]
    args.margin = SETTINGS[args.task]["margin"] if args.margin is None else args.margin
    dm, module = train(args.task, args)
    if args.train_only:
        return
    module.eval()
    for p_ in module.parameters():
        p_.requires_grad_(False)
    batches = images(dm, args.n, args.batch)
    t0 = time.time()
    with torch.inference_mode(False), torch.enable_grad():
        result = compare(module, batches, args)
    result["seconds"] = round(time.time() - t0, 1)
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    report(args, result)


def compare(module: Any, batches: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    task, cfg = args.task, SETTINGS[args.task]
    eps = attack_eps(task, args)
    higher = module.metric_higher_is_better()
    model = module.attack_model()
    bounds = tuple(module.data_info.bounds)
    from lightning_modules.tasks import suite_configs

    configs = suite_configs(args.suite, task)
    if args.square_queries is not None:  # a smaller Square budget, to fit the machine (say so)
        configs = [dict(c, steps=args.square_queries) if c["name"] == "square" else c for c in configs]
    specs = parse_attack_specs(configs, "suite")
    ev = RobustnessEvaluator(module, specs, [eps])
    for s in specs:
        ev.attacks[(s.label, eps)] = Recording(ev.attacks[(s.label, eps)])
    clean, members = [], {s.label: [] for s in specs}
    t_suite = time.time()
    for b_no, batch in enumerate(batches):
        ev.run_batch(b_no, batch)
        clean.append(per_sample(module, model, batch["image"], batch))
        for s in specs:
            members[s.label].append(per_sample(module, model, ev.attacks[(s.label, eps)].outputs[b_no], batch))
    t_suite = time.time() - t_suite
    shipped = ev.compute()
    # PGD-10 on the task loss (the evaluator's default PGD), the usual per-epoch number
    t_pgd = time.time()
    pgd_specs = parse_attack_specs([{"name": "pgd", "steps": 10, "label": "pgd-10"}], "pgd")
    ev_pgd = RobustnessEvaluator(module, pgd_specs, [eps])
    ev_pgd.attacks[("pgd-10", eps)] = Recording(ev_pgd.attacks[("pgd-10", eps)])
    pgd_rows = []
    for b_no, batch in enumerate(batches):
        ev_pgd.run_batch(b_no, batch)
        pgd_rows.append(per_sample(module, model, ev_pgd.attacks[("pgd-10", eps)].outputs[b_no], batch))
    t_pgd = time.time() - t_pgd
    cat = lambda rows: {k: torch.cat([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    clean_c, member_c = cat(clean), {k: cat(v) for k, v in members.items()}
    pgd10 = combine([clean_c, cat(pgd_rows)], "new", higher)
    old_labels = [lab for lab in cfg["old_members"] if lab in member_c]
    old = combine([clean_c] + [member_c[lab] for lab in old_labels], "old", higher)
    old_rule_new_members = combine([clean_c] + list(member_c.values()), "old", higher)
    new_rule_old_members = combine([clean_c] + [member_c[lab] for lab in old_labels], "new", higher)
    new = combine([clean_c] + list(member_c.values()), "new", higher)

    # the brute-force ensemble
    t_brute = time.time()
    brute: dict[str, torch.Tensor] = {}
    losses = SETTINGS[task]["losses"](module, args.steps)
    if args.losses:
        unknown = sorted(set(args.losses) - set(losses))
        if unknown:
            raise ValueError(f"--losses: unknown {unknown} for {task}; known: {sorted(losses)}")
        losses = {k: v for k, v in losses.items() if k in args.losses}
    for name, factory in losses.items():
        vals = []
        for b_no, batch in enumerate(batches):
            per_start = []
            for start in range(args.starts):
                fn = factory()
                gen = torch.Generator().manual_seed(10_000 + 97 * b_no + start)
                atk = APGD(eps=eps, norm="linf", steps=args.steps, random_start=True, bounds=bounds)
                x_adv = atk(model, batch["image"], batch, loss_fn=fn, generator=gen)
                per_start.append(per_sample(module, model, x_adv, batch)["metric"])
            stack = torch.stack([badness(m, higher) for m in per_start])
            pick = stack.argmax(dim=0)
            vals.append(torch.stack(per_start).gather(0, pick[None])[0])
        brute[name] = torch.cat(vals)
        print(f"  brute {name}: {tensor_mean(brute[name]):.4f}", flush=True)
    t_brute = time.time() - t_brute
    names = list(brute)
    stack = torch.stack([badness(brute[k], higher) for k in names])
    brute_all = torch.stack([brute[k] for k in names]).gather(0, stack.argmax(dim=0)[None])[0]
    best_loss_count = {k: int((stack.argmax(dim=0) == i).sum()) for i, k in enumerate(names)}

    mstack = torch.stack([badness(v["metric"], higher) for v in member_c.values()])

    def worse(a: torch.Tensor, b: torch.Tensor) -> int:
        """images where ``a`` is worse for the model than ``b`` by more than the margin"""
        d = (b - a) if higher else (a - b)
        return int((d > args.margin).sum())

    return {
        "task": task, "data": data_name(args), "eps": eps, "train_eps": train_eps(task, args), "n": int(clean_c["metric"].numel()), "metric": cfg["metric"],
        "higher_is_better": higher, "suite": args.suite, "members": [s.label for s in specs],
        "old_members": old_labels, "square_queries": [c.get("steps") for c in configs if c["name"] == "square"],
        "steps": args.steps, "starts": args.starts, "margin": args.margin,
        "clean": tensor_mean(clean_c["metric"]), "pgd10": tensor_mean(cat(pgd_rows)["metric"]),
        "pgd10_or_clean": tensor_mean(pgd10),
        "members_mean": {k: tensor_mean(v["metric"]) for k, v in member_c.items()},
        "old_rule_old_members": tensor_mean(old), "old_rule_all_members": tensor_mean(old_rule_new_members),
        "new_rule_old_members": tensor_mean(new_rule_old_members), "new_rule_all_members": tensor_mean(new),
        "shipped_evaluator": {k: float(v) for k, v in shipped.ensemble[eps].items()
                              if isinstance(v, (int, float)) or getattr(v, "ndim", 1) == 0},
        "shipped_rule": shipped.ensemble_rule,
        "brute_per_loss": {k: tensor_mean(v) for k, v in brute.items()}, "brute": tensor_mean(brute_all),
        "brute_best_loss_images": best_loss_count,
        "counts": {"brute_worse_than_old": worse(brute_all, old), "old_worse_than_brute": worse(old, brute_all),
                   "brute_worse_than_new": worse(brute_all, new), "new_worse_than_brute": worse(new, brute_all)},
        "counts_old_new": {"new_worse_than_old": worse(new, old), "old_worse_than_new": worse(old, new)},
        "brute_loss_worse_than_new": {k: worse(v, new) for k, v in brute.items()},
        "member_worst_images": {k: int((mstack.argmax(dim=0) == i).sum()) for i, k in enumerate(member_c)},
        "strongest_member_worse_than_new": max(worse(v["metric"], new) for v in member_c.values()),
        "seconds_suite": round(t_suite, 1), "seconds_brute": round(t_brute, 1), "seconds_pgd10": round(t_pgd, 1),
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    tag = "" if args.eps is None else f"_eps{args.eps:g}"
    (args.out / f"{file_stem(args.task, args)}{tag}.json").write_text(json.dumps(r, indent=1))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
