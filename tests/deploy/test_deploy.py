"""Deployment (issue 5): honest complexity summary, bit-packed file, exact export, ONNX, and the
runtime proof that binarized layers are binary."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bsr_plugin
from bsr_plugin import (
    BinaryConv2d,
    PackedFormatError,
    binary_layers,
    check_binary,
    convert,
    export_onnx,
    export_packed,
    load_packed,
    read_packed,
    summary,
)
from bsr_plugin.conversion.config import DEFAULT_RULES
from bsr_plugin.core.bits import pack_signs, packed_size, unpack_bits
from bsr_plugin.integrations.basicsr.archs import EDSRBin

UPSAMPLER_RULES = [{a: p} for a, p in DEFAULT_RULES] + [{"keep": "conv_after_body"}, {"binarize": "upsampler"}]


@torch.no_grad()
def _as_if_trained(net: nn.Module, seed: int = 1) -> nn.Module:
    """Random latent weights inside the prior, random scales and biases: a network whose
    weights are not the conversion's, as after training."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in binary_layers(net):
        a = layer.prior_a or 1.0
        layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1) * a)
        if layer.scale is not None:
            layer.scale.copy_(torch.rand(layer.scale.shape, generator=g) * 0.02 + 1e-3)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.01)
    return net.eval()


@pytest.fixture(scope="module")
def edsr_x4():
    """EDSR-baseline x4 binarized the default way: the 16 x 2 residual-block convs."""
    torch.manual_seed(0)
    return _as_if_trained(EDSRBin())


def _fp32_theoretical_bytes(net: nn.Module) -> tuple[int, int]:
    """(theoretical packed bytes, float network fp32 bytes) by the rule: ceil(numel / 8) per
    binarized weight, 4 bytes per stored scale and per other state element."""
    binary = dict(binary_layers(net))
    packed = float32 = 0
    for key, t in net.state_dict().items():
        owner, _, attr = key.rpartition(".")
        if owner in binary and attr == "weight":
            packed += packed_size(t.numel())
            float32 += 4 * t.numel()
        elif owner in binary and attr == "scale":
            packed += 4 * t.numel()
        elif owner in binary and attr in ("sign_ref", "calibrated"):  # training records, not stored
            continue
        else:
            packed += 4 * t.numel()
            float32 += 4 * t.numel()
    return packed, float32


# -- summary ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_summary_hand_count_edsr_baseline_x4(edsr_x4):
    s = summary(edsr_x4, (3, 180, 320))
    # parameters, by hand
    binary = 16 * 2 * 64 * 64 * 3 * 3
    conv_first = 3 * 64 * 9 + 64
    conv_after_body = 64 * 64 * 9 + 64
    upsample = 2 * (64 * 256 * 9 + 256)  # x4 = two (conv 64 -> 256, PixelShuffle(2))
    conv_last = 64 * 3 * 9 + 3
    binary_biases = 32 * 64
    learned_scales = 32 * 64
    fp = conv_first + conv_after_body + upsample + conv_last + binary_biases + learned_scales
    assert s.binary_params == binary == 1_179_648
    assert s.fp_params == fp == 339_971
    assert s.params == fp + binary / 32
    assert s.float_params == fp - learned_scales + binary == 1_517_571  # the float EDSR-baseline x4
    assert s.buffers == 0  # EDSR's mean is a plain attribute, not a parameter or buffer
    # MACs for a 320 x 180 input, by hand: out_h * out_w * out_ch * in_ch * kh * kw
    h, w = 180, 320
    binary_macs = 32 * h * w * 64 * 64 * 9
    fp_macs = (h * w * 64 * 3 * 9                      # conv_first
               + h * w * 64 * 64 * 9                   # conv_after_body
               + h * w * 256 * 64 * 9                  # upsample.0 at LR
               + (2 * h) * (2 * w) * 256 * 64 * 9      # upsample.2 at 2x
               + (4 * h) * (4 * w) * 3 * 64 * 9)       # conv_last at 4x
    assert s.binary_macs == binary_macs == 67_947_724_800
    assert s.fp_macs == fp_macs == 46_282_752_000
    assert s.ops() == fp_macs + binary_macs / 64 == 47_344_435_200
    assert s.ops("xnor8") == fp_macs + binary_macs / 8
    assert summary(edsr_x4, (3, 180, 320), convention="xnor8").ops() == s.ops("xnor8")
    # storage and compression
    assert s.storage_bits == 32 * fp + binary
    assert s.compression == pytest.approx(32 * 1_517_571 / (32 * fp + binary))
    rows = {r.name: r for r in s.layers}
    assert rows["body.0.conv1"].binary and rows["body.0.conv1"].binary_macs == h * w * 64 * 64 * 9
    assert not rows["upsample.2"].binary and rows["upsample.2"].fp_macs == 4 * h * w * 256 * 64 * 9
    table = str(s)
    assert "body.15.conv2" in table and "compression 4.03x" in table and "OPs (bireal64)" in table
    print(f"\nEDSR-baseline x4 @ 320x180: params {s.params:,.0f} (FP {s.fp_params:,}, binary {s.binary_params:,}), "
          f"FP MACs {s.fp_macs:,}, binary MACs {s.binary_macs:,}, OPs {s.ops():,.0f}, "
          f"compression {s.compression:.2f}x")


