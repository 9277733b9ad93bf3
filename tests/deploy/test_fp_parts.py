"""The full-precision parts of an engine network in bf16 / int8 (bsr_plugin.deploy.engine.lowp):
each precision path gives its reference's outputs within a stated tolerance, the binary convs
stay exact, binarized and packed layers are left alone, the calibration is plain reproducible
JSON, and a precision this machine cannot run is refused with the fp32 fallback named.

Tolerances (measured on these tiny random networks, then given about 3-4x headroom):

* bf16 conv against fp32 on the bf16-rounded input, weight and bias: 2**-7 of the output's
  largest value (measured at most 0.28 %; the output alone is rounded by up to 2**-9).
* int8 conv against the same arithmetic in fp32 on the same quantized values: 1e-5 relative
  (integer sums, exact); a chained (uint8) output within 1 of the rounded reference.
* whole engine network, low-precision parts against fp32 parts, relative to the output's range:
  bf16 at most 1 % (measured 0.28 %), 0.2 % on average (0.045 %); int8 at most 4 % (1.0 %),
  0.8 % on average (0.19 %); the int8 conv -> shuffle -> conv chain 3 % (0.78 %).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.engine_network import as_if_trained
from bsr_plugin import binary_layers, export_packed, is_binary, load_packed
from bsr_plugin.deploy.engine import kernels, lowp
from bsr_plugin.deploy.engine.blocks import FusedResidualBlock, fuse_residual_blocks
from bsr_plugin.deploy.engine.lowp import (
    Bf16Conv2d,
    Int8Conv2d,
    activation_qparams,
    calibrate_fp_parts,
    fp_parts_support,
    lower_fp_parts,
    quantize_activation,
    quantize_weight,
    require_fp_parts,
)
from bsr_plugin.deploy.engine.modules import PackedBinaryConv2d, is_packed
from bsr_plugin.errors import ConfigError

from ..nets import needs_basicsr

CL = torch.channels_last
REPO = Path(__file__).resolve().parents[2]


def _needs(precision: str) -> None:
    reason = fp_parts_support(precision)
    if reason is not None:
        pytest.skip(f"{precision} cannot run here: {reason}")


def _images(n: int = 3, size: tuple[int, int] = (12, 10), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, *size, generator=g).contiguous(memory_format=CL) for _ in range(n)]


@pytest.fixture(scope="module")
def body_pack(tmp_path_factory):
    """EDSR x4, 16 features, 2 blocks, its body binarized (the default), as a packed file."""
    needs_basicsr()
    from bsr_plugin.integrations.basicsr.archs import EDSRBin

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fp_parts") / "edsr.bsrpack"
    export_packed(as_if_trained(EDSRBin(num_feat=16, num_block=2, upscale=4)), path)
    return path


def _engine(path) -> nn.Module:
    return load_packed(path, engine="packed")


def _tail_net() -> nn.Module:
    """No BasicSR needed: head conv on RGB, conv -> shuffle -> conv -> shuffle -> conv."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 64, 3, padding=1), nn.PixelShuffle(2),
                         nn.Conv2d(16, 64, 3, padding=1), nn.PixelShuffle(2),
                         nn.Conv2d(16, 3, 3, padding=1)).eval().to(memory_format=CL)


# ---------------------------------------------------------------------------------------
# capability and refusal
# ---------------------------------------------------------------------------------------

def test_capability_is_checked_explicitly(monkeypatch):
    assert fp_parts_support("fp32") is None
    assert "unknown precision" in fp_parts_support("fp8")
    monkeypatch.setattr(lowp, "_cpu_flags", lambda: {})
    assert "AVX512_BF16" in fp_parts_support("bf16")
    assert "AVX2" in fp_parts_support("int8")
    monkeypatch.setattr(lowp, "_cpu_flags", lambda: {"avx2": True, "avx512_bf16": True, "amx_bf16": True})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    if torch.backends.mkldnn.is_available():
        assert "capped at AVX2" in fp_parts_support("bf16")  # the "AVX2 machine" of the benchmark
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX")
    assert fp_parts_support("int8") is not None


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_refused_with_the_fp32_fallback_named(monkeypatch, precision):
    monkeypatch.setattr(lowp, "fp_parts_support", lambda p: None if p == "fp32" else "this CPU has no such thing")
    net = _tail_net()
    with pytest.raises(ConfigError, match=r"this CPU has no such thing.*run them in fp32.*--fp-parts fp32"):
        lower_fp_parts(net, precision, {})
    assert all(type(m) is not Bf16Conv2d and type(m) is not Int8Conv2d for m in net.modules())
    with pytest.raises(ConfigError, match="fp32"):
        require_fp_parts(precision)
    assert lower_fp_parts(net, "fp32") is net


