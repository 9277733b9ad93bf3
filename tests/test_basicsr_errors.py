"""Each bad option fails before training starts, with one clear message and exit code 2."""

from __future__ import annotations

import pytest

from .basicsr_runs import run_basicsr, small_train_options, write


def _fails(opt, tmp_path, expected, args=()):
    yml = write(opt, tmp_path / "bad.yml")
    res = run_basicsr(["train", "-opt", str(yml), *args], tmp_path)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert expected in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "experiments").exists()


def test_unknown_float_architecture(datasets_dir, tmp_path):
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    opt["network_g"] = {"type": "BinarizedArch", "arch": {"type": "EDSRR", "num_feat": 8}}
    _fails(opt, tmp_path, "unknown float architecture 'EDSRR'")


def test_rule_that_matches_nothing(datasets_dir, tmp_path):
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    opt["network_g"]["binarize"]["rules"] = [{"binarize": "type:Conv2d"}, {"keep": "tail.*"}]
    _fails(opt, tmp_path, "rule {keep: tail.*} matches no conv/linear layer")


def test_missing_dataset_folder(datasets_dir, tmp_path):
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    opt["datasets"]["train"]["dataroot_gt"] = str(tmp_path / "no_such_folder")
    _fails(opt, tmp_path, "does not exist")


def test_scale_that_disagrees_with_the_data(datasets_dir, tmp_path):
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    val = opt["datasets"]["val"]
    val["dataroot_lq"] = val["dataroot_lq"].replace("X4", "X2")
    val["filename_tmpl"] = "{}x2"
    _fails(opt, tmp_path, "scale 4 disagrees with the data")


def test_key_that_does_nothing(datasets_dir, tmp_path):
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    opt["train"]["ema"] = 0.999
    _fails(opt, tmp_path, "unknown key 'ema'")


@pytest.mark.parametrize("args, expected", [([], "-opt OPTIONS.yml is required"), (["fit"], "unknown command")])
def test_usage_errors(tmp_path, args, expected):
    res = run_basicsr(args[:1] or ["train"], tmp_path)
    assert res.returncode == 2 and expected in res.stderr
