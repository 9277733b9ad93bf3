"""The full-precision parts of an engine network in low precision: bf16 or int8 through oneDNN.

A binarized SR network keeps its head, ``conv_after_body``, upsampler and tail convs full
precision; on the packed engine they take most of the time (benchmarks/results/engine_network).
:func:`lower_fp_parts` runs them through oneDNN as PyTorch ships it, no kernels of ours:

* ``bf16``: the weights in bfloat16, ``F.conv2d`` on bfloat16 channels_last tensors (oneDNN's
  AVX512_BF16 / AMX kernels); fp32 accumulation.
* ``int8``: weights int8 per output channel (symmetric), activations uint8 per tensor
  (asymmetric, calibrated by :func:`calibrate_fp_parts` on a few images, as plain numbers a
  packed file can store), ``torch.ops.onednn.qconv_pointwise`` (the oneDNN kernel PyTorch's x86
  int8 path lowers to; AMX / AVX512-VNNI / AVX2), fp32 bias and output. Weights take 7 bits
  where the kernels lack VNNI (:func:`int8_weight_levels`); a conv fed fp32 with too little work
  to pay for quantizing its input runs in bf16 instead (:data:`MIN_INT8_WORK`).

Each lowered conv takes and gives fp32 tensors, except where its output only feeds other lowered
convs through value-preserving ops (the ``conv -> PixelShuffle -> conv`` chains of an
upsampler, also inside a banded upsampler): there it hands over its low-precision output (bf16,
or uint8 quantized with the next conv's input parameters), measured 1.8-2.4x faster for the
large upsampler convs than converting back to fp32 and again. Binarized layers, packed engine
modules and convs with fewer than ``min_in_channels`` inputs (the first conv on RGB: faster in
fp32, and it reads the raw image) are left alone; so are convs with a non-zero padding mode or
string padding.

:func:`fp_parts_support` says, from explicit checks of the CPU, oneDNN's ISA cap and torch's
build, whether a precision can run here; :func:`require_fp_parts` turns a no into a
:class:`~bsr_plugin.errors.ConfigError` naming the fp32 fallback.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...conversion.dataflow import DataflowGraph, Node, default_probe, record_dataflow
from ...core.registry import is_binary
from ...core.replace import replace_modules
from ...errors import ConfigError

logger = logging.getLogger(__name__)

FP_PARTS = ("fp32", "bf16", "int8")
FALLBACK = "fp32"
MIN_IN_CHANNELS = 16
"""Convs with fewer input channels stay fp32 (an SR network's first conv on the RGB image:
3 -> 64 at 320x180 took 3.5 ms in fp32 against 7-9 ms in bf16 or int8, one thread)."""
MIN_INT8_WORK = 64 * 9
"""In int8, a conv whose input arrives in fp32 (not from a chained int8 conv) runs in int8 only
with at least this many multiply-adds per input value (``out_channels * kh * kw / groups``);
below it, quantizing the input costs more than the conv saves and it runs in bf16 (fp32 where
bf16 cannot run). Measured, one thread: a 64 -> 3 conv on an fp32 64 x 130 x 1280 input took
162 ms in int8 against 102 ms in fp32 and 52 ms in bf16; a 64 -> 64 one at 320x180 35 ms in
int8 against 43 ms in bf16 and 83 ms in fp32."""

# oneDNN's CPU ISA names, lowest first (ONEDNN_MAX_CPU_ISA caps the kernels to one of them).
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
                "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
_BF16_ISA, _INT8_ISA = "AVX512_CORE_BF16", "AVX2"
# Ops a chained low-precision tensor may pass through between two lowered convs: they move
# values without computing on them, so bf16 / uint8 values (and their quantization) stay valid.
PASS_OPS = frozenset({"pixel_shuffle", "__getitem__", "contiguous", "narrow"})


# ---------------------------------------------------------------------------------------
# What this machine can run
# ---------------------------------------------------------------------------------------

def onednn_isa_cap() -> Optional[str]:
    """The ISA that ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) caps oneDNN to, upper case;
    ``None`` when unset or ``ALL``/``DEFAULT``."""
    value = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return None if value in ("", "ALL", "DEFAULT") else value


def _cap_below(isa: str) -> Optional[str]:
    """The oneDNN ISA cap when it is below ``isa`` (an unknown cap name counts as below)."""
    cap = onednn_isa_cap()
    if cap is None:
        return None
    if cap in _ONEDNN_ISAS and _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa):
        return None
    return cap


def _cpu_flags() -> dict[str, Any]:
    """The CPU's features as torch's cpuinfo reads them (``{}`` where torch cannot say)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return dict(get()) if callable(get) else {}