def test_int8_needs_a_fitting_calibration():
    _needs("int8")
    with pytest.raises(ConfigError, match="calibrate_fp_parts"):
        lower_fp_parts(_tail_net(), "int8")
    with pytest.raises(ConfigError, match="does not fit"):
        lower_fp_parts(_tail_net(), "int8", {"other": {"index": 0, "in_channels": 5, "out_channels": 5,
                                                       "kernel_size": [1, 1], "scale": 1.0, "zero_point": 0}})


# ---------------------------------------------------------------------------------------
# each layer against its reference
# ---------------------------------------------------------------------------------------

def test_bf16_conv_matches_fp32_on_rounded_operands():
    _needs("bf16")
    conv = nn.Conv2d(16, 24, 3, padding=1).eval()
    x = torch.randn(1, 16, 9, 11).contiguous(memory_format=CL)
    y = Bf16Conv2d(conv)(x)
    bf = torch.bfloat16
    ref = F.conv2d(x.to(bf).float(), conv.weight.to(bf).float(), conv.bias.to(bf).float(), padding=1)
    assert y.dtype == torch.float32
    assert (y - ref).abs().max() <= 2**-7 * ref.abs().max()
    assert Bf16Conv2d(conv, chained=True)(x).dtype == bf


def test_int8_conv_matches_the_same_arithmetic_in_fp32():
    _needs("int8")
    conv = nn.Conv2d(16, 24, 3, padding=1).eval()
    x = torch.randn(1, 16, 9, 11).contiguous(memory_format=CL)
    x_q = activation_qparams(float(x.min()), float(x.max()))
    out_q = (0.05, 120)
    q, w_scale = quantize_weight(conv.weight)
    assert q.dtype == torch.int8 and w_scale.shape == (24,)
    xq = quantize_activation(x, *x_q)
    ref = F.conv2d((xq.float() - x_q[1]) * x_q[0], q.float() * w_scale.view(-1, 1, 1, 1), conv.bias, padding=1)
    y = Int8Conv2d(conv, x_q)(x)
    assert y.dtype == torch.float32 and (y - ref).abs().max() <= 1e-5 * ref.abs().max()
    chained = Int8Conv2d(conv, x_q, out_q)
    yq = chained(xq)  # a uint8 input comes quantized with the layer's own parameters
    assert yq.dtype == torch.uint8
    assert (yq.float() - torch.round(ref / out_q[0] + out_q[1]).clamp(0, 255)).abs().max() <= 1
    copied = copy.deepcopy(chained)  # oneDNN's packed weight is remade, not copied
    assert torch.equal(copied(xq), yq) and pickle.loads(pickle.dumps(chained)).out_zero_point == 120


# ---------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "cap", "levels"), [
    ({"avx2": True, "avx512_vnni": True}, None, 127), ({"avx2": True, "amx_int8": True}, None, 127),
    ({"avx2": True, "avx_vnni": True}, None, 127), ({"avx2": True}, None, 63),
    ({"avx2": True, "avx512_vnni": True, "avx_vnni": True}, "AVX2", 63),
    ({"avx2": True, "avx512_vnni": True}, "AVX512_CORE", 63),
    ({"avx2": True, "avx512_vnni": True}, "AVX512_CORE_VNNI", 127),
    ({"avx2": True, "avx_vnni": True}, "AVX2_VNNI", 127)])
def test_weights_take_7_bits_where_int8_kernels_lack_vnni(monkeypatch, flags, cap, levels):
    monkeypatch.setattr(lowp, "_cpu_flags", lambda: flags)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert lowp.int8_weight_levels() == levels
    q, _ = quantize_weight(torch.randn(4, 3, 3, 3), levels)
    assert int(q.abs().max()) == levels


