"""Cost of the statistics (issue 23) relative to the evaluation they summarise.

Trains a joel2022 PneumoniaMNIST run for a few batches (``--quick`` settings otherwise, so the
test evaluation is the suite's: FGSM, BIM-10, PGD-10 at 13 ε on the whole test split of 624
images), or reads an existing run folder (``--run``), then times, side by side on that one test
record:

* the evaluation itself (``eval_seconds`` of the record: attacks, worst case, metrics),
* ``record_intervals`` (the record's intervals from its per-sample file, as the callback
  computes them after every test evaluation),
* the verdicts (``joel_claims`` with the run standing for both models of a pair: per-sample files
  read, paired intervals, the size rule's ratio bootstrap skipped — one size) and the report's
  uncertainty table,

and prints each as a fraction of the evaluation (target: ≤ 2 %).

    python benchmarks/stats_cost.py --threads 1                 # train + test a run, then time
    python benchmarks/stats_cost.py --run results/…/version_0   # an existing run folder
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_run(out: Path, accelerator: str | None) -> dict[str, Any]:
    """A joel2022 PneumoniaMNIST naive run: quick settings, 2 training batches, full test split."""
    import yaml

    from benchmarks import run as runner
    from benchmarks.paper_suites import JOEL

    run = next(r for r in JOEL.runs if r.key == "pneumoniamnist/naive")
    cfg, _ = runner.derive_config(run, JOEL.group(run.group), "quick")
    for key, value in {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1}.items():
        runner.set_path(cfg, key, value)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return runner.execute(path, out / "runs", accelerator, "stats_cost")


def _median_time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(log_dir: Path, repeat: int) -> dict[str, float]:
    from benchmarks import paper_evidence
    from benchmarks.paper_report import uncertainty_table
    from benchmarks.paper_suites import JOEL, joel_claims
    from callbacks.per_sample import FILE_NAME, SampleTable
    from callbacks.record import RobustnessRecord
    from callbacks.record_intervals import record_intervals

    record = RobustnessRecord.load(log_dir / "robustness.json")
    table = SampleTable.load(log_dir / FILE_NAME)
    metric = (record.intervals or {}).get("metric", "accuracy")
    eps = sorted({e.eps for e in record.attacks})
    attacks = [(e.attack, e.eps) for e in record.attacks]
    lower = bool((record.intervals or {}).get("lower_is_better", False))

    entry = {"label": "naive", "log_dir": str(log_dir), "test": record.to_dict(), "params": 0}
    results = {"pneumoniamnist/naive": entry, "pneumoniamnist/staged": {**entry, "label": "staged"}}

    def verdicts() -> None:
        paper_evidence._load_table.cache_clear()  # include reading the per-sample files
        joel_claims(results)
        uncertainty_table(JOEL, JOEL.group("pneumoniamnist"), results)

    intervals_s = _median_time(lambda: record_intervals(table, metric, eps, attacks, lower), repeat)
    verdicts_s = _median_time(verdicts, repeat)
    return {"samples": len(table.sample_ids), "columns": len(table.columns),
            "eval_s": float(record.eval_seconds or float("nan")), "intervals_s": intervals_s,
            "verdicts_s": verdicts_s}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="a run folder holding robustness.json and robustness_samples.csv")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5, help="timings of the statistics (median reported)")
    p.add_argument("--accelerator", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    if "MEDROBUST_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["MEDROBUST_DATA"] = str((ROOT.parent / "shared" / "data").resolve())
    import torch

    torch.set_num_threads(args.threads)
    if args.run:
        log_dir = Path(args.run)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="stats_cost_"))
        log_dir = ROOT / make_run(tmp, args.accelerator)["log_dir"]
    res = measure(log_dir, args.repeat)
    ev = res["eval_s"]
    print(f"test record: {res['samples']} samples × {res['columns']} per-sample columns ({log_dir})")
    print(f"{'evaluation (attacks, worst case, metrics)':<46} {ev:8.2f} s   100 %")
    for key, name in (("intervals_s", "record_intervals (per evaluation)"),
                      ("verdicts_s", "verdicts + uncertainty table (per report)")):
        print(f"{name:<46} {res[key]:8.3f} s  {100 * res[key] / ev:5.2f} %")
    total = res["intervals_s"] + res["verdicts_s"]
    print(f"{'statistics, total':<46} {total:8.3f} s  {100 * total / ev:5.2f} %  (target ≤ 2 %)")
    return res


if __name__ == "__main__":
    main()
