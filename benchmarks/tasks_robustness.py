"""Clean vs SAT vs AMAT on synthetic landmarks and detection: clean metric and metric under PGD.

    python benchmarks/tasks_robustness.py                      # both tasks, defaults below
    python benchmarks/tasks_robustness.py --tasks landmarks --epochs 4 --eps 0.01 0.03 --threads 2

For each task the data, network and method settings are those of the shipped synthetic
experiment configs (``configs/experiment/<task>_synthetic_<method>.yaml``); only the length of
training (``--epochs``, ``--num-train``) and the PGD steps used *during training* by SAT and AMAT
(``--train-steps``, the same k for both, so the comparison is fair) are overridden to fit a short
CPU budget. Every model is then evaluated on the same test images, clean and under L∞ PGD
(``--eval-steps`` steps, step 2.5·ε/steps, random start, seeded) at each ``--eps``.

Metrics: each task's own main metric (``TaskModule.main_metric``, its direction from the metric
object) and a second one: landmarks ``mre`` (pixels, lower is better) and ``sdr_2px``; detection ``map`` and
``map_50`` (higher is better). AMAT (Ma & Liang) trains its first epoch clean to compute its loss
threshold from the clean model's training losses (its warm-up), then adversarially.

Prints a Markdown table and writes it, with the settings and wall times, to
``results/tasks_robustness.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from attacks import PGD
from benchmarks.common import ROOT
from lightning_modules.nets.builder import import_object

METHODS = ("clean", "sat", "amat")
#: the second metric shown beside each task's own main metric (``TaskModule.main_metric``)
SECONDARY = {"landmarks": "sdr_2px", "detection": "map_50"}


def load(task: str, method: str, args: argparse.Namespace) -> tuple[Any, Any, dict]:
    """Datamodule and task module from the shipped synthetic config, shortened."""
    path = ROOT / "configs" / "experiment" / f"{task}_synthetic_{method}.yaml"
    cfg = yaml.safe_load(path.read_text())
    data = copy.deepcopy(cfg["data"])
    data["init_args"].update(num_train=args.num_train, num_val=8, num_test=args.num_test)
    dm = import_object(data["class_path"])(**data["init_args"])
    model = copy.deepcopy(cfg["model"])
    margs = model["init_args"]
    method_cfg = margs.get("method") or {}
    if method in ("sat", "amat"):
        method_cfg.setdefault("init_args", {})["steps"] = args.train_steps
    module = import_object(model["class_path"])(data_info=dm.info, **margs)
    return dm, module, {"config": str(path.relative_to(ROOT)), "method_config": method_cfg}


@torch.no_grad()
def _update(module: Any, metrics: Any, x: torch.Tensor, batch: dict) -> None:
    module.update_metrics(metrics, module(x), batch)


def evaluate(module: Any, dm: Any, eps_list: list[float], steps: int) -> dict[str, dict[str, float]]:
    """Clean and PGD-``steps`` metrics on the whole test split."""
    module.eval()
    dm.setup("test")
    model = module.attack_model()
    clean = module.build_metrics()
    attacked = {e: module.build_metrics() for e in eps_list}
    for b_no, batch in enumerate(dm.test_dataloader()):
        x = batch["image"]
        _update(module, clean, x, batch)
        for e_no, eps in enumerate(eps_list):
            gen = torch.Generator().manual_seed(1000 * b_no + e_no)
            atk = PGD(eps=eps, norm="linf", steps=steps, bounds=tuple(module.data_info.bounds))
            x_adv = atk(model, x, batch, loss_fn=module.per_sample_loss, generator=gen)
            _update(module, attacked[eps], x_adv, batch)
    out = {"clean": {k: float(v) for k, v in clean.compute().items()}}
    for eps, m in attacked.items():
        out[f"{eps:g}"] = {k: float(v) for k, v in m.compute().items()}
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"settings": vars(args), "runs": []}
    for task in args.tasks:
        for method in args.methods:
            L.seed_everything(args.seed, verbose=False)
            dm, module, info = load(task, method, args)
            trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0,
                                limit_val_batches=0)
            t0 = time.perf_counter()
            trainer.fit(module, dm)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            metrics = evaluate(module, dm, args.eps, args.eval_steps)
            eval_s = time.perf_counter() - t0
            run = {"task": task, "method": method, "train_s": round(train_s, 1),
                   "eval_s": round(eval_s, 1), "steps": int(trainer.global_step),
                   "main_metric": module.main_metric,
                   "higher_is_better": module.metric_higher_is_better(),  # from the metric object
                   "metrics": metrics, **info}
            results["runs"].append(run)
            shown = {k: round(v, 3) for k, v in metrics["clean"].items()
                     if k in (module.main_metric, SECONDARY[task])}
            print(f"[{task}/{method}] {train_s:.0f}s train, {eval_s:.0f}s eval, clean {shown}",
                  flush=True)
    return results


def table(results: dict) -> str:
    eps = [f"{e:g}" for e in results["settings"]["eps"]]
    steps = results["settings"]["eval_steps"]
    lines = []
    for task in results["settings"]["tasks"]:
        first = next((r for r in results["runs"] if r["task"] == task), None)
        if first is None:
            continue
        main, second = first["main_metric"], SECONDARY[task]
        arrow = "↑" if first["higher_is_better"] else "↓"
        head = ([f"{task} method", f"clean {main}"] + [f"PGD-{steps} ε={e} {main}" for e in eps]
                + [f"clean {second}"] + [f"ε={e} {second}" for e in eps] + ["train s"])
        lines += [f"**{task}** ({main} {arrow})", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for run in results["runs"]:
            if run["task"] != task:
                continue
            m = run["metrics"]
            row = ([run["method"], f"{m['clean'][main]:.3f}"] + [f"{m[e][main]:.3f}" for e in eps]
                   + [f"{m['clean'][second]:.3f}"] + [f"{m[e][second]:.3f}" for e in eps]
                   + [f"{run['train_s']:.0f}"])
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["landmarks", "detection"],
                   choices=["landmarks", "detection"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--num-train", type=int, default=256)
    p.add_argument("--num-test", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=5, help="PGD steps of SAT and AMAT training")
    p.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the evaluation")
    p.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--out", default=str(ROOT / "results" / "tasks_robustness.md"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    results = run(args)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    text = table(results)
    command = "python benchmarks/tasks_robustness.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Landmarks and detection: clean vs SAT vs AMAT (synthetic)\n\n"
        f"Command: `{command.strip()}`  \nWall time: {results['wall_s']:.0f} s "
        f"(torch threads: {args.threads})  \n"
        f"Training: {args.epochs} epochs × {args.num_train} images; SAT and AMAT use PGD-"
        f"{args.train_steps} during training (AMAT: first epoch clean, its threshold warm-up).  \n"
        f"Evaluation: {args.num_test} test images, L∞ PGD-{args.eval_steps}, random start, "
        "step 2.5·ε/steps, seeded.\n\n" + text + "\n"
    )
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
