"""Reading a manifest: the rows of a CSV / TSV or JSON file, and the cells' small parsers.

Nothing here knows a task: a row is its number, its cells (lower-cased column names) and the
split a JSON key gave it. See :mod:`datamodules.manifest` for the columns each task reads.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.samples import BadSampleError

__all__ = ["NIFTI_SUFFIXES", "SPLIT_ALIASES", "ManifestRow", "empty", "file_stem", "is_nifti",
           "json_cell", "number", "read_manifest"]

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` / ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def file_stem(path: Path) -> str:
    """The file name without its extension (both parts of ``.nii.gz``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass
class ManifestRow:
    """One row of a manifest: its 1-based number, its cells and the split a JSON key gave it."""

    row: int
    cells: dict[str, Any]
    split: str | None = None


def read_manifest(path: Path) -> list[ManifestRow]:
    """The rows of a CSV (``.csv`` / ``.tsv``) or JSON manifest; cells keep their types in JSON
    and are stripped strings in CSV. Row numbers count data rows from 1 (CSV line = row + 1).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable or empty file, no ``image`` column — naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read manifest {path}: {err}") from err
    rows: list[ManifestRow] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"manifest {path} is not valid JSON: {err}") from err
        if isinstance(data, list):
            groups: list[tuple[str | None, Any]] = [(None, data)]
        elif isinstance(data, dict):
            groups = [(SPLIT_ALIASES[k.lower()], v) for k, v in data.items()
                      if k.lower() in SPLIT_ALIASES]
            if not groups:
                raise ValueError(f"manifest {path}: a JSON manifest is a list of samples or an "
                                 f"object with train/val/test (or training/validation) lists; "
                                 f"got keys {sorted(data)}")
        else:
            raise ValueError(f"manifest {path}: expected a JSON list or object, got "
                             f"{type(data).__name__}")
        for split, items in groups:
            if not isinstance(items, list):
                raise ValueError(f"manifest {path}: {split or 'the top level'} must be a list")
            for item in items:
                n = len(rows) + 1
                cells = item if isinstance(item, dict) else {"image": item} if isinstance(item, str) \
                    else None
                if cells is None:
                    raise ValueError(f"manifest {path}, row {n}: expected an object with an "
                                     f"'image' key, got {item!r}")
                rows.append(ManifestRow(n, {str(k).strip().lower(): v for k, v in cells.items()},
                                        split))
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
        if not reader.fieldnames:
            raise ValueError(f"manifest {path} is empty (expected a header row with 'image')")
        for n, rec in enumerate(reader, start=1):
            cells = {str(k).strip().lower(): (v or "").strip() for k, v in rec.items()
                     if k is not None}
            if not any(cells.values()):
                continue  # blank line
            rows.append(ManifestRow(n, cells))
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    if not any("image" in r.cells for r in rows):
        raise ValueError(f"manifest {path} has no 'image' column (columns: "
                         f"{sorted(rows[0].cells)})")
    return rows


def empty(value: Any) -> bool:
    """Whether a cell holds nothing (``None``, blank text or NaN)."""
    return value is None or (isinstance(value, str) and value.strip() == "") or (
        isinstance(value, float) and math.isnan(value))


def json_cell(value: Any, what: str) -> Any:
    """A cell that holds a JSON list in CSV, or the list itself in JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as err:
            raise BadSampleError(f"{what} {value!r} is not a JSON list") from err
    return value


def number(value: Any, what: str) -> float:
    """A cell as a float; :class:`BadSampleError` naming ``what`` when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadSampleError(f"{what} {value!r} is not a number") from None

