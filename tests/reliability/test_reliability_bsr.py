"""Reliability of the ``bsr`` command and the deploy API: every bad input or fault ends in one
line and exit status 2 (a :class:`~bsr_plugin.BsrError` from the API), nothing is written or
lost, and a hand-made packed file is refused before anything large is allocated.

Most cases call the command's ``main`` in this process; the real ``.venv/bin/bsr`` runs where
the process is the point (its memory, its resource limits, its user)."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from bsr_plugin import PackedFormatError, binary_layers, calibrate_scales_, export_packed, load_packed
from bsr_plugin.deploy.cli import main
from bsr_plugin.integrations.basicsr.archs import EDSRBin

from .helpers import (
    BSR,
    FULL_DISK,
    UNSAFE_ENV,
    InterruptedWrite,
    assert_refused,
    code_running_checkpoint,
    limit,
    png_header,
    rewrite_pack,
    run,
    run_measured,
    snapshot,
    write_png,
)

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

NET = dict(type="EDSRBin", num_feat=8, num_block=1, upscale=2)


def _trained_net(num_block: int = 1, scales: tuple[float, float] = (0.001, 0.01), seed: int = 0) -> EDSRBin:
    torch.manual_seed(seed)
    net = EDSRBin(num_feat=8, num_block=num_block, upscale=2)
    with torch.no_grad():
        for _, layer in binary_layers(net):
            layer.weight.uniform_(-0.01, 0.01)
            layer.scale.uniform_(*scales)
    return net.eval()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """The inputs every case starts from: a checkpoint, an options file, a packed file, images."""
    root = tmp_path_factory.mktemp("inputs")
    net = _trained_net()
    torch.save({"params": net.state_dict()}, root / "ck.pth")
    (root / "net.yml").write_text(yaml.safe_dump({"network_g": NET}))
    (root / "no_net.yml").write_text(yaml.safe_dump({"name": "x"}))
    export_packed(net, root / "small.bsrpack")
    (root / "trunc.bsrpack").write_bytes((root / "small.bsrpack").read_bytes()[:-500])
    write_png(root / "lr.png", 12, 16)
    write_png(root / "lr16.png", 12, 16, dtype=np.uint16)
    write_png(root / "rgba.png", 12, 16, channels=4)
    png_header(root / "huge.png", 100000, 100000)
    (root / "half.png").write_bytes((root / "lr.png").read_bytes()[:60])
    (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    (root / "empty").mkdir()
    (root / "out.png").write_bytes(b"an earlier result that must survive")
    return root


@pytest.fixture
def work(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the inputs, as the current folder."""
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(work: Path, capsys: pytest.CaptureFixture, args: list[str], pattern: str) -> str:
    before = snapshot(work)
    rc = main(args)
    return assert_refused(rc, capsys.readouterr().err, pattern, before, work, prefix=f"bsr {args[0]}: error: ")


