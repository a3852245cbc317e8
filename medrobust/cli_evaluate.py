"""``medrobust evaluate``: :func:`medrobust.evaluation.evaluate` from the command line::

    medrobust evaluate --model model.ts --data manifest.csv --task classification \\
        --suite standard --eps 0.002 0.004 --mean 0.5 --std 0.25 --out results/model_a

writes ``robustness.json``, ``robustness_samples.csv``, ``robustness.png`` and ``report.md``
into ``--out`` and prints the one-line summary. The input normalisation is stated with
``--mean``/``--std`` or ``--no-normalization`` (a medrobust checkpoint carries its own). A
pickled whole ``nn.Module`` loads only with ``--trusted``. Errors print as one message
(``--debug``: with the traceback). A progress bar (on a terminal) names the batch, member and
ε running; SIGTERM stops after the running member × ε, writes the record of the whole batches
done (``incomplete`` in ``robustness.json``, a note in ``report.md``) and exits with 143.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import medrobust
from medrobust.cli_errors import COMMAND_ERRORS, command_error
from medrobust.options import Norm, Split, When, choices


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medrobust evaluate", description=(
        "Robustness of a model medrobust did not train (TorchScript, torch.export, state dict + "
        "--net, medrobust checkpoint; detection: a torchvision-style detector as a state dict + "
        "--net) on a manifest (every row: the evaluation set) or datamodule config."))
    p.add_argument("--model", required=True, help="model file")
    p.add_argument("--data", required=True, help="manifest (CSV/TSV/JSON), data folder (a manifest in it, or "
                   "images/ + masks/ for segmentation) or datamodule YAML config")
    from lightning_modules.tasks import task_names

    p.add_argument("--task", required=True, choices=list(task_names()))
    p.add_argument("--suite", default="standard",
                   help='named suite (standard, quick, aa_budget) or a JSON attack list, e.g. '
                        '\'[{"name": "pgd", "steps": 50}]\'')
    p.add_argument("--eps", type=float, nargs="+", required=True, help="budgets in pixel units")
    p.add_argument("--norm", default="linf", choices=choices(Norm))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="input normalisation mean (per channel)")
    p.add_argument("--std", type=float, nargs="+", default=None, help="input normalisation std (per channel)")
    p.add_argument("--no-normalization", action="store_true",
                   help="the model takes the images as they are (in the data's bounds)")
    p.add_argument("--net", default=None,
                   help='for a state dict: the network as JSON {"class_path": …, "init_args": {…}}')
    p.add_argument("--trusted", action="store_true", help="allow unpickling a whole nn.Module (runs its code)")
    p.add_argument("--split", default="test", choices=choices(Split))
    p.add_argument("--subset", type=int, default=None, help="evaluate this many samples (seeded)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sanity", default="test", choices=choices(When),
                   help="run the gradient-masking checks (default) or not")
    p.add_argument("--intervals", default="test", choices=choices(When),
                   help="confidence intervals from the per-sample file (default) or not")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="1")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--corruptions", default=None,
                   help="corruption suite run beside the attacks: dermoscopy, chest_xray, xray, retina, "
                        "microscopy, pathology, ct, mri (docs/corruptions.md)")
    p.add_argument("--corruption-reference", default=None,
                   help="robustness.json of a reference run (same corruption suite) for CE / mCE")
    p.add_argument("--corruption-severities", type=int, nargs="+", default=None, help="severities (1-5)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def normalization_of(args: argparse.Namespace) -> object:
    """``--mean/--std`` → ``{mean, std}``; ``--no-normalization`` → ``"none"``; neither → ``None``."""
    if args.no_normalization and (args.mean or args.std):
        raise ValueError("--no-normalization contradicts --mean/--std")
    if (args.mean is None) != (args.std is None):
        raise ValueError("give both --mean and --std")
    if args.mean is not None:
        one = lambda v: v[0] if len(v) == 1 else v  # noqa: E731
        return {"mean": one(args.mean), "std": one(args.std)}
    return "none" if args.no_normalization else None


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 2 on a user error, 143 when a SIGTERM stopped it (the
    record of what was finished is written, marked ``incomplete``)."""
    args = parser().parse_args(argv)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # a --net class path may name the user's module here (as python -m does)
    for name in medrobust.PACKAGES:  # bind the framework's names before evaluation imports them
        getattr(medrobust, name)
    from callbacks.evaluation_stop import EvaluationInterrupted

    try:
        from callbacks.record import RobustnessRecord
        from medrobust.cli_summary import summarise_record
        from medrobust.evaluation import evaluate

        net = json.loads(args.net) if args.net else None
        suite = json.loads(args.suite) if args.suite.lstrip().startswith("[") else args.suite
        devices = int(args.devices) if args.devices.isdigit() else args.devices
        record = evaluate(args.model, args.data, task=args.task, suite=suite, eps=args.eps, norm=args.norm,
                          normalization=normalization_of(args), out=args.out, net=net, trusted=args.trusted,
                          split=args.split, subset=args.subset, batch_size=args.batch_size, seed=args.seed,
                          sanity=args.sanity, intervals=args.intervals, corruptions=args.corruptions,
                          corruption_reference=args.corruption_reference,
                          corruption_severities=args.corruption_severities,
                          accelerator=args.accelerator, devices=devices, strategy=args.strategy)
        assert isinstance(record, RobustnessRecord)
        if os.environ.get("LOCAL_RANK", "0") in ("", "0"):  # under DDP: once, from rank 0
            print(f"[medrobust] {args.split}: {summarise_record(record, None)}")
            print(f"[medrobust] written to {args.out}")
    except EvaluationInterrupted as stop:  # SIGTERM: the incomplete record is written (message printed)
        if args.debug:
            traceback.print_exc()
        written = Path(args.out) / "robustness.json"
        if written.is_file() and os.environ.get("LOCAL_RANK", "0") in ("", "0"):
            from medrobust.cli_summary import summarise_record

            print(f"[medrobust] {args.split}: {summarise_record(json.loads(written.read_text()), None)}")
        return int(stop.code) if isinstance(stop.code, int) else 143
    except COMMAND_ERRORS as err:
        return command_error("evaluate", err, args.debug)
    return 0
