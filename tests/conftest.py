"""Shared fixtures: tiny networks, CPU only, seconds per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and the suite shares 2 cores

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("BSR_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The shared benchmark/training images (``$BSR_DATASETS``, default ../shared/datasets)."""
    if not (DATASETS / "Set5" / "HR").is_dir():
        pytest.skip(f"datasets not found at {DATASETS}: set BSR_DATASETS to the shared datasets folder")
    return DATASETS
