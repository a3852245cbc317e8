"""One option check for every constructor and config field (attacks, datamodules, tasks,
methods, callbacks): a bad value names the field, the allowed values and what was given.

It lives in ``attacks/``, the lowest layer, so that every layer above may import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice"]


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError("<name> must be one of [<choices>], got <value!r>")`` when ``value``
    is not one of ``choices``. ``name`` is the field as the user writes it, e.g.
    ``"SAT.norm"``, ``"on_bad_sample"``, ``"--batch_scaling"``."""
    allowed = list(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
