"""The main job as a new user runs it: ``make demo`` runs ``bsr demo`` (defaults), which trains a
small binarized EDSR on scikit-image's bundled photos through ``basicsr train`` and must beat
bicubic on the held-out photos."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow


def test_make_demo_beats_bicubic(tmp_path):
    """The README's ``make demo``, run for real in this environment (``-o`` keeps make from
    reinstalling it), with its output in ``tmp_path``."""
    venv = Path(sys.executable).parent.parent
    res = subprocess.run(["make", "-C", str(REPO), "-o", f"{venv}/bin/.installed", "demo", f"VENV={venv}",
                          f"DEMO_ARGS=--workdir {tmp_path / 'demo'}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=550)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    bicubic = float(re.search(r"bicubic\s+([0-9.]+)", out).group(1))
    ours = float(re.search(r"binarized EDSR\s+([0-9.]+)", out).group(1))
    assert "beats bicubic" in out and ours > bicubic, out[-1500:]
    # deployed: the packed file ran on the engine, timed against the float network, pictured
    assert (tmp_path / "demo" / "demo.bsrpack").is_file()
    from bsr_plugin.deploy.engine import kernels

    assert ("packed engine (" in out) == kernels.available() and re.search(r"float network [0-9.]+ ms", out)
    picture = Path(re.search(r"zoomed crop below\): (\S+)", out).group(1))
    import cv2

    width = cv2.imread(str(tmp_path / "demo" / "data" / "val" / "chelsea.png")).shape[1]
    assert cv2.imread(str(picture)).shape[1] == 3 * (width - width % 2)  # three panels of the x2 HR crop
