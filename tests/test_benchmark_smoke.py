"""The benchmark's smallest setting (a few iterations, two variants) runs end to end, so the
script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_benchmark_smoke(datasets_dir, tmp_path):
    out = tmp_path / "smoke"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sr_benchmark.py"), "--preset", "smoke", "--out",
                          str(out)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "BSR_DATASETS": str(datasets_dir)})
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in results["runs"]} == {"fp", "ours"}
    for r in results["runs"]:
        assert 5 < r["metrics"]["Set5"]["psnr"] < 60 and r["val_curve"]
    assert results["step_time_s"]["fp"] > 0
    assert [r for r in results["runs"] if r["variant"] == "ours"][0]["flip_curve"]
    assert "| fp: full precision |" in (out / "results.md").read_text()
    for png in ("val_psnr.png", "flip_ratio.png"):
        assert (out / png).stat().st_size > 1000
    # regenerable from the JSON alone
    (out / "results.md").unlink()
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "sr_benchmark.py"), "--redraw",
                    str(out / "results.json")], check=True, capture_output=True)
    assert (out / "results.md").is_file()
