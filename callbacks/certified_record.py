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

from callbacks.per_sample import SampleTable
from callbacks.plotting import plot_certified_curves
from callbacks.record import RobustnessRecord
from callbacks.record_intervals import values_interval
from callbacks.report import write_report
from certification.sampling import NoiseSampler
from certification.tasks import TaskCertification, condition_name

__all__ = ["add_certification", "certification_entry", "certify_samples", "reuse_certification"]

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

    record = RobustnessRecord.load(Path(out) / f"{file_stem}.json")
    level = float((record.intervals or {}).get("level", 0.95))
    seed = int((record.intervals or {}).get("seed", 0))
    entry = certification_entry(cert, columns, radii, seconds, level, seed)
    return _write_certification(out, entry, sample_ids, columns, file_stem)


def _write_certification(out: str | Path, entry: dict[str, Any], sample_ids: np.ndarray,
                         columns: dict[str, np.ndarray], file_stem: str = "robustness") -> dict[str, Any]:
    """Put one σ's ``entry`` and per-sample ``columns`` (``"<R>/<metric>"`` → ``float64 [N]``, rows
    in the order of ``sample_ids``) into the evaluation folder ``out``; redraw the curve and report."""

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
    sigma = float(entry["sigma"])
    cond = condition_name(sigma)
    table.columns = {k: v for k, v in table.columns.items() if not k.startswith(cond + "/")}
    for key, values in columns.items():
        table.add(f"{cond}/{key}", values[rows])
    table.save(table_path)
    kept = [e for e in record.certified or [] if not math.isclose(float(e.get("sigma", -1)), sigma)]
    record.certified = sorted([*kept, entry], key=lambda e: float(e["sigma"]))
    record.save(record_path)
    plot_certified_curves(record, out / "certified.png")
    write_report(record, out / "report.md")
    return entry


#: how close the clean per-sample values of two runs of one model must be (the per-sample file
#: keeps 9 significant digits)
CLEAN_TOLERANCE = 1e-6


def certificates_source(source: str | Path, cert: TaskCertification, radii: Sequence[float],
                        task: str | None = None, split: str | None = None,
                        file_stem: str = "robustness") -> dict[str, Any]:
    """The ``certified`` entry of ``cert``'s σ in the earlier certification folder ``source``,
    checked against ``cert``'s settings (before any evaluation runs, so that a mismatch fails at
    once): ``ValueError`` naming the field unless its ``task`` and ``split`` (when given) and the
    entry's ``certificate``, ``n0``, ``n``, ``alpha``, ``batch``, ``correction``, noise ``seed`` and
    ``radii`` (``radii``: the full grid, 0 included) are the same."""

    source = Path(source)
    for path in (source / f"{file_stem}.json", source / f"{file_stem}_samples.csv"):
        if not path.is_file():
            raise FileNotFoundError(f"certificates-from: {path} does not exist (not a certify output folder)")
    there = RobustnessRecord.load(source / f"{file_stem}.json")
    where = f"certificates-from {source}"
    for field, value in (("task", task), ("split", split)):
        if value is not None and getattr(there, field) != value:
            raise ValueError(f"{where}: {field} differs ({value!r} here, {getattr(there, field)!r} there)")
    sigma = cert.sampler.sigma
    entry = there.certification(sigma)
    if entry is None:
        raise ValueError(f"{where}: sigma differs: no certified entry at sigma {sigma:g} "
                         f"(there: {[e.get('sigma') for e in there.certified or []]})")
    wanted = {"certificate": type(cert).__name__, "n0": cert.n0 if cert.uses_selection else None, "n": cert.n,
              "alpha": cert.alpha, "batch": cert.sampler.batch_size,
              "correction": cert.correction if cert.uses_correction else None, "seed": cert.sampler.seed,
              "radii": [float(r) for r in sorted(radii)]}
    for field, value in wanted.items():
        theirs = entry.get(field)
        same = (theirs == value if not isinstance(value, float)
                else theirs is not None and math.isclose(float(theirs), value, rel_tol=1e-12))
        if not same:
            raise ValueError(f"{where}: {field} differs ({value!r} here, {theirs!r} there)")
    return entry


