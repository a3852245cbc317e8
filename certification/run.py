"""Certify a model on a dataset's samples and put the certificates into the run's record, its
per-sample file, a curve and ``report.md`` — beside the empirical robustness of the same model on
the same samples.

:func:`certify_samples` runs one task certification (:mod:`certification.tasks`) over chosen
samples of a dataset and returns their per-sample columns; :func:`certification_entry` summarises
them into the record's ``certified`` entry (settings, and per L2 radius the certified metric and
abstain rate with intervals); :func:`add_certification` writes both into an evaluation's folder
(``robustness.json``, ``robustness_samples.csv``, ``certified.png``, ``report.md``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from certification.sampling import NoiseSampler
from certification.tasks import TaskCertification, condition_name

__all__ = ["add_certification", "certification_entry", "certify_samples"]

def certify_samples(cert: TaskCertification, dataset: Any, indices: Sequence[int], radii: Sequence[float],
                    device: torch.device | str = "cpu",
                    progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Per-sample certification values of ``dataset[i]`` for ``i`` in ``indices``.

    Returns:
        ``(sample_ids int64 [N], columns, seconds)``: ``columns`` maps ``"<R>/<metric>"``
        (the keys of :meth:`TaskCertification.sample_values`) to ``float64 [N]``; ``seconds`` is
        the wall time of the certification (noise, forwards and statistics).
    """
    rows: list[dict[str, float]] = []
    ids: list[int] = []
    start = time.perf_counter()
    for done, i in enumerate(indices):
        item = dict(dataset[int(i)])
        sid = int(torch.as_tensor(item.get("index", i)).reshape(-1)[0])
        item["image"] = torch.as_tensor(item["image"]).to(device).float()
        rows.append(cert.sample_values(item, radii, sid))
        ids.append(sid)
        if progress is not None:
            progress(done + 1, len(indices))
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    keys = list(rows[0]) if rows else []
    columns = {k: np.asarray([r.get(k, math.nan) for r in rows], dtype=np.float64) for k in keys}
    return np.asarray(ids, dtype=np.int64), columns, seconds


def certification_entry(cert: TaskCertification, columns: dict[str, np.ndarray], radii: Sequence[float],
                        seconds: float, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The record's ``certified`` entry of one σ: the settings and, per radius, the mean of each
    certified per-sample value with its interval (:func:`callbacks.record_intervals.values_interval`:
    Agresti–Coull for 0/1 values, BCa bootstrap otherwise)."""
    from callbacks.record_intervals import values_interval

    sampler: NoiseSampler = cert.sampler
    n_samples = len(next(iter(columns.values()))) if columns else 0
    curve = []
    for r in sorted(float(x) for x in radii):
        row: dict[str, Any] = {"radius": r}
        for name in [*cert.metrics(), "abstain"]:
            values = columns.get(cert.key(r, name))
            if values is None:
                continue
            finite = values[np.isfinite(values)]
            row[name] = float(finite.mean()) if finite.size else None
            ci = values_interval(values, level, seed)
            row[f"{name}_interval"] = ci.to_dict() if ci is not None else None
        curve.append(row)
    forwards_per_sample = (cert.n0 if cert.uses_selection else 0) + cert.n
    return {
        "method": "randomized_smoothing",
        "certificate": type(cert).__name__,
        "reference": cert.reference,
        "condition": condition_name(sampler.sigma),
        "metric": cert.metric,
        "lower_is_better": bool(cert.lower_is_better),
        "sigma": sampler.sigma,
        "n0": cert.n0 if cert.uses_selection else None,
        "n": cert.n,
        "alpha": cert.alpha,
        "batch": sampler.batch_size,
        "correction": cert.correction if cert.uses_correction else None,
        "seed": sampler.seed,
        "samples": n_samples,
        "radii": [float(r) for r in sorted(radii)],
        "curve": curve,
        "seconds": float(seconds),
        "forwards": int(sampler.forwards),
        "forwards_per_sample": int(forwards_per_sample),
    }


def add_certification(out: str | Path, cert: TaskCertification, sample_ids: np.ndarray,
                      columns: dict[str, np.ndarray], radii: Sequence[float], seconds: float,
                      file_stem: str = "robustness") -> dict[str, Any]:
    """Write one σ's certification into the evaluation folder ``out``: its columns into
    ``<stem>_samples.csv`` (condition :func:`condition_name`; the rows must be the file's
    samples), its entry into ``<stem>.json``'s ``certified`` (replacing one of the same σ), and
    redraw ``certified.png`` and ``report.md``. Returns the entry."""
    from callbacks.per_sample import SampleTable
    from callbacks.record import RobustnessRecord
    from callbacks.report import write_report

    out = Path(out)
    record_path, table_path = out / f"{file_stem}.json", out / f"{file_stem}_samples.csv"
    record = RobustnessRecord.load(record_path)
    table = SampleTable.load(table_path)
    mine = {int(s): i for i, s in enumerate(np.asarray(sample_ids).tolist())}
    missing = [int(s) for s in table.sample_ids.tolist() if int(s) not in mine]
    if missing or len(mine) != len(table.sample_ids):
        raise ValueError(f"add_certification: the certified samples are not the evaluation's samples "
                         f"({len(mine)} certified, {len(table.sample_ids)} evaluated; missing ids {missing[:5]})")
    rows = np.asarray([mine[int(s)] for s in table.sample_ids.tolist()], dtype=np.int64)
    cond = condition_name(cert.sampler.sigma)
    table.columns = {k: v for k, v in table.columns.items() if not k.startswith(cond + "/")}
    for key, values in columns.items():
        table.add(f"{cond}/{key}", values[rows])
    table.save(table_path)
    level = float((record.intervals or {}).get("level", 0.95))
    seed = int((record.intervals or {}).get("seed", 0))
    entry = certification_entry(cert, columns, radii, seconds, level, seed)
    kept = [e for e in record.certified or [] if not math.isclose(float(e.get("sigma", -1)), cert.sampler.sigma)]
    record.certified = sorted([*kept, entry], key=lambda e: float(e["sigma"]))
    record.save(record_path)
    from callbacks.plotting import plot_certified_curves

    plot_certified_curves(record, out / "certified.png")
    write_report(record, out / "report.md")
    return entry
