"""The user's path, end to end on CPU: ``basicsr train`` (x4 and x2) on T91 crops with Set5
validation, ``--auto_resume`` to a larger iteration count, ``basicsr test`` on Set5 and Set14."""

from __future__ import annotations

import re

import pytest

from ..basicsr_runs import read_logs, run_basicsr, small_test_options, small_train_options, write

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("src", ["edsr_bin.yml", "edsr_bin_x2.yml"])
def test_train_resume_test(src, datasets_dir, tmp_path):
    opt = small_train_options(src, datasets_dir, iters=4)
    name = opt["name"]
    yml = write(opt, tmp_path / "train.yml")
    res = run_basicsr(["train", "-opt", str(yml)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    exp = tmp_path / "experiments" / name
    for f in ("models/net_g_2.pth", "models/net_g_4.pth", "models/net_g_latest.pth", "training_states/4.state"):
        assert (exp / f).is_file(), f
    log = read_logs(exp, "train_*.log")
    psnr = [float(v) for v in re.findall(r"# psnr: ([0-9.]+)", log)]
    assert psnr and all(0 < p < 60 for p in psnr)
    assert "flip_ratio" in log and "branch_ratio" in log and "prior_edge" in log

    res = run_basicsr(["train", "-opt", str(yml), "--auto_resume", "--force_yml", "train:total_iter=6"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = read_logs(exp, "train_*.log")
    assert "Resuming training from epoch: 0, iter: 4." in log
    assert (exp / "models" / "net_g_6.pth").is_file() and not (exp / "models" / "net_g_8.pth").exists()

    test_yml = write(small_test_options(src, datasets_dir, exp / "models" / "net_g_6.pth"), tmp_path / "test.yml")
    res = run_basicsr(["test", "-opt", str(test_yml)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = read_logs(tmp_path / "results", "*/test_*.log")
    for s in ("Set5", "Set14"):
        assert f"Testing {s}" in log
    assert len(re.findall(r"# psnr: [0-9.]+", log)) == 2 and len(re.findall(r"# ssim: [0-9.]+", log)) == 2
