"""Corruption robustness of trained models and the corruption suite's cost next to PGD-10.

For each dataset (PneumoniaMNIST → the ``chest_xray`` suite, PH2 → ``dermoscopy``) and each
method's checkpoint of a run folder (the xue2019 suite's clean, SAT and denoise models), runs
``trainer.test`` with :class:`callbacks.AdversarialEvaluation` (PGD-10 L∞ at ε 0.004 plus the
modality's corruption suite at severities 1–5 on the same test samples, intervals on) and
prints the table: the metric per corruption (mean over severities, with its interval), the mean
per severity, the mean error and the mCE / relative mCE against the clean model (the first
method). Then, measured side by side on the same batches of the clean model, the seconds per
evaluated sample of the whole corruption suite and of one PGD-10 attack, and their ratio.

Example (the numbers of docs/corruptions.md)::

    python benchmarks/corruption_robustness.py --runs /work/models/xue2019 \\
        --datasets pneumoniamnist --subset 624 --out /work/models/h25corr/corruptions

mCE and relative mCE carry a paired, seeded percentile bootstrap interval over the test samples
(:func:`callbacks.corruption_intervals.mce_interval`: both runs' per-sample files resampled with the
same draw, the balanced error recomputed from the test split's labels, read by sample id from
the run's datamodule). ``--from-saved`` recomputes the tables from the files an earlier run left
under ``--out`` without loading or running any model (the labels still come from the dataset)::

    python benchmarks/corruption_robustness.py --from-saved --runs /work/models/xue2019 \
        --out /work/models/h25corr/corruptions --summary /tmp/summary.json

Writes each run's ``robustness.json``, ``robustness_samples.csv``, ``report.md``,
``corruptions.png`` under ``--out/<dataset>_<method>/`` and example panels
``panel_<dataset>_<method>.png`` (one image at severities 0–5 of every corruption, with the
prediction).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

SUITE_FOR = {"pneumoniamnist": "chest_xray", "ph2": "dermoscopy"}


def _build(spec: dict[str, Any]) -> Any:
    module_name, _, cls_name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), cls_name)(**(spec.get("init_args") or {}))


def _checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.glob("version_*/checkpoints/best-*.ckpt")) or sorted(run_dir.glob("version_*/checkpoints/last.ckpt"))
    if not found:
        raise FileNotFoundError(f"no checkpoint under {run_dir}")
    return found[-1]


def load(runs: Path, dataset: str, method: str, config: Path | None = None,
         ckpt: Path | None = None) -> tuple[Any, Any, Path]:
    """``(module in eval mode, datamodule, checkpoint)`` of one run of the xue2019 folder (or of
    the ``config`` and ``ckpt`` given)."""
    import lightning_modules

    config = config or runs / "configs" / f"{dataset}_{method}.yaml"
    cfg = yaml.safe_load(Path(config).read_text())
    dm = _build(cfg["data"])
    cls_name = cfg["model"]["class_path"].rpartition(".")[2]
    ckpt = ckpt or _checkpoint(runs / "runs" / f"{dataset}_{method}")
    module = getattr(lightning_modules, cls_name).load_from_checkpoint(str(ckpt), map_location="cpu")
    module.eval()
    return module, dm, ckpt


def evaluate(module: Any, dm: Any, suite: str, subset: int | None, out: Path, reference: Path | None) -> Path:
    import lightning as L

    from callbacks import AdversarialEvaluation

    cb = AdversarialEvaluation(attacks=[{"name": "pgd", "norm": "linf", "steps": 10}], eps=[0.004],
                               subset=subset, test_subset=subset, corruptions=suite, intervals="test",
                               sanity="never", corruption_reference=None if reference is None else str(reference))
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out))
    trainer.test(module, datamodule=dm, verbose=False)
    return out / "robustness.json"


def cost_side_by_side(module: Any, dm: Any, suite_name: str, n: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per sample of the whole suite (every corruption × severity 1–5 and the forward
    that scores it) and of PGD-10 (its 10 steps and the scoring forward), same batches."""
    from attacks import PGD
    from corruptions import corruption_suite

    dm.setup("test")
    ds = dm.test_dataloader().dataset
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(min(n, len(ds)))),
                                         batch_size=64, collate_fn=dm.test_dataloader().collate_fn)
    batches = list(loader)
    model = module.attack_model()
    suite = corruption_suite(suite_name)
    bounds = tuple(module.data_info.bounds)
    pgd = PGD(eps=0.004, norm="linf", steps=10, bounds=bounds)

    def loss(out: Any, batch: Any) -> torch.Tensor:
        return module.per_sample_loss(out, batch)

    def run_suite() -> None:
        for b in batches:
            for c in suite:
                for s in range(1, 6):
                    with torch.no_grad():
                        model(c(b["image"], s, generator=torch.Generator().manual_seed(s), bounds=bounds))

    def run_pgd() -> None:
        for b in batches:
            x_adv = pgd(model, b["image"], b, loss_fn=loss, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                model(x_adv)

    samples = sum(b["image"].shape[0] for b in batches)
    times: dict[str, list[float]] = {"suite": [], "pgd10": []}
    for _ in range(repeats):  # interleaved, so load on the shared machine hits both alike
        for name, fn in (("suite", run_suite), ("pgd10", run_pgd)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    suite_s = statistics.median(times["suite"]) / samples
    pgd_s = statistics.median(times["pgd10"]) / samples
    return {"samples": samples, "suite_s_per_sample": suite_s, "pgd10_s_per_sample": pgd_s,
            "ratio": suite_s / pgd_s, "cells": len(suite) * 5}


def panel(module: Any, dm: Any, suite_name: str, path: Path, index: int = 0) -> None:
    """One test image at severities 0–5 of every corruption, titled with the prediction
    (:func:`callbacks.corruption_report.plot_corruption_panel`)."""
    from callbacks.corruption_report import plot_corruption_panel

    dm.setup("test")
    loader = dm.test_dataloader()
    batch = loader.collate_fn([loader.dataset[index]])
    plot_corruption_panel(module, batch, suite_name, path)


def split_labels(config: Path, ids: Any) -> Any:
    """``int64[n]``: the class labels of test-split samples ``ids`` (the per-sample files'
    ``sample_id``: the index in the test split) of the datamodule of run ``config``; ``None``
    (with a message) when the split has no labels."""
    import numpy as np

    cfg = yaml.safe_load(Path(config).read_text())
    dm = _build(cfg["data"])
    dm.setup("test")
    ds = dm.test_dataloader().dataset
    try:
        return np.array([int(ds[int(i)]["label"]) for i in ids], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        print(f"[{config}] no class labels in the test split ({err!r}): plain error for the mCE intervals")
        return None


def mce_intervals(records: dict[str, Path], metric: str, labels: Any, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per method after the first (the reference): :func:`callbacks.corruption_intervals.mce_interval`
    of its mCE / relative mCE against the first, from both per-sample files aligned by sample id;
    ``labels``: ``{sample_id: label}`` (balanced error) or ``None`` (plain error). Checks that the
    estimate equals the record's mCE (same definition, same samples)."""
    import math

    import numpy as np

    from callbacks.corruption_intervals import mce_interval
    from callbacks.per_sample import FILE_NAME, SampleTable
    from callbacks.record import RobustnessRecord

    methods = list(records)
    ref_table = SampleTable.load(Path(records[methods[0]]).parent / FILE_NAME)
    out = {}
    for m in methods[1:]:
        sec = RobustnessRecord.load(records[m]).corruptions
        a, b = SampleTable.load(Path(records[m]).parent / FILE_NAME).aligned(ref_table)
        lab = None if labels is None else np.array([labels[int(i)] for i in a.sample_ids], dtype=np.int64)
        res = mce_interval(a.columns, b.columns, sec.names(), sec.severities, metric,
                           labels=lab, seed=seed)
        data = sec.to_dict()
        for key in ("mce", "relative_mce"):
            rec_v = data.get(key)
            if lab is not None and rec_v is not None and not math.isclose(res[key].estimate, rec_v, rel_tol=1e-4, abs_tol=1e-6):
                print(f"[{m}] warning: bootstrap {key} estimate {res[key].estimate:.6f} ≠ record {rec_v:.6f}")
        out[m] = res
    return out


def _mce_cell(res: dict[str, Any], key: str) -> str:
    ci = res[key]
    text = f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]"
    undefined = res["undefined" if key == "mce" else "relative_undefined"]
    left = res["estimate_undefined" if key == "mce" else "estimate_relative_undefined"]
    rest = [v for c, v in undefined.items() if c not in left]
    notes = []
    if left:  # undefined on the observed samples: how often they are in the resamples
        notes.append(f"{len(left)} undefined, in ≥ {100 * min(undefined[c] for c in left):.1f} % of resamples")
    if rest and max(rest) > 0:
        notes.append(f"the others left out of ≤ {100 * max(rest):.1f} % of resamples")
    if notes:
        text += f" ({'; '.join(notes)})"
    return text + ("" if res["error"] == "balanced" else " (plain error)")


def table(records: dict[str, Any], metric: str, mce: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Markdown: per corruption, ``metric`` mean over severities [interval] per method; the mean
    per severity; the mean error, mCE and relative mCE (with their paired bootstrap intervals
    when ``mce``, from :func:`mce_intervals`, is given)."""
    from callbacks.record import RobustnessRecord

    recs = {m: RobustnessRecord.load(p) for m, p in records.items()}
    methods = list(recs)
    first = recs[methods[0]].corruptions
    lines = [f"| corruption | {' | '.join(methods)} |", "|---|" + "---|" * len(methods)]

    def ci_mean(rec: Any, name: str) -> str:
        v = next(r for r in rec.corruptions.to_dict()["per_corruption"] if r["corruption"] == name)["mean"][metric]
        iv = next((r for r in (rec.intervals or {}).get("corruptions", {}).get("per_corruption", [])
                   if r["corruption"] == name), None)
        return f"{v:.3f}" + (f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv else "")

    lines.append("| clean | " + " | ".join(
        f"{r.clean[metric]:.3f}" + (lambda ci: f" [{ci.low:.3f}, {ci.high:.3f}]" if ci else "")(r.interval("clean"))
        for r in recs.values()) + " |")
    for name in first.names():
        lines.append(f"| {name} | " + " | ".join(ci_mean(r, name) for r in recs.values()) + " |")
    for s in first.severities:
        vals = [statistics.fmean(r.corruptions.value(n, s, metric) for n in first.names()) for r in recs.values()]
        lines.append(f"| mean, severity {s} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    lines.append("| mean over all | " + " | ".join(
        f"{r.corruptions.mean()[metric]:.3f}" + (lambda iv: f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv else "")(
            (r.intervals or {}).get("corruptions", {}).get("mean")) for r in recs.values()) + " |")
    data = {m: r.corruptions.to_dict() for m, r in recs.items()}
    lines.append(f"| mean error ({first.error_metric}) | " + " | ".join(
        f"{d['mean_error']:.3f}" for d in data.values()) + " |")
    if mce:
        for key, label in (("mce", "mCE"), ("relative_mce", "relative mCE")):
            lines.append(f"| {label} vs {methods[0]} [paired bootstrap] | " + " | ".join(
                "1 (reference)" if i == 0 else _mce_cell(mce[m], key) for i, m in enumerate(methods)) + " |")
        return _pgd_row(lines, recs, metric)
    lines.append("| mCE vs clean | " + " | ".join("1 (reference)" if i == 0 else f"{d['mce']:.3f}"
                                                 for i, d in enumerate(data.values())) + " |")
    lines.append("| relative mCE vs clean | " + " | ".join(
        "1 (reference)" if i == 0 else f"{d['relative_mce']:.3f} ({len((d['reference'] or {}).get('undefined', []))} "
        "undefined)" for i, d in enumerate(data.values())) + " |")
    return _pgd_row(lines, recs, metric)


def _pgd_row(lines: list[str], recs: dict[str, Any], metric: str) -> list[str]:
    pgd = [next((e.metrics.get(metric) for e in r.attacks), math.nan) for r in recs.values()]
    lines.append("| PGD-10 ε=0.004 | " + " | ".join(f"{v:.3f}" for v in pgd) + " |")
    return lines


def paired(records: dict[str, Any], metric: str) -> list[str]:
    """Markdown: each method minus the first (the reference) on the same samples — the paired
    difference of the per-sample mean over severities, per corruption and over all, with its
    BCa interval and verdict (``callbacks.uncertainty.paired_difference``, as ``medrobust
    compare``); positive = the method keeps more ``metric``."""
    import numpy as np

    from callbacks.per_sample import FILE_NAME, SampleTable
    from callbacks.record import RobustnessRecord
    from callbacks.uncertainty import decide, paired_difference

    methods = list(records)
    if len(methods) < 2:
        return []
    ref_rec = RobustnessRecord.load(records[methods[0]])
    names, sev = ref_rec.corruptions.names(), ref_rec.corruptions.severities
    tables = {m: SampleTable.load(Path(p).parent / FILE_NAME) for m, p in records.items()}

    def per_sample(t: Any, which: list[str]) -> np.ndarray:
        if not which:
            return t.column(f"clean/{metric}")
        return np.mean([t.column(f"corruption-{n}/{s}/{metric}") for n in which for s in sev], axis=0)

    lines = [f"| Δ {metric} vs {methods[0]} (paired) | " + " | ".join(methods[1:]) + " |",
             "|---|" + "---|" * (len(methods) - 1)]
    for label, which in [("clean", []), *((n, [n]) for n in names), ("mean over all", names)]:
        cells = []
        for m in methods[1:]:
            a, b = tables[m].aligned(tables[methods[0]])
            diff = paired_difference(per_sample(a, which), per_sample(b, which)).difference
            verdict = {"confirmed": "better", "refuted": "worse"}.get(decide(diff, "greater"), "inconclusive")
            cells.append(f"{diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] {verdict}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("/work/models/xue2019"))
    ap.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "ph2"])
    ap.add_argument("--methods", nargs="+", default=["clean", "sat", "denoise"])
    ap.add_argument("--subset", type=int, default=None, help="test samples (default: the whole split)")
    ap.add_argument("--cost-samples", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("results/corruptions"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extra", nargs=4, action="append", default=[], metavar=("DATASET", "NAME", "CONFIG", "CKPT"),
                    help="one more model: its dataset, a name for the table, its run config and checkpoint")
    ap.add_argument("--from-saved", action="store_true",
                    help="no model: recompute the tables from the records and per-sample files under --out")
    ap.add_argument("--summary", type=Path, default=None, help="where to write summary.json (default: --out)")
    ap.add_argument("--mce-seed", type=int, default=0, help="seed of the mCE bootstrap")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    summary: dict[str, Any] = {}
    for ds in args.datasets:
        suite = SUITE_FOR[ds]
        records: dict[str, Path] = {}
        extra = {name: (Path(cfg), Path(ck)) for d, name, cfg, ck in args.extra if d == ds}
        for method in [*args.methods, *extra]:
            if args.from_saved:
                saved = args.out / f"{ds}_{method}" / "robustness.json"
                if saved.exists():
                    records[method] = saved
                else:
                    print(f"[{ds}/{method}] skipped: no {saved}")
                continue
            try:
                module, dm, ckpt = load(args.runs, ds, method, *extra.get(method, (None, None)))
            except FileNotFoundError as err:
                print(f"[{ds}/{method}] skipped: {err}")
                continue
            t = time.perf_counter()
            reference = records.get(args.methods[0])
            records[method] = evaluate(module, dm, suite, args.subset, args.out / f"{ds}_{method}", reference)
            print(f"[{ds}/{method}] {ckpt} evaluated in {time.perf_counter() - t:.0f} s")
            panel(module, dm, suite, args.out / f"panel_{ds}_{method}.png")
            if method == args.methods[0]:
                cost = cost_side_by_side(module, dm, suite, args.cost_samples)
                summary[f"{ds}_cost"] = cost
                print(f"[{ds}] cost per evaluated sample, same {cost['samples']} samples, side by side: "
                      f"corruption suite ({cost['cells']} corruption × severity cells) "
                      f"{1e3 * cost['suite_s_per_sample']:.3f} ms vs PGD-10 {1e3 * cost['pgd10_s_per_sample']:.3f} ms "
                      f"→ ratio {cost['ratio']:.2f}")
        if records:
            first = next(iter(records))
            config = extra[first][0] if first in extra else args.runs / "configs" / f"{ds}_{first}.yaml"
            from callbacks.per_sample import FILE_NAME, SampleTable

            ids = SampleTable.load(records[first].parent / FILE_NAME).sample_ids
            lab = split_labels(config, ids)
            labels = None if lab is None else dict(zip(ids.tolist(), lab.tolist(), strict=True))
            mce = mce_intervals(records, "accuracy", labels, seed=args.mce_seed)
            summary[f"{ds}_mce"] = {m: {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in r.items()}
                                    for m, r in mce.items()}
            lines = table(records, "accuracy", mce) + [""] + paired(records, "accuracy")
            summary[ds] = lines
            print(f"\n## {ds} — suite {suite}, accuracy (95 % intervals)\n")
            print("\n".join(lines))
    summary_path = args.summary or args.out / "summary.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
