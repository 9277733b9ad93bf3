"""The benchmark's smallest setting (a few iterations: full precision, the default, and the
float checkpoint + distillation row that depends on the full-precision run) runs end to end, so
the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_benchmark_smoke(real_datasets_dir, tmp_path):
    out = tmp_path / "smoke"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sr_benchmark.py"), "--preset", "smoke", "--out",
                          str(out)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "BSR_DATASETS": str(real_datasets_dir)})
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in results["runs"]} == {"fp", "default", "ckpt_distill"}
    for r in results["runs"]:
        assert 5 < r["metrics"]["Set5"]["psnr"] < 60 and r["val_curve"]
    assert results["step_time_s"]["fp"] > 0 and results["step_time_s"]["ckpt_distill"] > 0
    assert [r for r in results["runs"] if r["variant"] == "default"][0]["flip_curve"]
    report = (out / "results.md").read_text()
    assert "| fp: full precision |" in report and "| ckpt_distill - fp |" in report
    log = next((out / "work" / "experiments" / "ckpt_distill_seed0").glob("train_*.log")).read_text()
    assert "l_distill_out" in log and "l_distill_feat" in log and "Loading EDSR model" in log
    # every finished run is kept: running the grid again trains nothing
    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sr_benchmark.py"), "--preset", "smoke", "--out",
                            str(out)], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "BSR_DATASETS": str(real_datasets_dir)})
    assert again.returncode == 0 and "0 runs to do (3 already" in again.stderr, again.stderr[-2000:]
    for png in ("val_psnr.png", "flip_ratio.png"):
        assert (out / png).stat().st_size > 1000
    # regenerable from the JSON alone
    (out / "results.md").unlink()
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "sr_benchmark.py"), "--redraw",
                    str(out / "results.json")], check=True, capture_output=True)
    assert (out / "results.md").is_file()
