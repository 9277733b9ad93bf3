"""Python API of the bit-packed XNOR-popcount engine (CPU inference of binarized layers).

Every op computes, in float32, exactly the float simulation of a binarized layer::

    xb  = where(x - threshold[c] >= 0, +1, -1)      # sign, +1 at 0; threshold per input channel (RSign)
    xb  = pad(xb, padding, value=+1)                 # zero padding of x is +1 padding of xb
    dot = conv2d(xb, sign(w), stride, dilation)      # sign(w) = +1 where w >= 0; groups = 1
    y   = scale[o] * dot + bias[o]
    if rprelu: t = y - shift_in[o]; t = t if t >= 0 else slope[o] * t; y = t + shift_out[o]
    y   = y + shortcut(x)                            # real shortcut of the float input

with shortcut ``none``, ``identity`` (C == O), ``repeat`` (O = k C: ``x.repeat_interleave(k, 1)``)
or ``mean`` (C = k O: the mean of each group of k consecutive input channels), only when the
output has the input's spatial size. :func:`binary_linear` is the same on the last dimension.
:func:`binary_conv2d` can also return ``F.pixel_shuffle(y, r)`` (``pixel_shuffle=r``, the
conv -> PixelShuffle of super-resolution upsamplers), written directly in that layout.

Packed layout (bit 1 = sign +1, as :mod:`bsr_plugin.core.bits`): an input becomes int64
``[N, Hp, Wp, ceil(C / 64)]`` words (channel ``c`` is bit ``c % 64`` of word ``c // 64``; padding
pixels have every valid lane set), a conv weight ``[O, KH, KW, ceil(C / 64)]``, a linear weight
``[N, ceil(K / 64)]``; lanes beyond the channel count are 0, so
``dot = C * KH * KW - 2 * popcount(a XOR w)`` summed over taps and words.

The native kernels live in the C++ extension ``bsr_plugin.deploy.engine._C`` (built by
``pip install --no-build-isolation -e .``; never compiled at import). When it is missing or
does not load, :func:`available` is False, :func:`unavailable_reason` says why, and every
public op runs its pure-PyTorch reference (``reference_*``), so callers never branch. The ops
are for inference: they do not record gradients.

The native kernels are x86-64 only: elsewhere the extension is not built (``build.py`` says so
in one warning) and the ops run the float simulation.

The instruction set is chosen at run time: the environment variable
``BSR_ENGINE_ISA=auto|avx512|avx2|scalar`` (default ``auto``, the best the CPU has), or
:func:`set_isa` / :func:`use_isa` (tests, benchmarks); :func:`isa_problem` says when the
setting cannot be used. Threads: ``torch.set_num_threads``.

Errors: an argument an op cannot take raises :class:`bsr_plugin.EngineError` (a ``ValueError``)
naming the function, the argument, what it got and what is accepted. :func:`conv_support` /
:func:`linear_support` say beforehand whether a layer shape can run at all (``groups == 1``,
``C * KH * KW < 2**24``); the per-call arguments are checked by each op.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import platform
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.layers import channel_shortcut
from ...errors import EngineError

logger = logging.getLogger(__name__)

SHORTCUTS = ("none", "identity", "repeat", "mean")
_SHORTCUT_CODES = {name: i for i, name in enumerate(SHORTCUTS)}
ISAS = ("avx512", "avx2", "scalar")
REBUILD_HINT = "rebuild with pip install --no-build-isolation -e ."
# The ops this module calls: an extension built from older sources lacks some (rebuild it).
_OPS = ("pack_input", "pack_weight", "conv_counts", "binary_conv2d", "binary_linear", "xor_popcount_roofline",
        "set_isa", "get_isa", "isa_setting", "isa_problem", "available_isas")
# in_channels * KH * KW (a linear: in_features) below this: the float sums of +-1 are exact.
MAX_KERNEL_VOLUME = 1 << 24

IntPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]
RPReLU = Optional[Tuple[Tensor, Tensor, Tensor]]


def _load() -> Optional[str]:
    """Import the extension (registers ``torch.ops.bsr_engine``); the reason if it fails."""
    name = f"{__package__}._C"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            if platform.machine().lower() not in ("x86_64", "amd64"):  # build.py builds nothing there
                return f"not built: the C++ engine is x86-64 only, this machine is {platform.machine() or 'unknown'}"
            return f"not built: {REBUILD_HINT}"
        return f"import failed ({err}): {REBUILD_HINT}"
    except Exception as err:  # noqa: BLE001 - e.g. undefined symbols: built for another torch
        return f"import failed ({type(err).__name__}: {err}); it may be built for another torch: {REBUILD_HINT}"
    missing = [op for op in _OPS if not hasattr(torch.ops.bsr_engine, op)]
    if len(missing) == len(_OPS):
        return f"the extension loaded but registered no ops: {REBUILD_HINT}"
    if missing:
        return f"the extension is older than this package (no op {', '.join(missing)}): {REBUILD_HINT}"
    return None


_UNAVAILABLE: Optional[str] = _load()
if _UNAVAILABLE is not None:
    logger.debug("packed engine unavailable: %s", _UNAVAILABLE)


# ---------------------------------------------------------------------------------------
# Engine state
# ---------------------------------------------------------------------------------------

def available() -> bool:
    """True if the native kernels are loaded (else the ops run the float simulation)."""
    return _UNAVAILABLE is None


def unavailable_reason() -> Optional[str]:
    """Why the native kernels are not loaded, or None when they are."""
    return _UNAVAILABLE


def _ops():
    return torch.ops.bsr_engine


def isa_problem() -> Optional[str]:
    """Why the native ops cannot run with the current ISA setting (``BSR_ENGINE_ISA`` names an
    unknown ISA or one this CPU lacks), or None (also when the extension is unavailable)."""
    if not available():
        return None
    return str(_ops().isa_problem()) or None


def isa() -> str:
    """The instruction set the native ops use now (``avx512``, ``avx2``, ``scalar``), or
    ``reference`` when the extension is unavailable.

    Raises:
        EngineError: ``BSR_ENGINE_ISA`` names an unknown ISA or one this CPU lacks.
    """
    if not available():
        return "reference"
    problem = isa_problem()
    if problem is not None:
        raise EngineError(problem)
    return str(_ops().get_isa())


def available_isas() -> list[str]:
    """The native ISAs this CPU can run, best first (empty when the extension is unavailable)."""
    return list(_ops().available_isas()) if available() else []


def set_isa(name: str) -> None:
    """Force the ISA of the native ops for this process: ``auto``, ``avx512``, ``avx2``,
    ``scalar``, or ``env`` (back to ``BSR_ENGINE_ISA``). Not thread-local.

    Raises:
        EngineError: not a str, an unknown name, an ISA the CPU lacks, or the extension is
            unavailable.
    """
    if not isinstance(name, str):
        raise EngineError(f"set_isa: name must be a str (auto, env, {', '.join(ISAS)}), got {type(name).__name__}")
    if not available():
        raise EngineError(f"set_isa: cannot select ISA {name!r}: the packed engine is unavailable ({_UNAVAILABLE})")
    _native("set_isa", _ops().set_isa, name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[str]:
    """Run the block with the native ops forced to ISA ``name`` (see :func:`set_isa`); the
    previous choice is restored afterwards. Yields the ISA in use."""
    previous = str(_ops().isa_setting()) if available() else "env"
    set_isa(name)
    try:
        yield isa()
    finally:
        set_isa(previous)


def status_line() -> str:
    """One line for logs: ``packed engine: avx512, 2 threads`` or why it is unavailable."""
    if not available():
        return f"packed engine unavailable ({_UNAVAILABLE}): using the float simulation"
    problem = isa_problem()
    if problem is not None:
        return f"packed engine misconfigured ({problem})"
    threads = torch.get_num_threads()
    return f"packed engine: {isa()}, {threads} thread{'s' if threads != 1 else ''}"


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _native(fn: str, op: Any, *args: Any) -> Any:
    """Call a native op. Its argument checks raise ValueError (TORCH_CHECK_VALUE): an
    :class:`EngineError` naming ``fn``; the allocator running out: MemoryError (callers such as
    ``bsr run`` turn it into "use --tile"); any other failure is a bug and propagates as it is."""
    try:
        return op(*args)
    except ValueError as err:
        raise EngineError(f"{fn}: {_first_line(err)}") from None
    except RuntimeError as err:
        text = _first_line(err)
        if "can't allocate memory" in text or "out of memory" in text.lower():
            raise MemoryError(text) from None
        raise


# ---------------------------------------------------------------------------------------
# Argument normalisation and validation (shared by the native and the reference paths);
# every rejection is an EngineError naming the function, the argument, what it got and what
# is accepted.
# ---------------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any, what: str, fn: str) -> int:
    if not _is_int(v) or v < 1:
        raise EngineError(f"{fn}: {what} must be a positive int, got {v!r}")
    return int(v)


def _pair_problem(v: Any, what: str, minimum: int) -> Optional[str]:
    """Why ``v`` is not an int or a pair of ints, each >= minimum (None when it is)."""
    vals = (v, v) if _is_int(v) else tuple(v) if isinstance(v, (tuple, list, torch.Size)) else None
    if vals is None or len(vals) != 2 or not all(_is_int(i) for i in vals):
        return f"{what} must be an int or a pair of ints (each >= {minimum}), got {v!r}"
    if min(vals) < minimum:
        return f"{what} must be >= {minimum}, got {v!r}"
    return None


def _pair(v: IntPair, what: str, minimum: int, fn: str) -> tuple[int, int]:
    if type(v) is int and v >= minimum:
        return v, v
    if isinstance(v, tuple) and len(v) == 2 and type(v[0]) is int and type(v[1]) is int and min(v) >= minimum:
        return v  # type: ignore[return-value]  (the packed modules' own sizes)
    problem = _pair_problem(v, what, minimum)
    if problem is not None:
        raise EngineError(f"{fn}: {problem}")
    vals = (v, v) if _is_int(v) else tuple(v)  # type: ignore[arg-type]
    return int(vals[0]), int(vals[1])


def _padding4(padding: Padding, fn: str) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, (ph, pw) or (top, bottom, left, right)."""
    if isinstance(padding, tuple) and len(padding) == 4 and all(type(i) is int and i >= 0 for i in padding):
        return padding  # type: ignore[return-value]  (the packed modules' own padding)
    vals = (padding,) if _is_int(padding) else tuple(padding) if isinstance(padding, (tuple, list)) else None
    if vals is None or not all(_is_int(i) for i in vals) or len(vals) not in (1, 2, 4):
        raise EngineError(f"{fn}: padding must be an int, (ph, pw) or (top, bottom, left, right), got {padding!r}")
    if min(vals) < 0:
        raise EngineError(f"{fn}: padding must be non-negative, got {padding!r}")
    if len(vals) == 1:
        return (vals[0],) * 4
    if len(vals) == 2:
        return vals[0], vals[0], vals[1], vals[1]
    return vals[0], vals[1], vals[2], vals[3]


