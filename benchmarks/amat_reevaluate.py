"""The amat suite's verdicts again, with the trained checkpoints evaluated by a stronger suite.

``benchmarks/run.py --suite amat`` tests every run with one attack (L2 PGD, ``--quick``: PGD-10
on the task loss) over an ε grid, and decides "AMAT gives a better clean/robust trade-off than
SAT" on those records. A single attack has no worst case to choose, so issue 22's fix of the
worst-case rule cannot change those numbers; what can change them is a stronger attack. This
script takes a finished run's ``results.json``, evaluates the best checkpoint of every run of a
group (``--group landmarks``) with a named suite of :mod:`attacks.suites` (``standard``,
``quick``) or one APGD on a chosen loss (``--apgd-steps``), in the same threat model (every
member L2 when the records were L2) on the same test split and ε grid, and applies the suite's
own claim rules (``benchmarks/paper_suites.py``, the same interval tests on per-sample files) to
the new records:

    MEDROBUST_DATA=/work/shared/data python benchmarks/amat_reevaluate.py \\
        --results results/amat/results.json --group landmarks --suite quick --out results/amat_quick

``--reuse`` reads records already in ``<out>/<run>/robustness.json`` (written by this script or by
``medrobust evaluate --out <out>/<run>`` with the same settings) instead of evaluating again.
Prints a table per run (clean, worst case per ε, robust area) and the claims; writes
``<out>/results.json`` (the runs with the new records, for ``benchmarks/paper_report``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT


def record_settings(record: dict[str, Any]) -> tuple[list[float], str]:
    """The ε grid and the norm of a run's test record (every member must share one norm).

    Raises:
        ValueError: members of several norms (no single threat model to repeat).
    """
    eps = sorted({float(e["eps"]) for e in record["ensemble"]})
    norms = {str(m.get("norm") or "linf") for m in record["members"]}
    if len(norms) != 1:
        raise ValueError(f"record members use several norms {sorted(norms)}: no single threat model to repeat")
    return eps, norms.pop()


def suite_argument(suite: str | None, apgd_steps: int | None, apgd_loss: str | None, norm: str) -> Any:
    """What :func:`medrobust.evaluate` takes as ``suite``: a named suite (its norm set by
    ``evaluate(norm=…)``), or one APGD member of ``norm`` (a list keeps each member's own norm)."""
    if (suite is None) == (apgd_steps is None):
        raise ValueError("give exactly one of --suite and --apgd-steps")
    if suite is not None:
        return suite
    member: dict[str, Any] = {"name": "apgd", "norm": norm, "steps": int(apgd_steps),
                              "label": f"apgd-{apgd_loss or 'task'}-{apgd_steps}"}
    if apgd_loss:
        member["loss"] = apgd_loss
    return [member]


def with_records(runs: dict[str, Any], records: dict[str, tuple[dict[str, Any], Path]]) -> dict[str, Any]:
    """A copy of ``results.json``'s runs where each key of ``records`` has its new test record and
    its ``log_dir`` (the folder of that record's ``robustness_samples.csv``, relative to the
    repository root as ``results.json`` keeps it); the other runs are left out."""
    out = {}
    for key, (record, folder) in records.items():
        if key not in runs:
            raise KeyError(f"run {key!r} is not in results.json (runs: {sorted(runs)})")
        entry = copy.deepcopy(runs[key])
        entry.pop("seeds", None)
        entry["test"] = record
        entry["log_dir"] = os.path.relpath(Path(folder).resolve(), ROOT)
        out[key] = entry
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="results.json of a finished amat run")
    p.add_argument("--group", required=True, choices=["segmentation", "landmarks"],
                   help="the group of the amat suite (detection: medrobust.evaluate has no detection task)")
    p.add_argument("--suite", default=None, help="named suite (standard, quick)")
    p.add_argument("--apgd-steps", type=int, default=None, help="instead of a suite: one APGD of this many steps")
    p.add_argument("--apgd-loss", default=None, help="its loss (default: the task loss)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reuse", action="store_true", help="read <out>/<run>/robustness.json instead of evaluating")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    import medrobust
    from benchmarks.common import typed_record
    from benchmarks.paper_amat import AMAT

    torch.set_num_threads(args.threads)
    saved = json.loads(args.results.read_text())
    runs = {k: v for k, v in saved["runs"].items() if v.get("test") and k.startswith(f"{args.group}/")}
    if not runs:
        raise SystemExit(f"--group {args.group}: no tested run in {args.results}")
    records: dict[str, tuple[dict[str, Any], Path]] = {}
    for key, entry in runs.items():
        eps, norm = record_settings(entry["test"])
        folder = args.out / key.split("/", 1)[1]  # e.g. <out>/sat0.25
        if not args.reuse:
            t0 = time.time()
            medrobust.evaluate(ROOT / entry["ckpt"], ROOT / entry["derived_config"], task=args.group,
                               suite=suite_argument(args.suite, args.apgd_steps, args.apgd_loss, norm),
                               eps=eps, norm=norm, out=folder, accelerator="cpu", progress=False)
            print(f"{key}: evaluated in {time.time() - t0:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        records[key] = (json.loads((folder / "robustness.json").read_text()), folder)
    new = with_records(runs, records)
    metric = AMAT.group(args.group).metric
    print(f"\n| run | clean {metric} | " + " | ".join(f"ε={e:g}" for e in eps) + " | robust area |")
    for entry in new.values():
        rec = typed_record(entry["test"])
        worst = [rec.value(metric, "ensemble", e) for e in eps]
        print(f"| {entry['label']} | {rec.value(metric, None, None):.3f} | "
              + " | ".join(f"{w:.3f}" for w in worst) + f" | {rec.robust_area.value:.3f} |")
    for claim in AMAT.claims(new):
        if claim["claim"].startswith(f"[{args.group}]") and "comparable cost" not in claim["claim"]:
            print(f"\n{claim['measured']}\n{claim['tests']}\nverdict: {claim['verdict']}")
    (args.out / "results.json").write_text(json.dumps({"meta": saved["meta"], "runs": new}, indent=1))


if __name__ == "__main__":
    main()
