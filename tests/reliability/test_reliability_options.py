"""Reliability of ``basicsr train|test``: every mistake in an options file, its command line or
its data is found by the preflight before anything is written, reported in one line (all of
them at once when there are several), exit status 2; no ``experiments/``, ``results/``,
``tb_logger/`` or log appears and no input changes.

The cases call the command's ``main`` in this process (the preflight is the point, and a
subprocess per case would cost seconds of imports each); ``test_reliability_security`` runs the
real ``.venv/bin/basicsr``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from bsr_plugin.integrations.basicsr.cli import main as basicsr_main

from ..basicsr_runs import small_test_options, small_train_options, write
from .helpers import assert_refused, snapshot, write_png

Edit = Callable[[dict[str, Any], Path], None]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(root: Path, capsys: pytest.CaptureFixture, command: str, opt: Any, pattern: str,
             flags: tuple[str, ...] = (), text: str | None = None) -> str:
    yml = root / "opt.yml"
    if text is not None:
        yml.write_text(text)
    elif opt is not None:
        write(opt, yml)
    before = snapshot(root)
    rc = basicsr_main([command, "-opt", str(yml), *flags])
    line = assert_refused(rc, capsys.readouterr().err, pattern, before, root, prefix=f"basicsr {command}: error")
    for folder in ("experiments", "results", "tb_logger"):
        assert (root / folder).exists() == (folder in before)  # nothing created, nothing archived
    return line


# -- data folders made for a case ------------------------------------------------------------------
def _pairs(folder: Path, hr_sizes: list[tuple[int, int]], scale: int = 4,
           lr_sizes: list[tuple[int, int]] | None = None) -> tuple[str, str]:
    """HR and LR folders (``imNx4.png``) with the given (width, height) sizes."""
    hr, lr = folder / "HR", folder / f"X{scale}"
    for i, (w, h) in enumerate(hr_sizes):
        write_png(hr / f"im{i}.png", h, w, seed=i)
        lw, lh = lr_sizes[i] if lr_sizes else (w // scale, h // scale)
        write_png(lr / f"im{i}x{scale}.png", lh, lw, seed=i)
    return str(hr), str(lr)


def _paired_train(opt: dict, folder: Path, hr_sizes, lr_sizes=None, gt_size: int = 64) -> None:
    hr, lr = _pairs(folder, hr_sizes, 4, lr_sizes)
    opt["datasets"]["train"] = {
        "name": "pairs", "type": "PairedImageDataset", "dataroot_gt": hr, "dataroot_lq": lr, "filename_tmpl": "{}x4",
        "io_backend": {"type": "disk"}, "gt_size": gt_size, "use_hflip": True, "use_rot": True,
        "num_worker_per_gpu": 0, "batch_size_per_gpu": 2, "dataset_enlarge_ratio": 1, "prefetch_mode": None}


def _paired_val(opt: dict, folder: Path, hr_sizes, lr_sizes=None) -> None:
    hr, lr = _pairs(folder, hr_sizes, 4, lr_sizes)
    opt["datasets"]["val"].update(dataroot_gt=hr, dataroot_lq=lr, filename_tmpl="{}x4")


def _bicubic_train(opt: dict, folder: Path, sizes, batch: int = 2) -> Path:
    for i, (w, h) in enumerate(sizes):
        write_png(folder / "T" / f"t{i}.png", h, w, seed=i)
    opt["datasets"]["train"].update(dataroot_gt=str(folder / "T"), batch_size_per_gpu=batch)
    return folder / "T"


SQUARE = [(128, 128)] * 4


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def _set(*keys_value: Any) -> Edit:
    *keys, value = keys_value

    def edit(opt: dict, _: Path) -> None:
        node = opt
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def _delete(key: str) -> Edit:
    return lambda opt, _: opt.pop(key)


def _distill(pretrain: str) -> Edit:
    def edit(opt: dict, _: Path) -> None:
        opt["train"]["distill"] = {"network": {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8,
                                               "num_block": 2, "upscale": 4}, "pretrain": pretrain}
    return edit


def _distill_features(opt: dict, folder: Path) -> None:
    from basicsr.archs.edsr_arch import EDSR

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params": EDSR(3, 3, num_feat=8, num_block=2, upscale=4).state_dict()}, folder / "teacher.pth")
    _distill(str(folder / "teacher.pth"))(opt, folder)
    opt["train"]["distill"].update(feature_weight=1.0, features=["re:nothing"])


def _non_image_pair(opt: dict, folder: Path) -> None:
    _paired_train(opt, folder, SQUARE)
    (folder / "HR" / "notes.txt").write_text("where the images come from")
    (folder / "X4" / "notesx4.txt").write_text("where the images come from")


def _missing_lr(opt: dict, folder: Path) -> None:
    _paired_train(opt, folder, SQUARE)
    (folder / "X4" / "im1x4.png").unlink()


def _unreadable_hr(opt: dict, folder: Path) -> None:
    _paired_train(opt, folder, SQUARE)
    _garbage(folder / "HR" / "im2.png")


def _unreadable_bicubic(opt: dict, folder: Path) -> None:
    _garbage(_bicubic_train(opt, folder, [(80, 80)] * 5) / "t2.png")


def _val_of_scale_2(opt: dict, _: Path) -> None:
    val = opt["datasets"]["val"]
    val["dataroot_lq"] = val["dataroot_lq"].replace("X4", "X2")
    val["filename_tmpl"] = "{}x2"


def _small_net(num_feat: int = 8) -> torch.nn.Module:
    """The network the small options build (the shipped unit, 2 blocks, x4), ``num_feat`` wide."""
    from bsr_plugin.integrations.basicsr.archs import SHIPPED_UNIT, EDSRBin

    return EDSRBin(num_feat=num_feat, num_block=2, upscale=4, **SHIPPED_UNIT)


def _weights_in(folder: Path) -> Path:
    """EDSRBin weights of the small options' network at ``folder/net_g_4.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params": _small_net().state_dict()}, folder / "net_g_4.pth")
    return folder / "net_g_4.pth"


