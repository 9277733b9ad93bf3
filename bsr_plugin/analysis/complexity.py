"""``summary(model, input_size)``: an honest complexity report for binarized networks.

Generic counters (thop, ptflops, fvcore) see a :class:`~bsr_plugin.BinaryConv2d` as a float
conv, so a binarized network reports as many FLOPs as the float one (or more, counting the
sign). This counter separates the two kinds of arithmetic and storage:

* **Parameters**: full-precision (FP) parameters and binary parameters. A binarized layer
  holds ``weight.numel()`` binary parameters (its 1-bit weights) and FP parameters for its
  bias and learned scale; every other parameter is FP (kept convs, PReLU slopes, ...).
  ``params = FP params + binary params / 32``.
* **Storage bits**: 1 bit per binary weight, 32 bits per everything else that a deployed
  network stores (FP parameters and buffers; the flip-ratio record ``sign_ref`` is training
  state and is not counted). The compression ratio is the float network's fp32 bits (every
  binarized layer back to its fp32 weight and bias) over this network's bits.
* **MACs**, from one forward pass at the given input size (batch 1): every conv and linear
  call, ``out_h * out_w * out_ch * in_ch / groups * kh * kw`` for a conv, ``out_features *
  in_features`` per token for a linear. A call inside a binarized layer with 1-bit weights
  and 1-bit activations is a binary MAC (an XNOR-popcount lane), every other one an FP MAC.
  Element-wise work (activations, the sign, shortcut additions, PixelShuffle) and matrix
  products outside conv/linear calls (attention) are not counted, as in the convention.
* **OPs** under a named convention: ``bireal64`` (default; Bi-Real, ReActNet, BBCU):
  ``FP MACs + binary MACs / 64``; ``xnor8`` (XNOR-Net's bit-operation count):
  ``FP MACs + binary MACs / 8``.

The forward pass runs on a copy of the network on PyTorch's ``meta`` device (shapes only,
no arithmetic), so counting a 320x180 input costs milliseconds; a network whose forward pass
needs real values (data-dependent Python) is counted with a real forward pass instead.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..core.layers import TRAINING_BUFFERS
from ..core.registry import is_binary
from ..core.tracer import WEIGHT_OPS, CallTracer, TraceListener, operands, trace
from ..errors import ConfigError

logger = logging.getLogger(__name__)

CONVENTIONS = {"bireal64": 64, "xnor8": 8}
"""OPs = FP MACs + binary MACs / divisor, by convention name."""



def convention_divisor(convention: str) -> int:
    """The divisor of binary MACs in OPs for ``convention``; a clear error for an unknown name."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown OPs convention {convention!r}; choose one of {sorted(CONVENTIONS)} "
                         "(bireal64: binary MACs / 64, xnor8: binary MACs / 8)")
    return CONVENTIONS[convention]


@dataclass
class LayerSummary:
    """Counts for one module that holds parameters or runs a conv/linear call.

    ``float_params`` is what the float layer it stands for holds (a binarized layer without
    its scale); ``buffers`` counts stored buffer elements (e.g. BatchNorm statistics).
    """

    name: str
    type: str
    binary: bool = False
    fp_params: int = 0
    binary_params: int = 0
    buffers: int = 0
    float_params: int = 0
    fp_macs: int = 0
    binary_macs: int = 0
    calls: int = 0

    @property
    def storage_bits(self) -> int:
        return 32 * (self.fp_params + self.buffers) + self.binary_params

    @property
    def float_bits(self) -> int:
        return 32 * (self.float_params + self.buffers)

    def ops(self, convention: str = "bireal64") -> float:
        return self.fp_macs + self.binary_macs / convention_divisor(convention)


