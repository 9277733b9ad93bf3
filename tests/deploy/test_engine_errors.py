"""The packed engine's public API with bad arguments: every public function of
``bsr_plugin.deploy.engine.kernels`` and every public engine module constructor, called with
wrong types, shapes, dtypes, devices, non-positive sizes or channels that do not fit, raises an
:class:`~bsr_plugin.EngineError` (a BsrError; never a bare ValueError, TypeError, RuntimeError
or IndexError) whose message names the argument. Walked on the native kernels (when built) and
on the float simulation (the extension marked unavailable). The capability queries
(``conv_support``, ``linear_support``, ``engine_support``) answer with the reason instead."""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import pytest
import torch
from torch import nn

from bsr_plugin import BinaryConv2d, BinaryLinear, BsrError, EngineError, set_binarization
from bsr_plugin.deploy.engine import kernels as K
from bsr_plugin.deploy.engine.bands import BandedUpsample
from bsr_plugin.deploy.engine.modules import PackedBinaryConv2d, PackedBinaryLinear, engine_support, to_engine

META = torch.device("meta")
X = torch.randn(1, 3, 6, 6)
WP = K.reference_pack_weight(torch.randn(4, 3, 3, 3))
XP = K.reference_pack_input(X, padding=1)
LX = torch.randn(2, 10)
LWP = K.reference_pack_weight(torch.randn(4, 10))
BIG_C = (1 << 24) // 9 + 1  # in_channels * 3 * 3 just above 2**24


def _conv(fn: Callable, **over: Any) -> Callable[[], Any]:
    args: dict[str, Any] = dict(x=X, wp=WP, in_channels=3, kernel_size=3, padding=1, scale=torch.ones(4))
    args.update(over)
    x, wp = args.pop("x"), args.pop("wp")
    return lambda: fn(x, wp, **args)


def _linear(fn: Callable, **over: Any) -> Callable[[], Any]:
    args: dict[str, Any] = dict(x=LX, wp=LWP, in_features=10, scale=torch.ones(4))
    args.update(over)
    x, wp = args.pop("x"), args.pop("wp")
    return lambda: fn(x, wp, **args)


def _counts(fn: Callable, **over: Any) -> Callable[[], Any]:
    args: dict[str, Any] = dict(xp=XP, wp=WP, in_channels=3, kernel_size=3)
    args.update(over)
    return lambda: fn(**args)


def _weight_cases(fn: Callable) -> list:
    return [
        (lambda: fn(None), r"w must be a torch\.Tensor, got NoneType"),
        (lambda: fn("weights"), r"w must be a torch\.Tensor, got str"),
        (lambda: fn(torch.randn(4, 3, 3, 3).double()), "w must be float32, got torch.float64"),
        (lambda: fn(torch.randn(4, 3, 3, 3, device=META)), "w is on meta"),
        (lambda: fn(torch.randn(4, 3, 3)), r"w must be a conv weight \[O, C, KH, KW\] or a linear weight"),
        (lambda: fn(torch.randn(4, 0, 3, 3)), r"w must be .* with C, K >= 1, got shape \(4, 0, 3, 3\)"),
    ]


def _input_cases(fn: Callable) -> list:
    return [
        (lambda: fn(None), r"x must be a torch\.Tensor, got NoneType"),
        (lambda: fn(X.double()), "x must be float32, got torch.float64"),
        (lambda: fn(X.to(torch.int64)), "x must be float32, got torch.int64"),
        (lambda: fn(X.to(META)), "x is on meta"),
        (lambda: fn(torch.randn(3, 6, 6)), r"x must be \[N, C, H, W\] with C >= 1, got shape \(3, 6, 6\)"),
        (lambda: fn(torch.randn(1, 0, 4, 4)), r"x must be \[N, C, H, W\] with C >= 1, got shape \(1, 0, 4, 4\)"),
        (lambda: fn(X, threshold=torch.ones(4)), r"threshold must hold one value per channel \(3\), got shape \(4,\)"),
        (lambda: fn(X, threshold="zero"), r"threshold must be a torch\.Tensor, got str"),
        (lambda: fn(X, threshold=torch.ones(3, dtype=torch.int64)), "threshold must be a floating point tensor"),
        (lambda: fn(X, padding=-1), "padding must be non-negative, got -1"),
        (lambda: fn(X, padding=(1, 2, 3)), r"padding must be an int, \(ph, pw\) or .*got \(1, 2, 3\)"),
        (lambda: fn(X, padding=None), "padding must be an int.*got None"),
        (lambda: fn(X, padding=1.5), "padding must be an int.*got 1.5"),
        (lambda: fn(X, padding="1"), "padding must be an int.*got '1'"),
    ]


