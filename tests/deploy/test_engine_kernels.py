"""The packed XNOR-popcount engine (bsr_plugin.deploy.engine): native kernels against the float
simulation, for every instruction set this CPU has. Dot products must be exact integers; the
float outputs match the reference to float rounding.

Without the C++ extension the native tests skip (and the reference path is still tested),
except under ``CI``, where a missing extension fails the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bsr_plugin
from bsr_plugin.deploy import engine as E
from bsr_plugin.deploy.engine import kernels as K

IN_CI = bool(os.environ.get("CI"))
RTOL, ATOL = 1e-5, 1e-5


def _require_native() -> None:
    if E.available():
        return
    if IN_CI:
        pytest.fail(f"CI is set but the packed engine is unavailable: {E.unavailable_reason()}")
    pytest.skip(f"packed engine unavailable: {E.unavailable_reason()}")


def _native_isas() -> list[str]:
    _require_native()
    return E.available_isas()


@pytest.fixture(params=list(K.ISAS))
def isa(request):
    """Runs the test with the native ops forced to each ISA (skips ISAs this CPU lacks)."""
    _require_native()
    name = request.param
    if name not in E.available_isas():
        with pytest.raises(ValueError, match="lacks"):
            E.set_isa(name)
        pytest.skip(f"this CPU lacks {name}")
    with E.use_isa(name) as active:
        assert active == name
        yield name


# ---------------------------------------------------------------------------------------
# Helpers: the float simulation written out independently of the module under test
# ---------------------------------------------------------------------------------------

def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def _pad4(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(padding)


def _expected_dot(x, w, padding, stride, dilation, threshold=None) -> torch.Tensor:
    pt, pb, pl, pr = _pad4(padding)
    xs = x if threshold is None else x - threshold.view(1, -1, 1, 1)
    xb = F.pad(_sign(xs), (pl, pr, pt, pb), value=1.0)
    return F.conv2d(xb, _sign(w), stride=stride, dilation=dilation)


def _rand_params(o: int, gen: torch.Generator):
    scale = torch.rand(o, generator=gen) + 0.05
    bias = torch.randn(o, generator=gen)
    rprelu = (torch.randn(o, generator=gen) * 0.1, torch.rand(o, generator=gen) * 0.5, torch.randn(o, generator=gen))
    return scale, bias, rprelu


def _inputs(n, c, h, w, gen, zeros=True):
    x = torch.randn(n, c, h, w, generator=gen)
    if zeros:  # exact zeros and -0.0 must binarize to +1
        x.view(-1)[:: 7] = 0.0
        x.view(-1)[3:: 11] = -0.0
    return x


# (C, O, kernel, stride, dilation, padding, N, H, W)
CONV_CASES = [
    (1, 1, (3, 3), 1, 1, 1, 1, 5, 7),
    (3, 8, (3, 3), 1, 1, 1, 2, 9, 11),
    (17, 5, (5, 5), 1, 1, 2, 1, 8, 13),
    (64, 64, (3, 3), 1, 1, 1, 2, 6, 21),
    (65, 17, (3, 1), 1, 1, (1, 0), 1, 7, 9),
    (130, 24, (1, 1), 1, 1, 0, 2, 5, 6),
    (64, 32, (3, 3), 2, 1, 1, 1, 9, 17),
    (17, 9, (3, 3), 2, 2, 2, 2, 11, 10),
    (3, 4, (3, 3), 1, 2, 2, 1, 7, 7),
    (64, 128, (3, 3), (1, 2), (2, 1), (2, 1, 0, 3), 1, 5, 40),
    (65, 8, (5, 5), 1, 1, 0, 1, 5, 5),
]


# ---------------------------------------------------------------------------------------
# Native kernels, every ISA
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3, 17, 64, 65, 130])
def test_pack_weight_matches_reference(isa, c):
    gen = torch.Generator().manual_seed(c)
    w = torch.randn(5, c, 3, 2, generator=gen)
    w.view(-1)[::5] = 0.0
    wp = E.pack_weight(w)
    assert wp.dtype == torch.int64 and wp.shape == (5, 3, 2, (c + 63) // 64)
    assert torch.equal(wp, E.reference_pack_weight(w))
    assert torch.equal(E.unpack_weight(wp, c), _sign(w))
    lin = torch.randn(7, c, generator=gen)
    lp = E.pack_weight(lin)
    assert torch.equal(lp, E.reference_pack_weight(lin))
    assert torch.equal(E.unpack_weight(lp, c), _sign(lin))


@pytest.mark.parametrize("c", [1, 3, 8, 17, 64, 65, 130])
@pytest.mark.parametrize("w", [1, 7, 8, 16, 37])
def test_pack_input_matches_reference(isa, c, w):
    gen = torch.Generator().manual_seed(c * 100 + w)
    x = _inputs(2, c, 3, w, gen)
    thr = torch.randn(c, generator=gen) * 0.3
    for padding, threshold in (((0, 0, 0, 0), None), ((1, 2, 0, 3), thr), ((2, 2, 2, 2), None)):
        ref = E.reference_pack_input(x, threshold, padding)
        assert torch.equal(E.pack_input(x, threshold, padding), ref)
        assert torch.equal(E.pack_input(x.contiguous(memory_format=torch.channels_last), threshold, padding), ref)
    # lanes beyond C are zero, padding pixels hold every valid lane
    xp = E.pack_input(x, padding=1)
    if c % 64:
        assert int((xp[..., -1] >> (c % 64)).abs().max()) == 0
    full = E.pack_input(torch.zeros(1, c, 1, 1), padding=0)
    assert torch.equal(xp[:, 0], full.expand(2, 1, w + 2, -1)[:, 0])


def test_pack_input_layout_matches_core_bits(isa):
    """Word j of a pixel holds the bytes core.bits.pack_signs gives channels 64j..64j+63."""
    from bsr_plugin.core.bits import pack_signs

    x = torch.randn(1, 128, 2, 3)
    xp = E.pack_input(x)
    for yy in range(2):
        for xx in range(3):
            expected = pack_signs(x[0, :, yy, xx])
            assert torch.equal(xp[0, yy, xx].contiguous().view(torch.uint8), expected)
    lin = torch.randn(3, 192)
    assert torch.equal(E.pack_weight(lin).contiguous().view(torch.uint8).view(-1), pack_signs(lin))


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"C{c[0]}-O{c[1]}-k{c[2][0]}x{c[2][1]}")
def test_conv_counts_exact(isa, case):
    c, o, k, s, d, p, n, h, w = case
    gen = torch.Generator().manual_seed(c * 7 + o)
    x = _inputs(n, c, h, w, gen)
    wt = torch.randn(o, c, *k, generator=gen)
    xp, wp = E.pack_input(x, padding=p), E.pack_weight(wt)
    counts = E.conv_counts(xp, wp, c, k, s, d)
    assert counts.dtype == torch.int32
    expected = _expected_dot(x, wt, p, s, d)
    assert torch.equal(counts, expected.round().to(torch.int32))
    assert torch.equal(counts, E.reference_conv_counts(xp, wp, c, k, s, d))


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"C{c[0]}-O{c[1]}-k{c[2][0]}x{c[2][1]}")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_binary_conv2d_matches_reference(isa, case, layout):
    c, o, k, s, d, p, n, h, w = case
    gen = torch.Generator().manual_seed(c * 13 + o)
    x = _inputs(n, c, h, w, gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(o, c, *k, generator=gen)
    wp = E.pack_weight(wt)
    scale, bias, rprelu = _rand_params(o, gen)
    thr = torch.randn(c, generator=gen) * 0.2
    kw = dict(in_channels=c, kernel_size=k, stride=s, padding=p, dilation=d, scale=scale)
    for extra in ({}, {"bias": bias}, {"bias": bias, "threshold": thr, "rprelu": rprelu}):
        y = E.binary_conv2d(x, wp, **kw, **extra)
        ref = E.reference_binary_conv2d(x, wp, **kw, **extra)
        torch.testing.assert_close(y, ref, rtol=RTOL, atol=ATOL)
        assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                               else torch.contiguous_format)
    # the reference itself is the simulation: scale * dot + bias
    dot = _expected_dot(x, wt, p, s, d, thr)
    torch.testing.assert_close(E.binary_conv2d(x, wp, **kw, bias=bias, threshold=thr),
                               dot * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shortcut,c,o", [("identity", 17, 17), ("identity", 64, 64), ("repeat", 3, 12),
                                          ("repeat", 16, 64), ("mean", 12, 3), ("mean", 130, 65), ("none", 5, 9)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_binary_conv2d_shortcuts(isa, shortcut, c, o, layout):
    gen = torch.Generator().manual_seed(c + o)
    x = _inputs(2, c, 5, 11, gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    wp = E.pack_weight(torch.randn(o, c, 3, 3, generator=gen))
    scale, bias, rprelu = _rand_params(o, gen)
    kw = dict(in_channels=c, kernel_size=3, padding=1, scale=scale, bias=bias, shortcut=shortcut)
    for rp in (None, rprelu):
        y = E.binary_conv2d(x, wp, **kw, rprelu=rp)
        ref = E.reference_binary_conv2d(x, wp, **kw, rprelu=rp)
        torch.testing.assert_close(y, ref, rtol=RTOL, atol=ATOL)
    plain = E.reference_binary_conv2d(x, wp, **{**kw, "shortcut": "none"})
    expected = {"identity": lambda: x, "repeat": lambda: x.repeat_interleave(o // c, 1),
                "mean": lambda: x.unflatten(1, (o, c // o)).mean(2), "none": lambda: 0}[shortcut]()
    torch.testing.assert_close(E.binary_conv2d(x, wp, **kw), plain + expected, rtol=RTOL, atol=ATOL)


# (C, O, r, shortcut, stride, N, H, W): O divisible by r^2; odd sizes, channel counts that are
# not multiples of 64 (and 64 -> 256, the EDSR x4 upsampler), every shortcut that fits; r = 2,
# 3, 4 (interleaved in registers) and 5 (through an L1 buffer)
SHUFFLE_CASES = [
    (12, 48, 2, "repeat", 1, 2, 7, 13),
    (17, 36, 3, "none", 1, 1, 9, 11),
    (12, 48, 2, "none", 2, 2, 9, 11),
    (17, 36, 3, "none", 2, 2, 7, 10),
    (64, 64, 2, "identity", 1, 1, 5, 19),
    (96, 48, 2, "mean", 1, 2, 3, 17),
    (72, 36, 3, "mean", 1, 1, 4, 9),
    (16, 144, 3, "repeat", 1, 1, 5, 7),
    (3, 12, 2, "repeat", 1, 2, 1, 1),
    (5, 80, 4, "none", 1, 1, 3, 5),
    (65, 8, 2, "none", 1, 1, 6, 3),
    (64, 256, 2, "repeat", 1, 1, 6, 37),
    (7, 50, 5, "none", 1, 1, 3, 21),
    (2, 50, 5, "repeat", 1, 1, 4, 9),
    (10, 32, 4, "none", 2, 2, 9, 35),
]


@pytest.mark.parametrize("case", SHUFFLE_CASES, ids=lambda c: f"C{c[0]}-O{c[1]}-r{c[2]}-{c[3]}-s{c[4]}")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_binary_conv2d_pixel_shuffle(isa, case, layout):
    """pixel_shuffle=r is exactly F.pixel_shuffle of the unshuffled output, native and reference."""
    c, o, r, shortcut, s, n, h, w = case
    gen = torch.Generator().manual_seed(c * 31 + o + r)
    x = _inputs(n, c, h, w, gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    wp = E.pack_weight(torch.randn(o, c, 3, 3, generator=gen))
    scale, bias, rprelu = _rand_params(o, gen)
    thr = torch.randn(c, generator=gen) * 0.2
    kw = dict(in_channels=c, kernel_size=3, stride=s, padding=1, scale=scale, shortcut=shortcut)
    for extra in ({}, {"bias": bias}, {"bias": bias, "threshold": thr, "rprelu": rprelu}):
        y = E.binary_conv2d(x, wp, **kw, **extra, pixel_shuffle=r)
        plain = E.binary_conv2d(x, wp, **kw, **extra)
        assert y.shape == (n, o // r**2, plain.shape[2] * r, plain.shape[3] * r)
        assert torch.equal(y, F.pixel_shuffle(plain, r))
        if h * w > 1:  # a 1x1 image is contiguous in both layouts
            assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                                   else torch.contiguous_format)
        ref = E.reference_binary_conv2d(x, wp, **kw, **extra, pixel_shuffle=r)
        assert torch.equal(ref, F.pixel_shuffle(E.reference_binary_conv2d(x, wp, **kw, **extra), r))
        torch.testing.assert_close(y, ref, rtol=RTOL, atol=ATOL)
        assert torch.equal(E.binary_conv2d(x, wp, **kw, **extra, pixel_shuffle=1), plain)


@pytest.mark.parametrize("k", [1, 17, 64, 65, 200])
def test_binary_linear_matches_reference(isa, k):
    gen = torch.Generator().manual_seed(k)
    for shape, n in (((5, k), 7), ((2, 3, k), 66), ((k,), 3), ((4, 1, k), 130)):
        x = torch.randn(*shape, generator=gen)
        x.view(-1)[::5] = 0.0
        w = torch.randn(n, k, generator=gen)
        wp = E.pack_weight(w)
        scale, bias, rprelu = _rand_params(n, gen)
        thr = torch.randn(k, generator=gen) * 0.2
        for extra in ({}, {"bias": bias, "threshold": thr, "rprelu": rprelu}):
            y = E.binary_linear(x, wp, in_features=k, scale=scale, **extra)
            ref = E.reference_binary_linear(x, wp, in_features=k, scale=scale, **extra)
            assert y.shape == (*shape[:-1], n)
            torch.testing.assert_close(y, ref, rtol=RTOL, atol=ATOL)
        dot = F.linear(_sign(x), _sign(w))
        torch.testing.assert_close(E.binary_linear(x, wp, in_features=k, scale=scale), dot * scale,
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shortcut,k,n", [("identity", 65, 65), ("repeat", 17, 68), ("mean", 200, 50)])
def test_binary_linear_shortcuts(isa, shortcut, k, n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(2, 3, k, generator=gen)
    wp = E.pack_weight(torch.randn(n, k, generator=gen))
    scale, bias, rprelu = _rand_params(n, gen)
    kw = dict(in_features=k, scale=scale, bias=bias, shortcut=shortcut, rprelu=rprelu)
    torch.testing.assert_close(E.binary_linear(x, wp, **kw), E.reference_binary_linear(x, wp, **kw),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("r", [1, 2, 3])
def test_large_output_streaming_stores(isa, layout, r):
    """Outputs of 8 MiB and more take the streaming-store path; rows and pixels here are not
    vector-aligned (250 pixels, 72 channels), so its scalar heads and tails run too (also
    pixel-shuffled: 500 / 750 output columns, 18 / 8 channels)."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 16, 120, 250, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    wp = E.pack_weight(torch.randn(72, 16, 3, 3, generator=gen))
    scale, bias, rprelu = _rand_params(72, gen)
    kw = dict(in_channels=16, kernel_size=3, padding=1, scale=scale, bias=bias, rprelu=rprelu)
    y = E.binary_conv2d(x, wp, **kw, pixel_shuffle=r)
    assert y.numel() * 4 >= 8 << 20
    torch.testing.assert_close(y, E.reference_binary_conv2d(x, wp, **kw, pixel_shuffle=r), rtol=RTOL, atol=ATOL)
    if r > 1:
        assert torch.equal(y, F.pixel_shuffle(E.binary_conv2d(x, wp, **kw), r))