def reuse_certification(out: str | Path, source: str | Path, cert: TaskCertification,
                        radii: Sequence[float], file_stem: str = "robustness") -> dict[str, Any]:
    """Copy the certificates of ``cert``'s σ from an earlier certification folder ``source`` into
    the evaluation folder ``out`` instead of recomputing them (what :func:`add_certification`
    would write, sample by sample), after checking that they are the certificates ``cert`` would
    compute here.

    Refused (``ValueError`` naming the field) unless both runs have the same ``task``, ``split``,
    samples (``subset``: the same sample ids, the same subset ``seed``), the same model (``method``
    and every sample's clean metric within :data:`CLEAN_TOLERANCE`: the evaluations' clean forwards
    of one model agree), a ``certified`` entry at ``sigma`` with the same ``n0``, ``n``, ``alpha``,
    ``batch``, ``correction``, noise ``seed``, ``certificate`` and ``radii``, and its per-sample
    columns. The entry gets ``reused_from`` (the source folder); its ``seconds`` and ``forwards`` are
    those of the run that computed it. Returns the entry."""

    out, source = Path(out), Path(source)
    for path in (source / f"{file_stem}.json", source / f"{file_stem}_samples.csv"):
        if not path.is_file():
            raise FileNotFoundError(f"certificates-from: {path} does not exist (not a certify output folder)")
    here, there = RobustnessRecord.load(out / f"{file_stem}.json"), RobustnessRecord.load(source / f"{file_stem}.json")
    where = f"certificates-from {source}"

    def differ(field: str, mine: Any, theirs: Any) -> ValueError:
        return ValueError(f"{where}: {field} differs ({mine!r} here, {theirs!r} there)")

    for field in ("task", "split", "method"):
        if getattr(here, field) != getattr(there, field):
            raise differ(field, getattr(here, field), getattr(there, field))
    seed_here = here.subset.seed if here.subset is not None else None
    seed_there = there.subset.seed if there.subset is not None else None
    if seed_here != seed_there:
        raise differ("seed (of the subset)", seed_here, seed_there)
    ids_here = sorted(here.subset.indices) if here.subset is not None else None
    ids_there = sorted(there.subset.indices) if there.subset is not None else None
    if ids_here != ids_there:
        raise differ("subset (sample ids)", ids_here, ids_there)
    entry = certificates_source(source, cert, radii, file_stem=file_stem)
    sigma = cert.sampler.sigma
    mine_table = SampleTable.load(out / f"{file_stem}_samples.csv")
    their_table = SampleTable.load(source / f"{file_stem}_samples.csv")
    if sorted(mine_table.sample_ids.tolist()) != sorted(their_table.sample_ids.tolist()):
        raise differ("subset (per-sample file's ids)", sorted(mine_table.sample_ids.tolist()),
                     sorted(their_table.sample_ids.tolist()))
    mine_table, their_table = mine_table.aligned(their_table)
    clean = [k for k in mine_table.columns if k.startswith("clean/") and k in their_table.columns]
    if not clean:
        raise ValueError(f"{where}: model cannot be compared: no clean per-sample column in both runs")
    for key in clean:
        a, b = mine_table.column(key), their_table.column(key)
        bad = ~np.isclose(a, b, rtol=0.0, atol=CLEAN_TOLERANCE, equal_nan=True)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: model differs: sample {int(mine_table.sample_ids[i])}'s {key} is "
                             f"{a[i]:.9g} here and {b[i]:.9g} there (another checkpoint or denoiser?)")
    prefix = condition_name(sigma) + "/"
    columns = {k[len(prefix):]: their_table.column(k) for k in their_table.columns if k.startswith(prefix)}
    if not columns:
        raise ValueError(f"{where}: the per-sample file has no {prefix}… columns")
    return _write_certification(out, {**entry, "reused_from": str(source)}, their_table.sample_ids, columns, file_stem)
