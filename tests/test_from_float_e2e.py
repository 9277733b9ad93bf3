"""The float-checkpoint path, end to end on CPU, with the shipped options shrunk: train a float
EDSR (``options/edsr.yml``), then ``basicsr train -opt options/edsr_bin_from_float.yml``: the
binarized network starts from those float weights and distils from the same network, frozen;
its checkpoint holds the student only and packs and runs on the engine."""

from __future__ import annotations

import pytest
import torch

from .basicsr_runs import read_logs, run_basicsr, small_train_options, write

pytestmark = pytest.mark.slow


def test_binarize_a_trained_float_edsr(datasets_dir, tmp_path):
    teacher = small_train_options("edsr.yml", datasets_dir, iters=2, name="EDSR_x4")
    res = run_basicsr(["train", "-opt", str(write(teacher, tmp_path / "float.yml"))], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    float_ckpt = tmp_path / "experiments" / "EDSR_x4" / "models" / "net_g_latest.pth"

    opt = small_train_options("edsr_bin_from_float.yml", datasets_dir, iters=2)
    assert opt["path"]["pretrain_network_g"] == opt["train"]["distill"]["pretrain"] == \
        "experiments/EDSR_x4/models/net_g_latest.pth"  # relative to the run folder, as shipped
    opt["train"]["distill"]["network"].update(num_feat=8, num_block=2)  # the shrunk float network
    res = run_basicsr(["train", "-opt", str(write(opt, tmp_path / "bin.yml"))], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    exp = tmp_path / "experiments" / opt["name"]
    log = read_logs(exp, "train_*.log")
    assert f"Loading EDSR model from {opt['path']['pretrain_network_g']}" in log  # started from the float weights
    assert "distilling from a frozen EDSR teacher" in log and "l_distill_out" in log and "l_distill_feat" in log
    student = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)["params"]
    teacher_keys = set(torch.load(float_ckpt, weights_only=True)["params"])
    assert "body.0.conv1.sign_ref" in student and teacher_keys < set(student)  # the student only, binarized
