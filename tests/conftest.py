"""Shared pytest fixtures: deterministic seeds and the location of the real data."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)
