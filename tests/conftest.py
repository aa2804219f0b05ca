"""Shared pytest fixtures: fixed seeds, the repository root, the parity-fixture folder."""
import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # tests never open windows

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def parity_dir() -> Path:
    """The golden fixtures (MINIEQ_PARITY_DIR, default ../shared/golden); skips when absent."""
    path = Path(os.environ.get("MINIEQ_PARITY_DIR", REPO.parent / "shared" / "golden"))
    if not path.is_dir():
        pytest.skip(f"parity fixtures not found at {path} (set MINIEQ_PARITY_DIR)")
    return path
