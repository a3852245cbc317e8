"""The landmark and detection ``standard`` suites behind masked gradients (issue 22): the tables
of docs/attacks.md ("Masked gradients on landmarks and detection").

The models, maskings and budget are those of ``tests/attacks/test_masked_gradients_dense.py`` (both
take them from ``benchmarks/masked_models.py``, so the tables describe exactly the tested models): a four-convolution heatmap net on
16 × 16 synthetic skulls (3 landmarks, 6 validation images) and a tiny FCOS on 32 × 32 synthetic
cells (2 classes, 4 validation images), L∞ ε = 0.1, each wrapped in ``quantised``
(``round(16·x)/16``), ``x1000`` (heatmaps / class logits × 1000) and ``both``. Per masking: the
clean metric, PGD-10 on the task loss, every member of the ``standard`` suite, its worst case
(``RobustnessEvaluator``), an independent Square 5000 on the task's scale-free loss (another
seed), the fired sanity flags (which mark the worst case as an unreliable upper bound) and the
wall seconds.

    python benchmarks/masked_gradients_dense.py --tasks landmarks,detection --threads 1

Landmarks report the mean radial error (px, higher = worse for the model), detection mAP@0.5
(lower = worse).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.masked_models import (  # noqa: E402
    EPS,
    detector,
    landmark_model,
    pgd10,
    saturated,
    square_alone,
    standard_suite,
    task_metric,
)
from benchmarks.masking import Masked, Quantised, Scaled  # noqa: E402


def _landmark_case() -> tuple[Any, ...]:
    module, batch = landmark_model()
    maskings = {"quantised": (module, Quantised), "x1000": (module, Scaled),
                "both": (module, lambda m: Scaled(Quantised(m)))}
    return module, batch, maskings, "mre", True, "peak_margin", {}


def _detection_case() -> tuple[Any, ...]:
    base, batch = detector()
    sat = saturated(base)
    maskings = {"quantised": (base, Quantised), "x1000": (sat, lambda m: m), "both": (sat, Quantised)}
    return base, batch, maskings, "map_50", False, "dag", {"target_shift": None, "kappa": None, "box_weight": 0.0}


#: per task: ``() -> (module, batch, maskings {name: (module, wrap)}, metric, lower_is_better,
#: Square loss, its args)``
CASES = {"landmarks": _landmark_case, "detection": _detection_case}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="landmarks,detection")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for task in args.tasks.split(","):
        _, batch, maskings, metric, lower, loss, loss_args = CASES[task]()
        header = None
        for name, (module, wrap) in maskings.items():
            start = time.perf_counter()
            t = Masked(module, wrap)
            model = t.attack_model()
            clean = task_metric(module, model, batch, batch["image"], metric)
            pgd = task_metric(module, model, batch, pgd10(t, model, batch), metric)
            record, specs = standard_suite(t, batch, task, metric, lower)
            ref = task_metric(module, model, batch, square_alone(t, model, batch, loss, **loss_args), metric)
            labels = [s.label for s in specs]
            if header is None:
                header = (f"| {task} ({metric}) | clean | PGD-10 | " + " | ".join(labels)
                          + " | standard (worst case) | Square 5000 alone | flags | seconds |")
                print(f"\n{header}\n|" + "---|" * (len(labels) + 7), flush=True)
            cells = [f"{record.value(metric, label, EPS):.3f}" for label in labels]
            print(f"| {name} | {clean:.3f} | {pgd:.3f} | " + " | ".join(cells)
                  + f" | {record.value(metric, 'ensemble', EPS):.3f} | {ref:.3f} | "
                  + (", ".join(record.unreliable_flags()) or "–")
                  + f" | {time.perf_counter() - start:.0f} |", flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"\nL∞ ε = {EPS}; {args.threads} thread(s); wall seconds per masking (suite, PGD-10 and the "
          f"reference); load average {' '.join(load)}")


if __name__ == "__main__":
    main()