def fp_parts_support(precision: str) -> Optional[str]:
    """``None`` when the full-precision parts can run in ``precision`` (one of
    :data:`FP_PARTS`) here, else the reason, from explicit checks (no trial run)."""
    if precision not in FP_PARTS:
        return f"unknown precision {precision!r} (one of {', '.join(FP_PARTS)})"
    if precision == "fp32":
        return None
    if not torch.backends.mkldnn.is_available():
        return "this torch is built without oneDNN (mkldnn)"
    flags = _cpu_flags()
    if precision == "bf16":
        if not (flags.get("avx512_bf16") or flags.get("amx_bf16")):
            return "this CPU has no AVX512_BF16 or AMX-BF16 (bf16 convolutions would be emulated, slower than fp32)"
        cap = _cap_below(_BF16_ISA)
        if cap is not None:
            return f"oneDNN is capped at {cap} by ONEDNN_MAX_CPU_ISA (native bf16 needs {_BF16_ISA} or above)"
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "torch's oneDNN reports no bf16 support"
        return None
    if "onednn" not in torch.backends.quantized.supported_engines or not hasattr(torch.ops.onednn, "qconv_pointwise"):
        return "torch has no x86/onednn quantized engine (torch.ops.onednn.qconv_pointwise)"
    if not flags.get("avx2"):
        return "this CPU has no AVX2 (oneDNN's int8 convolutions need AVX2 or above)"
    cap = _cap_below(_INT8_ISA)
    if cap is not None:
        return f"oneDNN is capped at {cap} by ONEDNN_MAX_CPU_ISA (int8 needs {_INT8_ISA} or above)"
    return None


def require_fp_parts(precision: str) -> None:
    """Raise :class:`ConfigError` when ``precision`` cannot run here, naming the reason and the
    fp32 fallback."""
    reason = fp_parts_support(precision)
    if reason is not None:
        raise ConfigError(f"full-precision parts in {precision}: {reason}; run them in {FALLBACK} instead "
                          f"(fp_parts={FALLBACK!r}, or --fp-parts {FALLBACK})")


def int8_weight_levels() -> int:
    """The int8 weight range the convs here use: 127 where oneDNN's int8 kernels have VNNI (or
    AMX), 63 where they do not (AVX2, AVX-512 without VNNI, or ``ONEDNN_MAX_CPU_ISA`` below
    them): there ``vpmaddubsw`` sums two uint8 x int8 products in 16 bits, which saturates for
    7-bit-plus weights (measured: 11 % error on a 64 -> 64 conv under ``ONEDNN_MAX_CPU_ISA=AVX2``)."""
    flags, cap = _cpu_flags(), onednn_isa_cap()
    avx512_vnni = bool(flags.get("avx512_vnni") or flags.get("amx_int8"))
    if cap is None:
        vnni = avx512_vnni or bool(flags.get("avx_vnni"))
    elif cap in ("AVX2_VNNI", "AVX2_VNNI_2"):
        vnni = bool(flags.get("avx_vnni"))
    else:
        vnni = cap in _ONEDNN_ISAS and _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index("AVX512_CORE_VNNI") and avx512_vnni
    return 127 if vnni else 63


def default_fp_parts(calibration: Optional[dict[str, dict]] = None) -> str:
    """The fastest precision that can run here: ``int8`` when a calibration is at hand, else
    ``bf16``, else ``fp32`` (the order measured in benchmarks/engine_network.py)."""
    for precision in ("int8", "bf16"):
        if (precision != "int8" or calibration) and fp_parts_support(precision) is None:
            return precision
    return FALLBACK


# ---------------------------------------------------------------------------------------
# Quantization arithmetic (the definitions the tests check against)
# ---------------------------------------------------------------------------------------