@dataclass
class ModelSummary:
    """Result of :func:`summary`: per-layer rows and totals. ``str()`` is a table."""

    layers: list[LayerSummary]
    input_size: tuple[int, ...]
    convention: str = "bireal64"
    notes: list[str] = field(default_factory=list)

    def _total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.layers)

    fp_params = property(lambda self: self._total("fp_params"))

    binary_params = property(lambda self: self._total("binary_params"))

    buffers = property(lambda self: self._total("buffers"))

    @property
    def params(self) -> float:
        """FP params + binary params / 32 (method.md, "Evaluation and counting")."""
        return self.fp_params + self.binary_params / 32

    float_params = property(lambda self: self._total("float_params"),
                            doc="Parameters of the float network (every binarized layer back to float, no scales).")

    fp_macs = property(lambda self: self._total("fp_macs"))

    binary_macs = property(lambda self: self._total("binary_macs"))

    def ops(self, convention: Optional[str] = None) -> float:
        """FP MACs + binary MACs / divisor under ``convention`` (default: this summary's)."""
        return self.fp_macs + self.binary_macs / convention_divisor(convention or self.convention)

    @property
    def float_macs(self) -> int:
        """MACs of the float network: every MAC at full precision."""
        return self.fp_macs + self.binary_macs

    @property
    def storage_bits(self) -> int:
        return self._total("storage_bits")

    @property
    def float_bits(self) -> int:
        return self._total("float_bits")

    @property
    def compression(self) -> float:
        """Float network's fp32 bits / this network's storage bits."""
        return self.float_bits / self.storage_bits if self.storage_bits else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON-safe) dict: rows and totals."""
        return {
            "input_size": list(self.input_size), "convention": self.convention,
            "layers": [dict(asdict(r), storage_bits=r.storage_bits) for r in self.layers],
            "totals": {
                "fp_params": self.fp_params, "binary_params": self.binary_params, "buffers": self.buffers,
                "params": self.params, "float_params": self.float_params, "fp_macs": self.fp_macs,
                "binary_macs": self.binary_macs, "ops": self.ops(), "float_macs": self.float_macs,
                "storage_bits": self.storage_bits, "float_bits": self.float_bits, "compression": self.compression,
            },
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        div = convention_divisor(self.convention)
        head = ("layer", "type", "bin", "FP params", "bin params", "storage bits", "FP MACs", "bin MACs", "OPs")
        rows = [(r.name or "<root>", r.type, "yes" if r.binary else "", f"{r.fp_params:,}", f"{r.binary_params:,}",
                 f"{r.storage_bits:,}", f"{r.fp_macs:,}", f"{r.binary_macs:,}", f"{r.ops(self.convention):,.0f}")
                for r in self.layers]
        total = ("total", "", "", f"{self.fp_params:,}", f"{self.binary_params:,}", f"{self.storage_bits:,}",
                 f"{self.fp_macs:,}", f"{self.binary_macs:,}", f"{self.ops():,.0f}")
        widths = [max(len(x[i]) for x in [head, total] + rows) for i in range(len(head))]

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(fmt(head))
        shape = "x".join(str(s) for s in self.input_size)
        lines = [fmt(head), rule] + [fmt(r) for r in rows] + [rule, fmt(total), ""]
        lines += [
            f"input {shape} (batch 1)",
            f"params: {self.params:,.0f} = FP {self.fp_params:,} + binary {self.binary_params:,} / 32"
            + (f" (+ {self.buffers:,} buffer elements)" if self.buffers else ""),
            f"OPs ({self.convention}): {self.ops() / 1e9:,.3f} G = FP MACs {self.fp_macs / 1e9:,.3f} G + "
            f"binary MACs {self.binary_macs / 1e9:,.3f} G / {div}  (float network: {self.float_macs / 1e9:,.3f} GMACs)",
            f"storage: {self.storage_bits / 8 / 2**20:,.3f} MiB (1 bit per binary weight, 32 bits otherwise); "
            f"float network fp32: {self.float_bits / 8 / 2**20:,.3f} MiB; compression {self.compression:.2f}x",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class _MacCounter(TraceListener):
    """Counts every conv/linear call's MACs, attributed to the innermost running module."""

    def __init__(self) -> None:
        self.macs: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def call(self, tracer: CallTracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        kind = WEIGHT_OPS.get(func)
        if kind is None:
            return
        x, w = operands(args, kwargs)
        if kind == "conv":  # weight (out, in/groups, *k): each output element costs in/groups * k MACs
            macs = out.numel() * math.prod(w.shape[1:])
        elif kind == "conv_transpose":  # weight (in, out/groups, *k): each input element is spread over as many
            macs = x.numel() * math.prod(w.shape[1:])
        else:  # linear: out_features * in_features per token
            macs = out.numel() * w.shape[-1]
        self.macs[tracer.scope] += macs
        self.calls[tracer.scope] += 1


def _count_macs(model: nn.Module, sample: Tensor) -> tuple[dict[str, int], dict[str, int]]:
    """Run ``model(sample)`` (eval mode, no grad) under the counter; ``({module: MACs}, {module: calls})``."""
    counter = _MacCounter()
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), trace(model, [counter]):
            model(sample)
    finally:
        model.train(training)
    batch = max(int(sample.shape[0]), 1) if sample.dim() else 1
    return {k: v // batch for k, v in counter.macs.items()}, dict(counter.calls)


def _forward_counts(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype,
                    notes: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """MACs per module: on a meta-device copy if the network allows it, else a real pass."""
    try:
        meta = copy.deepcopy(model).to("meta")
        return _count_macs(meta, torch.empty(shape, dtype=dtype, device="meta"))
    except Exception as err:  # data-dependent forward passes cannot run on meta tensors
        logger.info("summary: meta-device forward failed (%s: %s); counting with a real forward pass",
                    type(err).__name__, err)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        return _count_macs(model, torch.rand(shape, dtype=dtype, device=device))
    except Exception as err:
        raise ConfigError(f"summary() could not run {type(model).__name__} on an input of shape {shape} "
                           f"({type(err).__name__}: {err}); give an input size the network accepts, e.g. "
                           "(3, 180, 320) for an RGB 320x180 image") from err


def _layer_rows(model: nn.Module) -> dict[str, LayerSummary]:
    """Parameter and buffer counts of every module that holds any (shared tensors counted once)."""
    rows: dict[str, LayerSummary] = {}
    seen: set[int] = set()
    for name, mod in model.named_modules():
        row = LayerSummary(name, type(mod).__name__)
        binary = is_binary(mod)
        binary_weight = binary and getattr(mod, "binarize_weight", True)
        row.binary = bool(binary and mod.fully_binary)
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if binary and pname == "weight" and binary_weight:
                row.binary_params += p.numel()
            else:
                row.fp_params += p.numel()
            if not binary or pname in ("weight", "bias"):  # scale, RSign, RPReLU: not in the float layer
                row.float_params += p.numel()
        for bname, b in mod.named_buffers(recurse=False):
            if id(b) in seen or (binary and bname in TRAINING_BUFFERS) or bname in mod._non_persistent_buffers_set:
                continue  # training records and non-persistent buffers are not stored
            seen.add(id(b))
            row.buffers += b.numel()
        if row.fp_params or row.binary_params or row.buffers or isinstance(mod, (nn.Conv2d, nn.Linear)):
            rows[name] = row
    return rows


def _with_macs(rows: dict[str, LayerSummary], modules: dict[str, nn.Module], macs: dict[str, int],
               calls: dict[str, int]) -> dict[str, LayerSummary]:
    """Add each module's counted MACs to its row (binary or FP), with a row for modules that
    only made functional calls."""
    for scope, n in macs.items():
        if scope not in rows:
            mod = modules.get(scope)
            rows[scope] = LayerSummary(scope, f"{type(mod).__name__} (functional)" if mod is not None else "?")
        row = rows[scope]
        row.calls += calls[scope]
        if row.binary:
            row.binary_macs += n
        else:
            row.fp_macs += n
    return rows


def _coverage_notes(rows: dict[str, LayerSummary], modules: dict[str, nn.Module]) -> list[str]:
    """Binarized layers that did not run, or run with binarization switched off."""
    notes = []
    silent = [n for n, r in rows.items() if r.binary and not r.calls]
    if silent:
        notes.append(f"{len(silent)} binarized layers did not run in the forward pass: {', '.join(silent[:4])}"
                     f"{' ...' if len(silent) > 4 else ''}")
    half = [n for n, m in modules.items() if is_binary(m) and not m.fully_binary]
    if half:
        notes.append(f"{len(half)} binarized layers have binarization switched off and count as full precision "
                     f"(their MACs; a binarized weight still counts 1 bit): {', '.join(half[:4])}")
    return notes


def summary(model: nn.Module, input_size: Optional[Sequence[int]] = None, *, sample: Optional[Tensor] = None,
            convention: str = "bireal64", verbose: bool = False) -> ModelSummary:
    """Count parameters, storage, MACs and OPs of a (binarized) network.

    Args:
        model: any network; binarized layers (:func:`bsr_plugin.is_binary`) are counted as
            binary when both their weights and activations are binarized.
        input_size: one input without the batch dimension, e.g. ``(3, 180, 320)`` for an RGB
            320x180 image; counts are for batch 1.
        sample: instead of ``input_size``, an input batch (counts are per sample).
        convention: OPs convention, ``bireal64`` (binary MACs / 64, default) or ``xnor8`` (/ 8).
        verbose: also print the table.

    Returns:
        A :class:`ModelSummary` (``str()`` gives the table, ``to_dict()`` a JSON-safe dict).
    """
    convention_divisor(convention)
    if (input_size is None) == (sample is None):
        raise ConfigError("summary() needs exactly one of input_size=(C, H, W) or sample=<tensor>")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if sample is not None:
        shape = tuple(sample.shape)
        per_sample = tuple(shape[1:])
    else:
        if isinstance(input_size, int) or not all(isinstance(s, int) and s > 0 for s in input_size):
            raise ConfigError(f"input_size must be a sequence of positive ints without the batch dimension, "
                             f"e.g. (3, 180, 320); got {input_size!r}")
        per_sample = tuple(input_size)
        shape = (1,) + per_sample
    notes: list[str] = []
    if sample is not None and shape[0] != 1:
        macs, calls = _count_macs(model, sample)  # a real batch: counts are divided per sample
    else:
        macs, calls = _forward_counts(model, shape, dtype, notes)
    modules = dict(model.named_modules())
    rows = _with_macs(_layer_rows(model), modules, macs, calls)
    notes += _coverage_notes(rows, modules)
    order = {n: i for i, n in enumerate(modules)}
    result = ModelSummary(sorted(rows.values(), key=lambda r: order.get(r.name, len(order))), per_sample,
                          convention, notes)
    for note in notes:
        logger.warning("summary: %s", note)
    if verbose:
        print(result)
    return result