@pytest.mark.slow
@pytest.mark.slow
def test_int8_conv_exact_on_a_cpu_without_vnni():
    """Under ONEDNN_MAX_CPU_ISA=AVX2 (the benchmark's AVX2 machine) 8-bit weights would saturate
    oneDNN's 16-bit pair sums (11 % error measured); with 7 bits the conv is exact again."""
    _needs("int8")
    code = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from bsr_plugin.deploy.engine.lowp import *
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().requires_grad_(False)
        conv.weight.mul_(5)
        x = (torch.rand(1, 64, 12, 10) * 4).contiguous(memory_format=torch.channels_last)
        xp = activation_qparams(float(x.min()), float(x.max()))
        q, ws = quantize_weight(conv.weight, int8_weight_levels())
        ref = F.conv2d((quantize_activation(x, *xp).float() - xp[1]) * xp[0], q.float() * ws.view(-1, 1, 1, 1),
                       conv.bias, padding=1)
        print(int8_weight_levels(), float((Int8Conv2d(conv, xp)(x) - ref).abs().max() / ref.abs().max()))
    """)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    levels, error = out.stdout.split()
    assert levels == "63" and float(error) <= 1e-5, out.stderr[-2000:]


def test_tail_network_chains_low_precision_between_convs():
    _needs("int8")
    net = _tail_net()
    images = _images()
    calibration = calibrate_fp_parts(net, images)
    assert list(calibration) == ["1", "3", "5"]  # the RGB head conv stays fp32 (min_in_channels)
    lowered = lower_fp_parts(copy.deepcopy(net), "int8", calibration)
    assert type(lowered[0]) is nn.Conv2d
    assert [lowered[i].chained for i in (1, 3, 5)] == [True, True, False]
    assert (lowered[1].out_scale, lowered[1].out_zero_point) == (lowered[3].in_scale, lowered[3].in_zero_point)
    with torch.no_grad():
        ref, y = net(images[0]), lowered(images[0])
    assert (y - ref).abs().max() <= 0.03 * (ref.max() - ref.min())


def test_calibration_is_plain_json_and_reproducible(body_pack):
    _needs("int8")
    net = _engine(body_pack)
    images = _images()
    calibration = calibrate_fp_parts(net, images)
    assert json.loads(json.dumps(calibration)) == calibration
    assert calibrate_fp_parts(net, images) == calibration
    entry = calibration["conv_after_body"]
    assert set(entry) == {"index", "in_channels", "out_channels", "kernel_size", "min", "max", "scale", "zero_point"}
    assert 0 <= entry["zero_point"] <= 255 and entry["scale"] > 0
    # calibrated on the float simulation (not banded), lowered on the engine (banded): matched by execution order
    simulation = calibrate_fp_parts(load_packed(body_pack, engine="float"), images)
    assert "upsample.2.first" not in simulation
    lowered = lower_fp_parts(net, "int8", simulation)
    band = lowered.upsample[2]
    assert (band.first.in_scale, band.last.in_scale) == (simulation["upsample.2"]["scale"],
                                                         simulation["conv_last"]["scale"])


@pytest.mark.parametrize(("precision", "worst", "mean"), [("bf16", 0.01, 0.002), ("int8", 0.04, 0.008)])
def test_engine_network_low_precision_parts_close_to_fp32(body_pack, precision, worst, mean):
    _needs(precision)
    net = _engine(body_pack)
    images = _images(seed=1)
    calibration = calibrate_fp_parts(net, images) if precision == "int8" else None
    packed_before = {id(m) for m in net.modules() if is_packed(m)}
    with torch.no_grad():
        ref = [net(x) for x in images]
        lowered = lower_fp_parts(copy.deepcopy(net), precision, calibration)
        out = [lowered(x) for x in images]
    assert lowered.bsr_fp_parts == precision
    assert {type(lowered.get_submodule(n)) for n in ("upsample.0", "upsample.2.first", "upsample.2.last")} == {
        Bf16Conv2d if precision == "bf16" else Int8Conv2d}
    # 16 -> 16 on an fp32 input: 144 multiply-adds per input value, too few for int8 (MIN_INT8_WORK)
    small = Bf16Conv2d if fp_parts_support("bf16") is None else nn.Conv2d
    assert type(lowered.conv_after_body) is (Bf16Conv2d if precision == "bf16" else small)
    if precision == "int8":
        every = lower_fp_parts(copy.deepcopy(net), "int8", calibration, min_int8_work=0)
        assert type(every.conv_after_body) is Int8Conv2d
    assert type(lowered.conv_first) is nn.Conv2d
    assert len(packed_before) == sum(is_packed(m) for m in lowered.modules())
    for r, y in zip(ref, out):
        span = r.max() - r.min()
        assert y.dtype == torch.float32 and y.shape == r.shape
        assert (y - r).abs().max() <= worst * span and (y - r).abs().mean() <= mean * span


def test_binary_convs_stay_exact_in_a_lowered_network(body_pack):
    """The integer XNOR-popcount sums of every packed conv, on the inputs it really gets in the
    int8 network, equal the float simulation's; the layers are the same objects as before."""
    _needs("int8")
    net = _engine(body_pack)
    images = _images()
    packed = {n: m for n, m in net.named_modules() if isinstance(m, PackedBinaryConv2d)}
    lowered = lower_fp_parts(net, "int8", calibrate_fp_parts(net, images))
    assert {n: m for n, m in lowered.named_modules() if isinstance(m, PackedBinaryConv2d)} == packed
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, args[0]))
             for n, m in packed.items()]
    with torch.no_grad():
        lowered(images[0])
    for h in hooks:
        h.remove()
    assert set(seen) == set(packed)
    for name, layer in packed.items():
        xp = kernels.pack_input(seen[name], layer.threshold, layer.pad)
        counts = kernels.conv_counts(xp, layer.weight_bits, layer.in_channels, layer.kernel_size)
        reference = kernels.reference_conv_counts(kernels.reference_pack_input(seen[name], layer.threshold, layer.pad),
                                                  layer.weight_bits, layer.in_channels, layer.kernel_size)
        assert torch.equal(counts, reference), name


