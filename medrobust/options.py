"""The fixed choices of ``medrobust evaluate`` / ``certify`` options, as types: the Python API's
signatures (:func:`medrobust.evaluate`, :func:`medrobust.certify`) and the commands' ``choices``
both read them (:func:`choices`), so a bad value gets one error listing the valid ones."""

from __future__ import annotations

from typing import Any, Literal, get_args

__all__ = ["Norm", "Split", "When", "check_choice", "choices"]

#: the threat model of every member of a named suite
Norm = Literal["linf", "l2"]
#: the datamodule split evaluated
Split = Literal["val", "test"]
#: when the sanity checks / intervals are computed (as ``AdversarialEvaluation`` takes them)
When = Literal["test", "never"]


def choices(kind: Any) -> list[str]:
    """The values of a ``Literal`` type, e.g. ``choices(Norm) == ["linf", "l2"]``."""
    return list(get_args(kind))


def check_choice(value: Any, kind: Any, field: str) -> None:
    """Raise ``ValueError`` naming ``field`` when ``value`` is not one of ``kind``'s values."""
    if value not in get_args(kind):
        raise ValueError(f"{field} must be one of {choices(kind)}, got {value!r}")
