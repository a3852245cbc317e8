"""The comparisons of the fault-injection benchmark (:mod:`benchmarks.fault_resume`): two
checkpoints leaf by leaf (bit-equal or the largest difference), their parts (weights, buffers,
optimizer, scheduler, loops, RNG, callbacks), the per-epoch metrics and robustness records of an
uninterrupted run and a killed-and-resumed one, and the Markdown table of the results."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.fault_runs import FaultRun

#: checkpoint entries that name files or folders of one run (they differ between runs by design)
PATH_LIKE = ("dirpath", "best_model_path", "last_model_path", "kth_best_model_path", "best_k_models")


# ---------------------------------------------------------------------- comparisons
def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.path, leaf)`` of nested dicts / lists / tuples."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


@dataclass
class Comparison:
    """Leaf-by-leaf comparison of two checkpoints (or any nested structures)."""

    equal: int = 0
    total: int = 0
    max_abs_diff: float = 0.0
    different: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"equal": self.equal, "total": self.total, "max_abs_diff": self.max_abs_diff,
                "different": self.different, "skipped": self.skipped}


def _leaf_diff(a: Any, b: Any) -> float | None:
    """0.0 when bit-equal, else the largest absolute difference (``inf`` when incomparable)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return math.inf
        if torch.equal(a, b) or (a.is_floating_point() and bool(
                torch.equal(torch.nan_to_num(a, nan=1.5e300), torch.nan_to_num(b, nan=1.5e300)))):
            return 0.0
        if a.is_floating_point() or a.is_complex():
            return float((a.double() - b.double()).abs().nan_to_num(nan=math.inf).max())
        return float((a.long() - b.long()).abs().max()) if a.numel() else 0.0
    if isinstance(a, bool | int | float) and isinstance(b, bool | int | float):
        if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            return 0.0
        return abs(float(a) - float(b))
    return None


def compare_trees(a: Any, b: Any, skip: tuple[str, ...] = PATH_LIKE) -> Comparison:
    """Compare every tensor and number leaf of ``a`` and ``b`` (strings and paths of one run
    are listed in ``skipped``)."""
    out = Comparison()
    fa, fb = dict(flatten(a)), dict(flatten(b))
    for key in sorted(set(fa) | set(fb)):
        if any(part in key for part in skip):
            out.skipped.append(key)
            continue
        va, vb = fa.get(key), fb.get(key)
        if isinstance(va, str | type(None)) and isinstance(vb, str | type(None)):
            if va != vb:
                out.different.append(key)
            continue
        out.total += 1
        diff = _leaf_diff(va, vb) if key in fa and key in fb else math.inf
        if diff is None:
            diff = 0.0 if va == vb else math.inf
        if diff == 0.0:
            out.equal += 1
        else:
            out.different.append(key)
            out.max_abs_diff = max(out.max_abs_diff, diff)
    return out


def load_last(run_dir: Path) -> dict[str, Any]:
    """``run_dir/checkpoints/last.ckpt``, loaded with ``weights_only=True``."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def checkpoint_groups(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a checkpoint compared separately in the table."""
    extra = ckpt.get("medrobust", {})
    sd = ckpt["state_dict"]
    return {
        "weights": {k: v for k, v in sd.items() if not k.startswith("method.")
                    and "running_" not in k and "num_batches_tracked" not in k},
        "buffers": {k: v for k, v in sd.items() if k.startswith("method.")
                    or "running_" in k or "num_batches_tracked" in k},
        "optimizer": ckpt.get("optimizer_states"),
        "scheduler": ckpt.get("lr_schedulers"),
        "loops": {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"),
                  "loops": ckpt.get("loops")},
        "rng": extra.get("rng"),
        "method_epoch_state": extra.get("method_epoch_state"),
        "callbacks": ckpt.get("callbacks"),
    }


