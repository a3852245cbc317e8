"""Seeded, stratified train/val/test splits for datasets that publish none, saved and reused.

A split depends only on the sorted case ids, their labels, the fractions and the seed, so every
DDP rank and every worker computes the same one. With a ``split_file`` it is written once (JSON)
and read back on later runs; an existing file is never overwritten, and one whose ids do not
match the dataset is an error rather than a silently different experiment.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
T = TypeVar("T")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {total})")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def _allocate(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Split ``n`` items into three counts proportional to ``fractions`` (largest remainder)."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_split(
    ids: Sequence[str],
    labels: Sequence[int] | None = None,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Split case ids into ``train`` / ``val`` / ``test``, stratified by ``labels`` if given.

    Each class is shuffled on its own (``numpy.random.default_rng(seed)`` over the sorted ids),
    so class proportions are kept in every split up to rounding.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted.
    """
    fr = _check_fractions(fractions)
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate case ids cannot be split: {dupes[:10]}")
    labels_list = [0] * len(ids) if labels is None else [int(v) for v in labels]
    if len(labels_list) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(labels_list)} labels")
    by_class: dict[int, list[str]] = {}
    for case, label in sorted(zip(ids, labels_list)):
        by_class.setdefault(label, []).append(case)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        members = by_class[label]
        perm = rng.permutation(len(members))
        counts = _allocate(len(members), fr)
        start = 0
        for name, count in zip(SPLITS, counts):
            out[name].extend(members[j] for j in perm[start:start + count])
            start += count
    return {name: sorted(v) for name, v in out.items()}


def load_or_create_split(
    split_file: str | os.PathLike[str] | None,
    ids: Sequence[str],
    labels: Sequence[int] | None = None,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, list[str]]:
    """The split stored in ``split_file`` if it exists, else a new seeded split (saved there).

    Raises:
        ValueError: the existing file is malformed, has overlapping splits, or its ids differ
            from ``ids`` (cases missing from the dataset or dataset cases missing from the file).
    """
    if split_file is None:
        return stratified_split(ids, labels, fractions, seed)
    path = Path(os.path.expandvars(os.path.expanduser(str(split_file))))
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            split = {name: [str(i) for i in stored[name]] for name in SPLITS}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"split file {path} is not a JSON object with lists "
                             f"{SPLITS}: {err}") from err
        seen: dict[str, str] = {}
        for name in SPLITS:
            for case in split[name]:
                if case in seen:
                    raise ValueError(f"split file {path}: case {case!r} is in both "
                                     f"{seen[case]!r} and {name!r}")
                seen[case] = name
        wanted = {str(i) for i in ids}
        missing, extra = sorted(wanted - seen.keys()), sorted(seen.keys() - wanted)
        if missing or extra:
            raise ValueError(
                f"split file {path} does not match the dataset: {len(missing)} dataset cases "
                f"not in the file {missing[:10]}, {len(extra)} file cases not in the dataset "
                f"{extra[:10]}. Delete or rename the file to create a new split, or point "
                "split_file at the file made for this data."
            )
        if stored.get("seed", seed) != seed or list(stored.get("fractions", fractions)) != list(
            fractions
        ):
            log.info("using split file %s (seed %s, fractions %s) instead of seed %s, fractions %s",
                     path, stored.get("seed"), stored.get("fractions"), seed, list(fractions))
        return split
    split = stratified_split(ids, labels, fractions, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"seed": seed, "fractions": list(fractions), **split}
    # Atomic write: DDP ranks compute the same split and may all try to save it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1)
    os.replace(tmp, path)
    log.info("wrote new split to %s (%s)", path,
             ", ".join(f"{k}: {len(v)}" for k, v in split.items()))
    return split


def split_items(split_ids: Mapping[str, Sequence[str]], by_id: Mapping[str, T]) -> dict[str, list[T]]:
    """Each split's items in the order of its ids, leaving out ids without an item.

    Loaders split over every case they found, bad ones too, and then drop the bad ones here, so
    that skipping (or fixing) a broken file never moves another case to another split.
    """
    return {name: [by_id[i] for i in ids if i in by_id] for name, ids in split_ids.items()}


def split_by_id(items: Mapping[str, T], fractions: Sequence[float], seed: int,
                split_file: str | os.PathLike[str] | None,
                stratum: Callable[[T], int] | None = None) -> dict[str, list[T]]:
    """``items`` (``{id: item}``) split by :func:`load_or_create_split` over their sorted ids,
    stratified by ``stratum(item)`` when given; each split's items in the order of its ids."""
    ids = sorted(items)
    strata = None if stratum is None else [stratum(items[i]) for i in ids]
    return split_items(load_or_create_split(split_file, ids, strata, fractions, seed), items)