def test_empty_batch(isa):
    wp = E.pack_weight(torch.randn(4, 3, 3, 3))
    y = E.binary_conv2d(torch.randn(0, 3, 5, 5), wp, in_channels=3, kernel_size=3, padding=1, scale=torch.ones(4))
    assert y.shape == (0, 4, 5, 5)
    y = E.binary_conv2d(torch.randn(0, 3, 5, 5), wp, in_channels=3, kernel_size=3, padding=1, scale=torch.ones(4),
                        pixel_shuffle=2)
    assert y.shape == (0, 1, 10, 10)
    lin = E.binary_linear(torch.randn(0, 3), E.pack_weight(torch.randn(4, 3)), in_features=3, scale=torch.ones(4))
    assert lin.shape == (0, 4)


def test_threads_give_identical_results(isa):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 65, 19, 23, generator=gen)
    wp = E.pack_weight(torch.randn(40, 65, 3, 3, generator=gen))
    scale, bias, rprelu = _rand_params(40, gen)
    xl = torch.randn(300, 65, generator=gen)
    lp = E.pack_weight(torch.randn(33, 65, generator=gen))
    wp3 = E.pack_weight(torch.randn(36, 20, 3, 3, generator=gen))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((
                E.binary_conv2d(x, wp, in_channels=65, kernel_size=3, padding=1, scale=scale, bias=bias, rprelu=rprelu),
                E.binary_conv2d(x.contiguous(memory_format=torch.channels_last), wp, in_channels=65, kernel_size=3,
                                stride=2, scale=scale),
                E.pack_input(x, padding=1),
                E.binary_linear(xl, lp, in_features=65, scale=scale[:33]),
                E.binary_conv2d(x, wp, in_channels=65, kernel_size=3, padding=1, scale=scale, bias=bias,
                                rprelu=rprelu, pixel_shuffle=2),
                E.binary_conv2d(x.contiguous(memory_format=torch.channels_last), wp, in_channels=65, kernel_size=3,
                                padding=1, scale=scale, pixel_shuffle=2),
                E.binary_conv2d(x[:, :20], wp3, in_channels=20, kernel_size=3, padding=1, scale=scale[:36],
                                shortcut="none", pixel_shuffle=3),
            ))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_roofline_runs(isa):
    assert E.xor_popcount_roofline(words=64, repeats=10) > 0


