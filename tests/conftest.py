"""Shared pytest fixtures: deterministic seeds, one torch thread, the location of the real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """``$MEDROBUST_DATA`` or ``../shared/data`` beside the project, if it exists."""
    env = os.environ.get("MEDROBUST_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(PROJECT_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    return None


@pytest.fixture
def shared_data() -> Path:
    """Root of the real datasets; the test is skipped (with the reason) when it is absent."""
    root = shared_data_root()
    if root is None:
        pytest.skip("real data not found: set MEDROBUST_DATA or place ../shared/data beside the project")
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's tests, restored after it: tiny models gain nothing from
    threads, the CI machine is shared, and some comparisons pin a trained model that the thread
    count (float reduction order) would change."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)