def test_float_simulation_layers_are_left_alone(body_pack):
    _needs("bf16")
    net = load_packed(body_pack, engine="float")
    binary = dict(binary_layers(net))
    lowered = lower_fp_parts(net, "bf16")
    assert dict(binary_layers(lowered)) == binary and all(is_binary(m) for m in binary.values())
    assert type(lowered.conv_after_body) is Bf16Conv2d and type(lowered.conv_first) is nn.Conv2d


def test_fused_residual_blocks_give_the_same_bits(body_pack):
    from bsr_plugin.deploy.engine.modules import to_engine

    assert all(type(b) is FusedResidualBlock for b in _engine(body_pack).body)  # load_packed fuses them
    net = load_packed(body_pack, engine="float")
    to_engine(net)  # the engine network before fusing
    x = _images(1)[0]
    with torch.no_grad():
        ref = net(x)
        swapped = fuse_residual_blocks(net)
        y = net(x)
    assert swapped == ["body.0", "body.1"]
    assert all(type(b) is FusedResidualBlock and type(b.relu) is nn.Identity for b in net.body)
    assert net.body[0].conv1.act_slope is not None and net.body[0].conv2.act_slope is None
    assert torch.equal(y, ref)


# -- the choice in a packed file, load_packed and the bsr command -------------------------------
@pytest.fixture(scope="module")
def calibrated_pack(body_pack, tmp_path_factory):
    """The same network exported with ``fp_parts="auto"`` and an int8 calibration."""
    net = load_packed(body_pack, engine="float")
    calibration = calibrate_fp_parts(net, _images(4, seed=3))
    path = tmp_path_factory.mktemp("fp_parts") / "calibrated.bsrpack"
    export_packed(net, path, fp_parts="auto", calibration=calibration, calibration_images=4)
    return path


