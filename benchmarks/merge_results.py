"""Merge the ``results.json`` files of one paper suite that was run in parts (``run.py --only``
in several ``--out`` folders, or in several sessions) into one, so that ``run.py --report-only``
reports every group together and decides the rules that span groups (joel2022's image-size rule
over the three PH2 groups, the MedMNIST check beside the PH2 groups).

    python benchmarks/merge_results.py --suite joel2022 --out /tmp/joel_all \\
        /work/main/results/joel2022/results.json /work/models/x/joel2022_ph2/joel2022/results.json
    python benchmarks/run.py --suite joel2022 --report-only --out /tmp/joel_all

Each part's run entries are copied as they are, except that their file paths (``log_dir``,
``ckpt``, ``derived_config``, in every seed's entry too) become absolute: ``run.py`` wrote them
relative to the checkout that ran it, which need not be the one that reads the merged file. A
relative path is resolved against the reading checkout's root and then against each folder
above the part's ``results.json`` (its own checkout is one of them when ``--out`` was inside
it); the first under which it exists is taken, and a path found under none is an error naming
the run and the field. Parts must agree on the suite's mode, thread count and seeds per run
(the report states them once); a run key in two parts is an error. The merged ``meta`` lists
every part's command and load readings, and its wall time is the sum of the parts'.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from callbacks.atomic import atomic_write_text

PATH_FIELDS = ("log_dir", "ckpt", "derived_config")
#: meta fields every part must share (the report states each once)
SHARED_META = ("mode", "threads", "n_seeds")


def _absolute(value: str, bases: list[Path], where: str) -> str:
    """``value`` as an absolute path: itself when absolute, else the first ``base / value`` that exists."""
    if value == "last" or Path(value).is_absolute():
        return value
    for base in bases:
        candidate = (base / value).resolve()
        if candidate.exists():
            return str(candidate)
    raise SystemExit(f"{where}: `{value}` exists under none of {[str(b) for b in bases]}")


def absolute_entry(entry: dict[str, Any], bases: list[Path], where: str) -> dict[str, Any]:
    """A copy of one run's ``results.json`` entry with every path field absolute (its ``seeds``
    and ``failed_seeds`` entries too)."""
    out = copy.deepcopy(entry)
    for e in [out, *out.get("seeds", []), *out.get("failed_seeds", [])]:
        for key in PATH_FIELDS:
            if isinstance(e.get(key), str):
                e[key] = _absolute(e[key], bases, f"{where}: seed {e.get('seed')} `{key}`")
    return out


def merge(parts: list[Path], note: str = "") -> dict[str, Any]:
    """``{"meta": …, "runs": …}`` of the merged ``results.json`` files ``parts`` (in their order);
    ``note`` (e.g. about machine load) goes first in the merged note."""
    if not parts:
        raise SystemExit("merge_results: no results.json given")
    loaded = [(p, json.loads(p.read_text())) for p in parts]
    runs: dict[str, Any] = {}
    for path, data in loaded:
        bases = [ROOT, *path.resolve().parents]
        for key, entry in data["runs"].items():
            if key in runs:
                raise SystemExit(f"merge_results: run `{key}` is in two parts (again in {path})")
            runs[key] = absolute_entry(entry, bases, f"{path}: run `{key}`")
    metas = [data["meta"] for _, data in loaded]
    for field in SHARED_META:
        values = {json.dumps(m.get(field, 1 if field == "n_seeds" else None)) for m in metas}
        if len(values) > 1:
            raise SystemExit(f"merge_results: the parts differ in meta `{field}`: {sorted(values)}")
    meta = dict(metas[0])
    machines = list(dict.fromkeys(m.get("machine", "") for m in metas))
    notes = [n for n in (note, *(m.get("note") for m in metas)) if n]
    meta.update(
        command=" ; ".join(m.get("command", "?") for m in metas),
        machine="; ".join(machines),
        wall_s=sum(float(m.get("wall_s", 0.0)) for m in metas),
        seeds=sorted({s for m in metas for s in m.get("seeds", [])}),
        load_start=", ".join(str(m.get("load_start")) for m in metas),
        load_end=", ".join(str(m.get("load_end")) for m in metas),
        note=" ".join([*notes, f"Merged from {len(metas)} runs (benchmarks/merge_results.py): wall time is "
                       "their sum, load averages are listed per run."]),
    )
    return {"meta": meta, "runs": runs}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("parts", nargs="+", type=Path, help="results.json files, in order")
    p.add_argument("--suite", required=True, help="the suite's name: writes <out>/<suite>/results.json")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--note", default="", help="a sentence for the report, before the parts' notes")
    args = p.parse_args(argv)
    target = args.out / args.suite / "results.json"
    if any(part.resolve() == target.resolve() for part in args.parts):
        raise SystemExit(f"merge_results: {target} is one of the parts; write the merge elsewhere")
    merged = merge(args.parts, args.note)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(merged, indent=1))
    print(f"[merge_results] {len(merged['runs'])} runs from {len(args.parts)} files → {target}", flush=True)
    return target


if __name__ == "__main__":
    main()