def activation_qparams(low: float, high: float) -> tuple[float, int]:
    """uint8 affine parameters ``(scale, zero_point)`` covering ``[low, high]`` (and 0)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255.0
    if not math.isfinite(scale) or scale <= 0.0:
        return 1.0, 0
    return scale, int(min(max(round(-low / scale), 0), 255))


def quantize_activation(x: Tensor, scale: float, zero_point: int) -> Tensor:
    """``uint8(clamp(floor(zero_point + 0.5 + x / scale), 0, 255))``, in ``x``'s memory format: one
    multiply-add pass, an in-place clamp and the conversion (1.6x faster than multiply, add,
    clamp, convert; ``torch.quantize_per_tensor`` is deprecated)."""
    offset = torch.tensor(zero_point + 0.5, dtype=x.dtype)
    return torch.add(offset, x, alpha=1.0 / scale).clamp_(0, 255).to(torch.uint8)


def quantize_weight(weight: Tensor, levels: int = 127) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel in ``[-levels, levels]``: ``(int8 weight, fp32 scale
    [O])`` with ``weight ~= q * scale[o]`` (an all-zero channel gets scale 1)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=tuple(range(1, w.dim()))) / float(levels)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale.view(-1, *[1] * (w.dim() - 1))).clamp_(-levels, levels).to(torch.int8)
    return q, scale


# ---------------------------------------------------------------------------------------
# Lowered convs
# ---------------------------------------------------------------------------------------

class _LowpConv2d(nn.Module):
    """The geometry of the ``nn.Conv2d`` it replaces (the attributes banding reads)."""

    def __init__(self, conv: nn.Conv2d, chained: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding, self.groups = conv.padding, conv.groups
        self.chained = chained  # True: hands its low-precision output to the next lowered conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, chained={self.chained}")


class Bf16Conv2d(_LowpConv2d):
    """An ``nn.Conv2d`` run in bfloat16 by oneDNN: bf16 weight and bias (channels_last),
    input cast to bf16 unless it already is; fp32 output unless ``chained``."""

    weight: Tensor
    bias: Optional[Tensor]

    def __init__(self, conv: nn.Conv2d, chained: bool = False) -> None:
        super().__init__(conv, chained)
        w = conv.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        self.register_buffer("weight", w)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.bfloat16:
            x = x.to(torch.bfloat16)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y if self.chained else y.float()


class Int8Conv2d(_LowpConv2d):
    """An ``nn.Conv2d`` run in int8 by oneDNN (``onednn::qconv_pointwise``): int8 weight per
    output channel (7 bits where the kernels lack VNNI: :func:`int8_weight_levels`), uint8
    input with the calibrated ``(in_scale, in_zero_point)`` (an fp32 input is quantized with
    :func:`quantize_activation`; a uint8 one comes quantized so by the lowered conv before it),
    fp32 bias; output fp32, or uint8 with ``out_qparams`` when chained."""

    weight: Tensor
    weight_scale: Tensor
    bias: Optional[Tensor]

    def __init__(self, conv: nn.Conv2d, in_qparams: tuple[float, int],
                 out_qparams: Optional[tuple[float, int]] = None) -> None:
        super().__init__(conv, out_qparams is not None)
        q, scale = quantize_weight(conv.weight, int8_weight_levels())
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.in_scale, self.in_zero_point = float(in_qparams[0]), int(in_qparams[1])
        self.out_scale, self.out_zero_point = (1.0, 0) if out_qparams is None else (float(out_qparams[0]),
                                                                                    int(out_qparams[1]))
        self._packed: Optional[Tensor] = None  # oneDNN's prepacked weight, made on first use

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # an opaque oneDNN tensor: not copyable, remade on first use
        return state

    def _weight_packed(self) -> Tensor:
        if self._packed is None:
            self._packed = torch.ops.onednn.qconv_prepack(
                self.weight.contiguous(memory_format=torch.channels_last), self.weight_scale, self.in_scale,
                self.in_zero_point, list(self.stride), list(self.padding), list(self.dilation), self.groups, None)
        return self._packed

    def forward(self, x: Tensor) -> Tensor:
        q = x if x.dtype == torch.uint8 else quantize_activation(x, self.in_scale, self.in_zero_point)
        zero_points = torch.zeros(self.out_channels, dtype=torch.int64)
        return torch.ops.onednn.qconv_pointwise(
            q, self.in_scale, self.in_zero_point, self._weight_packed(), self.weight_scale, zero_points, self.bias,
            list(self.stride), list(self.padding), list(self.dilation), self.groups, self.out_scale,
            self.out_zero_point, None if self.chained else torch.float32, "none", [], "")

    def extra_repr(self) -> str:
        out = f"uint8 out ({self.out_scale:.4g}, {self.out_zero_point})" if self.chained else "fp32 out"
        return super().extra_repr() + f", in=({self.in_scale:.4g}, {self.in_zero_point}), {out}"


def is_lowered(module: nn.Module) -> bool:
    """True for a conv that :func:`lower_fp_parts` put in low precision."""
    return isinstance(module, _LowpConv2d)


# ---------------------------------------------------------------------------------------
# Which convs, and which hand over low precision
# ---------------------------------------------------------------------------------------

def lowerable_convs(model: nn.Module, min_in_channels: int = MIN_IN_CHANNELS) -> list[tuple[str, nn.Conv2d]]:
    """``(name, conv)`` of every full-precision ``nn.Conv2d`` of ``model`` that
    :func:`lower_fp_parts` lowers (not binarized, zero padding given as numbers, at least
    ``min_in_channels`` inputs), in definition order."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or is_binary(module):
            continue
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            logger.debug("fp parts: %s stays fp32 (padding %s / %r)", name, module.padding_mode, module.padding)
        elif module.in_channels >= min_in_channels:
            found.append((name, module))
    return found


