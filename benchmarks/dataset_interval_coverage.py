"""Coverage of the AUROC interval over images: BCa (what the record uses) beside the plain
percentile interval, on simulated binormal scores with a known AUROC.

Negatives score ``N(0, 1)``, positives ``N(d, 1)`` with ``d = √2 · Φ⁻¹(AUROC)`` (the binormal
model: AUROC = Φ(d/√2)); a fixed share of positives; each replication draws new scores and
computes both 95 % intervals from the same resamples (:func:`callbacks.dataset_metrics.weight_rows`,
seeded by the replication). Prints the share of replications whose interval covers the true
AUROC, side by side.

    python benchmarks/dataset_interval_coverage.py --n 100 --auc 0.94 --reps 1000 --resamples 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def coverage(n: int, auc: float, reps: int, resamples: int, positives: float = 0.4,
             level: float = 0.95) -> dict[str, float]:
    """``{"bca": share, "percentile": share}`` of ``reps`` seeded replications covering ``auc``."""
    import numpy as np
    from scipy import stats

    from callbacks.dataset_metrics import _interval, weight_rows
    from callbacks.dataset_statistics import auroc_statistic

    d = np.sqrt(2) * stats.norm.ppf(auc)
    y = np.arange(n) < int(round(positives * n))
    rng = np.random.default_rng(0)
    hits = {"bca": 0, "percentile": 0}
    alpha = (1 - level) / 2
    for rep in range(reps):
        s = rng.normal(size=n) + d * y
        stat = auroc_statistic(s, y)
        draws = np.concatenate([stat(w) for w in weight_rows(n, resamples, seed=rep)])
        iv = _interval(draws, level, n, resamples)
        hits["bca"] += iv.low <= auc <= iv.high
        boot = draws[1:1 + resamples]
        lo, hi = np.quantile(boot[np.isfinite(boot)], [alpha, 1 - alpha])
        hits["percentile"] += lo <= auc <= hi
    return {k: v / reps for k, v in hits.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="images per replication")
    p.add_argument("--auc", type=float, default=0.94, help="the true AUROC")
    p.add_argument("--reps", type=int, default=1000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--positives", type=float, default=0.4, help="share of positive images")
    args = p.parse_args(argv)
    t0 = time.process_time()
    res = coverage(args.n, args.auc, args.reps, args.resamples, args.positives)
    print(f"n={args.n} AUROC={args.auc} positives={args.positives:.0%} reps={args.reps} "
          f"resamples={args.resamples}: coverage of the 95 % interval — BCa {res['bca']:.1%}, "
          f"percentile {res['percentile']:.1%} ({time.process_time() - t0:.1f} s CPU)")
    return res


if __name__ == "__main__":
    main()
