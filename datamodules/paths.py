"""Where a dataset lives on disk: an explicit path, or a folder under ``$MEDROBUST_DATA``.

Nothing here downloads anything: a missing dataset is an error that says where we looked and
how to point the loader at the data.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MEDROBUST_DATA"


def resolve_data_path(path: str | os.PathLike[str] | None, default_subdir: str, what: str) -> Path:
    """Return the existing folder (or file) that holds dataset ``what``.

    Args:
        path: explicit location from a config (``~`` and ``$VARS`` are expanded); wins when given.
        default_subdir: location below ``$MEDROBUST_DATA`` used when ``path`` is ``None``
            (e.g. ``"ph2"`` or ``"medmnist/pneumoniamnist.npz"``).
        what: human-readable dataset name used in error messages.

    Raises:
        FileNotFoundError: nothing exists at the resolved location, or neither ``path`` nor
            ``$MEDROBUST_DATA`` is set. The message names the path tried and how to fix it.
    """
    fix = (
        f"set {DATA_ENV} to the folder holding the datasets (expected {what} at "
        f"${DATA_ENV}/{default_subdir}) or pass the location explicitly, e.g. "
        "--data.init_args.root /path/to/data"
    )
    if path is not None and str(path) != "":
        resolved = Path(os.path.expandvars(os.path.expanduser(str(path))))
        source = "the given path"
    else:
        base = os.environ.get(DATA_ENV)
        if not base:
            raise FileNotFoundError(
                f"{what}: no data path given and {DATA_ENV} is not set; {fix}"
            )
        resolved = Path(os.path.expandvars(os.path.expanduser(base))) / default_subdir
        source = f"${DATA_ENV}/{default_subdir}"
    if not resolved.exists():
        raise FileNotFoundError(
            f"{what}: {resolved} does not exist (from {source}); {fix}"
        )
    return resolved.resolve()