def _end_users(graph: DataflowGraph, node: Node) -> Optional[set[str]]:
    """The modules that read ``node``'s output through :data:`PASS_OPS` only (``None`` when
    anything else reads it, or nothing: the network's output)."""
    ends: set[str] = set()
    stack = list(node.users)
    if not stack:
        return None
    while stack:
        user = graph.nodes[stack.pop()]
        if user.kind == "module":
            ends.add(user.target)
        elif user.kind == "op" and user.target in PASS_OPS and user.users:
            stack.extend(user.users)
        else:
            return None
    return ends


def _probe(model: nn.Module) -> DataflowGraph:
    """One probe pass of the dataflow recorder, on a channels_last input for a channels_last
    network (eval mode)."""
    x = default_probe(model)
    first = next((p for p in model.parameters() if p.dim() == 4), None)
    if first is not None and first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)
    return record_dataflow(model, x, train=False)


def chain_consumers(graph: DataflowGraph, names: Iterable[str]) -> dict[str, str]:
    """``{producer: consumer}`` for lowered convs (``names``) whose every call's output goes
    only to the one lowered conv ``consumer`` (through :data:`PASS_OPS`)."""
    wanted = set(names)
    ends: dict[str, Optional[set[str]]] = {}
    for node in graph.nodes:
        if node.kind != "module" or node.target not in wanted:
            continue
        users = _end_users(graph, node)
        known = ends.get(node.target, users)
        ends[node.target] = users if users is not None and known == users else None
    return {name: next(iter(users)) for name, users in ends.items()
            if users is not None and len(users) == 1 and users <= wanted}


def _int8_work(conv: nn.Conv2d) -> int:
    return conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups


def int8_plan(graph: DataflowGraph, convs: dict[str, nn.Conv2d],
              min_work: int = MIN_INT8_WORK) -> tuple[set[str], dict[str, str]]:
    """Which of ``convs`` run in int8 (fed by a chained int8 conv, or at least ``min_work``
    multiply-adds per input value: :data:`MIN_INT8_WORK`) and the chains among them."""
    int8 = set(convs)
    while True:  # dropping a conv can unfeed its consumer: repeat until nothing changes
        chains = chain_consumers(graph, int8)
        fed = set(chains.values())
        keep = {n for n in int8 if n in fed or _int8_work(convs[n]) >= min_work}
        if keep == int8:
            return int8, chains
        int8 = keep


def _execution_order(graph: DataflowGraph, names: Iterable[str]) -> list[str]:
    """``names`` in the order they first ran in the probe pass (those that never ran last)."""
    ran = [n for n in graph.executed_modules() if n in set(names)]
    return ran + [n for n in names if n not in ran]


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------

def _layer_entry(index: int, conv: nn.Conv2d, low: float, high: float) -> dict[str, Any]:
    scale, zero_point = activation_qparams(low, high)
    return {"index": index, "in_channels": conv.in_channels, "out_channels": conv.out_channels,
            "kernel_size": list(conv.kernel_size), "min": low, "max": high, "scale": scale,
            "zero_point": zero_point}


@torch.no_grad()
def calibrate_fp_parts(model: nn.Module, images: Iterable[Tensor], *,
                       min_in_channels: int = MIN_IN_CHANNELS) -> dict[str, dict]:
    """Activation quantization parameters of every conv :func:`lower_fp_parts` lowers: run
    ``model`` (its full-precision parts still fp32) on each image ([C, H, W] or [N, C, H, W])
    and take the min and max of each conv's input over all of them.

    Returns:
        ``{conv name: {"index", "in_channels", "out_channels", "kernel_size", "min", "max",
        "scale", "zero_point"}}``: plain numbers (JSON), the same for the same images;
        ``index`` is the order in which the convs first ran (it matches the layers of the same
        network in another form, e.g. banded).

    Raises:
        ConfigError: no image, or a conv that never ran.
    """
    convs = dict(lowerable_convs(model, min_in_channels))
    ranges: dict[str, list[float]] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            low, high = ranges.setdefault(name, [math.inf, -math.inf])
            ranges[name] = [min(low, float(x.min())), max(high, float(x.max()))]
        return record

    handles = [conv.register_forward_pre_hook(hook(name)) for name, conv in convs.items()]
    model.eval()
    count = 0
    try:
        for image in images:
            model(image.unsqueeze(0) if image.dim() == 3 else image)
            count += 1
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise ConfigError("calibrate_fp_parts: no image given; pass a few images of the kind the network will see")
    silent = sorted(set(convs) - set(ranges))
    if silent:
        raise ConfigError(f"calibrate_fp_parts: {', '.join(silent)} never ran on the calibration images, so they "
                          "cannot be quantized; calibrate on inputs that reach every layer")
    return {name: _layer_entry(i, convs[name], *ranges[name]) for i, name in enumerate(ranges)}