def _in_own_experiment(key: str) -> Edit:
    def edit(opt: dict, folder: Path) -> None:
        opt["path"][key] = str(_weights_in(folder.parent / "experiments" / opt["name"] / "models"))
    return edit


def _teacher_in_own_experiment(opt: dict, folder: Path) -> None:
    from basicsr.archs.edsr_arch import EDSR

    models = folder.parent / "experiments" / opt["name"] / "models"
    models.mkdir(parents=True)
    torch.save({"params": EDSR(3, 3, num_feat=8, num_block=2, upscale=4).state_dict()}, models / "teacher.pth")
    _distill(str(models / "teacher.pth"))(opt, folder)


def _in_tb_logger(opt: dict, folder: Path) -> None:
    opt["logger"]["use_tb_logger"] = True
    opt["path"]["pretrain_network_g"] = str(_weights_in(folder.parent / "tb_logger" / opt["name"]))


TRAIN_CASES: dict[str, tuple[Edit, str]] = {
    "upscale_differs_from_scale": (_set("network_g", "upscale", 2), r"network_g\.upscale is 2 but scale is 4"),
    "paired_hr_not_a_multiple_of_scale": (
        lambda o, f: _paired_train(o, f, [(128, 128), (128, 128), (130, 128), (128, 128)], [(32, 32)] * 4),
        r"scale 4 disagrees with the data in datasets\.train: 1 of 4 pairs break HR = LR x 4 exactly in training: "
        r"im2\.png 130x128 with LR 32x32"),
    "paired_lr_smaller_than_crop": (lambda o, f: _paired_train(o, f, SQUARE, gt_size=192),
                                    r"4 training pairs are smaller than gt_size 192"),
    "paired_val_lr_of_wrong_size": (
        lambda o, f: _paired_val(o, f, SQUARE, [(32, 32), (32, 32), (16, 16), (32, 32)]),
        r"datasets\.val: 1 of 4 pairs break LR = HR / 4 \(rounded down\): im2\.png 128x128 with LR 16x16"),
    "paired_count_mismatch": (_missing_lr, r"dataroot_gt has 4 files and dataroot_lq 3.*no LR file for im1\.png"),
    "paired_non_image_file": (_non_image_pair, r"2 file\(s\) are not readable images \(.*notes\.txt, .*notesx4\.txt"),
    "paired_unreadable_image": (_unreadable_hr, r"1 file\(s\) are not readable images \(.*HR/im2\.png\)"),
    "bicubic_unreadable_image": (_unreadable_bicubic, r"1 file\(s\) are not readable images \(.*T/t2\.png\)"),
    "bicubic_images_smaller_than_crop": (lambda o, f: _bicubic_train(o, f, [(48, 48)] * 3),
                                         r"every image in .* is smaller than gt_size 64 .* set gt_size to at most 48"),
    "total_iter_never_reached": (lambda o, f: _bicubic_train(o, f, [(80, 80)] * 3),
                                 r"train\.total_iter 4 is never reached: 3 training samples .*\.dataset_enlarge_ratio "
                                 r"to 2 \(or total_iter to 3\)"),
    "batch_larger_than_dataset": (lambda o, f: _bicubic_train(o, f, [(80, 80)] * 3, batch=8),
                                  r"make 0 full batches of 8 .*\.dataset_enlarge_ratio to 6$"),
    "schedule_unknown_key": (_set("train", "binarize_schedule", {"act_from": 2}),
                             r"binarize_schedule: unknown keys \['act_from'\]"),
    "schedule_out_of_range": (_set("train", "binarize_schedule", {"act_from_iter": 10}),
                              r"act_from_iter = 10 lies outside \[0, total_iter=4\]"),
    "schedule_not_a_mapping": (_set("train", "binarize_schedule", 3), r"binarize_schedule must be a mapping"),
    "distill_teacher_missing": (_distill("teacher.pth"), r"the teacher checkpoint 'teacher\.pth' does not exist"),
    "distill_features_match_nothing": (_distill_features, r"train\.distill\.features \['re:nothing'\] match no module"),
    "float_network_for_binary_model": (_set("network_g", {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3,
                                                          "num_feat": 8, "num_block": 2, "upscale": 4}),
                                       r"BinarySRModel needs a binarized network, but 'EDSR' has no binarized layer"),
    "name_escapes_experiments": (_set("name", "../escape"), r"name: '\.\./escape' must be a plain folder name"),
    "network_g_missing": (_delete("network_g"), r"required key 'network_g' is missing"),
    "datasets_not_a_mapping": (_set("datasets", ["T91"]), r"datasets: must be a mapping"),
    "scale_not_a_number": (_set("scale", "x4"), r"scale: 'x4' must be a whole upscaling factor"),
    "unknown_model_type": (_set("model_type", "BinarySRModell"), r"'BinarySRModell' is not in BasicSR's model"),
    "gt_size_not_a_multiple": (_set("datasets", "train", "gt_size", 66), r"gt_size: 66 is not a multiple of scale 4"),
    "train_folder_missing": (_set("datasets", "train", "dataroot_gt", "no/such/folder"),
                             r"folder 'no/such/folder' does not exist"),
    "filename_tmpl_without_braces": (_set("datasets", "val", "filename_tmpl", "x4"), r"must hold '\{\}'"),
    "manual_seed_not_a_number": (_set("manual_seed", "abc"), r"manual_seed: 'abc' must be a whole number"),
    "total_iter_not_a_number": (_set("train", "total_iter", "1e5"), r"train\.total_iter: '1e5'; give the number"),
    "enlarge_ratio_zero": (_set("datasets", "train", "dataset_enlarge_ratio", 0),
                           r"dataset_enlarge_ratio: 0 must be a whole number >= 1"),
    "optimizer_not_adam": (_set("train", "optim_g", "type", "SGD"), r"'SGD'; basicsr 1\.4\.2 supports only Adam"),
    "resume_state_missing": (_set("path", "resume_state", "nope.state"), r"path\.resume_state: 'nope\.state' does not"),
    "pretrain_missing": (_set("path", "pretrain_network_g", "nope.pth"), r"pretrain_network_g: 'nope\.pth' does not"),
    "unknown_key": (_set("logger", "print_frequency", 10), r"logger: unknown key 'print_frequency'"),
    # from the former test_basicsr_errors.py
    "unknown_float_architecture": (_set("network_g", {"type": "BinarizedArch",
                                                      "arch": {"type": "EDSRR", "num_feat": 8}}),
                                   r"unknown float architecture 'EDSRR'"),
    "binarize_rule_matches_nothing": (_set("network_g", "binarize", "rules", [{"binarize": "type:Conv2d"},
                                                                               {"keep": "tail.*"}]),
                                      r"rule \{keep: tail\.\*\} matches no conv/linear layer"),
    "val_lr_of_another_scale": (_val_of_scale_2, r"scale 4 disagrees with the data in datasets\.val"),
    # numbers BasicSR would crash on after experiments/ exists, or absurd ones (issue 17)
    "lr_not_finite": (_set("train", "optim_g", "lr", float("nan")),
                      r"train\.optim_g\.lr: nan must be a number in \[1e-12, 1\]"),
    "lr_infinite": (_set("train", "optim_g", "lr", float("inf")), r"train\.optim_g\.lr: inf must be a number"),
    "lr_negative": (_set("train", "optim_g", "lr", -2e-4), r"train\.optim_g\.lr: -0\.0002 must be a number in"),
    "lr_a_string": (_set("train", "optim_g", "lr", "2e-4"), r"train\.optim_g\.lr: '2e-4' must be a number"),
    "betas_refused_by_adam": (_set("train", "optim_g", "betas", [1.5, 0.999]),
                              r"train\.optim_g: Adam refuses these options \(ValueError: Invalid beta"),
    "optimizer_unknown_argument": (_set("train", "optim_g", "momentum", 0.9),
                                   r"train\.optim_g: Adam refuses these options \(TypeError: .*momentum"),
    "ema_decay_above_one": (_set("train", "ema_decay", 1.5), r"train\.ema_decay: 1\.5 must be a number in \[0, "),
    "warmup_iter_negative": (_set("train", "warmup_iter", -5), r"train\.warmup_iter: -5 must be a whole number"),
    "total_iter_absurd": (_set("train", "total_iter", 10**12), r"train\.total_iter: 1000000000000; give the number"),
    "milestones_not_a_list": (_set("train", "scheduler", "milestones", 200000),
                              r"train\.scheduler: MultiStepLR refuses these options \(TypeError"),
    "gamma_not_finite": (_set("train", "scheduler", "gamma", float("inf")), r"train\.scheduler\.gamma: inf must be"),
    "cosine_periods_and_weights_differ": (_set("train", "scheduler", {"type": "CosineAnnealingRestartLR",
                                                                      "periods": [4], "restart_weights": [1, 1]}),
                                          r"train\.scheduler: CosineAnnealingRestartLR refuses these options"),
    "val_freq_zero": (_set("val", "val_freq", 0), r"val\.val_freq: 0 must be a whole number in \[1, "),
    "print_freq_zero": (_set("logger", "print_freq", 0), r"logger\.print_freq: 0 must be a whole number"),
    "checkpoint_freq_fractional": (_set("logger", "save_checkpoint_freq", 2.5),
                                   r"logger\.save_checkpoint_freq: 2\.5 must be a whole number"),
    "pixel_loss_weight_negative": (_set("train", "pixel_opt", "loss_weight", -1.0),
                                   r"train\.pixel_opt\.loss_weight: -1\.0 must be a number in \[0, 1e\+06\]"),
    "pixel_loss_reduction_unknown": (_set("train", "pixel_opt", {"type": "CurriculumL1Loss", "reduction": "sum2"}),
                                     r"train\.pixel_opt: CurriculumL1Loss cannot be built with these options "
                                     r"\(ConfigError: CurriculumL1Loss: unsupported reduction 'sum2'"),
    "prior_a_not_finite": (_set("network_g", "binarize", "prior_a", float("nan")),
                           r"network_g: binarize\.prior_a must be a number > 0 .*got nan"),
    "scale_absurd": (_set("scale", 1000), r"scale: 1000 must be a whole upscaling factor \(2, 3, 4, \.\.\., at "
                                          r"most 16"),
    "manual_seed_beyond_numpy": (_set("manual_seed", 2**40), r"manual_seed: 1099511627776 must be a whole number in "
                                                             r"\[0, 4294967294\]"),
    "batch_absurd": (_set("datasets", "train", "batch_size_per_gpu", 10**6),
                     r"batch_size_per_gpu: 1000000 must be a whole number >= 1 \(at most 4096\)"),
    "workers_absurd": (_set("datasets", "train", "num_worker_per_gpu", 1000),
                       r"num_worker_per_gpu: 1000 must be a whole number >= 0 \(at most 64\)"),
    "enlarge_ratio_absurd": (_set("datasets", "train", "dataset_enlarge_ratio", 10**9),
                             r"dataset_enlarge_ratio: 1000000000 must be a whole number >= 1 \(at most 10000\)"),
    "gt_size_absurd": (_set("datasets", "train", "gt_size", 100000),
                       r"gt_size: 100000; training crops need a positive gt_size \(a multiple of scale, at most"),
    "crop_border_negative": (_set("val", "metrics", "psnr", "crop_border", -1),
                             r"val\.metrics\.psnr\.crop_border: -1 must be a whole number of pixels"),
    # files the run loads from a folder BasicSR archives first
    "pretrain_in_its_own_experiment": (_in_own_experiment("pretrain_network_g"),
                                       r"path\.pretrain_network_g: '.*experiments/e2e_edsr_bin/models/net_g_4\.pth' "
                                       r"lies inside experiments/e2e_edsr_bin, which basicsr train archives"),
    "teacher_in_its_own_experiment": (_teacher_in_own_experiment,
                                      r"train\.distill\.pretrain: .* lies inside experiments/e2e_edsr_bin, which "
                                      r"basicsr train archives"),
    "pretrain_in_its_tb_logger": (_in_tb_logger, r"path\.pretrain_network_g: .* lies inside tb_logger/e2e_edsr_bin"),
}
if not torch.cuda.is_available():
    TRAIN_CASES["num_gpu_without_cuda"] = (_set("num_gpu", 2), r"num_gpu: 2 but this machine has no CUDA device")


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_preflight(case: str, root: Path, datasets_dir: Path, capsys: pytest.CaptureFixture) -> None:
    edit, pattern = TRAIN_CASES[case]
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    edit(opt, root / "data")
    _refused(root, capsys, "train", opt, pattern)