# -- command-line refusals (in process) ----------------------------------------------------------
EXPORT = ["export", "-opt", "net.yml"]
RUN = ["run", "small.bsrpack"]
REFUSALS = {
    "export_onto_its_checkpoint": (EXPORT + ["--checkpoint", "ck.pth", "-o", "ck.pth"], r"-o ck\.pth: .*\.bsrpack"),
    "export_onto_its_packed_input": (["export", "--packed", "small.bsrpack", "-o", "small.bsrpack"],
                                     r"refusing to write small\.bsrpack: it is also an input"),
    "export_not_bsrpack": (EXPORT + ["--checkpoint", "ck.pth", "-o", "model.pth"], r"give it the \.bsrpack suffix"),
    "export_onnx_suffix": (EXPORT + ["--checkpoint", "ck.pth", "-o", "m.bsrpack", "--onnx", "m.txt"],
                           r"--onnx m\.txt: give the ONNX file the \.onnx suffix"),
    "export_into_missing_folder": (EXPORT + ["--checkpoint", "ck.pth", "-o", "nope/m.bsrpack"],
                                   r"nope/m\.bsrpack: no such file or folder"),
    "export_packed_as_checkpoint": (EXPORT + ["--checkpoint", "small.bsrpack", "-o", "m.bsrpack"],
                                    r"small\.bsrpack is a packed model file, not a PyTorch checkpoint"),
    "export_missing_checkpoint": (EXPORT + ["--checkpoint", "nope.pth", "-o", "m.bsrpack"],
                                  r"checkpoint nope\.pth does not exist"),
    "export_checkpoint_not_torch": (EXPORT + ["--checkpoint", "lr.png", "-o", "m.bsrpack"],
                                    r"lr\.png cannot be (read as a PyTorch checkpoint|loaded safely)"),
    "summary_missing_options": (["summary", "-opt", "nope.yml"], r"options file nope\.yml does not exist"),
    "summary_no_network_g": (["summary", "-opt", "no_net.yml"], r"no_net\.yml: no network_g section"),
    "summary_missing_param_key": (["summary", "-opt", "net.yml", "--checkpoint", "ck.pth", "--param-key", "ema"],
                                  r"has no key 'ema'"),
    "run_onto_its_input": (RUN + ["lr.png", "-o", "lr.png"], r"refusing to write lr\.png: it is also an input"),
    "run_onto_its_model": (RUN + ["lr.png", "-o", "small.bsrpack"], r"it is also an input"),
    "run_unknown_suffix": (RUN + ["lr.png", "-o", "sr.xyz"], r"cannot write sr\.xyz: use an image file name"),
    "run_suffix_opencv_cannot_write": (RUN + ["lr.png", "-o", "sr.pgm"],
                                       r"OpenCV cannot write a 3-channel 8-bit image as \.pgm; use \.png"),
    "run_16bit_to_jpeg": (RUN + ["lr16.png", "-o", "sr.jpg"], r"16-bit image; \.jpg would lose its precision"),
    "run_missing_input": (RUN + ["nope.png", "-o", "sr.png"], r"input nope\.png does not exist"),
    "run_input_not_an_image": (RUN + ["garbage.png", "-o", "sr.png"], r"cannot read garbage\.png as an image"),
    "run_input_with_alpha": (RUN + ["rgba.png", "-o", "sr.png"], r"rgba\.png has an alpha channel"),
    "run_several_inputs_to_a_file": (RUN + ["lr.png", "lr16.png", "-o", "sr.png"], r"several inputs need a folder"),
    "run_folder_without_images": (RUN + ["empty", "-o", "outdir"], r"empty holds no image"),
    "run_negative_tile": (RUN + ["lr.png", "-o", "sr.png", "--tile", "-1"],
                          r"--tile -1: give a whole number in \[1, 65,536\] \(or 0: the whole image"),
    "run_checkpoint_as_model": (["run", "ck.pth", "lr.png", "-o", "sr.png"], r"not a bsr_plugin packed model"),
    "run_truncated_model": (["run", "trunc.bsrpack", "lr.png", "-o", "sr.png"], r"trunc\.bsrpack: truncated"),
    "run_model_reference_malformed": (RUN + ["lr.png", "-o", "sr.png", "--model", "nomodule"],
                                      r"write it as module:function"),
    "run_model_reference_missing": (RUN + ["lr.png", "-o", "sr.png", "--model", "no_such_module_x:f"],
                                    r"cannot import it"),
    "bench_bad_size": (["bench", "small.bsrpack", "--size", "big"], r"--size WxH"),
    "check_missing_packed": (["check", "--packed", "nope.bsrpack"], r"nope\.bsrpack: cannot read it"),
    # every numeric argument, range-checked before anything runs (issue 17)
    "summary_input_of_other_channels": (["summary", "-opt", "net.yml", "--input-size", "1", "180", "320"],
                                        r"--input-size 1 180 320: the network takes 3-channel inputs, not 1"),
    "summary_input_size_zero": (["summary", "-opt", "net.yml", "--input-size", "3", "0", "320"],
                                r"--input-size 0: give a whole number in \[1, 16,384\] for the height and width"),
    "summary_input_size_absurd": (["summary", "-opt", "net.yml", "--input-size", "3", "100000", "100000"],
                                  r"--input-size 100000: give a whole number in \[1, 16,384\]"),
    "check_input_size_too_large_to_run": (["check", "-opt", "net.yml", "--input-size", "3", "5000", "48"],
                                          r"--input-size 5000: give a whole number in \[1, 4,096\]"),
    "check_image_and_input_size": (["check", "--packed", "small.bsrpack", "--image", "lr.png", "--input-size", "3",
                                    "8", "8"], r"--image and --input-size both give the input: give one"),
    "export_input_size_without_onnx": (EXPORT + ["--checkpoint", "ck.pth", "-o", "m.bsrpack", "--input-size", "3",
                                                 "48", "48"], r"--input-size is the size of the ONNX sample input"),
    "export_onnx_sample_of_other_channels": (EXPORT + ["--checkpoint", "ck.pth", "-o", "m.bsrpack", "--onnx", "m.onnx",
                                                       "--input-size", "1", "48", "48"],
                                             r"--input-size 1 48 48: the network takes 3-channel inputs, not 1"),
    "run_tile_pad_absurd": (RUN + ["lr.png", "-o", "sr.png", "--tile", "8", "--tile-pad", "100000"],
                            r"--tile-pad 100000: give a whole number in \[0, 4,096\]"),
    "run_tile_absurd": (RUN + ["lr.png", "-o", "sr.png", "--tile", "10000000"], r"--tile 10000000: give a whole"),
    "run_tile_pad_negative": (RUN + ["lr.png", "-o", "sr.png", "--tile", "8", "--tile-pad", "-1"],
                              r"--tile-pad -1: give a whole number in \[0, 4,096\]"),
    "run_tile_pad_below_receptive_field": (RUN + ["lr.png", "-o", "sr.png", "--tile", "8", "--tile-pad", "2"],
                                           r"--tile-pad 2 is smaller than the network's receptive field \(\d+ input "
                                           r"pixels\): tiles would differ from the whole-image output"),
    "run_max_pixels_zero": (RUN + ["lr.png", "-o", "sr.png", "--max-pixels", "0"], r"--max-pixels 0: give a whole"),
    "run_image_above_max_pixels": (RUN + ["lr.png", "-o", "sr.png", "--max-pixels", "100"],
                                   r"lr\.png: its header declares 16x12 = 192 pixels, above the limit of 100 "
                                   r"\(--max-pixels\)"),
    "run_header_declares_huge_image": (RUN + ["huge.png", "-o", "sr.png"],
                                       r"huge\.png: its header declares 100000x100000 = 10,000,000,000 pixels, above "
                                       r"the limit"),
    "run_huge_image_with_limit_raised": (RUN + ["huge.png", "-o", "sr.png", "--max-pixels", "17179869184"],
                                         r"huge\.png (\(100000x100000\): it needs [\d.]+ GiB in memory whatever the "
                                         r"tiling|: cannot decode it|cannot decode huge\.png)"),
    "run_truncated_image": (RUN + ["half.png", "-o", "sr.png"], r"cannot (read|decode) half\.png as an image"),
    "check_header_declares_huge_image": (["check", "--packed", "small.bsrpack", "--image", "huge.png"],
                                         r"huge\.png: its header declares 100000x100000"),
    "bench_zero_threads": (["bench", "small.bsrpack", "--threads", "0"], r"--threads 0: give a whole number in \[1, "),
    "bench_zero_repeats": (["bench", "small.bsrpack", "--repeats", "0"], r"--repeats 0: give a whole number in \[1, "),
    "bench_size_zero": (["bench", "small.bsrpack", "--size", "0x10"], r"--size 0: give a whole number in \[1, 8,192\]"),
    "bench_size_absurd": (["bench", "small.bsrpack", "--size", "100000x100000"], r"--size 100000: give a whole"),
    "bench_size_three_numbers": (["bench", "small.bsrpack", "--size", "3x4x5"], r"--size WxH"),
    "run_model_reference_relative": (RUN + ["lr.png", "-o", "sr.png", "--model", ".nets:make"],
                                     r"--model '\.nets:make': write it as module:function"),
    "run_model_needs_arguments": (RUN + ["lr.png", "-o", "sr.png", "--model", "os:system"],
                                  r"--model 'os:system' needs arguments; name a function that takes none"),
    "run_input_is_a_folder_of_nothing_readable": (RUN + ["empty", "-o", "outdir"], r"empty holds no image"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_command_refuses(case: str, work: Path, capsys: pytest.CaptureFixture) -> None:
    args, pattern = REFUSALS[case]
    _refused(work, capsys, list(args), pattern)


def test_usage_mistake_is_one_line(work: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(work)
    with pytest.raises(SystemExit) as exc:
        main(["run", "small.bsrpack"])
    assert_refused(exc.value.code, capsys.readouterr().err, r"the following arguments are required: INPUT, -o",
                   before, work, prefix="bsr run: error: ")


# -- hand-made packed files ------------------------------------------------------------------------
def _spec(**kw):
    return lambda m: m["build"]["spec"].update(kw)


def _set(path: tuple, value):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _overlap(m):
    m["tensors"][1]["offset"] = m["tensors"][0]["offset"] + 8


HAND_MADE = {
    "huge_network_declared": (_spec(num_feat=4096, num_block=64), r"does not match it"),
    "negative_shape": (_set(("tensors", 0, "shape"), [-8, 8, 3, 3]), r"shape, offset or size is not"),
    "shape_larger_than_bytes": (_set(("tensors", 1, "shape"), [2**20, 2**20]), r"do not hold shape"),
    "string_prior_a": (_set(("binary_layers", 0, "options", "prior_a"), "0.01"), r"body\.0\.conv1.*prior_a"),
    "string_arch_argument": (_spec(num_feat="eight"), r"cannot be built from the stored spec"),
    "unknown_arch_argument": (_spec(bogus=1), r"cannot be built from the stored spec"),
    "unknown_arch_type": (_spec(type="NoSuchArch"), r"cannot be built from the stored spec"),
    "overlapping_tensors": (_overlap, r"overlaps the tensor before it"),
    "unknown_builder": (_set(("build", "builder"), "evil"), r"no network builder named 'evil'"),
    "unknown_layer_class": (_set(("binary_layers", 0, "class"), "os.system"), r"unknown class 'os\.system'"),
    "bias_not_a_bool": (_set(("binary_layers", 0, "bias"), "yes"), r"bad stored_scale or bias"),
    "tensors_not_a_list": (_set(("tensors",), {"a": 1}), r"must be lists"),
    "wrong_format_name": (_set(("format",), "other"), r"not a bsr_plugin packed-model manifest"),
    "other_byteorder": (_set(("byteorder",), "big" if sys.byteorder == "little" else "little"), r"-endian"),
}


@pytest.mark.parametrize("case", sorted(HAND_MADE))
def test_hand_made_packed_file(case: str, work: Path, capsys: pytest.CaptureFixture) -> None:
    edit, pattern = HAND_MADE[case]
    rewrite_pack(work / "small.bsrpack", work / "evil.bsrpack", edit)
    _refused(work, capsys, ["run", "evil.bsrpack", "lr.png", "-o", "sr.png"], pattern)
    with pytest.raises(PackedFormatError if case != "unknown_builder" else LookupError):
        load_packed(work / "evil.bsrpack")


def test_hand_made_huge_network_allocates_nothing(work: Path) -> None:
    """A ~15 KB file declaring a network of gigabytes: refused with the memory of a good small run."""
    rewrite_pack(work / "small.bsrpack", work / "evil.bsrpack", _spec(num_feat=4096, num_block=64))
    ok_rc, ok_err, ok_rss = run_measured([BSR, "run", "small.bsrpack", "lr.png", "-o", "sr.png"], work)
    assert ok_rc == 0, ok_err
    before = snapshot(work)
    rc, err, rss = run_measured([BSR, "run", "evil.bsrpack", "lr.png", "-o", "sr2.png"], work,
                                preexec_fn=limit(resource.RLIMIT_AS, 12 * 2**30))  # a safety net, not the check
    assert_refused(rc, err, r"evil\.bsrpack: the network rebuilt for this file does not match it", before, work,
                   prefix="bsr run: error: ")
    assert rss < ok_rss + 64 * 2**20, f"peak memory {rss:,} bytes, a good run needs {ok_rss:,}"


def test_memory_bound(work: Path) -> None:
    with pytest.raises(PackedFormatError, match=r"needs [0-9,]+ bytes, above the memory bound \(1,000 bytes\)"):
        load_packed(work / "small.bsrpack", max_bytes=1000)


# -- disks and memory ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, target", [
    (RUN + ["lr.png", "-o", "out.png"], "out.png"),
    (EXPORT + ["--checkpoint", "ck.pth", "-o", "m.bsrpack"], "m.bsrpack"),
])
def test_full_disk(args, target, work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing: one line, no partial file, an earlier file of that name intact."""
    from bsr_plugin import fileio

    (work / target).write_bytes(b"an earlier file")
    full = lambda path, mode: InterruptedWrite(open(path, mode), FULL_DISK, keep=10)  # noqa: E731
    monkeypatch.setattr(fileio, "open", full, raising=False)
    _refused(work, capsys, list(args), rf"{target}: the disk is full: free some space")


def _without_permission_override() -> None:
    """``preexec_fn``: as root, give up the capabilities that ignore file permissions (root
    writes into read-only folders otherwise), so the child meets them as any user does."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, dropped from the bounding set
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("args, pattern", [
    (RUN + ["lr.png", "-o", "ro/sr.png"], r"the folder .*/ro is not writable; choose another output folder"),
    (EXPORT + ["--checkpoint", "ck.pth", "-o", "ro/m.bsrpack"], r"ro/m\.bsrpack: permission denied: choose a folder"),
])
def test_read_only_folder(args, pattern, work: Path) -> None:
    (work / "ro").mkdir()
    (work / "ro").chmod(0o555)
    try:
        before = snapshot(work)
        res = run([BSR, *args], work, preexec_fn=_without_permission_override)
        assert_refused(res.returncode, res.stderr, pattern, before, work, prefix=f"bsr {args[0]}: error: ")
    finally:
        (work / "ro").chmod(0o755)


def test_file_size_limit(work: Path) -> None:
    """EFBIG (ulimit -f) while writing the image: one line; the earlier out.png is intact."""
    write_png(work / "big.png", 96, 96, seed=1)
    before = snapshot(work)
    res = run([BSR, *RUN, "big.png", "-o", "out.png"], work, preexec_fn=limit(resource.RLIMIT_FSIZE, 2048))
    assert_refused(res.returncode, res.stderr, r"out\.png: the file is larger than this process may write", before,
                   work, prefix="bsr run: error: ")


OOM_RUNNER = """
import resource, sys
import bsr_plugin.integrations.basicsr, bsr_plugin.deploy.engine.modules
from bsr_plugin.deploy.cli import main
vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


def test_out_of_memory_says_tile_and_tiles_fit(work: Path) -> None:
    """A large image under an address-space limit: one line with the fix (--tile N); with it, it runs."""
    write_png(work / "large.png", 1536, 1536)
    before = snapshot(work)
    cmd = [sys.executable, "-c", OOM_RUNNER, str(320 * 2**20), *RUN, "large.png", "-o", "sr.png"]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = run(cmd, work, env=env)
    line = assert_refused(res.returncode, res.stderr, r"out of memory on large\.png \(1536x1536\): run it in tiles, "
                          r"e\.g\. --tile \d+", before, work, prefix="bsr run: error: ")
    tile = line.rsplit("--tile ", 1)[1]
    res = run(cmd + ["--tile", tile], work, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert cv2.imread(str(work / "sr.png")).shape == (3072, 3072, 3)


# -- code never runs ---------------------------------------------------------------------------------
def test_code_running_checkpoint_is_refused_by_bsr(work: Path) -> None:
    marker = work / "MARKER"
    code_running_checkpoint(work / "evil.pth", marker)
    before = snapshot(work)
    res = run([BSR, *EXPORT, "--checkpoint", "evil.pth", "-o", "m.bsrpack"], work, env=UNSAFE_ENV)
    assert_refused(res.returncode, res.stderr, r"evil\.pth cannot be loaded safely", before, work,
                   prefix="bsr export: error: ")
    assert not marker.exists()


def test_export_onto_its_checkpoint_real_command(work: Path) -> None:
    before = snapshot(work)
    res = run([BSR, *EXPORT, "--checkpoint", "ck.pth", "-o", "ck.pth"], work)
    assert_refused(res.returncode, res.stderr, r"-o ck\.pth: bsr export writes a packed model file", before, work,
                   prefix="bsr export: error: ")


# -- silent wrong results ------------------------------------------------------------------------------
def test_calibrate_scales_force_is_idempotent() -> None:
    net = EDSRBin(num_feat=8, num_block=1, upscale=2)
    x = torch.rand(1, 3, 8, 8) * 3
    calibrate_scales_(net, x)
    once = {n: layer.scale.clone() for n, layer in binary_layers(net)}
    for _ in range(3):
        calibrate_scales_(net, x, force=True)
    for name, layer in binary_layers(net):
        torch.testing.assert_close(layer.scale, once[name])
    assert calibrate_scales_(net, x) == []  # already calibrated: nothing to do without force


def test_sixteen_bit_image_keeps_its_precision(work: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*RUN, "lr16.png", "-o", "sr16.png", "--engine", "float"]) == 0
    out = cv2.imread(str(work / "sr16.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (24, 32, 3)
    assert np.any(out % 257 != 0)  # not 8-bit values stretched to 16 bits
    capsys.readouterr()


def test_programming_error_keeps_its_traceback(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only user errors (BsrError, OSError, out of memory) become one line; a bug propagates."""
    import bsr_plugin.deploy.cli as cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "load_packed", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main([*RUN, "lr.png", "-o", "sr.png"])


# -- several outputs, and the ONNX file, written atomically ------------------------------------------
ONNX_EXPORT = EXPORT + ["--checkpoint", "ck.pth", "-o", "m.bsrpack", "--onnx", "m.onnx"]


def _onnx_writer(fault: BaseException):
    """torch's ONNX file writer, interrupted by ``fault`` after the first bytes."""
    def write(model_bytes, f, export_map):
        with InterruptedWrite(open(f, "wb"), fault) as fh:
            fh.write(model_bytes)
    return write


@pytest.mark.parametrize("fault", [FULL_DISK, KeyboardInterrupt()], ids=["full_disk", "kill"])
def test_interrupted_onnx_write_keeps_the_previous_file(fault, work: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX file is written last-renamed-first: an interrupted write leaves the earlier
    m.onnx whole and writes no m.bsrpack either (none of the two outputs is half done)."""
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    (work / "m.onnx").write_bytes(b"an earlier ONNX graph that must survive")
    monkeypatch.setattr(onnx_proto_utils, "_export_file", _onnx_writer(fault))
    if isinstance(fault, KeyboardInterrupt):
        before = snapshot(work)
        with pytest.raises(KeyboardInterrupt):
            main(ONNX_EXPORT)
        assert snapshot(work) == before
    else:
        _refused(work, capsys, ONNX_EXPORT, r"m\.onnx: the disk is full: free some space")


def test_failed_packed_write_leaves_no_new_onnx(work: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX graph is written first but renamed into place only after the packed file is."""
    from bsr_plugin import fileio

    (work / "m.onnx").write_bytes(b"an earlier ONNX graph that must survive")
    real_open = open

    def full(path, mode):
        handle = real_open(path, mode)
        return InterruptedWrite(handle, FULL_DISK, keep=10) if "x" in mode else handle
    monkeypatch.setattr(fileio, "open", full, raising=False)
    _refused(work, capsys, ONNX_EXPORT, r"m\.bsrpack: the disk is full")


KILL_RUNNER = """
import os, signal, sys
from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

def killed_mid_write(model_bytes, f, export_map):
    with open(f, "wb") as fh:
        fh.write(model_bytes[:len(model_bytes) // 2])
        fh.flush()
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        fh.write(model_bytes[len(model_bytes) // 2:])

onnx_proto_utils._export_file = killed_mid_write
from bsr_plugin.deploy.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_onnx_export_keeps_the_previous_file(sig: str, work: Path) -> None:
    """A real kill in the middle of the ONNX write: m.onnx is the earlier file, whole; SIGTERM
    also removes the temporary file (SIGKILL cannot be caught: a hidden .m.onnx.*.tmp stays)."""
    (work / "m.onnx").write_bytes(b"an earlier ONNX graph that must survive")
    before = snapshot(work)
    res = run([sys.executable, "-c", KILL_RUNNER, sig, *ONNX_EXPORT], work)
    assert res.returncode in (143, -9), (res.returncode, res.stderr[-2000:])
    after = {k: v for k, v in snapshot(work).items() if not re.fullmatch(r"\.+m\.onnx\..*\.tmp", k)}
    assert after == before
    if sig == "SIGTERM":
        assert snapshot(work) == before


# -- tiling never changes the answer ------------------------------------------------------------------
def test_tiles_with_the_default_pad_equal_the_whole_image(work: Path, capsys: pytest.CaptureFixture) -> None:
    """A network whose receptive field (radius 25 input pixels) is wider than the old fixed
    default pad of 16: the default pad is computed from the network, so tiles match exactly."""
    export_packed(_trained_net(num_block=10, scales=(0.05, 0.2), seed=1), work / "deep.bsrpack")
    write_png(work / "photo.png", 64, 72, seed=3)
    common = ["run", "deep.bsrpack", "photo.png", "--engine", "float"]
    assert main([*common, "-o", "whole.png"]) == 0
    assert main([*common, "-o", "tiled.png", "--tile", "16"]) == 0
    whole, tiled = (cv2.imread(str(work / f), cv2.IMREAD_UNCHANGED) for f in ("whole.png", "tiled.png"))
    assert np.array_equal(whole, tiled)
    capsys.readouterr()
    before = snapshot(work)
    rc = main([*common, "-o", "seams.png", "--tile", "16", "--tile-pad", "16"])
    assert_refused(rc, capsys.readouterr().err, r"--tile-pad 16 is smaller than the network's receptive field "
                   r"\(2[0-9] input pixels\)", before, work, prefix="bsr run: error: ")


def test_receptive_radius_of_a_network() -> None:
    """The radius sums every conv's reach at its own resolution; linear layers make it unknown."""
    from torch import nn

    from bsr_plugin.deploy.tiling import probe

    edsr = probe(EDSRBin(num_feat=8, num_block=2, upscale=4).eval(), 3)
    assert edsr.scale == 4 and edsr.radius == 8  # ceil(1 + 4 + 1 + 1 (x1) + 0.5 (x2) + 0.25 (x4))

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.mix = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 4)

        def forward(self, x):
            return self.mix(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Smooth(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="bicubic"))

    assert probe(Tokens(), 3).radius is None
    assert probe(Smooth(), 3) == type(edsr)(scale=2, radius=3)  # bicubic 2 + the conv 1 / 2, rounded up


USER_NET = '''
from torch import nn


class Mixer(nn.Module):
    """Deep convs (receptive radius 20) with a linear layer over the channels of every pixel."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *[nn.Conv2d(8, 8, 3, padding=1) for _ in range(19)])
        self.mix = nn.Linear(8, 8)
        self.out = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        y = self.mix(self.convs(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(y)


def make_net():
    return Mixer()
'''


def test_unknown_receptive_field_is_measured(work: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A network with a linear layer has no computable receptive field: tiling runs with the
    fallback pad and says, in one warning line, what it changed on a crop of the image."""
    from bsr_plugin import convert

    (work / "user_mixer.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(work))
    from user_mixer import make_net

    torch.manual_seed(0)
    export_packed(convert(make_net()).eval(), work / "mixer.bsrpack")
    write_png(work / "photo.png", 48, 48, seed=5)
    args = ["run", "mixer.bsrpack", "photo.png", "-o", "t.png", "--tile", "16", "--engine", "float", "--model",
            "user_mixer:make_net"]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"bsr run: warning: this network's receptive field cannot be computed .* "
                                        r"differ from the whole image by up to \d+/255 on [\d.]+% of the values",
                                        lines[0]), lines