def _entry_fits(entry: dict, conv: nn.Conv2d) -> bool:
    return (entry.get("in_channels"), entry.get("out_channels"), list(entry.get("kernel_size", []))) == (
        conv.in_channels, conv.out_channels, list(conv.kernel_size))


def _qparams_for(convs: dict[str, nn.Conv2d], order: list[str],
                 calibration: Optional[dict[str, dict]]) -> dict[str, tuple[float, int]]:
    """Each conv's input ``(scale, zero_point)`` from ``calibration``, by name, or else by the
    order the convs ran in (the same network in another form)."""
    if not calibration:
        raise ConfigError("int8 full-precision parts need activation ranges: pass calibration="
                          "calibrate_fp_parts(model, images), or use fp_parts 'bf16' / 'fp32'")
    if all(n in calibration and _entry_fits(calibration[n], c) for n, c in convs.items()):
        return {n: (float(calibration[n]["scale"]), int(calibration[n]["zero_point"])) for n in convs}
    entries = sorted(calibration.values(), key=lambda e: e.get("index", 0))
    if len(entries) == len(order) and all(_entry_fits(e, convs[n]) for e, n in zip(entries, order)):
        logger.debug("fp parts: calibration matched by execution order")
        return {n: (float(e["scale"]), int(e["zero_point"])) for e, n in zip(entries, order)}
    missing = sorted(set(convs) - set(calibration))
    raise ConfigError(f"the int8 calibration does not fit this network ({len(calibration)} entries for "
                      f"{len(convs)} convs; not found: {', '.join(missing[:4]) or 'none'}, or their shapes differ): "
                      "calibrate this network with calibrate_fp_parts(model, images)")


# ---------------------------------------------------------------------------------------
# Lowering
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def lower_fp_parts(model: nn.Module, precision: str, calibration: Optional[dict[str, dict]] = None, *,
                   min_in_channels: int = MIN_IN_CHANNELS, chain: bool = True,
                   min_int8_work: int = MIN_INT8_WORK) -> nn.Module:
    """Run the full-precision convs of ``model`` (in place, for inference) in ``precision``
    (module docstring): ``fp32`` leaves it as it is; ``bf16``; ``int8`` with ``calibration``
    from :func:`calibrate_fp_parts` (a conv that int8 would not speed up, with fewer than
    ``min_int8_work`` multiply-adds per fp32 input value, :data:`MIN_INT8_WORK`, runs in bf16, or
    fp32 where bf16 cannot run; 0: every conv in int8). ``chain=False``: every lowered conv
    gives fp32.

    Returns ``model`` (``model.bsr_fp_parts`` says the precision).

    Raises:
        ConfigError: ``precision`` cannot run here (the fp32 fallback named), or int8 without
            a calibration that fits the network.
    """
    require_fp_parts(precision)
    model.eval()
    convs = dict(lowerable_convs(model, min_in_channels))
    if precision == FALLBACK or not convs:
        model.bsr_fp_parts = precision
        return model
    graph = _probe(model)
    if precision == "int8":
        qparams = _qparams_for(convs, _execution_order(graph, convs), calibration)
        int8, chains = int8_plan(graph, convs, min_int8_work) if chain else (set(convs), {})
    else:
        int8, chains = set(), chain_consumers(graph, convs) if chain else {}
    others = None if precision == "int8" and fp_parts_support("bf16") is not None else Bf16Conv2d

    def decide(name: str, module: nn.Module) -> Optional[nn.Module]:
        if convs.get(name) is not module:
            return None
        if name in int8:
            after = chains.get(name)
            return Int8Conv2d(module, qparams[name], qparams[after] if after else None)
        return None if others is None else others(module, chained=name in chains)

    model = replace_modules(model, decide)
    model.bsr_fp_parts = precision
    logger.info("fp parts in %s: %s", precision, "; ".join(
        f"{n} {'int8' if n in int8 else 'fp32' if others is None else 'bf16'}{' (hands over)' if n in chains else ''}"
        for n in convs))
    return model
