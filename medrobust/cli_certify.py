"""``medrobust certify``: :func:`medrobust.smoothing.certify` from the command line::

    medrobust certify --model runs/noise/version_0/checkpoints/last.ckpt \\
        --data configs/experiment/classification_pneumoniamnist_gaussian.yaml --task classification \\
        --sigma 0.12 0.25 0.5 --radii 0.25 0.5 1.0 --n0 100 --n 500 --alpha 0.001 --subset 200 \\
        --out results/noise [--denoiser runs/denoise/…/last.ckpt] [--suite standard] \\
        [--certificates-from results/noise-quick]

writes ``robustness.json`` (with ``certified``), ``robustness_samples.csv`` (with the
``certified-s<σ>/…`` columns), ``robustness.png``, ``certified.png`` and ``report.md`` into
``--out`` and prints the certified curve. ``--certificates-from DIR`` takes the certificates of an
earlier run of the same model, samples and settings from ``DIR`` (checked field by field) and
runs only the empirical suite. Errors print as one message (``--debug``: traceback). SIGTERM
during the empirical evaluation stops it after the running attack × ε (what was finished is
written, marked incomplete; no certificate is computed) with status 143, as ``medrobust evaluate``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import medrobust
from certification.statistics import Correction
from medrobust.cli_errors import COMMAND_ERRORS, command_error
from medrobust.options import Split, When, choices


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medrobust certify", description=(
        "Randomized-smoothing certificates (Cohen et al. 2019; Fischer et al. 2021; Chiang et al. 2020) "
        "beside the empirical L2 robustness of the same model on the same samples."))
    p.add_argument("--model", required=True, help="medrobust checkpoint")
    p.add_argument("--data", required=True, help="datamodule or run config (YAML) or manifest")
    from lightning_modules.tasks import model_task, task_names

    certifiable = [n for n in task_names() if getattr(model_task(n).module, "certification", None)]
    p.add_argument("--task", required=True, choices=certifiable)
    p.add_argument("--sigma", type=float, nargs="+", required=True, help="noise levels σ (input units)")
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="L2 radii (and empirical ε)")
    p.add_argument("--n0", type=int, default=100, help="selection draws")
    p.add_argument("--n", type=int, default=500, help="estimation draws")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    p.add_argument("--batch", type=int, default=250, help="noisy copies per forward pass")
    p.add_argument("--denoiser", default=None, help="Denoise-method checkpoint: denoised smoothing")
    p.add_argument("--suite", default="standard",
                   help="empirical attack suite: standard, quick, or a JSON list of attack specs")
    p.add_argument("--correction", default="holm", choices=choices(Correction))
    p.add_argument("--split", default="test", choices=choices(Split))
    p.add_argument("--subset", type=int, default=None, help="this many samples (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sanity", default="test", choices=choices(When),
                   help="gradient-masking checks of the empirical evaluation (default) or not")
    p.add_argument("--device", default="cpu")
    p.add_argument("--certificates-from", default=None, metavar="DIR",
                   help="copy the certificates of an earlier certify output folder of the same model, samples "
                        "and settings (checked; refused naming the field that differs) and run only the "
                        "empirical suite")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in medrobust.PACKAGES:
        getattr(medrobust, name)
    from callbacks.evaluation_stop import EvaluationInterrupted

    try:
        from medrobust.smoothing import certify

        suite = json.loads(args.suite) if args.suite.lstrip().startswith("[") else args.suite
        record = certify(args.model, args.data, task=args.task, sigmas=args.sigma, radii=args.radii,
                         n0=args.n0, n=args.n, alpha=args.alpha, batch=args.batch, out=args.out,
                         denoiser=args.denoiser, suite=suite, correction=args.correction,
                         split=args.split, subset=args.subset, seed=args.seed, sanity=args.sanity,
                         device=args.device, certificates_from=args.certificates_from)
        for entry in record.certified or []:
            m = entry["metric"]
            curve = " · ".join(f"R={row['radius']:g} {m} {row.get(m)} (abstain {row.get('abstain')})"
                               for row in entry["curve"])
            print(f"[medrobust] certified σ={entry['sigma']:g}: {curve}")
        print(f"[medrobust] written to {args.out}")
    except EvaluationInterrupted:  # SIGTERM in the empirical evaluation: what it finished is written
        if args.debug:
            traceback.print_exc()
        print("medrobust certify: stopped by SIGTERM during the empirical evaluation; no certificate computed",
              file=sys.stderr)
        return 143
    except COMMAND_ERRORS as err:
        return command_error("certify", err, args.debug)
    return 0