def _check_tensor(t: Any, what: str, fn: str) -> None:
    if not isinstance(t, Tensor):
        raise EngineError(f"{fn}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise EngineError(f"{fn}: {what} is on {t.device}; the packed engine runs on the CPU: move it with .cpu()")


def _check_float_input(x: Any, what: str, fn: str) -> None:
    _check_tensor(x, what, fn)
    if x.dtype != torch.float32:
        raise EngineError(f"{fn}: {what} must be float32, got {x.dtype}: convert it with .float()")


def _check_image(x: Any, fn: str) -> None:
    """x: a float32 CPU tensor [N, C, H, W] with C >= 1."""
    _check_float_input(x, "x", fn)
    if x.dim() != 4 or x.shape[1] < 1:
        raise EngineError(f"{fn}: x must be [N, C, H, W] with C >= 1, got shape {tuple(x.shape)}")


def _check_packed(t: Any, what: str, fn: str, dims: int, layout: str) -> None:
    _check_tensor(t, what, fn)
    if t.dtype != torch.int64 or t.dim() != dims:
        raise EngineError(f"{fn}: {what} must be an int64 tensor {layout} (from pack_weight / pack_input), "
                          f"got {t.dtype} of shape {tuple(t.shape)}")


def _vector(t: Optional[Tensor], n: int, what: str, fn: str) -> Optional[Tensor]:
    """A per-channel parameter as a contiguous float32 [n] tensor (None stays None)."""
    if t is None:
        return None
    if (isinstance(t, Tensor) and t.dtype == torch.float32 and t.dim() == 1 and t.shape[0] == n
            and t.device.type == "cpu" and not t.requires_grad and t.is_contiguous()):
        return t  # already in the form the ops take (the common case: a module's buffers)
    _check_tensor(t, what, fn)
    if not t.is_floating_point():
        raise EngineError(f"{fn}: {what} must be a floating point tensor, got {t.dtype}")
    if t.numel() != n or sum(int(d) != 1 for d in t.shape) > 1:
        raise EngineError(f"{fn}: {what} must hold one value per channel ({n}), got shape {tuple(t.shape)}")
    return t.detach().reshape(n).to(torch.float32).contiguous()


def _rprelu(rprelu: RPReLU, n: int, fn: str) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    if rprelu is None:
        return None
    if not isinstance(rprelu, (tuple, list)) or len(rprelu) != 3:
        got = f"a {type(rprelu).__name__} of {len(rprelu)}" if isinstance(rprelu, (tuple, list)) else \
            type(rprelu).__name__
        raise EngineError(f"{fn}: rprelu must be None or a tuple (shift_in, slope, shift_out) of [{n}] tensors, "
                          f"got {got}")
    names = ("rprelu shift_in", "rprelu slope", "rprelu shift_out")
    return tuple(_vector(t, n, name, fn) for name, t in zip(names, rprelu))  # type: ignore[return-value]


def _shortcut(shortcut: str, c_in: int, c_out: int, fn: str) -> int:
    if not isinstance(shortcut, str) or shortcut not in _SHORTCUT_CODES:
        raise EngineError(f"{fn}: unknown shortcut {shortcut!r}; choose one of {SHORTCUTS}")
    if shortcut == "identity" and c_in != c_out:
        raise EngineError(f"{fn}: the identity shortcut needs as many outputs as inputs, got {c_in} -> {c_out}: "
                          f"use 'repeat' / 'mean' where they divide, or 'none'")
    if shortcut == "repeat" and c_out % c_in:
        raise EngineError(f"{fn}: the repeat shortcut needs outputs = k * inputs, got {c_in} -> {c_out}")
    if shortcut == "mean" and c_in % c_out:
        raise EngineError(f"{fn}: the mean shortcut needs inputs = k * outputs, got {c_in} -> {c_out}")
    return _SHORTCUT_CODES[shortcut]


def _words(c: int) -> int:
    return (c + 63) // 64


def _kernel_fits(h: int, w: int, kernel: tuple[int, int], dilation: tuple[int, int], what: str, fn: str) -> None:
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if h < spans[0] or w < spans[1]:
        raise EngineError(f"{fn}: {what} ({h}x{w}) is smaller than the dilated kernel ({spans[0]}x{spans[1]}) of "
                          f"kernel_size={kernel}, dilation={dilation}")


# ---------------------------------------------------------------------------------------
# Capability: what the packed engine runs at all, asked before any call
# ---------------------------------------------------------------------------------------

def conv_support(in_channels: int, out_channels: int, kernel_size: IntPair, groups: int = 1) -> Optional[str]:
    """Why the packed engine cannot run a conv of this shape, or None when it can: one line for
    a warning (``groups > 1``, ``in_channels * KH * KW`` of 2**24 or more, a size that is not a
    positive int). Shapes it can run, it runs natively where :func:`available` (else on the
    float simulation); the per-call arguments are checked by :func:`binary_conv2d`."""
    for what, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not _is_int(v) or v < 1:
            return f"{what} must be a positive int, got {v!r}"
    if groups != 1:
        return f"groups={groups} is not supported by the packed engine (groups=1 only)"
    problem = _pair_problem(kernel_size, "kernel_size", 1)
    if problem is not None:
        return problem
    kh, kw = _pair(kernel_size, "kernel_size", 1, "conv_support")
    if in_channels * kh * kw >= MAX_KERNEL_VOLUME:
        return (f"in_channels * KH * KW = {in_channels * kh * kw} must be below 2**24 (exact float sums of the "
                f"packed engine)")
    return None


def linear_support(in_features: int, out_features: int) -> Optional[str]:
    """Why the packed engine cannot run a linear layer of this shape, or None when it can
    (see :func:`conv_support`)."""
    for what, v in (("in_features", in_features), ("out_features", out_features)):
        if not _is_int(v) or v < 1:
            return f"{what} must be a positive int, got {v!r}"
    if in_features >= MAX_KERNEL_VOLUME:
        return f"in_features={in_features} must be below 2**24 (exact float sums of the packed engine)"
    return None


class _ConvArgs:
    """Validated arguments of a binarized conv."""

    def __init__(self, x: Tensor, wp: Tensor, in_channels: int, kernel_size: IntPair, stride: IntPair,
                 padding: Padding, dilation: IntPair, scale: Tensor, bias: Optional[Tensor],
                 threshold: Optional[Tensor], shortcut: str, rprelu: RPReLU, groups: int,
                 pixel_shuffle: int = 1) -> None:
        fn = "binary_conv2d"
        if groups != 1 or not _is_int(groups):
            raise EngineError(f"{fn}: groups={groups!r} is not supported by the packed engine (groups=1 only): keep "
                              f"this layer on the float simulation")
        _check_image(x, fn)
        in_channels = _positive_int(in_channels, "in_channels", fn)
        if x.shape[1] != in_channels:
            raise EngineError(f"{fn}: x has {x.shape[1]} channels but the layer has in_channels={in_channels}")
        self.kernel = _pair(kernel_size, "kernel_size", 1, fn)
        _check_packed(wp, "wp", fn, 4, "[O, KH, KW, ceil(C/64)]")
        expected = (self.kernel[0], self.kernel[1], _words(in_channels))
        if tuple(wp.shape[1:]) != expected or wp.shape[0] < 1:
            raise EngineError(f"{fn}: wp (the packed weight) of shape {tuple(wp.shape)} does not fit kernel_size="
                              f"{self.kernel} and in_channels={in_channels} (expected [O >= 1, {expected[0]}, "
                              f"{expected[1]}, {expected[2]}]): pack the layer's weight with pack_weight")
        self.out_channels = o = int(wp.shape[0])
        problem = conv_support(in_channels, o, self.kernel)
        if problem is not None:
            raise EngineError(f"{fn}: {problem}")
        self.stride = _pair(stride, "stride", 1, fn)
        self.dilation = _pair(dilation, "dilation", 1, fn)
        self.padding = _padding4(padding, fn)
        h, w = x.shape[2] + self.padding[0] + self.padding[1], x.shape[3] + self.padding[2] + self.padding[3]
        _kernel_fits(h, w, self.kernel, self.dilation, f"x padded by padding={self.padding}", fn)
        spans = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel)]
        self.out_size = ((h - spans[0]) // self.stride[0] + 1, (w - spans[1]) // self.stride[1] + 1)
        self._epilogue(x, in_channels, scale, bias, threshold, shortcut, rprelu, fn)
        r = pixel_shuffle
        if type(r) is not int or r < 1:
            raise EngineError(f"{fn}: pixel_shuffle must be a positive int (the upscale factor r), got {r!r}")
        if o % (r * r):
            raise EngineError(f"{fn}: pixel_shuffle={r} needs out_channels divisible by r^2 = {r * r}, got "
                              f"out_channels={o}: use a conv with a multiple of {r * r} output channels, or "
                              f"pixel_shuffle=1")
        self.pixel_shuffle = r

    def _epilogue(self, x: Tensor, in_channels: int, scale: Tensor, bias: Optional[Tensor],
                  threshold: Optional[Tensor], shortcut: str, rprelu: RPReLU, fn: str) -> None:
        _epilogue_args(self, in_channels, self.out_channels, scale, bias, threshold, shortcut, rprelu, fn)
        if self.shortcut_code and self.out_size != tuple(x.shape[2:]):
            raise EngineError(f"{fn}: a {shortcut} shortcut needs the output size {self.out_size} to equal the input "
                              f"size {tuple(x.shape[2:])}: use stride 1 and 'same' padding, or shortcut='none'")


def _epilogue_args(args: Any, n_in: int, n_out: int, scale: Tensor, bias: Optional[Tensor],
                   threshold: Optional[Tensor], shortcut: str, rprelu: RPReLU, fn: str) -> None:
    """The output pass's checked arguments onto ``args``: scale (required), bias, RSign
    threshold, RPReLU and the shortcut, per output (or input) channel."""
    args.scale = _vector(scale, n_out, "scale", fn)
    if args.scale is None:
        raise EngineError(f"{fn}: scale is required (one float per output channel), got None")
    args.bias = _vector(bias, n_out, "bias", fn)
    args.threshold = _vector(threshold, n_in, "threshold", fn)
    args.rprelu = _rprelu(rprelu, n_out, fn)
    args.shortcut = shortcut
    args.shortcut_code = _shortcut(shortcut, n_in, n_out, fn)


class _LinearArgs:
    """Validated arguments of a binarized linear layer."""

    def __init__(self, x: Tensor, wp: Tensor, in_features: int, scale: Tensor, bias: Optional[Tensor],
                 threshold: Optional[Tensor], shortcut: str, rprelu: RPReLU) -> None:
        fn = "binary_linear"
        _check_float_input(x, "x", fn)
        in_features = _positive_int(in_features, "in_features", fn)
        if x.dim() < 1 or x.shape[-1] != in_features:
            raise EngineError(f"{fn}: x must be [..., {in_features}], got shape {tuple(x.shape)}")
        _check_packed(wp, "wp", fn, 2, "[N, ceil(K/64)]")
        if wp.shape[1] != _words(in_features) or wp.shape[0] < 1:
            raise EngineError(f"{fn}: wp (the packed weight) of shape {tuple(wp.shape)} does not fit in_features="
                              f"{in_features} (expected [N >= 1, {_words(in_features)}]): pack the layer's weight "
                              f"with pack_weight")
        n = self.out_features = int(wp.shape[0])
        problem = linear_support(in_features, n)
        if problem is not None:
            raise EngineError(f"{fn}: {problem}")
        _epilogue_args(self, in_features, n, scale, bias, threshold, shortcut, rprelu, fn)


# ---------------------------------------------------------------------------------------
# Pure-PyTorch references (the float simulation; also the fallback)
# ---------------------------------------------------------------------------------------

_BIT_SHIFTS = torch.arange(64, dtype=torch.int64)


def _bits_to_words(bits: Tensor) -> Tensor:
    """bool [..., L] -> int64 [..., ceil(L / 64)] (bit i of word j = element 64 j + i)."""
    n = bits.shape[-1]
    pad = _words(n) * 64 - n
    b = F.pad(bits.to(torch.int64), (0, pad)).unflatten(-1, (-1, 64))
    return (b << _BIT_SHIFTS).sum(-1)  # disjoint bits: the sum is the OR (bit 63 wraps to the sign)


def _words_to_signs(words: Tensor, n: int) -> Tensor:
    """int64 [..., W] -> float32 [..., n] of +-1 (the first n lanes)."""
    bits = (words.unsqueeze(-1) >> _BIT_SHIFTS) & 1
    return torch.where(bits.flatten(-2)[..., :n].bool(), 1.0, -1.0).to(torch.float32)


def _signs(x: Tensor, threshold: Optional[Tensor], dim: int) -> Tensor:
    """+-1 floats: x - threshold >= 0 (threshold along ``dim``)."""
    if threshold is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x - threshold.view(shape)
    return torch.where(x >= 0, 1.0, -1.0).to(torch.float32)


def _epilogue(dot: Tensor, scale: Tensor, bias: Optional[Tensor], rprelu, dim: int) -> Tensor:
    shape = [1] * dot.dim()
    shape[dim] = -1
    y = dot * scale.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    if rprelu is not None:
        shift_in, slope, shift_out = (t.view(shape) for t in rprelu)
        t = y - shift_in
        t = torch.where(t >= 0, t, slope * t)
        y = t + shift_out
    return y


def _check_weight(w: Any, fn: str) -> None:
    _check_float_input(w, "w", fn)
    if w.dim() not in (2, 4) or w.shape[1] < 1:
        raise EngineError(f"{fn}: w must be a conv weight [O, C, KH, KW] or a linear weight [N, K] with C, K >= 1, "
                          f"got shape {tuple(w.shape)}")


def reference_pack_weight(w: Tensor) -> Tensor:
    """:func:`pack_weight` in PyTorch."""
    _check_weight(w, "pack_weight")
    if w.dim() == 4:
        return _bits_to_words(w.detach().permute(0, 2, 3, 1) >= 0)
    return _bits_to_words(w.detach() >= 0)


def unpack_weight(wp: Tensor, in_channels: int) -> Tensor:
    """The +-1 float32 weight packed in ``wp``: [O, KH, KW, CW] -> [O, C, KH, KW] (conv) or
    [N, CW] -> [N, K] (linear), with ``in_channels`` = C or K."""
    fn = "unpack_weight"
    _check_tensor(wp, "wp", fn)
    in_channels = _positive_int(in_channels, "in_channels", fn)
    if wp.dtype != torch.int64 or wp.dim() not in (2, 4) or wp.shape[-1] != _words(in_channels):
        raise EngineError(f"{fn}: wp must be int64 [O, KH, KW, CW] or [N, CW] with CW = ceil({in_channels} / 64) = "
                          f"{_words(in_channels)}, got {wp.dtype} {tuple(wp.shape)}")
    signs = _words_to_signs(wp, in_channels)
    return signs.permute(0, 3, 1, 2).contiguous() if wp.dim() == 4 else signs


def reference_pack_input(x: Tensor, threshold: Optional[Tensor] = None, padding: Padding = 0) -> Tensor:
    """:func:`pack_input` in PyTorch."""
    fn = "pack_input"
    _check_image(x, fn)
    threshold = _vector(threshold, x.shape[1], "threshold", fn)
    pt, pb, pl, pr = _padding4(padding, fn)
    bits = (_signs(x.detach(), threshold, 1) > 0).permute(0, 2, 3, 1)  # [N, H, W, C]
    bits = F.pad(bits.to(torch.uint8), (0, 0, pl, pr, pt, pb), value=1).bool()
    return _bits_to_words(bits)


def reference_conv_counts(xp: Tensor, wp: Tensor, in_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                          dilation: IntPair = 1) -> Tensor:
    """:func:`conv_counts` in PyTorch."""
    stride, dilation = _check_conv_counts(xp, wp, in_channels, kernel_size, stride, dilation)
    xs = _words_to_signs(xp, in_channels).permute(0, 3, 1, 2)
    dot = F.conv2d(xs, unpack_weight(wp, in_channels), stride=stride, dilation=dilation)
    return dot.round().to(torch.int32)


def reference_binary_conv2d(x: Tensor, wp: Tensor, *, in_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                            padding: Padding = 0, dilation: IntPair = 1, scale: Tensor, bias: Optional[Tensor] = None,
                            threshold: Optional[Tensor] = None, shortcut: str = "none", rprelu: RPReLU = None,
                            groups: int = 1, pixel_shuffle: int = 1) -> Tensor:
    """:func:`binary_conv2d` as the float simulation (``F.conv2d`` on +-1 tensors, then
    ``F.pixel_shuffle`` when ``pixel_shuffle > 1``)."""
    a = _ConvArgs(x, wp, in_channels, kernel_size, stride, padding, dilation, scale, bias, threshold, shortcut,
                  rprelu, groups, pixel_shuffle)
    with torch.no_grad():
        xb = _signs(x, a.threshold, 1)
        pt, pb, pl, pr = a.padding
        xb = F.pad(xb, (pl, pr, pt, pb), value=1.0)
        dot = F.conv2d(xb, unpack_weight(wp, in_channels), stride=a.stride, dilation=a.dilation)
        y = _epilogue(dot, a.scale, a.bias, a.rprelu, 1)
        if a.shortcut_code:
            y = y + channel_shortcut(x, shortcut, in_channels, a.out_channels, 1)
        if a.pixel_shuffle > 1:
            y = F.pixel_shuffle(y, a.pixel_shuffle)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        return y.contiguous(memory_format=fmt)


def reference_binary_linear(x: Tensor, wp: Tensor, *, in_features: int, scale: Tensor, bias: Optional[Tensor] = None,
                            threshold: Optional[Tensor] = None, shortcut: str = "none",
                            rprelu: RPReLU = None) -> Tensor:
    """:func:`binary_linear` as the float simulation (``F.linear`` on +-1 tensors)."""
    a = _LinearArgs(x, wp, in_features, scale, bias, threshold, shortcut, rprelu)
    with torch.no_grad():
        dot = F.linear(_signs(x, a.threshold, -1), unpack_weight(wp, in_features))
        y = _epilogue(dot, a.scale, a.bias, a.rprelu, -1)
        if a.shortcut_code:
            y = y + channel_shortcut(x, shortcut, in_features, a.out_features, -1)
        return y


# ---------------------------------------------------------------------------------------
# Public ops (native when available, else the reference)
# ---------------------------------------------------------------------------------------

def _detached(x: Tensor) -> Tensor:
    return x.detach() if x.requires_grad else x


def pack_weight(w: Tensor) -> Tensor:
    """Pack a float weight's signs (bit 1 where ``w >= 0``): a conv weight [O, C, KH, KW] ->
    int64 [O, KH, KW, ceil(C / 64)], a linear weight [N, K] -> int64 [N, ceil(K / 64)]."""
    if not available():
        return reference_pack_weight(w)
    _check_weight(w, "pack_weight")
    return _native("pack_weight", _ops().pack_weight, w.detach())


def pack_input(x: Tensor, threshold: Optional[Tensor] = None, padding: Padding = (0, 0, 0, 0)) -> Tensor:
    """Sign and pack a float input [N, C, H, W] (NCHW or channels_last) in one pass:
    bit = ``x - threshold[c] >= 0``, padded by ``padding`` ((top, bottom, left, right),
    (ph, pw) or an int) with +1 pixels -> int64 [N, H + pt + pb, W + pl + pr, ceil(C / 64)]."""
    if not available():
        return reference_pack_input(x, threshold, padding)
    fn = "pack_input"
    _check_image(x, fn)
    threshold = _vector(threshold, x.shape[1], "threshold", fn)
    return _native(fn, _ops().pack_input, x.detach(), threshold, list(_padding4(padding, fn)))


def _check_conv_counts(xp: Tensor, wp: Tensor, in_channels: int, kernel_size: IntPair, stride: IntPair,
                       dilation: IntPair) -> tuple[tuple[int, int], tuple[int, int]]:
    """Checks the arguments of conv_counts; returns (stride, dilation) as pairs."""
    fn = "conv_counts"
    _check_packed(xp, "xp", fn, 4, "[N, Hp, Wp, ceil(C/64)]")
    _check_packed(wp, "wp", fn, 4, "[O, KH, KW, ceil(C/64)]")
    in_channels = _positive_int(in_channels, "in_channels", fn)
    kh, kw = _pair(kernel_size, "kernel_size", 1, fn)
    cw = _words(in_channels)
    if tuple(wp.shape[1:]) != (kh, kw, cw) or xp.shape[3] != cw or wp.shape[0] < 1:
        raise EngineError(f"{fn}: xp {tuple(xp.shape)} / wp {tuple(wp.shape)} do not fit in_channels={in_channels}, "
                          f"kernel_size={(kh, kw)} (expected {cw} words per pixel and wp [O >= 1, {kh}, {kw}, {cw}])")
    problem = conv_support(in_channels, int(wp.shape[0]), (kh, kw))
    if problem is not None:
        raise EngineError(f"{fn}: {problem}")
    stride, dilation = _pair(stride, "stride", 1, fn), _pair(dilation, "dilation", 1, fn)
    _kernel_fits(xp.shape[1], xp.shape[2], (kh, kw), dilation, "xp (the padded input)", fn)
    return stride, dilation


def conv_counts(xp: Tensor, wp: Tensor, in_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                dilation: IntPair = 1) -> Tensor:
    """The exact dot products of a packed input (from :func:`pack_input`, padding included)
    with a packed weight: int32 [N, O, Ho, Wo] equal to ``conv2d(sign(pad(x)), sign(w))``."""
    if not available():
        return reference_conv_counts(xp, wp, in_channels, kernel_size, stride, dilation)
    stride, dilation = _check_conv_counts(xp, wp, in_channels, kernel_size, stride, dilation)
    return _native("conv_counts", _ops().conv_counts, xp, wp, in_channels, list(stride), list(dilation))


def binary_conv2d(x: Tensor, wp: Tensor, *, in_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                  padding: Padding = 0, dilation: IntPair = 1, scale: Tensor, bias: Optional[Tensor] = None,
                  threshold: Optional[Tensor] = None, shortcut: str = "none", rprelu: RPReLU = None,
                  groups: int = 1, pixel_shuffle: int = 1) -> Tensor:
    """A binarized conv (see the module docstring for the exact semantics), fused: sign and
    pack, XOR-popcount conv, ``scale * dot + bias``, optional RPReLU, real shortcut, optional
    pixel shuffle.

    Args:
        x: float32 [N, C, H, W], NCHW contiguous or channels_last (the output keeps it).
        wp: the packed weight [O, KH, KW, ceil(C / 64)] (:func:`pack_weight`).
        in_channels, kernel_size: the layer's C and (KH, KW) (checked against ``x`` and ``wp``).
        stride, dilation: int or pair. padding: int, (ph, pw) or (top, bottom, left, right);
            padding pixels are +1.
        scale: [O] per-output-channel scale. bias: [O] or None.
        threshold: [C] per-input-channel sign threshold (RSign) or None (0).
        shortcut: ``none`` | ``identity`` | ``repeat`` | ``mean`` (output size == input size).
        rprelu: None or (shift_in, slope, shift_out), each [O].
        groups: must be 1.
        pixel_shuffle: upscale factor r >= 1 (O divisible by r^2): return
            ``F.pixel_shuffle(y, r)`` of the output ``y`` above (scale, bias, RPReLU and shortcut
            stay on the conv's O channels), written directly in that layout (no [N, O, Ho, Wo]
            intermediate): ``out[n, c, h * r + i, w * r + j] = y[n, c * r * r + i * r + j, h, w]``.

    Returns:
        float32 [N, O, Ho, Wo], or [N, O / r^2, Ho * r, Wo * r] with ``pixel_shuffle=r``.
    """
    a = _ConvArgs(x, wp, in_channels, kernel_size, stride, padding, dilation, scale, bias, threshold, shortcut,
                  rprelu, groups, pixel_shuffle)
    if not available():
        return reference_binary_conv2d(x, wp, in_channels=in_channels, kernel_size=kernel_size, stride=stride,
                                       padding=padding, dilation=dilation, scale=scale, bias=bias,
                                       threshold=threshold, shortcut=shortcut, rprelu=rprelu, groups=groups,
                                       pixel_shuffle=pixel_shuffle)
    rp = a.rprelu or (None, None, None)
    return _native("binary_conv2d", _ops().binary_conv2d, _detached(x), wp, in_channels, list(a.stride),
                   list(a.padding), list(a.dilation), a.scale, a.bias, a.threshold, a.shortcut_code, *rp,
                   a.pixel_shuffle)


def binary_linear(x: Tensor, wp: Tensor, *, in_features: int, scale: Tensor, bias: Optional[Tensor] = None,
                  threshold: Optional[Tensor] = None, shortcut: str = "none", rprelu: RPReLU = None) -> Tensor:
    """A binarized linear layer on the last dimension of ``x`` [..., K] -> [..., N], fused
    like :func:`binary_conv2d` (packed GEMM; ``wp`` [N, ceil(K / 64)] from :func:`pack_weight`;
    ``threshold`` [K]; ``scale``, ``bias``, ``rprelu`` [N]; shortcut on the last dimension)."""
    a = _LinearArgs(x, wp, in_features, scale, bias, threshold, shortcut, rprelu)
    if not available():
        return reference_binary_linear(x, wp, in_features=in_features, scale=scale, bias=bias, threshold=threshold,
                                       shortcut=shortcut, rprelu=rprelu)
    rp = a.rprelu or (None, None, None)
    return _native("binary_linear", _ops().binary_linear, _detached(x), wp, in_features, a.scale, a.bias,
                   a.threshold, a.shortcut_code, *rp)


def xor_popcount_roofline(words: int = 512, repeats: int = 20000) -> float:
    """Debug: the XOR + popcount throughput of the current ISA and thread count in word
    operations per second (a tight loop on L1-resident data: one operand streamed, four held in
    registers, as in the conv's inner loop). Needs the native extension."""
    import time

    fn = "xor_popcount_roofline"
    words, repeats = _positive_int(words, "words", fn), _positive_int(repeats, "repeats", fn)
    if not available():
        raise EngineError(f"{fn} needs the native extension ({_UNAVAILABLE})")
    words = max(8, words // 8 * 8)
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**62), 2**62, (words,), dtype=torch.int64, generator=gen)
    w = torch.randint(-(2**62), 2**62, (32,), dtype=torch.int64, generator=gen)
    _native(fn, _ops().xor_popcount_roofline, a, w, max(1, repeats // 10))  # warm up
    start = time.perf_counter()
    _native(fn, _ops().xor_popcount_roofline, a, w, repeats)
    seconds = time.perf_counter() - start
    return torch.get_num_threads() * repeats * words * 4 / seconds
