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
def datasets_dir(tmp_path_factory) -> Path:
    """The shared benchmark/training images (``$BSR_DATASETS``, default ../shared/datasets);
    where they are absent (a fresh clone), a small stand-in with the same layout, built once per
    session from the photos that ship inside scikit-image (:mod:`tests.standin`)."""
    if (DATASETS / "Set5" / "HR").is_dir():
        return DATASETS
    pytest.importorskip("skimage", reason="the dataset stand-in is made from scikit-image's photos")
    from bsr_plugin.integrations.basicsr.shims import import_basicsr

    try:
        import_basicsr()
    except ImportError as err:
        pytest.skip(f"the dataset stand-in's LR files are made with BasicSR's imresize: {err}")
    from .standin import build_standin

    return build_standin(tmp_path_factory.mktemp("standin") / "datasets")


@pytest.fixture(scope="session")
def real_datasets_dir() -> Path:
    """The shared benchmark images themselves, for tests that depend on their contents."""
    if not (DATASETS / "Set5" / "HR").is_dir():
        pytest.skip(f"needs the real benchmark images (not found at {DATASETS}; set BSR_DATASETS): this test runs "
                    "the benchmark on them, which the stand-in cannot replace")
    return DATASETS
