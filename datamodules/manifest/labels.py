"""Class labels of a manifest: raw cells (class indices or names) -> class indices and names.

Used by the tasks whose rows carry labels (classification, detection); the task says what an
image's list of indices becomes (:meth:`datamodules.manifest.tasks.TaskRows.assign_labels`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from datamodules.manifest.sample import Sample
from datamodules.samples import BadSampleError

__all__ = ["Flag", "check_contiguous", "resolve_labels"]

#: records a bad row: ``flag(row number, sample id, reason)``
Flag = Callable[[int, "str | None", str], None]
_INDEX = r"-?\d+(\.0+)?"


def resolve_labels(samples: list[Sample], class_names: list[str] | None, num_classes: int | None,
                   what: str, flag: Flag,
                   assign: Callable[[Sample, list[int]], str | None]) -> list[str]:
    """Map every sample's ``raw_labels`` (indices or names) to class indices and hand them to
    ``assign`` (which returns an error message for a wrong count, else ``None``); returns the
    class names.

    Names are ``class_names``, or inferred: indices ``0..max`` (at least 2, or ``num_classes``)
    when every label is an index, the sorted distinct names when none is. A label out of
    ``[0, num_classes)`` or not among the names makes its row bad (``flag``).

    Raises:
        ValueError: labels mix indices and names without ``class_names``, naming ``what``.
    """
    raw = [str(v).strip() for s in samples for v in s.raw_labels]
    numeric = [re.fullmatch(_INDEX, v) is not None for v in raw]
    names = class_names
    if names is None:
        if raw and all(numeric):
            if num_classes is None:
                check_contiguous(samples, what)
            names = [str(i) for i in range(num_classes or
                                           max(2, max(int(float(v)) for v in raw) + 1))]
        elif raw and not any(numeric):
            names = sorted(set(raw))
        elif not raw:
            names = [str(i) for i in range(num_classes or 2)]
        else:
            raise ValueError(f"{what}: labels mix class indices and names "
                             f"({sorted(set(raw))[:10]}); use one kind, or pass class_names")
    position = {n: i for i, n in enumerate(names)}
    k = num_classes or len(names)
    for s in samples:
        idx = []
        rows = s.label_rows or [s.rows[0]] * len(s.raw_labels)
        at = s.rows[0]  # the row a bad label is reported at
        try:
            for v, row in zip(s.raw_labels, rows):
                at, text = row, str(v).strip()
                if re.fullmatch(_INDEX, text):
                    i = int(float(text))
                    if not 0 <= i < k:
                        raise BadSampleError(f"label {text} out of range [0, {k}) for image "
                                             f"{s.image}")
                    idx.append(i)
                elif text in position:
                    idx.append(position[text])
                else:
                    raise BadSampleError(f"unknown label {text!r} for image {s.image} "
                                         f"(classes: {names})")
        except BadSampleError as err:
            flag(at, s.id, str(err))
            continue
        problem = assign(s, idx)
        if problem:
            flag(s.rows[0], s.id, problem)
    return list(names) if len(names) == k else [str(i) for i in range(k)]


def check_contiguous(samples: list[Sample], what: str) -> None:
    """Integer labels with no declared classes must be ``0..max`` without a gap: labels
    {0, 1, 5} would silently make a 6-class model with three classes that no sample has.
    The error names the rows whose labels lie beyond the first missing class."""
    rows: dict[int, list[int]] = {}
    for s in samples:
        at = s.label_rows or [s.rows[0]] * len(s.raw_labels)
        for v, row in zip(s.raw_labels, at):
            i = int(float(str(v).strip()))
            if i >= 0:  # a negative label is a bad row, reported with the others
                rows.setdefault(i, []).append(row)
    if not rows:
        return
    missing = [i for i in range(max(rows)) if i not in rows]
    if not missing:
        return
    beyond = sorted((row, i) for i, rs in rows.items() if i > missing[0] for row in rs)
    shown = ", ".join(f"row {r} (label {i})" for r, i in beyond[:10]) + (" …" if len(beyond) > 10 else "")
    raise ValueError(
        f"{what}: the class indices {sorted(rows)} skip {missing}, so the model would get "
        f"{max(rows) + 1} classes, {len(missing)} of them with no sample. Labels beyond the gap: "
        f"{shown}. Renumber the labels 0..{len(rows) - 1}, or declare the classes "
        f"(num_classes={max(rows) + 1} or class_names) if the missing ones exist elsewhere")
