"""Fault injection: does a run SIGKILLed mid-epoch and resumed with ``--ckpt_path last`` end
where an uninterrupted run ends?

For each method (clean, staged SAT, AMAT, denoise) on a tiny synthetic classification config
(dropout, cosine LR schedule, per-epoch robustness evaluation, ``last.ckpt`` saving):

1. train ``--epochs`` epochs uninterrupted (``train.py fit`` in a subprocess);
2. train the same config again with the :class:`KillAt` callback, which sends the process
   ``SIGKILL`` at the start of training batch ``--kill-batch`` of epoch ``--kill-epoch`` —
   after a checkpoint was written, before the next one;
3. resume it with ``train.py fit ... --ckpt_path last`` to the end;
4. compare the two final ``last.ckpt`` tensor by tensor (weights, buffers such as AMAT's
   margins and threshold, optimizer and LR-scheduler state, loop progress, RNG states, callback
   states), the ε position, the logged per-epoch metrics and ``robustness.json`` /
   ``robustness_history.jsonl``.

``--boundary epoch`` resumes from the end-of-epoch checkpoint (``ModelCheckpoint`` after
validation, the default of every config); ``--boundary step`` saves ``last.ckpt`` after every
training batch (``every_n_train_steps: 1``), so the resume starts inside the epoch.

    python benchmarks/fault_resume.py --out results/fault_resume            # table + JSON
    python benchmarks/fault_resume.py --methods amat --boundary step --epochs 3

The same functions back ``tests/lightning_modules/test_faults.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import ROOT
from benchmarks.fault_compare import compare_pair, table
from benchmarks.fault_runs import LAUNCH, METHODS, run_pair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--boundary", nargs="+", default=["epoch", "step"], choices=["epoch", "step"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4, help="training batches per epoch")
    parser.add_argument("--kill-epoch", type=int, default=1)
    parser.add_argument("--kill-batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fault_resume")
    parser.add_argument("--fork", action="store_true",
                        help="fork this process for each run instead of starting python train.py")
    args = parser.parse_args(argv)
    if args.fork:
        torch.set_num_threads(1)
        LAUNCH["mode"] = "fork"
    results = []
    for boundary in args.boundary:
        for method in args.methods:
            workdir = args.out / f"{method}-{boundary}"
            if workdir.exists():
                import shutil

                shutil.rmtree(workdir)
            run = run_pair(method, workdir, args.epochs, args.kill_epoch, args.kill_batch, boundary,
                           args.batches)
            res = compare_pair(run)
            results.append(res)
            print(f"[fault_resume] {method} ({boundary}): checkpoint {res['checkpoint']['equal']}/"
                  f"{res['checkpoint']['total']} bit-equal, different: {res['checkpoint']['different'][:8]}",
                  flush=True)
    text = table(results)
    print(text)
    from callbacks.atomic import atomic_write_text

    atomic_write_text(args.out / "fault_resume.md", text + "\n")
    atomic_write_text(args.out / "fault_resume.json", json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