def test_benchmark_script_smoke(tmp_path):
    _require_native()
    from benchmarks import engine_conv

    assert engine_conv.main(["--shape", "1,8,6,10", "--out-channels", "4", "--repeats", "2", "--threads", "1",
                             "--roofline-repeats", "5", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert {r["isa"] for r in result["rows"]} == set(E.available_isas())
    assert all(v == 0 for v in result["checks"].values())
    assert "| threads |" in (tmp_path / "results.md").read_text()


# ---------------------------------------------------------------------------------------
# Property tests (hypothesis): random shapes, every ISA in one example
# ---------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.integers(1, 140), o=st.integers(1, 40), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
       pads=st.tuples(*[st.integers(0, 2)] * 4), n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 19),
       channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_property_conv(c, o, kh, kw, sh, sw, dh, dw, pads, n, h, w, channels_last, seed):
    isas = _native_isas()
    pt, pb, pl, pr = pads
    if h + pt + pb < dh * (kh - 1) + 1 or w + pl + pr < dw * (kw - 1) + 1:
        return  # the kernel does not fit
    gen = torch.Generator().manual_seed(seed)
    x = _inputs(n, c, h, w, gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(o, c, kh, kw, generator=gen)
    scale, bias, rprelu = _rand_params(o, gen)
    thr = torch.randn(c, generator=gen) * 0.2
    expected = _expected_dot(x, wt, pads, (sh, sw), (dh, dw)).round().to(torch.int32)
    kw_args = dict(in_channels=c, kernel_size=(kh, kw), stride=(sh, sw), padding=pads, dilation=(dh, dw),
                   scale=scale, bias=bias, threshold=thr, rprelu=rprelu)
    ref = E.reference_binary_conv2d(x, E.reference_pack_weight(wt), **kw_args)
    for name in isas:
        with E.use_isa(name):
            wp = E.pack_weight(wt)
            counts = E.conv_counts(E.pack_input(x, padding=pads), wp, c, (kh, kw), (sh, sw), (dh, dw))
            assert torch.equal(counts, expected), name
            torch.testing.assert_close(E.binary_conv2d(x, wp, **kw_args), ref, rtol=RTOL, atol=ATOL)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.integers(1, 140), cs=st.integers(1, 6), r=st.integers(2, 5), k=st.integers(1, 3), s=st.integers(1, 2),
       n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 19), shortcut=st.sampled_from(K.SHORTCUTS),
       channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_property_pixel_shuffle(c, cs, r, k, s, n, h, w, shortcut, channels_last, seed):
    """Fused pixel shuffle == F.pixel_shuffle of the plain output, bit for bit, every ISA."""
    isas = _native_isas()
    o = cs * r * r
    if shortcut == "identity":
        c = o
    elif shortcut == "repeat":
        c = next(d for d in range(min(c, o), 0, -1) if o % d == 0)  # a divisor of o
    elif shortcut == "mean":
        c = o * (1 + c % 3)
    if shortcut != "none":
        k, s = 3, 1  # same-size output
    gen = torch.Generator().manual_seed(seed)
    x = _inputs(n, c, h, w, gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wp = E.reference_pack_weight(torch.randn(o, c, k, k, generator=gen))
    scale, bias, rprelu = _rand_params(o, gen)
    kw_args = dict(in_channels=c, kernel_size=k, stride=s, padding=k // 2, scale=scale, bias=bias,
                   threshold=torch.randn(c, generator=gen) * 0.2, rprelu=rprelu, shortcut=shortcut)
    ref = E.reference_binary_conv2d(x, wp, **kw_args, pixel_shuffle=r)
    assert torch.equal(ref, F.pixel_shuffle(E.reference_binary_conv2d(x, wp, **kw_args), r))
    for name in isas:
        with E.use_isa(name):
            y = E.binary_conv2d(x, wp, **kw_args, pixel_shuffle=r)
            assert torch.equal(y, F.pixel_shuffle(E.binary_conv2d(x, wp, **kw_args), r)), name
            torch.testing.assert_close(y, ref, rtol=RTOL, atol=ATOL)


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 260), n=st.integers(1, 70), rows=st.integers(1, 40), shortcut=st.sampled_from(K.SHORTCUTS),
       seed=st.integers(0, 2**16))
