"""Shared pytest fixtures and settings for the cemkit test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real EM sample data next to the checkout (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared EM data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (small models: threading costs more than it gives, and
    single-threaded CPU kernels keep results reproducible), restoring the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