def _counts_cases(fn: Callable) -> list:
    return [
        (_counts(fn, xp=X), r"xp must be an int64 tensor \[N, Hp, Wp, ceil\(C/64\)\].*got torch.float32"),
        (_counts(fn, xp="packed"), r"xp must be a torch\.Tensor, got str"),
        (_counts(fn, xp=XP.to(META)), "xp is on meta"),
        (_counts(fn, wp=WP.to(torch.int32)), "wp must be an int64 tensor"),
        (_counts(fn, wp=WP[0]), r"wp must be an int64 tensor .*shape \(3, 3, 1\)"),
        (_counts(fn, in_channels=0), "in_channels must be a positive int, got 0"),
        (_counts(fn, in_channels=None), "in_channels must be a positive int, got None"),
        (_counts(fn, in_channels=True), "in_channels must be a positive int, got True"),
        (_counts(fn, in_channels=70), "do not fit in_channels=70"),
        (_counts(fn, kernel_size=5), r"do not fit in_channels=3, kernel_size=\(5, 5\)"),
        (_counts(fn, kernel_size=0), "kernel_size must be >= 1, got 0"),
        (_counts(fn, kernel_size=(3, 3, 3)), r"kernel_size must be an int or a pair of ints.*got \(3, 3, 3\)"),
        (_counts(fn, kernel_size="3"), "kernel_size must be an int or a pair of ints.*got '3'"),
        (_counts(fn, stride=0), "stride must be >= 1, got 0"),
        (_counts(fn, stride=(1,)), r"stride must be an int or a pair of ints.*got \(1,\)"),
        (_counts(fn, dilation=None), "dilation must be an int or a pair of ints.*got None"),
        (_counts(fn, dilation=5), r"xp \(the padded input\) \(8x8\) is smaller than the dilated kernel \(11x11\)"),
    ]