class _Tiny(nn.Module):
    """conv -> PReLU -> conv -> token linear: PReLU params and linear MACs per token."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.mix = nn.Linear(8, 8)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        x = self.head(x)
        x = self.act(self.body(x)) + x
        x = self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + x
        return self.tail(x)


def test_summary_counts_other_params_and_linear_per_token():
    float_net = _Tiny()
    f = summary(float_net, (3, 5, 7))
    assert f.binary_params == 0 and f.binary_macs == 0 and f.compression == 1.0
    net = convert(float_net, rules=list(DEFAULT_RULES) + [("binarize", "mix")])
    s = summary(net, (3, 5, 7))
    rows = {r.name: r for r in s.layers}
    assert rows["act"].fp_params == 8 and rows["act"].type == "PReLU"
    assert rows["mix"].binary and rows["mix"].binary_params == 64
    assert rows["mix"].binary_macs == 5 * 7 * 8 * 8  # per token
    assert rows["body"].binary_macs == 5 * 7 * 8 * 8 * 9
    assert s.float_params == f.fp_params
    assert s.float_macs == f.fp_macs
    # a batch given as sample counts per sample
    assert summary(net, sample=torch.rand(2, 3, 5, 7)).binary_macs == s.binary_macs
    with pytest.raises(ValueError, match="convention"):
        summary(net, (3, 5, 7), convention="flops")


# -- packed file: size ------------------------------------------------------------------------
def test_packed_size_edsr_baseline_x4(edsr_x4, tmp_path):
    path = tmp_path / "edsr_x4.bsrpack"
    info = export_packed(edsr_x4, path)
    theoretical, float32 = _fp32_theoretical_bytes(edsr_x4)
    assert theoretical == 32 * packed_size(64 * 64 * 9) + 4 * 339_971 == 1_507_340
    assert float32 == 4 * 1_517_571
    size = path.stat().st_size
    assert (info.file_bytes, info.theoretical_bytes, info.float32_bytes) == (size, theoretical, float32)
    assert abs(size / theoretical - 1) < 0.02
    assert 3.9 < float32 / size < 4.1  # about 4x smaller than fp32 with FP head, tail and upsampler
    print(f"\nEDSR-baseline x4 (EDSRBin defaults): {info}")


def test_packed_size_edsr_baseline_x4_upsampler_binarized(tmp_path):
    net = _as_if_trained(EDSRBin(binarize={"rules": UPSAMPLER_RULES}))
    assert isinstance(net.upsample[0], BinaryConv2d) and net.upsample[0].shortcut == "repeat"
    info = export_packed(net, tmp_path / "up.bsrpack")
    theoretical, float32 = _fp32_theoretical_bytes(net)
    assert info.theoretical_bytes == theoretical and info.float32_bytes == float32
    assert abs(info.file_bytes / theoretical - 1) < 0.02
    assert info.ratio > 15
    print(f"\nEDSR-baseline x4, upsampler binarized too: {info}")


# -- packed file: exactness -------------------------------------------------------------------
@pytest.mark.slow
def test_packed_round_trip_bit_exact_edsr_baseline_x4(edsr_x4, tmp_path):
    path = tmp_path / "edsr_x4.bsrpack"
    export_packed(edsr_x4, path)
    loaded = load_packed(path, engine="float")
    assert not loaded.training and loaded.bsr_engine == "float simulation"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), edsr_x4(x))
        # the packed engine (or, without the extension, its float simulation) computes the same network
        torch.testing.assert_close(load_packed(path, engine="packed")(x), edsr_x4(x), rtol=1e-5, atol=1e-5)
    check_binary(loaded, x).raise_if_failed()
    assert loaded.bsr_config == edsr_x4.bsr_config and loaded.bsr_build == edsr_x4.bsr_build


@pytest.mark.slow
def test_engine_load_builds_straight_from_the_bits(edsr_x4, tmp_path, monkeypatch):
    """``load_packed(engine="packed")`` never makes a binarized layer's fp32 latent weight: the
    network is built with its parameters on the meta device, each packed module is made from the
    file's sign bits, and only the full-precision parts are allocated and filled."""
    from bsr_plugin.core.layers import BinaryLayerMixin

    path = tmp_path / "edsr_x4.bsrpack"
    export_packed(edsr_x4, path)
    devices: list[str] = []
    init = BinaryLayerMixin._init_binary

    def spy(self, *args, **kwargs):
        devices.append(self.weight.device.type)
        return init(self, *args, **kwargs)

    monkeypatch.setattr(BinaryLayerMixin, "_init_binary", spy)
    net = load_packed(path, engine="packed")
    assert devices and set(devices) == {"meta"}  # every binarized layer built (structure only) on meta
    assert not any(bsr_plugin.is_binary(m) for m in net.modules())
    assert not any(t.is_meta for t in net.state_dict().values()) and not net.mean.is_meta  # EDSR's plain tensor
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), edsr_x4(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", ["learned", "mean_abs", "none"])
def test_packed_round_trip_scale_modes(scale, tmp_path):
    net = _as_if_trained(EDSRBin(num_feat=8, num_block=2, upscale=2,
                                 binarize={"rules": UPSAMPLER_RULES, "scale": scale, "prior_a": 0.05}))
    path = tmp_path / f"{scale}.bsrpack"
    export_packed(net, path)
    loaded = load_packed(path, engine="float")
    x = torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    for name, layer in binary_layers(loaded):
        original = net.get_submodule(name)
        # mean_abs becomes a learned scale holding the computed alpha (the latent magnitudes are not stored)
        assert layer.options.scale == ("none" if scale == "none" else "learned")
        assert torch.equal(layer.binary_weight(), original.binary_weight())
        assert layer.weight.abs().eq(0.05).all() and torch.equal(layer.sign_ref, pack_signs(original.weight))


def test_packed_round_trip_float_skeleton_without_basicsr(tmp_path):
    """A network without a BasicSR spec: load converts the given float skeleton with the stored config."""
    float_net = _Tiny()
    net = _as_if_trained(convert(float_net, prior_a=0.1, rules=list(DEFAULT_RULES) + [("binarize", "mix")]))
    path = tmp_path / "tiny.bsrpack"
    export_packed(net, path)
    with pytest.raises(PackedFormatError, match="does not say how to build"):
        load_packed(path)
    skeleton = _Tiny()
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    loaded = load_packed(path, model=skeleton, engine="float")
    x = torch.randn(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert all(torch.equal(before[k], v) for k, v in skeleton.state_dict().items())  # skeleton untouched
    # an already binarized skeleton of the same structure works too; one of another structure is refused
    with torch.no_grad():
        assert torch.equal(load_packed(path, model=convert(_Tiny(), net.bsr_config), engine="float")(x), net(x))
    with pytest.raises(PackedFormatError, match="binarized in the file but not in the network: mix"):
        load_packed(path, model=convert(_Tiny()))


def test_packed_fp16_is_smaller_and_close(tmp_path):
    net = _as_if_trained(EDSRBin(num_feat=8, num_block=2, upscale=2))
    full = export_packed(net, tmp_path / "fp32.bsrpack")
    half = export_packed(net, tmp_path / "fp16.bsrpack", fp16=True)
    assert half.file_bytes < full.file_bytes and half.fp_dtype == "float16"
    loaded = load_packed(tmp_path / "fp16.bsrpack")
    assert loaded.conv_first.weight.dtype == torch.float32
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=5e-3, rtol=5e-3)


def test_export_refuses_switched_off_binarization(tmp_path):
    net = EDSRBin(num_feat=8, num_block=1, upscale=2)
    net.body[0].conv1.binarize_act = False
    with pytest.raises(ValueError, match=r"body\.0\.conv1.*set_binarization"):
        export_packed(net, tmp_path / "x.bsrpack")
    with pytest.raises(ValueError, match="no binarized layer"):
        export_packed(_Tiny(), tmp_path / "y.bsrpack")
    assert not list(tmp_path.iterdir())


def test_padding_keeps_packed_bits_exact_for_an_xnor_kernel(tmp_path):
    """+1 padding: a layer computes alpha * (2 * popcount(xnor(x_bits, w_bits)) - K) + bias from
    the file's sign bits alone, border pixels included (zero padding would need a third value)."""
    conv = BinaryConv2d(4, 6, 3, padding=1, prior_a=0.1, shortcut="none")
    with torch.no_grad():
        conv.weight.uniform_(-0.1, 0.1)
        conv.scale.uniform_(0.5, 1.5)
    model = nn.Sequential(conv).eval()
    path = tmp_path / "conv.bsrpack"
    export_packed(model, path)
    manifest, tensors = read_packed(path)
    w_bits = unpack_bits(tensors["0.weight"], conv.weight.numel()).view(6, -1)
    alpha, bias = tensors["0.scale"], tensors["0.bias"]
    x = torch.randn(1, 4, 5, 7)
    x_bits = F.unfold(F.pad((x >= 0).float(), (1, 1, 1, 1), value=1.0), 3).bool()[0]  # (36, 35), padding = +1
    agree = (x_bits[None] == w_bits[:, :, None]).sum(1)  # popcount(xnor)
    y_ref = (alpha[:, None] * (2 * agree - w_bits.shape[1]) + bias[:, None]).view(1, 6, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y_ref, rtol=1e-5, atol=1e-5)


# -- packed file: refusal -------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pack(tmp_path_factory):
    net = _as_if_trained(EDSRBin(num_feat=8, num_block=1, upscale=2))
    path = tmp_path_factory.mktemp("pack") / "small.bsrpack"
    export_packed(net, path)
    return path


def _damaged(src, tmp_path, edit):
    data = bytearray(src.read_bytes())
    data = edit(data)
    out = tmp_path / "damaged.bsrpack"
    out.write_bytes(bytes(data))
    return out


def _flip(data, at):
    data[at] ^= 0x40
    return data


def _set_version(data, version):
    data[8:12] = struct.pack("<I", version)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: _flip(d, len(d) // 2), "corrupt: the SHA-256 checksum"),
    (lambda d: _flip(d, 30), "corrupt|unreadable manifest"),
    (lambda d: _flip(d, len(d) - 1), "corrupt: the SHA-256 checksum"),
    (lambda d: d[: len(d) - 100], "truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: d + b"\0", "trailing bytes"),
    (lambda d: _set_version(d, 3), r"format version 3, but this bsr_plugin \(.*\) reads format versions 1, 2"),
    (lambda d: b"PK\x03\x04" + d[4:], "not a bsr_plugin packed model"),
])
def test_load_refuses_damaged_files(small_pack, tmp_path, edit, message):
    path = _damaged(small_pack, tmp_path, edit)
    with pytest.raises(PackedFormatError, match=message):
        load_packed(path)
    with pytest.raises(ValueError):  # PackedFormatError is a ValueError
        read_packed(path)


def test_load_refuses_a_skeleton_that_does_not_match(small_pack):
    from basicsr.archs.edsr_arch import EDSR

    with pytest.raises(PackedFormatError, match=r"does not match.*body\.1\.conv1"):
        load_packed(small_pack, model=EDSR(3, 3, num_feat=8, num_block=2, upscale=2))
    with pytest.raises(PackedFormatError, match=r"body\.0\.conv1: shape \[16, 16, 3, 3\]"):
        load_packed(small_pack, model=EDSR(3, 3, num_feat=16, num_block=1, upscale=2))


# -- ONNX ---------------------------------------------------------------------------------------
def test_onnx_export_keeps_binary_pattern_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    net = _as_if_trained(EDSRBin(num_feat=16, num_block=2, upscale=2))
    x = torch.rand(1, 3, 24, 24)
    path = export_onnx(net, tmp_path / "edsr_bin.onnx", x)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    n_bin = len(dict(binary_layers(net)))
    assert ops.count("GreaterOrEqual") == n_bin and ops.count("Where") >= n_bin  # sign(x), +1 at 0
    consts = {o: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
              for o in n.output}
    pads = [n for n in graph.node if n.op_type == "Pad"]
    assert len(pads) == n_bin and all(consts[p.input[2]].item() == 1.0 for p in pads)  # Pad(value=1)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name, layer in binary_layers(net):
        w = torch.from_numpy(inits[f"{name}.frozen_weight"].copy())  # Conv weight = +-alpha, latent not shipped
        assert torch.equal(w, layer.binary_weight().detach()) and f"{name}.weight" not in inits
    assert ops.count("Conv") == len([m for m in net.modules() if isinstance(m, nn.Conv2d)])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 24, 24), (2, 3, 13, 17)]:  # height and width are dynamic
        xi = torch.rand(shape)
        (y,) = session.run(None, {"lr": xi.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), net(xi), rtol=0, atol=1e-5)