@pytest.fixture
def checkpoint(root: Path) -> Path:
    """Weights of the network of ``small_test_options`` (EDSRBin, 8 features, 2 blocks, x4)."""
    path = root / "net_g.pth"
    torch.save({"params": _small_net().state_dict()}, path)
    return path


def _wrong_weights(opt: dict, root: Path) -> None:
    torch.save({"params": _small_net(num_feat=16).state_dict()}, root / "other.pth")
    opt["path"]["pretrain_network_g"] = str(root / "other.pth")


def _packed_weights(opt: dict, root: Path) -> None:
    from bsr_plugin import export_packed

    export_packed(_small_net(), root / "net.bsrpack")
    opt["path"]["pretrain_network_g"] = str(root / "net.bsrpack")


TEST_CASES: dict[str, tuple[Edit, str]] = {
    "no_weights": (_set("path", "pretrain_network_g", None), r"path\.pretrain_network_g is missing: basicsr test "
                                                             r"would test an untrained network_g"),
    "weights_missing": (_set("path", "pretrain_network_g", "experiments/x/models/net_g_latest.pth"),
                        r"'experiments/x/models/net_g_latest\.pth' does not exist .* or train first"),
    "weights_of_another_network": (_wrong_weights, r"other\.pth does not fit network_g \(Error\(s\) in loading"),
    "packed_file_as_weights": (_packed_weights, r"net\.bsrpack is a packed model file, not a PyTorch checkpoint"),
    "weights_in_its_own_results": (lambda o, r: o["path"].update(pretrain_network_g=str(_weights_in(
        r / "results" / o["name"]))), r"path\.pretrain_network_g: .* lies inside results/e2e_test_edsr_bin, which "
                                      r"basicsr test archives"),
    "crop_border_not_a_number": (_set("val", "metrics", "psnr", "crop_border", "four"),
                                 r"val\.metrics\.psnr\.crop_border: 'four' must be a whole number"),
    "test_set_lr_of_wrong_scale": (
        lambda o, r: o["datasets"]["test_1"].update(dataroot_lq=o["datasets"]["test_1"]["dataroot_lq"][:-1] + "2",
                                                    filename_tmpl="{}x2"),
        r"scale 4 disagrees with the data in datasets\.test_1: \d+ of \d+ pairs break LR = HR / 4"),
}