def test_file_carries_the_choice_and_load_can_override_it(body_pack, calibrated_pack):
    x = _images(1)[0]
    exact = load_packed(body_pack, engine="packed")
    assert exact.bsr_fp_parts == "fp32" and "full-precision parts in fp32" in exact.bsr_engine  # no choice: exact
    auto = load_packed(calibrated_pack, engine="packed")
    assert auto.bsr_fp_parts == lowp.default_fp_parts({"calibrated": {}})  # int8 where it runs, as benchmarked
    for precision in ("fp32", "bf16", "int8"):
        if fp_parts_support(precision) is not None:
            continue
        net = load_packed(calibrated_pack, engine="packed", fp_parts=precision)
        assert net.bsr_fp_parts == precision
        with torch.no_grad():
            ref, y = exact(x), net(x)
        assert (y - ref).abs().max() <= 0.04 * (ref.max() - ref.min())  # the whole-network tolerance above
    assert load_packed(calibrated_pack, engine="float").bsr_fp_parts == "fp32"  # the simulation stays fp32


def test_refusals_name_the_fix(body_pack, calibrated_pack, monkeypatch):
    with pytest.raises(ConfigError, match="calibrat"):
        load_packed(body_pack, engine="packed", fp_parts="int8")  # no calibration in the file
    with pytest.raises(ConfigError, match="packed engine only"):
        load_packed(calibrated_pack, engine="float", fp_parts="bf16")
    with pytest.raises(ConfigError, match="not one of"):
        load_packed(calibrated_pack, fp_parts="int4")
    monkeypatch.setattr(lowp, "fp_parts_support", lambda p: None if p == "fp32" else "no such kernels here")
    with pytest.raises(ConfigError, match="no such kernels here; run them in fp32"):
        load_packed(calibrated_pack, engine="packed", fp_parts="bf16")
    with pytest.raises(ConfigError, match="needs a calibration"):
        export_packed(load_packed(body_pack, engine="float"), body_pack.with_name("x.bsrpack"), fp_parts="int8")
    assert not body_pack.with_name("x.bsrpack").exists()  # refused before anything was written


def test_hand_made_fp_parts_entry_is_refused(calibrated_pack, tmp_path):
    from bsr_plugin.deploy.file_format import fp_parts_problems

    entry = json.loads(json.dumps({"precision": "int8", "calibration": None, "images": 0}))
    assert "needs a calibration" in fp_parts_problems(entry)
    bad = {"precision": "int8", "images": 1, "calibration": {"c": {"index": 0, "in_channels": 4, "out_channels": 4,
                                                                  "kernel_size": [3, 3], "min": 0.0, "max": 1.0,
                                                                  "scale": -1.0, "zero_point": 300}}}
    assert "scale > 0" in fp_parts_problems(bad)
    assert fp_parts_problems({"precision": "bf16", "calibration": None, "images": 0}) is None


@pytest.mark.slow
def test_bsr_export_calibrates_and_bsr_run_uses_the_choice(body_pack, tmp_path):
    """``bsr export --fp-parts int8 --calibrate DIR`` then ``bsr run`` (and ``--fp-parts`` on run)."""
    import cv2

    _needs("int8")
    folder = tmp_path / "lr"
    folder.mkdir()
    for k, img in enumerate(_images(3, size=(16, 14), seed=5)):
        cv2.imwrite(str(folder / f"{k}.png"), (img[0].permute(1, 2, 0).flip(-1).numpy() * 255).astype("uint8"))
    bsr = str(Path(sys.executable).parent / "bsr")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([bsr, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)

    res = run("export", "--packed", str(body_pack), "-o", "int8.bsrpack", "--fp-parts", "int8", "--calibrate",
              str(folder), "--calibrate-count", "2")
    assert res.returncode == 0, res.stderr
    res = run("run", "int8.bsrpack", str(folder / "0.png"), "-o", "int8.png")
    assert res.returncode == 0 and "full-precision parts in int8" in res.stdout, res.stderr
    res = run("run", "int8.bsrpack", str(folder / "0.png"), "-o", "fp32.png", "--fp-parts", "fp32")
    assert res.returncode == 0 and "full-precision parts in fp32" in res.stdout, res.stderr
    a, b = (cv2.imread(str(tmp_path / n)).astype(float) for n in ("int8.png", "fp32.png"))
    assert abs(a - b).max() <= 0.04 * 255
    res = run("export", "--packed", str(body_pack), "-o", "y.bsrpack", "--fp-parts", "int8")
    assert res.returncode == 2 and "needs --calibrate DIR" in res.stderr and not (tmp_path / "y.bsrpack").exists()
