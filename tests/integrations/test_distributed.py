"""BasicSR's distributed path on CPU: 2 processes, gloo, under torchrun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..basicsr_runs import read_logs, run_basicsr, small_test_options, small_train_options, write

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def test_two_process_gloo_training(datasets_dir, tmp_path):
    opt = small_train_options("edsr_bin.yml", datasets_dir, iters=4, name="dist_gloo")
    opt["model_type"] = "RankDumpSRModel"
    yml = write(opt, tmp_path / "train.yml")
    script = Path(__file__).parents[1] / "dist_train.py"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", str(script), "train", "-opt", str(yml),
           "--launcher", "pytorch"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    exp = tmp_path / "experiments" / "dist_gloo"
    log = read_logs(exp, "train_*.log")
    assert "World size (gpu number): 2" in log
    r0, r1 = (torch.load(exp / f"rank{r}_-1.pth") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
    ckpt = exp / "models" / "net_g_latest.pth"
    test_yml = write(small_test_options("edsr_bin.yml", datasets_dir, ckpt, sets=("Set5",)), tmp_path / "test.yml")
    res = run_basicsr(["test", "-opt", str(test_yml)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "# psnr:" in read_logs(tmp_path / "results", "*/test_*.log")


def test_pytorch_launcher_without_torchrun_says_how(datasets_dir, tmp_path):
    yml = write(small_train_options("edsr_bin.yml", datasets_dir), tmp_path / "train.yml")
    res = run_basicsr(["train", "-opt", str(yml), "--launcher", "pytorch"], tmp_path)
    assert res.returncode != 0
    assert "torchrun --nproc_per_node=N" in res.stderr