def _conv_cases(fn: Callable) -> list:
    return [
        (_conv(fn, x=None), r"x must be a torch\.Tensor, got NoneType"),
        (_conv(fn, x=X.double()), "x must be float32"),
        (_conv(fn, x=X.to(META)), "x is on meta"),
        (_conv(fn, x=torch.randn(3, 6, 6)), r"x must be \[N, C, H, W\]"),
        (_conv(fn, in_channels=5), "x has 3 channels but the layer has in_channels=5"),
        (_conv(fn, in_channels="3"), "in_channels must be a positive int, got '3'"),
        (_conv(fn, in_channels=-3), "in_channels must be a positive int, got -3"),
        (_conv(fn, kernel_size=5), r"wp \(the packed weight\) of shape \(4, 3, 3, 1\) does not fit kernel_size"),
        (_conv(fn, kernel_size=None), "kernel_size must be an int or a pair of ints.*got None"),
        (_conv(fn, wp="packed"), r"wp must be a torch\.Tensor, got str"),
        (_conv(fn, wp=WP.to(torch.int32)), r"wp must be an int64 tensor \[O, KH, KW, ceil\(C/64\)\]"),
        (_conv(fn, wp=WP[:, 0]), r"wp must be an int64 tensor .*shape \(4, 3, 1\)"),
        (_conv(fn, wp=WP[:0], scale=torch.ones(0)), r"of shape \(0, 3, 3, 1\) does not fit.*\[O >= 1"),
        (_conv(fn, groups=3), "groups=3 is not supported"),
        (_conv(fn, groups="1"), "groups='1' is not supported"),
        (_conv(fn, scale=None), "scale is required"),
        (_conv(fn, scale="ones"), r"scale must be a torch\.Tensor, got str"),
        (_conv(fn, scale=torch.ones(5)), r"scale must hold one value per channel \(4\), got shape \(5,\)"),
        (_conv(fn, scale=torch.ones(4, dtype=torch.int32)), "scale must be a floating point tensor, got torch.int32"),
        (_conv(fn, bias=torch.ones(3)), r"bias must hold one value per channel \(4\)"),
        (_conv(fn, threshold=torch.ones(4)), r"threshold must hold one value per channel \(3\)"),
        (_conv(fn, rprelu=(torch.ones(4), torch.ones(4))), r"rprelu must be None or a tuple .*got a tuple of 2"),
        (_conv(fn, rprelu=torch.ones(4)), "rprelu must be None or a tuple .*got Tensor"),
        (_conv(fn, rprelu=(torch.ones(4), torch.ones(4), torch.ones(3))), "rprelu shift_out must hold one value"),
        (_conv(fn, shortcut="sideways"), "unknown shortcut 'sideways'"),
        (_conv(fn, shortcut=None), "unknown shortcut None"),
        (_conv(fn, shortcut=["none"]), r"unknown shortcut \['none'\]"),
        (_conv(fn, shortcut="identity"), "identity shortcut needs as many outputs as inputs, got 3 -> 4"),
        (_conv(fn, shortcut="mean"), "mean shortcut needs inputs = k \\* outputs, got 3 -> 4"),
        (_conv(fn, wp=WP[:3], scale=torch.ones(3), shortcut="identity", stride=2), "shortcut needs the output size"),
        (_conv(fn, padding=-1), "padding must be non-negative"),
        (_conv(fn, padding=(1, 2, 3)), "padding must be an int"),
        (_conv(fn, stride=0), "stride must be >= 1, got 0"),
        (_conv(fn, dilation=(1, 0)), r"dilation must be >= 1, got \(1, 0\)"),
        (_conv(fn, padding=0, dilation=4), r"x padded by padding=\(0, 0, 0, 0\) \(6x6\) is smaller than the dilated"),
        (_conv(fn, pixel_shuffle=3), r"pixel_shuffle=3 needs out_channels divisible by r\^2 = 9"),
        (_conv(fn, pixel_shuffle=0), "pixel_shuffle must be a positive int .*got 0"),
        (_conv(fn, pixel_shuffle=2.0), "pixel_shuffle must be a positive int .*got 2.0"),
        (_conv(fn, pixel_shuffle=True), "pixel_shuffle must be a positive int .*got True"),
        (_conv(fn, x=torch.zeros(1, BIG_C, 1, 1), wp=torch.zeros(1, 3, 3, (BIG_C + 63) // 64, dtype=torch.int64),
               in_channels=BIG_C, scale=torch.ones(1)), r"in_channels \* KH \* KW = \d+ must be below 2\*\*24"),
    ]


def _linear_cases(fn: Callable) -> list:
    return [
        (_linear(fn, x=None), r"x must be a torch\.Tensor, got NoneType"),
        (_linear(fn, x=LX.double()), "x must be float32"),
        (_linear(fn, x=torch.randn(2, 9)), r"x must be \[\.\.\., 10\], got shape \(2, 9\)"),
        (_linear(fn, in_features=0), "in_features must be a positive int, got 0"),
        (_linear(fn, in_features="10"), "in_features must be a positive int, got '10'"),
        (_linear(fn, x=torch.randn(2, 70), in_features=70), r"wp \(the packed weight\) .* does not fit in_features=70"),
        (_linear(fn, wp=WP), r"wp must be an int64 tensor \[N, ceil\(K/64\)\]"),
        (_linear(fn, wp=LWP.float()), "wp must be an int64 tensor"),
        (_linear(fn, scale=None), "scale is required"),
        (_linear(fn, scale=torch.ones(3)), r"scale must hold one value per channel \(4\)"),
        (_linear(fn, threshold=torch.ones(4)), r"threshold must hold one value per channel \(10\)"),
        (_linear(fn, shortcut="identity"), "identity shortcut needs as many outputs as inputs, got 10 -> 4"),
        (_linear(fn, shortcut=3), "unknown shortcut 3"),
        (_linear(fn, rprelu=[torch.ones(4)]), "rprelu must be None or a tuple .*got a list of 1"),
    ]


def _isa_cases() -> list:
    cases = [
        (lambda: K.set_isa(5), "set_isa: name must be a str .*got int"),
        (lambda: K.set_isa(None), "set_isa: name must be a str .*got NoneType"),
        (lambda: K.use_isa(["avx2"]).__enter__(), "set_isa: name must be a str .*got list"),
    ]
    if K.available():
        cases += [(lambda: K.set_isa("sse9"), "isa=sse9 is not an ISA of the packed engine: choose auto")]
    else:
        cases += [(lambda: K.set_isa("scalar"), "cannot select ISA 'scalar': the packed engine is unavailable")]
    return cases


def _roofline_cases() -> list:
    return [
        (lambda: K.xor_popcount_roofline(words=0), "words must be a positive int, got 0"),
        (lambda: K.xor_popcount_roofline(words="512"), "words must be a positive int, got '512'"),
        (lambda: K.xor_popcount_roofline(repeats=0), "repeats must be a positive int, got 0"),
        (lambda: K.xor_popcount_roofline(repeats=2.5), "repeats must be a positive int, got 2.5"),
    ]


def _cases() -> dict[str, list]:
    """Bad calls of every public function of kernels that takes arguments, with the message."""
    return {
        "pack_weight": _weight_cases(K.pack_weight),
        "reference_pack_weight": _weight_cases(K.reference_pack_weight),
        "unpack_weight": [
            (lambda: K.unpack_weight("packed", 3), r"wp must be a torch\.Tensor, got str"),
            (lambda: K.unpack_weight(WP.to(torch.int32), 3), r"wp must be int64 .*got torch.int32"),
            (lambda: K.unpack_weight(WP[0, 0, 0], 3), r"wp must be int64 \[O, KH, KW, CW\] or \[N, CW\].*\(1,\)"),
            (lambda: K.unpack_weight(WP, 70), r"CW = ceil\(70 / 64\) = 2, got torch.int64 \(4, 3, 3, 1\)"),
            (lambda: K.unpack_weight(WP, 0), "in_channels must be a positive int, got 0"),
            (lambda: K.unpack_weight(WP, "3"), "in_channels must be a positive int, got '3'"),
        ],
        "pack_input": _input_cases(K.pack_input),
        "reference_pack_input": _input_cases(K.reference_pack_input),
        "conv_counts": _counts_cases(K.conv_counts),
        "reference_conv_counts": _counts_cases(K.reference_conv_counts),
        "binary_conv2d": _conv_cases(K.binary_conv2d),
        "reference_binary_conv2d": _conv_cases(K.reference_binary_conv2d),
        "binary_linear": _linear_cases(K.binary_linear),
        "reference_binary_linear": _linear_cases(K.reference_binary_linear),
        "set_isa": _isa_cases(),
        "use_isa": _isa_cases()[2:3],
        "xor_popcount_roofline": _roofline_cases(),
    }


NO_ARGUMENTS = {"available", "unavailable_reason", "isa", "isa_problem", "available_isas", "status_line"}
QUERIES = {"conv_support", "linear_support"}  # answer with a reason instead of raising (see below)


def _public_functions() -> set[str]:
    return {name for name, f in inspect.getmembers(K, inspect.isfunction)
            if not name.startswith("_") and f.__module__ == K.__name__}


def _rejects(call: Callable[[], Any], match: str, label: str) -> None:
    with pytest.raises(BsrError) as caught:  # anything else propagates and fails the test
        call()
    assert isinstance(caught.value, EngineError) and isinstance(caught.value, ValueError), label
    assert re.search(match, str(caught.value)), f"{label}: {caught.value!s} does not match {match!r}"


def test_every_public_function_is_walked():
    assert set(_cases()) | NO_ARGUMENTS | QUERIES == _public_functions()


@pytest.fixture(params=["native", "float simulation"])
def path(request, monkeypatch):
    if request.param == "native":
        if not K.available():
            pytest.skip(f"packed engine unavailable: {K.unavailable_reason()}")
    else:
        monkeypatch.setattr(K, "_UNAVAILABLE", "not built: simulated")
    return request.param


def test_bad_arguments_raise_engine_errors_naming_them(path):
    for name, cases in _cases().items():
        for i, (call, match) in enumerate(cases):
            _rejects(call, match, f"{name} case {i} ({path})")


def test_isa_problem_is_reported_before_any_call(monkeypatch):
    if not K.available():
        assert K.isa_problem() is None
        return
    try:
        monkeypatch.setenv("BSR_ENGINE_ISA", "sse9")
        K.set_isa("env")
        assert K.isa_problem() == ("BSR_ENGINE_ISA=sse9 is not an ISA of the packed engine: choose auto, avx512, "
                                   "avx2 or scalar")
        assert K.status_line() == f"packed engine misconfigured ({K.isa_problem()})"
        _rejects(K.isa, "BSR_ENGINE_ISA=sse9", "isa")
        _rejects(lambda: K.pack_input(X), "pack_input: BSR_ENGINE_ISA=sse9", "pack_input")
    finally:
        monkeypatch.delenv("BSR_ENGINE_ISA")
        K.set_isa("env")
    assert K.isa_problem() is None


def test_shape_queries_answer_with_the_reason():
    assert K.conv_support(3, 4, 3) is None and K.conv_support(3, 4, (1, 5), groups=1) is None
    assert K.linear_support(10, 4) is None
    answers = {
        K.conv_support(0, 4, 3): "in_channels must be a positive int, got 0",
        K.conv_support(3, "4", 3): "out_channels must be a positive int, got '4'",
        K.conv_support(3, 4, 3, groups=0): "groups must be a positive int, got 0",
        K.conv_support(4, 4, 3, groups=2): "groups=2 is not supported by the packed engine",
        K.conv_support(3, 4, (3, 0)): r"kernel_size must be >= 1, got \(3, 0\)",
        K.conv_support(3, 4, None): "kernel_size must be an int or a pair",
        K.conv_support(BIG_C, 4, 3): r"in_channels \* KH \* KW = \d+ must be below 2\*\*24",
        K.linear_support(True, 4): "in_features must be a positive int, got True",
        K.linear_support(10, 0): "out_features must be a positive int, got 0",
        K.linear_support(1 << 24, 4): "in_features=16777216 must be below 2\\*\\*24",
    }
    for answer, match in answers.items():
        assert answer is not None and re.search(match, answer), (answer, match)


def _binary_conv(**kw: Any) -> BinaryConv2d:
    return BinaryConv2d(4, 8, 3, padding=1, **kw)


def test_engine_support_and_the_module_constructors():
    conv, linear = _binary_conv(), BinaryLinear(10, 4)
    assert engine_support(conv) is None and engine_support(linear) is None
    native = engine_support(conv, native=True)
    assert native is None if K.available() else "native kernels cannot run" in native
    grouped, switched_off = _binary_conv(groups=2), _binary_conv()
    set_binarization(switched_off, act=False)
    bad = [
        (lambda: PackedBinaryConv2d(nn.Conv2d(4, 8, 3)),
         "PackedBinaryConv2d: layer must be a BinaryConv2d, got Conv2d$"),
        (lambda: PackedBinaryConv2d(linear), "PackedBinaryConv2d: layer must be a BinaryConv2d, got BinaryLinear"),
        (lambda: PackedBinaryConv2d(None), "PackedBinaryConv2d: layer must be a BinaryConv2d, got NoneType"),
        (lambda: PackedBinaryConv2d(grouped), "cannot run this layer: groups=2 is not supported"),
        (lambda: PackedBinaryConv2d(switched_off), "cannot run this layer: its binarization is switched off"),
        (lambda: PackedBinaryConv2d(_binary_conv(dtype=torch.float64).to(META)), "its weight is torch.float64 on meta"),
        (lambda: PackedBinaryLinear(conv), "PackedBinaryLinear: layer must be a BinaryLinear, got BinaryConv2d"),
        (lambda: PackedBinaryLinear("linear"), "PackedBinaryLinear: layer must be a BinaryLinear, got str"),
        (lambda: BandedUpsample("conv", conv, 2), "BandedUpsample: first must be an nn.Module .*got str"),
        (lambda: BandedUpsample(conv, None, 2), "BandedUpsample: last must be an nn.Module .*got NoneType"),
        (lambda: BandedUpsample(nn.ReLU(), conv, 2), "two size-keeping stride-1 convs .*got ReLU and BinaryConv2d"),
        (lambda: BandedUpsample(conv, conv, 0), "upscale must be a positive int .*got 0"),
        (lambda: BandedUpsample(conv, conv, 2.0), "upscale must be a positive int .*got 2.0"),
        (lambda: BandedUpsample(conv, conv, 2, band_rows=3), "band_rows must be a positive multiple of .* 2, got 3"),
        (lambda: BandedUpsample(conv, conv, 2, band_rows="8"), "band_rows must be a positive multiple .*got '8'"),
        (lambda: BandedUpsample(conv, conv, 2, shuffled="yes"), "shuffled must be a bool, got 'yes'"),
    ]
    for i, (call, match) in enumerate(bad):
        _rejects(call, match, f"constructor case {i}")
    assert engine_support(nn.Conv2d(4, 8, 3)) == "Conv2d has no packed module (binarized convs and linears only)"
    assert "groups=2" in engine_support(grouped) and "switched off" in engine_support(switched_off)


def test_a_failure_inside_a_supported_layer_propagates(monkeypatch, caplog):
    """The float fallback is decided before any call (engine_support): a layer the engine
    supports whose packing fails raises that failure from to_engine; it does not silently keep
    its float simulation."""
    net = nn.Sequential(_binary_conv(), nn.ReLU())

    def broken(w):
        raise ValueError("pack_weight exploded")

    monkeypatch.setattr(K, "pack_weight", broken)
    with pytest.raises(ValueError, match="pack_weight exploded"):
        to_engine(net)
    assert "keeps its float simulation" not in caplog.text