def test_property_linear(k, n, rows, shortcut, seed):
    isas = _native_isas()
    if shortcut == "identity":
        n = k
    elif shortcut == "repeat":
        n = k * (1 + n % 3)
    elif shortcut == "mean":
        k = n * (1 + k % 4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen)
    wp = E.reference_pack_weight(torch.randn(n, k, generator=gen))
    scale, bias, rprelu = _rand_params(n, gen)
    kw_args = dict(in_features=k, scale=scale, bias=bias, shortcut=shortcut, rprelu=rprelu)
    ref = E.reference_binary_linear(x, wp, **kw_args)
    for name in isas:
        with E.use_isa(name):
            torch.testing.assert_close(E.binary_linear(x, wp, **kw_args), ref, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------
# ISA selection, errors, fallback
# ---------------------------------------------------------------------------------------

def test_isa_selection():
    isas = _native_isas()
    assert isas and isas[-1] == "scalar" and set(isas) <= set(K.ISAS)
    assert E.isa() in isas
    with E.use_isa("scalar"):
        assert E.isa() == "scalar"
        assert "scalar" in E.status_line()
    with E.use_isa("auto"):
        assert E.isa() == isas[0]
    E.set_isa("env")
    with E.use_isa("scalar"):
        pass
    assert torch.ops.bsr_engine.isa_setting() == "env"  # the exact setting comes back
    with pytest.raises(ValueError, match="not an ISA"):
        E.set_isa("sse9")
    for name in set(K.ISAS) - set(isas):
        with pytest.raises(ValueError, match="lacks"):
            E.set_isa(name)


def test_isa_environment_variable(monkeypatch):
    isas = _native_isas()
    try:
        monkeypatch.setenv("BSR_ENGINE_ISA", "scalar")
        E.set_isa("env")
        assert E.isa() == "scalar"
        monkeypatch.setenv("BSR_ENGINE_ISA", "bogus")
        E.set_isa("env")
        with pytest.raises(ValueError, match="BSR_ENGINE_ISA=bogus"):
            E.isa()
        with pytest.raises(ValueError, match="BSR_ENGINE_ISA"):
            E.pack_input(torch.randn(1, 2, 3, 3))
        with E.use_isa("scalar"):
            assert E.isa() == "scalar"
        with pytest.raises(ValueError, match="BSR_ENGINE_ISA"):  # restored: still the broken setting
            E.isa()
        monkeypatch.setenv("BSR_ENGINE_ISA", "auto")
        E.set_isa("env")
        assert E.isa() == isas[0]
    finally:
        monkeypatch.delenv("BSR_ENGINE_ISA")
        E.set_isa("env")


@pytest.mark.slow
def test_isa_environment_variable_at_startup():
    _require_native()
    code = "from bsr_plugin.deploy import engine as E; print(E.isa()); print(E.status_line())"
    env = {**os.environ, "BSR_ENGINE_ISA": "scalar"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "scalar" and "packed engine: scalar" in out


def _conv_args(**over):
    args = dict(in_channels=3, kernel_size=3, padding=1, scale=torch.ones(4))
    args.update(over)
    return args


@pytest.mark.parametrize("fn", ["native", "reference"])
def test_errors(fn):
    if fn == "native":
        _require_native()
    conv = E.binary_conv2d if fn == "native" else E.reference_binary_conv2d
    linear = E.binary_linear if fn == "native" else E.reference_binary_linear
    x, wp = torch.randn(1, 3, 6, 6), E.reference_pack_weight(torch.randn(4, 3, 3, 3))
    cases = [
        (dict(x=x.double()), "float32"),
        (dict(x=x.to(torch.int64)), "float32"),
        (dict(x=torch.randn(3, 6, 6)), r"\[N, C, H, W\]"),
        (dict(x=torch.empty(1, 3, 6, 6, device="meta")), "CPU"),
        (dict(args=_conv_args(in_channels=5)), "in_channels=5"),
        (dict(args=_conv_args(kernel_size=5)), "does not fit kernel_size"),
        (dict(wp=wp.to(torch.int32)), "int64"),
        (dict(args=_conv_args(groups=3)), "groups=3"),
        (dict(args=_conv_args(scale=torch.ones(5))), "scale"),
        (dict(args=_conv_args(bias=torch.ones(3))), "bias"),
        (dict(args=_conv_args(threshold=torch.ones(4))), "threshold"),
        (dict(args=_conv_args(shortcut="sideways")), "unknown shortcut"),
        (dict(args=_conv_args(shortcut="identity")), "identity shortcut"),
        (dict(args=_conv_args(shortcut="mean")), "mean shortcut"),
        (dict(wp=wp[:3], args=_conv_args(shortcut="identity", stride=2, scale=torch.ones(3))), "output size"),
        (dict(args=_conv_args(rprelu=(torch.ones(4), torch.ones(4)))), "rprelu"),
        (dict(args=_conv_args(padding=-1)), "non-negative"),
        (dict(args=_conv_args(padding=(1, 2, 3))), "padding"),
        (dict(args=_conv_args(stride=0)), "stride"),
        (dict(args=_conv_args(padding=0, dilation=4)), "smaller than the dilated kernel"),
        (dict(args=_conv_args(pixel_shuffle=3)), r"pixel_shuffle=3 needs out_channels divisible by r\^2 = 9"),
        (dict(args=_conv_args(pixel_shuffle=0)), "pixel_shuffle must be a positive int"),
        (dict(args=_conv_args(pixel_shuffle=2.0)), "pixel_shuffle must be a positive int"),
        (dict(args=_conv_args(pixel_shuffle=True)), "pixel_shuffle must be a positive int"),
    ]
    for over, match in cases:
        with pytest.raises(ValueError, match=match):
            conv(over.get("x", x), over.get("wp", wp), **over.get("args", _conv_args()))
    lw = E.reference_pack_weight(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"\[\.\.\., 10\]"):
        linear(torch.randn(2, 9), lw, in_features=10, scale=torch.ones(4))
    with pytest.raises(ValueError, match="does not fit in_features"):
        linear(torch.randn(2, 70), lw, in_features=70, scale=torch.ones(4))
    with pytest.raises(ValueError, match="identity shortcut"):
        linear(torch.randn(2, 10), lw, in_features=10, scale=torch.ones(4), shortcut="identity")


def test_error_cases_of_packing_ops():
    _require_native()
    with pytest.raises(ValueError, match="float32"):
        E.pack_weight(torch.randn(3, 3).double())
    with pytest.raises(ValueError, match="conv weight"):
        E.pack_weight(torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="padding"):
        E.pack_input(torch.randn(1, 3, 4, 4), padding=(1, 1, 1))
    with pytest.raises(ValueError, match="threshold"):
        E.pack_input(torch.randn(1, 3, 4, 4), threshold=torch.zeros(4))
    xp, wp = E.pack_input(torch.randn(1, 70, 4, 4)), E.pack_weight(torch.randn(2, 70, 3, 3))
    with pytest.raises(ValueError, match="in_channels=64"):
        E.conv_counts(xp, wp, 64, 3)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        E.conv_counts(xp, wp, 70, 3, dilation=2)
    # the op checks pixel_shuffle itself too (callers of torch.ops.bsr_engine directly); its
    # argument checks raise ValueError (TORCH_CHECK_VALUE), which the Python ops turn into EngineError
    args = (torch.randn(1, 70, 4, 4), wp, 70, [1, 1], [1, 1, 1, 1], [1, 1], torch.ones(2), None, None, 0, None, None,
            None)
    for r in (2, 0, -1, 2**40):
        with pytest.raises(ValueError, match="multiple of pixel_shuffle"):
            torch.ops.bsr_engine.binary_conv2d(*args, r)
    assert torch.ops.bsr_engine.binary_conv2d(*args).shape == (1, 2, 4, 4)


# ---------------------------------------------------------------------------------------
# Reference path and fallback (always run)
# ---------------------------------------------------------------------------------------

def test_reference_is_the_float_simulation():
    gen = torch.Generator().manual_seed(3)
    x = _inputs(2, 6, 5, 7, gen)
    w = torch.randn(3, 6, 3, 3, generator=gen)
    scale, bias, (si, sl, so) = _rand_params(3, gen)
    thr = torch.randn(6, generator=gen) * 0.3
    y = E.reference_binary_conv2d(x, E.reference_pack_weight(w), in_channels=6, kernel_size=3, padding=1,
                                  scale=scale, bias=bias, threshold=thr, rprelu=(si, sl, so), shortcut="mean")
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    t = _expected_dot(x, w, 1, 1, 1, thr) * v(scale) + v(bias) - v(si)
    expected = torch.where(t >= 0, t, v(sl) * t) + v(so) + x.unflatten(1, (3, 2)).mean(2)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    xp = E.reference_pack_input(x, thr, (1, 0, 2, 1))
    assert xp.shape == (2, 6, 10, 1)
    counts = E.reference_conv_counts(xp, E.reference_pack_weight(w), 6, 3)
    assert torch.equal(counts, _expected_dot(x, w, (1, 0, 2, 1), 1, 1, thr).round().int())


def test_fallback_without_extension(monkeypatch):
    monkeypatch.setattr(K, "_UNAVAILABLE", "not built: simulated")
    assert not E.available() and E.unavailable_reason() == "not built: simulated"
    assert E.isa() == "reference" and E.available_isas() == []
    assert E.status_line() == "packed engine unavailable (not built: simulated): using the float simulation"
    with pytest.raises(ValueError, match="unavailable"):
        E.set_isa("scalar")
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(1, 5, 4, 4, generator=gen), torch.randn(6, 5, 3, 3, generator=gen)
    wp = E.pack_weight(w)
    assert torch.equal(wp, E.reference_pack_weight(w))
    y = E.binary_conv2d(x, wp, in_channels=5, kernel_size=3, padding=1, scale=torch.ones(6))
    torch.testing.assert_close(y, _expected_dot(x, w, 1, 1, 1))
    wp8 = E.pack_weight(torch.randn(8, 5, 3, 3, generator=gen))
    y = E.binary_conv2d(x, wp8, in_channels=5, kernel_size=3, padding=1, scale=torch.ones(8), pixel_shuffle=2)
    assert torch.equal(y, F.pixel_shuffle(E.reference_binary_conv2d(x, wp8, in_channels=5, kernel_size=3, padding=1,
                                                                   scale=torch.ones(8)), 2))
    counts = E.conv_counts(E.pack_input(x, padding=1), wp, 5, 3)
    assert torch.equal(counts, _expected_dot(x, w, 1, 1, 1).round().int())
    lin = E.binary_linear(torch.randn(2, 5), E.pack_weight(torch.randn(3, 5)), in_features=5, scale=torch.ones(3))
    assert lin.shape == (2, 3)
    with pytest.raises(ValueError, match="groups"):
        E.binary_conv2d(x, wp, in_channels=5, kernel_size=3, scale=torch.ones(6), groups=5)


def test_loader_reports_a_missing_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "bsr_plugin.deploy.engine._C", None)
    reason = K._load()
    assert reason is not None and reason.startswith("not built") and "pip install --no-build-isolation" in reason


def test_loader_reports_an_outdated_build(monkeypatch):
    _require_native()
    monkeypatch.setattr(K, "_OPS", K._OPS + ("op_of_a_newer_package",))
    assert K._load() == ("the extension is older than this package (no op op_of_a_newer_package): rebuild with pip "
                         "install --no-build-isolation -e .")


def test_not_x86_64_builds_nothing_and_says_why(monkeypatch, capsys):
    """The C++ engine is x86-64 only: elsewhere setup.py gets no extension (one warning), the
    in-place build refuses, and the loader's reason says so instead of "rebuild"."""
    import platform

    from bsr_plugin.deploy.engine import build

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert not build.is_x86_64() and build.setup_kwargs() == {}
    assert build.main([]) == 1
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 2 and all("x86-64 only and this machine is aarch64" in ln for ln in warnings)
    monkeypatch.setitem(sys.modules, "bsr_plugin.deploy.engine._C", None)
    assert K._load() == "not built: the C++ engine is x86-64 only, this machine is aarch64"


def test_native_failures_are_sorted():
    """A native argument check (ValueError) surfaces as EngineError naming the op, the allocator
    failing as MemoryError (so ``bsr run`` says --tile), any other native failure unchanged (a
    bug keeps its traceback)."""
    def fail(err):
        def op(*args):
            raise err
        return op

    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 75497472 bytes.\nmore")
    with pytest.raises(MemoryError, match="75497472"):
        K._native("conv_counts", fail(oom))
    with pytest.raises(bsr_plugin.EngineError) as caught:
        K._native("conv_counts", fail(ValueError("xp must be contiguous\ntrace")))
    assert str(caught.value) == "conv_counts: xp must be contiguous"
    bug = RuntimeError("an internal invariant broke")
    with pytest.raises(RuntimeError) as caught:
        K._native("conv_counts", fail(bug))
    assert caught.value is bug
