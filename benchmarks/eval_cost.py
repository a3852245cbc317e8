"""Cost of the per-epoch robustness evaluation relative to a training epoch.

Builds the experiment of ``--config`` (default: the quickstart) through ``train.py``'s CLI,
trains it for ``--epochs`` epochs with :class:`callbacks.AdversarialEvaluation` (its default
settings, or the suite configured in the experiment with ``--suite config``) and reports, per
epoch, the wall time of

* the training batches (data loading, method — e.g. AMAT/SAT attacks — forward, backward, step),
* Lightning's own validation loop (the model's ``validation_step`` over the whole val split),
* the robustness evaluation (``adv/eval_seconds``),

and the fraction ``evaluation / training batches``. The first epoch (warm-up) is excluded from
the summary; both are measured in the same process, interleaved, so machine load affects them
alike.

``--compare`` runs, after every training epoch, the same evaluation several times side by side
(each its own callback, same settings, same model): ``before`` with every reuse of
:class:`callbacks.speedups.Speedups` off (the evaluation as it ran before them),
``+<name>`` with one of them on, ``-<name>`` (with ``--ablate``) with all but that one on, and
``after`` with all on (the default). It checks that, after every epoch, every variant's record
has the same clean, per-attack (metrics and gradient health) and ensemble entries as
``before`` (they change no number), and prints each one's cost as a fraction of the same
training epoch and its passes per sample — which change bought what.

    python benchmarks/eval_cost.py                      # default callback settings
    python benchmarks/eval_cost.py --compare --threads 1 --epochs 6
    python benchmarks/eval_cost.py --compare --ablate --threads 1 --epochs 8 --repeats 15
    python benchmarks/eval_cost.py --suite config       # the experiment's own callback settings
    python benchmarks/eval_cost.py --set '{"subset": 128}' --json results/eval_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from benchmarks.common import ROOT
from benchmarks.eval_cost_probes import (
    EpochTimer,
    SameRecords,
    passes_alone,
    repeat_runs,
    same_text,
    timed_logging,
    variant_summary,
    variants,
)
from callbacks import AdversarialEvaluation
from callbacks.speedups import Speedups


def configured_eval_kwargs(cli_config: Any) -> dict[str, Any] | None:
    """``init_args`` of the AdversarialEvaluation in the experiment's trainer callbacks."""
    for cb in cli_config.get("trainer", {}).get("callbacks") or []:
        if str(getattr(cb, "class_path", "")).endswith("AdversarialEvaluation"):
            args = cb.init_args
            return dict(args.as_dict() if hasattr(args, "as_dict") else args)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "experiment" / "quickstart.yaml"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--suite", choices=("default", "config"), default="default",
                   help="evaluation settings: the callback's defaults or the experiment's own")
    p.add_argument("--set", default="{}", metavar="JSON",
                   help='override callback arguments, e.g. \'{"subset": 128, "attacks": [{"name": "pgd", "steps": 10}]}\'')
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives the steadiest numbers on a shared machine)")
    p.add_argument("--json", default=None, help="also write the summary here")
    p.add_argument("--compare", action="store_true",
                   help="time the evaluation before / with each reuse / after, side by side each epoch")
    p.add_argument("--ablate", action="store_true",
                   help="with --compare: also every reuse but one (-<name>), to show what each adds to the others")
    p.add_argument("--repeats", type=int, default=0,
                   help="with --compare: after training, also run each variant's runner (the evaluation "
                        "without logging) this many times, interleaved, on the final model, and report "
                        "the median CPU seconds of each (steadier than per-epoch ratios on a loaded machine), "
                        "and the model's passes alone (the evaluation's forward / backward passes per sample "
                        "on its batches, nothing else: its floor)")
    args = p.parse_args(argv)

    from medrobust.cli import load_train_module  # train.py is not an installed module

    cli_main = load_train_module().cli_main

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_main(["--config", args.config, "--trainer.default_root_dir", tmp,
                        "--trainer.max_epochs", str(args.epochs)], run=False)
        if args.suite == "config":
            kwargs = configured_eval_kwargs(cli.config)
            if kwargs is None:
                raise SystemExit(f"{args.config} configures no AdversarialEvaluation")
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
        else:
            kwargs = {}
        kwargs.update(json.loads(args.set))
        kwargs.update(write_json=False, plot=False, report=False)
        timer = EpochTimer()
        runs = variants(args.ablate) if args.compare else {"eval": Speedups()}
        evaluations: dict[str, AdversarialEvaluation] = {}
        callbacks: list[Callback] = [timer]
        for i, (name, speedups) in enumerate(runs.items()):
            prefix = "adv" if i == 0 else f"v{i}"
            ev = AdversarialEvaluation(**{**kwargs, "prefix": prefix})
            ev.runner.speedups = speedups
            evaluations[name] = ev
            callbacks += [ev, timer.after_evaluation(name, last=i == len(runs) - 1)]
        checker = SameRecords(evaluations)
        callbacks.append(checker)
        trainer = L.Trainer(
            accelerator=args.accelerator, devices=1, max_epochs=args.epochs, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=tmp,
        )
        with timed_logging(evaluations[list(evaluations)[-1]].prefix) as log_times:
            trainer.fit(cli.model, cli.datamodule)
        records = {name: ev.last_record["val"] for name, ev in evaluations.items()}
        repeated = repeat_runs(trainer, cli.model, evaluations, args.repeats) if args.compare else {}
        floor = passes_alone(trainer, cli.model, evaluations[list(evaluations)[-1]], args.repeats)
        rec = next(iter(records.values()))

    rows = timer.rows
    steady = rows[1:] or rows
    n_every = rec.settings["every_n_epochs"]
    first_eps = rec.attacks[0].eps
    # the same records from every variant at every epoch (the reuses change no number)
    # (early_exit: the main metric the same or worse at every ε, "main ≤")
    same = {name: variant_summary(v) for name, v in checker.same.items()}
    names = list(records)

    summary = {
        "config": str(Path(args.config).resolve().relative_to(ROOT)),
        "suite": args.suite,
        "epochs": args.epochs,
        "settings": {
            "attacks": [{"attack": e.attack, "norm": e.norm, "steps": e.steps, "step_size": e.step_size,
                         "restarts": e.restarts, "random_start": e.random_start}
                        for e in rec.attacks if e.eps == first_eps],
            "eps": sorted({e.eps for e in rec.attacks}),
            "subset": rec.subset.size,
            "every_n_epochs": n_every,
            "batch_size": rec.settings["batch_size"],
        },
        "per_epoch": rows,
        # median of the per-epoch ratios (each measured back to back, so slow drifts of the
        # machine's load cancel); one evaluation every n epochs
        "fraction_cpu": statistics.median(r[f"{names[-1]}_cpu_s"] / r["train_cpu_s"] for r in steady) / n_every,
        "fraction_wall": statistics.median(r[f"{names[-1]}_wall_s"] / r["train_wall_s"] for r in steady) / n_every,
        "variants": {name: {
            "fraction_cpu": statistics.median(r[f"{name}_cpu_s"] / r["train_cpu_s"] for r in steady) / n_every,
            "fraction_wall": statistics.median(r[f"{name}_wall_s"] / r["train_wall_s"] for r in steady) / n_every,
            "eval_cpu_s": statistics.median(r[f"{name}_cpu_s"] for r in steady),
            "same_metrics_as_first": same[name],
            "compute": records[name].compute.to_dict() if records[name].compute is not None else None,
            "runner_cpu_s_median": repeated.get(name),
        } for name in names},
        "repeats": args.repeats,
        "passes_alone_cpu_s_median": floor,
        "logging_cpu_s_median": statistics.median(t for _, t in log_times[1:] or log_times) if log_times else None,
        "threads": args.threads,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }
    print(f"config: {summary['config']}  suite: {args.suite}  epochs: {args.epochs}")
    print(f"evaluation settings: {json.dumps(summary['settings'])}")
    for i, r in enumerate(rows):
        evals = " · ".join(f"{n} {r[f'{n}_wall_s']:5.3f} s wall / {r[f'{n}_cpu_s']:5.3f} s CPU" for n in names)
        print(f"  epoch {i}: training {r['train_wall_s']:6.2f} s wall / {r['train_cpu_s']:6.2f} s CPU"
              f" · val loop {r['val_loop_wall_s']:5.2f} s · robustness eval: {evals}")
    def passes(name: str) -> str:
        c = summary["variants"][name]["compute"]
        return f"{c['total']['forward_per_sample']:.2f} + {c['total']['backward_per_sample']:.2f}" if c else "?"

    print(f"passes per sample (forward + backward): {passes(names[-1])}")
    if args.compare:
        print("| evaluation | CPU s (median) | / training epoch (CPU) | / training epoch (wall) | same metrics |"
              " passes / sample (fwd + bwd) |" + (f" runner CPU ms, median of {args.repeats} |" if repeated else ""))
        print("|---|---|---|---|---|---|" + ("---|" if repeated else ""))
        for n, v in summary["variants"].items():
            print(f"| {n} | {v['eval_cpu_s']:.3f} | {v['fraction_cpu']:.1%} | {v['fraction_wall']:.1%} | "
                  f"{same_text(v['same_metrics_as_first'])} | {passes(n)} |"
                  + (f" {1000 * repeated[n]:.1f} |" if repeated else ""))
    if log_times:
        print(f"Lightning logging of the {log_times[-1][0]} scalars ({names[-1]}): "
              f"{1000 * summary['logging_cpu_s_median']:.1f} ms CPU per evaluation (median of epochs 1..)")
    if floor is not None:
        train = statistics.median(r["train_cpu_s"] for r in steady)
        print(f"the model's passes alone ({passes(names[-1])} per sample, same batches): "
              f"{1000 * floor:.1f} ms CPU, median of {args.repeats}; {floor / train:.1%} of the median "
              "training epoch (CPU) — the floor of this evaluation")
    print(f"per-epoch evaluation cost (median of epochs 1..{len(rows) - 1}): "
          f"{summary['fraction_cpu']:.1%} of a training epoch in CPU time, "
          f"{summary['fraction_wall']:.1%} in wall time (load average {summary['loadavg']})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
