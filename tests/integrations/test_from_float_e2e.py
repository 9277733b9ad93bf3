"""The float-checkpoint path, end to end on CPU, with the shipped options shrunk: train a float
EDSR (``options/edsr.yml``), then ``basicsr train -opt options/edsr_bin_from_float.yml``: the
binarized network starts from those float weights; with the file's commented-out ``train.distill``
block switched on, it also distils from the same network, frozen; either way the checkpoint
holds the binarized student only."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from ..basicsr_runs import REPO, read_logs, run_basicsr, small_train_options, write

pytestmark = pytest.mark.slow


def _distill_block_uncommented() -> dict:
    """The ``train.distill`` block of edsr_bin_from_float.yml as a user gets it by uncommenting it."""
    text = (REPO / "options" / "edsr_bin_from_float.yml").read_text()
    block = re.search(r"^  # distill:.*?(?=^  \w)", text, flags=re.M | re.S)
    assert block, "edsr_bin_from_float.yml has no commented train.distill block"
    lines = [re.sub(r"^  # ", "  ", ln) for ln in block.group(0).splitlines()]
    return yaml.safe_load("\n".join(["train:", *lines]))["train"]["distill"]


@pytest.fixture(scope="module")
def float_run(datasets_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("from_float")
    teacher = small_train_options("edsr.yml", datasets_dir, iters=2, name="EDSR_x4")
    res = run_basicsr(["train", "-opt", str(write(teacher, run_dir / "float.yml"))], run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def _train(opt: dict, run_dir, name: str) -> str:
    opt["name"] = name
    res = run_basicsr(["train", "-opt", str(write(opt, run_dir / f"{name}.yml"))], run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    log = read_logs(run_dir / "experiments" / name, "train_*.log")
    assert f"Loading EDSR model from {opt['path']['pretrain_network_g']}" in log  # started from the float weights
    return log


def test_binarize_a_trained_float_edsr(datasets_dir, float_run):
    opt = small_train_options("edsr_bin_from_float.yml", datasets_dir, iters=2)
    assert opt["path"]["pretrain_network_g"] == "experiments/EDSR_x4/models/net_g_latest.pth"  # as shipped
    assert "distill" not in opt["train"]  # off: it did not help on this path (benchmarks/README.md)
    log = _train(opt, float_run, "from_float")
    assert "distilling" not in log and "l_distill" not in log
    student = torch.load(float_run / "experiments" / "from_float" / "models" / "net_g_latest.pth",
                         weights_only=True)["params"]
    float_ckpt = float_run / "experiments" / "EDSR_x4" / "models" / "net_g_latest.pth"
    teacher_keys = set(torch.load(float_ckpt, weights_only=True)["params"])
    assert "body.0.conv1.sign_ref" in student and teacher_keys < set(student)  # binarized


def test_with_its_distillation_block_switched_on(datasets_dir, float_run):
    opt = small_train_options("edsr_bin_from_float.yml", datasets_dir, iters=2)
    opt["train"]["distill"] = _distill_block_uncommented()
    assert opt["train"]["distill"]["pretrain"] == opt["path"]["pretrain_network_g"]  # the same float network
    opt["train"]["distill"]["network"].update(num_feat=8, num_block=2)  # the shrunk float network
    log = _train(opt, float_run, "from_float_distill")
    assert "distilling from a frozen EDSR teacher" in log and "l_distill_out" in log and "l_distill_feat" in log
    student = torch.load(float_run / "experiments" / "from_float_distill" / "models" / "net_g_latest.pth",
                         weights_only=True)["params"]
    float_ckpt = float_run / "experiments" / "EDSR_x4" / "models" / "net_g_latest.pth"
    teacher_keys = set(torch.load(float_ckpt, weights_only=True)["params"])
    assert "body.0.conv1.sign_ref" in student and teacher_keys < set(student)  # the student only, binarized
