"""Cost of the statistics (issue 23) relative to the evaluation they summarise.

Trains a joel2022 PneumoniaMNIST run for a few batches (``--quick`` settings otherwise, so the
test evaluation is the suite's: FGSM, BIM-10, PGD-10 at 13 ε on the whole test split of 624
images), or reads an existing run folder (``--run``), then times, side by side on that one test
record:

* the evaluation itself (``eval_seconds`` of the record: attacks, worst case, metrics),
* ``record_intervals`` (the record's intervals from its per-sample file, as the callback
  computes them after every test evaluation),
* ``dataset_intervals`` (the dataset-level metrics' intervals — AUROC, balanced accuracy, F1;
  mAP for a detection run — BCa over images from ``robustness_evidence.json``), when the run
  has that file,
* the verdicts (``joel_claims`` with the run standing for both models of a pair: per-sample files
  read, paired intervals, the size rule's ratio bootstrap skipped — one size) and the report's
  uncertainty table,

and prints each as a fraction of the evaluation (target: ≤ 2 %).

``--detection``: the same for a detection evaluation, where keeping the evidence costs more (each
image's detections matched to its ground truth at 10 IoU thresholds, for every condition): the
tiny FCOS of the tests trained 60 steps on 64×64 synthetic cells, evaluated with FGSM and
PGD-10 at ``--det-eps`` on ``--det-images`` validation images; also timed: the matching done
while the evaluation ran (``sample_evidence``, part of the evaluation's seconds). No verdicts.

    python benchmarks/stats_cost.py --threads 1                 # train + test a run, then time
    python benchmarks/stats_cost.py --run results/…/version_0   # an existing run folder
    python benchmarks/stats_cost.py --threads 1 --detection     # the detection case
"""

from __future__ import annotations

import argparse
import math
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

    from benchmarks import config_edit, paper_run
    from benchmarks.paper_joel import JOEL

    run = next(r for r in JOEL.runs if r.key == "pneumoniamnist/naive")
    cfg, _ = config_edit.derive_config(run, JOEL.group(run.group), "quick")
    for key, value in {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1}.items():
        config_edit.set_path(cfg, key, value)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paper_run.execute(path, out / "runs", accelerator, "stats_cost")


def make_detection_run(out: Path, images: int, eps: list[float]) -> tuple[Path, float]:
    """Train the tests' tiny FCOS (60 steps, synthetic 64×64) and validate it with
    ``AdversarialEvaluation`` (FGSM, PGD-10 at ``eps``; intervals on); returns the folder of
    ``robustness.json`` and the seconds spent in ``sample_evidence`` during the evaluation."""
    import lightning as L

    from callbacks import AdversarialEvaluation
    from datamodules.synthetic import SyntheticDataModule
    from lightning_modules.detection_module import DetectionModule

    L.seed_everything(0)
    dm = SyntheticDataModule(task="detection", num_train=480, num_val=images, num_test=8, image_size=(64, 64),
                             in_channels=3, batch_size=8, seed=0)
    module = DetectionModule(data_info=dm.info, lr=3e-3,
                             net={"class_path": "lightning_modules.nets.detectors.tiny_fcos",
                                  "init_args": {"widths": [16, 32], "out_channels": 32}})
    quiet = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
             "enable_model_summary": False}
    L.Trainer(max_epochs=1, max_steps=60, num_sanity_val_steps=0, limit_val_batches=0, **quiet).fit(module, dm)
    spent = [0.0]
    keep = module.sample_evidence

    def timed(output: Any, batch: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return keep(output, batch)
        finally:
            spent[0] += time.perf_counter() - t0
    module.sample_evidence = timed  # type: ignore[method-assign]
    cb = AdversarialEvaluation(attacks=[{"name": "fgsm"}, {"name": "pgd", "steps": 10}], eps=eps, subset=images,
                               plot=False, report=False, intervals="always")
    L.Trainer(callbacks=[cb], default_root_dir=str(out), **quiet).validate(module, datamodule=dm, verbose=False)
    return out, spent[0]


def _median_time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(log_dir: Path, repeat: int, verdicts_too: bool = True) -> dict[str, float]:
    from benchmarks import paper_evidence
    from benchmarks.paper_joel import JOEL, joel_claims
    from benchmarks.paper_tables import uncertainty_table
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
    verdicts_s = _median_time(verdicts, repeat) if verdicts_too else math.nan
    from callbacks.dataset_metrics import dataset_intervals
    from callbacks.evidence import FILE_NAME as EVIDENCE_FILE
    from callbacks.evidence import Evidence

    dataset_s = math.nan
    if (log_dir / EVIDENCE_FILE).is_file():
        evidence = Evidence.load(log_dir / EVIDENCE_FILE)
        dataset_s = _median_time(lambda: dataset_intervals(evidence, eps, attacks), repeat)
    return {"samples": len(table.sample_ids), "columns": len(table.columns),
            "eval_s": float(record.eval_seconds or float("nan")), "intervals_s": intervals_s,
            "dataset_s": dataset_s, "verdicts_s": verdicts_s}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="a run folder holding robustness.json and robustness_samples.csv")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5, help="timings of the statistics (median reported)")
    p.add_argument("--accelerator", default=None)
    p.add_argument("--detection", action="store_true", help="the detection case (module docstring)")
    p.add_argument("--det-images", type=int, default=32)
    p.add_argument("--det-eps", type=float, nargs="+", default=[0.004, 0.008, 0.016])
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    # NumPy's BLAS with the same thread count as torch (the statistics' matrix products)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    if "MEDROBUST_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["MEDROBUST_DATA"] = str((ROOT.parent / "shared" / "data").resolve())
    import torch

    torch.set_num_threads(args.threads)
    kept = math.nan
    if args.run:
        log_dir = Path(args.run)
    elif args.detection:
        log_dir, kept = make_detection_run(Path(tempfile.mkdtemp(prefix="stats_cost_det_")), args.det_images,
                                           args.det_eps)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="stats_cost_"))
        log_dir = ROOT / make_run(tmp, args.accelerator)["log_dir"]
    res = measure(log_dir, args.repeat, verdicts_too=not args.detection)
    res["evidence_kept_s"] = kept
    ev = res["eval_s"]
    print(f"test record: {res['samples']} samples × {res['columns']} per-sample columns ({log_dir})")
    print(f"{'evaluation (attacks, worst case, metrics)':<46} {ev:8.2f} s   100 %")
    if not math.isnan(kept):
        print(f"{'  of which: evidence kept (matching)':<46} {kept:8.3f} s  {100 * kept / ev:5.2f} %")
    for key, name in (("intervals_s", "record_intervals (per evaluation)"),
                      ("dataset_s", "dataset_intervals (per evaluation)"),
                      ("verdicts_s", "verdicts + uncertainty table (per report)")):
        print(f"{name:<46} {res[key]:8.3f} s  {100 * res[key] / ev:5.2f} %")
    total = sum(0.0 if math.isnan(res[k]) else res[k] for k in ("intervals_s", "verdicts_s", "dataset_s",
                                                                  "evidence_kept_s"))
    print(f"{'statistics, total':<46} {total:8.3f} s  {100 * total / ev:5.2f} %  (target ≤ 2 %)")
    return res


if __name__ == "__main__":
    main()
