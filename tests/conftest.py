"""Shared test settings: quiet progress bars, deterministic threads, the shared data folder."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("FNBODY_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def csn_sample_dir() -> Path:
    """The 250 real CodeSearchNet rows shipped in ../shared/data/csn-python-sample."""
    path = SHARED / "data" / "csn-python-sample"
    if not path.is_dir():
        pytest.skip(f"shared CSN sample not found at {path}")
    return path