@pytest.mark.parametrize("case", sorted(TEST_CASES))
def test_test_preflight(case: str, root: Path, datasets_dir: Path, checkpoint: Path,
                        capsys: pytest.CaptureFixture) -> None:
    edit, pattern = TEST_CASES[case]
    opt = small_test_options("edsr_bin.yml", datasets_dir, checkpoint, sets=("Set5",))
    edit(opt, root)
    _refused(root, capsys, "test", opt, pattern)


# -- the options file and the command line -----------------------------------------------------------
FILE_CASES = {
    "not_a_mapping": ("- name: x\n- scale: 4\n", r"opt\.yml holds a YAML list, not a mapping of options"),
    "empty": ("", r"opt\.yml is empty; a BasicSR options file is a mapping"),
    "only_a_comment": ("# nothing yet\n", r"opt\.yml is empty"),
    "yaml_syntax_error": ("name: x\nscale: [4\n", r"opt\.yml is not valid YAML at line 3"),
    "bad_indentation": ("name: x\n  scale: 4\n", r"opt\.yml is not valid YAML at line 2"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_options_file(case: str, root: Path, capsys: pytest.CaptureFixture) -> None:
    text, pattern = FILE_CASES[case]
    _refused(root, capsys, "train", None, pattern, text=text)


def test_options_file_missing(root: Path, capsys: pytest.CaptureFixture) -> None:
    _refused(root, capsys, "train", None, r"options file .*opt\.yml does not exist")


FLAG_CASES = {
    "unknown_flag": (("--bogus",), r"unrecognized arguments: --bogus; usage: basicsr train\|test -opt X\.yml"),
    "force_yml_unknown_key": (("--force_yml", "train:ema=0.9"), r"train has no key 'ema'; --force_yml only changes "
                                                                r"keys the options file has"),
    "force_yml_without_value": (("--force_yml", "train:total_iter"), r"write it as key:key=value"),
    "force_yml_empty_value": (("--force_yml", "train:total_iter="), r"the value is empty; give one \(~ for None\)"),
    "force_yml_not_yaml": (("--force_yml", "name=@x"), r"the value is not plain YAML"),
    "force_yml_wrong_type": (("--force_yml", "train:total_iter=many"), r"train\.total_iter: 'many'; give the number"),
    "force_yml_into_a_value": (("--force_yml", "scale:x=1"), r"scale has no key 'x'"),
    "plugin_missing": (("--plugin", "no_such_plugin_module"), r"--plugin: cannot import it: No module named"),
    "plugin_without_module": (("--plugin",), r"--plugin needs a module name"),
    "launcher_without_torchrun": (("--launcher", "pytorch"), r"--launcher pytorch needs the variables torchrun sets"),
    "plugin_empty_name": (("--plugin", ""), r"--plugin '' is not a module name: give a dotted name"),
    "plugin_relative_name": (("--plugin", ".archs"), r"--plugin '\.archs' is not a module name"),
    "plugin_file_path": (("--plugin", "my_archs.py"), r"--plugin 'my_archs\.py' is not a module name: .* put its "
                                                      r"folder on PYTHONPATH and give --plugin my_archs"),
    "plugin_equals_spelling": (("--plugin=no_such_plugin_module",), r"--plugin: cannot import it: No module named"),
    "plugin_followed_by_a_flag": (("--plugin", "--debug"), r"--plugin needs a module name"),
    "plugin_that_fails_to_import": (("--plugin", "broken_plugin_x"), r"--plugin broken_plugin_x: importing it "
                                                                     r"failed \(SyntaxError"),
    "force_yml_seed_beyond_numpy": (("--force_yml", "manual_seed=99999999999"),
                                    r"manual_seed: 99999999999 must be a whole number in \[0, 4294967294\]"),
    "force_yml_lr_not_finite": (("--force_yml", "train:optim_g:lr=.nan"), r"train\.optim_g\.lr: nan must be"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_command_line(case: str, root: Path, datasets_dir: Path, capsys: pytest.CaptureFixture,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    flags, pattern = FLAG_CASES[case]
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    (root / "broken_plugin_x.py").write_text("def register(:\n")
    monkeypatch.syspath_prepend(str(root))
    _refused(root, capsys, "train", small_train_options("edsr_bin.yml", datasets_dir), pattern, flags)


USAGE_CASES = {
    "options_missing": (["train"], r"^basicsr train: error: -opt OPTIONS\.yml is required"),
    "unknown_command": (["fit", "-opt", "x.yml"], r"^basicsr: error: unknown command 'fit': use basicsr train\|test"),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_mistake(case: str, root: Path, capsys: pytest.CaptureFixture) -> None:
    args, pattern = USAGE_CASES[case]
    before = snapshot(root)
    assert_refused(basicsr_main(args), capsys.readouterr().err, pattern, before, root)


def test_every_problem_is_listed_at_once(root: Path, datasets_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """Problems in every section, found in one run (none stops the others)."""
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    opt["network_g"]["upscale"] = 2
    opt["train"]["ema"] = 0.999
    opt["train"]["binarize_schedule"] = {"weight_from_iter": -1}
    opt["datasets"]["val"]["dataroot_gt"] = "missing/HR"
    opt["path"]["pretrain_network_g"] = "missing.pth"
    opt["logger"]["print_frequency"] = 1
    yml = write(opt, root / "opt.yml")
    before = snapshot(root)
    assert basicsr_main(["train", "-opt", str(yml)]) == 2
    err = capsys.readouterr().err
    assert snapshot(root) == before and "Traceback" not in err
    assert err.splitlines()[0].endswith("6 problems in the options:")
    for expected in ("network_g.upscale is 2", "unknown key 'ema'", "weight_from_iter = -1", "'missing/HR' does not",
                     "'missing.pth' does not exist", "unknown key 'print_frequency'"):
        assert sum(expected in line for line in err.splitlines()[1:]) == 1, (expected, err)


def test_preflight_scans_every_image_quickly(root: Path, datasets_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """The last pair of a long folder is checked too (headers only)."""
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    sizes = [(128, 128)] * 40
    _paired_train(opt, root / "data", sizes)
    shutil.copy(root / "data" / "X4" / "im0x4.png", root / "data" / "X4" / "im39x4.png")
    write_png(root / "data" / "HR" / "im39.png", 132, 128, seed=39)
    _refused(root, capsys, "train", opt, r"1 of 40 pairs break HR = LR x 4 exactly in training: im39\.png 128x132")


def test_a_good_file_passes_the_preflight(root: Path, datasets_dir: Path) -> None:
    from bsr_plugin.integrations.basicsr.cli import preflight

    yml = write(small_train_options("edsr_bin.yml", datasets_dir), root / "opt.yml")
    preflight(["-opt", str(yml), "--force_yml", "train:total_iter=6", "name=ok_x4"], True)
    assert yaml.safe_load(yml.read_text())["train"]["total_iter"] == 4  # the file itself is never changed
    assert not (root / "experiments").exists()
