"""Bad samples: one policy for every loader (folders, manifests, VOC / COCO, landmarks, volumes).

A sample that cannot be used (missing or unreadable file, a mask of the wrong size, a label out
of range, a box outside the image…) is a :class:`BadSampleError` naming its file and the
problem. While a dataset is indexed, every bad sample is *collected* first (:class:`BadSamples`,
or :func:`screen` for a list of records), then ``on_bad_sample`` decides once:

- ``"error"`` (the default everywhere): one :class:`BadSampleError` that lists *every* bad
  sample as ``name: reason`` (``name`` is the file, case or ``row N (file)``), so a broken
  dataset is fixed in one pass instead of one file per run;
- ``"skip"``: the bad samples are left out with *one* warning that counts them and names them —
  never silently.

At most :data:`MAX_LISTED` samples are listed; the rest are counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from attacks.options import check_choice

__all__ = [
    "BAD_SAMPLE_POLICIES",
    "MAX_LISTED",
    "BadSampleError",
    "BadSamples",
    "OnBadSample",
    "check_on_bad_sample",
    "format_listing",
    "screen",
]

OnBadSample = Literal["error", "skip"]
BAD_SAMPLE_POLICIES: tuple[str, ...] = ("error", "skip")
#: how many bad samples an error / warning lists before counting the rest
MAX_LISTED = 25


class BadSampleError(ValueError):
    """A sample that cannot be used (unreadable file, wrong size, bad label…); names the file."""


def check_on_bad_sample(value: str) -> OnBadSample:
    """``value`` if it is a policy of :data:`BAD_SAMPLE_POLICIES`, else ``ValueError``."""
    check_choice("on_bad_sample", value, BAD_SAMPLE_POLICIES)
    return value  # type: ignore[return-value]


def format_listing(problems: dict[str, str], limit: int = MAX_LISTED) -> str:
    """``"  name: reason"`` lines, sorted by name, at most ``limit`` of them plus a count of
    the rest."""
    items = sorted(problems.items())
    lines = [f"  {name}: {reason}" for name, reason in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


class BadSamples:
    """Collects per-sample problems found while indexing a dataset, then raises or warns once.

    Args:
        dataset: what is indexed, as messages should name it (``"PH2 train split"``).
        policy: ``"error"`` or ``"skip"`` (see the module docstring).

    Example::

        bad = BadSamples("VOC train split", on_bad_sample)
        for stem in ids:
            try:
                ...
            except BadSampleError as err:
                bad.add(stem, str(err))
        bad.resolve(total=len(ids))   # raises, or warns once and the caller drops `bad`'s keys
    """

    def __init__(self, dataset: str, policy: str) -> None:
        check_on_bad_sample(policy)
        self.dataset, self.policy = dataset, policy
        self.problems: dict[str, str] = {}

    def add(self, name: str | Path, reason: str) -> None:
        """Record ``reason`` for sample ``name``; a second reason for it is appended."""
        key = str(name)
        self.problems[key] = f"{self.problems[key]}; {reason}" if key in self.problems else reason

    def __contains__(self, name: object) -> bool:
        return str(name) in self.problems

    def __len__(self) -> int:
        return len(self.problems)

    def resolve(self, hint: str = "", total: int | None = None) -> None:
        """Raise (policy ``error``) or emit one warning (``skip``) if any problem was found.

        ``hint``: a line added to the error (how to fix it); ``total``: how many samples were
        screened, for the warning's ``skipped n of total``.
        """
        if not self.problems:
            return
        listing = format_listing(self.problems)
        n = len(self.problems)
        if self.policy == "error":
            raise BadSampleError(
                f"{self.dataset}: {n} bad sample(s):\n{listing}\n{hint}"
                "Fix the files, or pass on_bad_sample='skip' to leave them out with a warning."
            )
        of = f"; skipped {n} of {total} samples" if total is not None else ""
        warnings.warn(f"{self.dataset}: skipping {n} bad sample(s) (on_bad_sample='skip'{of}):\n"
                      f"{listing}", stacklevel=3)


def screen(
    items: Sequence[Any],
    check: Callable[[Any], None],
    on_bad_sample: OnBadSample,
    what: str,
    describe: Callable[[Any], str] = str,
) -> list[Any]:
    """The items that pass ``check`` (which raises :class:`BadSampleError` for a bad one),
    under the one policy: every item is checked, then one error lists all bad ones
    (``describe(item): reason``) or one warning counts and names the skipped ones.

    Raises:
        BadSampleError: with ``on_bad_sample="error"``, listing every bad item.
    """
    bad = BadSamples(what, on_bad_sample)
    good: list[Any] = []
    for item in items:
        try:
            check(item)
        except BadSampleError as err:
            bad.add(describe(item), str(err))
            continue
        good.append(item)
    bad.resolve(total=len(items))
    return good