def test_onnx_export_binary_linear(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = _as_if_trained(convert(_Tiny(), rules=list(DEFAULT_RULES) + [("binarize", "mix")]))
    x = torch.randn(1, 3, 6, 5)
    path = export_onnx(net, tmp_path / "tiny.onnx", x)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"lr": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), net(x), rtol=0, atol=1e-5)
    assert not any(hasattr(m, "frozen_weight") for m in net.modules())  # the network itself is untouched


# -- check_binary ------------------------------------------------------------------------------
def test_check_binary_passes_and_names_a_layer_fed_real_values(edsr_x4):
    net = EDSRBin(num_feat=8, num_block=2, upscale=2).eval()
    x = torch.rand(1, 3, 8, 8)
    result = check_binary(net, x)
    assert result.ok and len(result.layers) == 4
    assert "4/4 binarized layers" in str(result)
    net.body[1].conv1.binarize_act = False  # this layer now sees real-valued input
    result = check_binary(net, x)
    assert not result.ok and list(result.failures) == ["body.1.conv1"]
    assert any("input not +-1" in p for p in result.failures["body.1.conv1"])
    with pytest.raises(AssertionError, match=r"body\.1\.conv1"):
        result.raise_if_failed()


def test_top_level_api():
    for name in ("summary", "export_packed", "load_packed", "export_onnx", "PackedFormatError", "check_binary"):
        assert hasattr(bsr_plugin, name), name
    assert issubclass(PackedFormatError, ValueError)


# -- files written by bsr_plugin 0.1 (format version 1) ---------------------------------------
def _v1_sequential() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))


def test_format_version_1_files_still_load():
    data = Path(__file__).parents[1] / "data"
    expected = torch.load(data / "v1_outputs.pt", weights_only=True)
    x = expected["input"]
    for name, model in (("edsr_tiny_x2_v1", None), ("seq_v1", _v1_sequential())):
        with torch.no_grad():
            simulated = load_packed(data / f"{name}.bsrpack", model=model, engine="float")(x)
            engine = load_packed(data / f"{name}.bsrpack", model=model, engine="packed")(x)
        # Same weights, same binary sums; the float head/tail round differently on other CPUs
        # (oneDNN picks its kernels by ISA), so the outputs agree to float rounding, not bitwise.
        torch.testing.assert_close(simulated, expected[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(engine, expected[name], rtol=1e-5, atol=1e-5, msg=name)