def epoch_metrics(run_dirs: list[Path]) -> dict[int, dict[str, float]]:
    """Epoch-level metrics from the ``metrics.csv`` of the run folders, later folders winning:
    rows with an ``epoch`` and no ``step``-level key (``*_step``)."""
    out: dict[int, dict[str, float]] = {}
    for run_dir in run_dirs:
        path = run_dir / "metrics.csv"
        if not path.exists():
            continue
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                for key, value in row.items():
                    if key in ("epoch", "step") or not value or key.endswith("_step"):
                        continue
                    if "eval_seconds" in key:  # wall time, not a result
                        continue
                    out.setdefault(epoch, {})[key] = float(value)
    return out


def robustness_history(run_dirs: list[Path]) -> dict[int, dict[str, Any]]:
    """``epoch → record`` from ``robustness_history.jsonl`` (later folders winning)."""
    out: dict[int, dict[str, Any]] = {}
    for run_dir in run_dirs:
        path = run_dir / "robustness_history.jsonl"
        if path.exists():
            from callbacks.record import load_history

            for rec in load_history(path):
                out[rec.epoch] = rec.to_dict()
    return out


def strip_timing(rec: Any) -> Any:
    """A robustness record without its wall-clock fields (also the compute accounting's seconds)."""
    if isinstance(rec, dict):
        return {k: strip_timing(v) for k, v in rec.items() if k not in ("eval_seconds", "seconds", "seconds_per_sample")}
    if isinstance(rec, list):
        return [strip_timing(v) for v in rec]
    return rec


def compare_pair(run: FaultRun) -> dict[str, Any]:
    """All comparisons of one :class:`FaultRun`, as a JSON-able dict."""
    ref, res = load_last(run.reference), load_last(run.resumed)
    groups_a, groups_b = checkpoint_groups(ref), checkpoint_groups(res)
    groups = {name: compare_trees(groups_a[name], groups_b[name]).as_dict() for name in groups_a}
    whole = compare_trees({k: v for k, v in ref.items() if k != "hyper_parameters"},
                          {k: v for k, v in res.items() if k != "hyper_parameters"})
    m_ref = epoch_metrics([run.reference])
    m_res = epoch_metrics([run.killed, run.resumed])
    metrics = compare_trees(m_ref, m_res)
    h_ref = {e: strip_timing(r) for e, r in robustness_history([run.reference]).items()}
    h_res = {e: strip_timing(r) for e, r in robustness_history([run.killed, run.resumed]).items()}
    history = compare_trees(h_ref, h_res)
    from callbacks.record import RobustnessRecord

    final_a = strip_timing(RobustnessRecord.load(run.reference / "robustness.json").to_dict())
    final_b = strip_timing(RobustnessRecord.load(run.resumed / "robustness.json").to_dict())
    return {
        "method": run.method, "boundary": run.boundary, "seconds": run.seconds,
        "checkpoint": whole.as_dict(), "groups": groups,
        "buffer_keys": sorted(groups_a["buffers"]),
        "epoch_metrics": metrics.as_dict(), "metric_epochs": sorted(m_ref),
        "robustness_history": history.as_dict(),
        "robustness_json_equal": final_a == final_b,
        "eps_position": {"reference": ref["epoch"], "resumed": res["epoch"]},
    }


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table of the closing note: bit-equal leaves / total, largest difference."""
    lines = ["| method | resume point | checkpoint tensors+numbers bit-equal | largest diff (model, "
             "optimizer, scheduler) | weights | "
             "buffers | optimizer | scheduler | RNG | per-epoch metrics | robustness history | "
             "robustness.json |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        g = r["groups"]

        def cell(c: dict[str, Any]) -> str:
            return f"{c['equal']}/{c['total']}"

        largest = max(g[k]["max_abs_diff"] for k in ("weights", "buffers", "optimizer", "scheduler"))
        lines.append(
            f"| {r['method']} | {r['boundary']} | {cell(r['checkpoint'])} | "
            f"{largest:.3g} | {cell(g['weights'])} | {cell(g['buffers'])} | "
            f"{cell(g['optimizer'])} | {cell(g['scheduler'])} | {cell(g['rng'])} | "
            f"{cell(r['epoch_metrics'])} (max diff {r['epoch_metrics']['max_abs_diff']:.3g}) | "
            f"{cell(r['robustness_history'])} | {'equal' if r['robustness_json_equal'] else 'DIFFERENT'} |")
    return "\n".join(lines)
