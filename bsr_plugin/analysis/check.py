"""``check_binary(model, sample)``: a runtime proof that binarized layers are binary.

It runs one real forward pass under the package's call tracer and inspects the conv/linear
call each binarized layer makes: the operands that reach the kernel, not what the layer says
about itself. A layer passes when its input holds only +-1 and every output channel of its
weight holds only ``+alpha_c`` / ``-alpha_c`` with ``alpha_c > 0``. It names every layer that
fails, and every binarized layer that never ran (a network that computes with a layer's
weights functionally, e.g. re-parameterized at inference, bypasses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.registry import binary_layers
from ..core.tracer import WEIGHT_OPS, CallTracer, TraceListener, operands, trace
from ..errors import BsrError


class BinaryCheckError(BsrError, AssertionError):
    """A network whose binarized layers did not all compute with +-1 inputs and +-alpha weights."""


@dataclass
class LayerCheck:
    name: str
    calls: int = 0
    problems: list[str] = field(default_factory=list)
    constant_input: bool = False  # all +1 (or all -1): the layer sees no information


@dataclass
class BinaryCheck:
    """Result of :func:`check_binary`."""

    layers: dict[str, LayerCheck]

    @property
    def failures(self) -> dict[str, list[str]]:
        out = {n: c.problems for n, c in self.layers.items() if c.problems}
        out.update({n: ["never ran in the forward pass"] for n, c in self.layers.items() if c.calls == 0})
        return out

    @property
    def ok(self) -> bool:
        return bool(self.layers) and not self.failures

    @property
    def constant_inputs(self) -> list[str]:
        return [n for n, c in self.layers.items() if c.constant_input]

    def raise_if_failed(self) -> BinaryCheck:
        """Raise :class:`BinaryCheckError` naming every layer that failed (or if there is none)."""
        if not self.layers:
            raise BinaryCheckError("the model holds no binarized layer")
        if self.failures:
            lines = [f"  {n}: {'; '.join(p)}" for n, p in self.failures.items()]
            raise BinaryCheckError("layers that did not compute in binary:\n" + "\n".join(lines))
        return self

    def __str__(self) -> str:
        if not self.layers:
            return "no binarized layer"
        bad = self.failures
        lines = [f"{len(self.layers) - len(bad)}/{len(self.layers)} binarized layers computed with +-1 inputs "
                 "and +-alpha weights"]
        lines += [f"FAIL {n}: {'; '.join(p)}" for n, p in bad.items()]
        lines += [f"warning {n}: its 1-bit input was constant" for n in self.constant_inputs]
        return "\n".join(lines)


def _check_operands(x: Tensor, w: Tensor) -> list[str]:
    problems = []
    if not bool(((x == 1) | (x == -1)).all()):
        bad = x[(x != 1) & (x != -1)]
        problems.append(f"input not +-1 ({bad.numel()} of {x.numel()} values, e.g. {float(bad.flatten()[0]):.4g})")
    flat = w.detach().flatten(1).abs()
    alpha = flat[:, :1]
    if not bool((flat == alpha).all()):
        problems.append("weight magnitudes differ within an output channel (not +-alpha)")
    if not bool((alpha > 0).all()):
        problems.append("a weight channel has alpha <= 0")
    return problems


class _OperandCheck(TraceListener):
    """Checks the operands of the first conv/linear call each binarized layer makes itself."""

    def __init__(self, results: dict[str, LayerCheck]) -> None:
        self.results = results
        self.seen: set[str] = set()

    def enter(self, name: str, module: nn.Module, args: tuple) -> None:
        check = self.results[name]
        check.calls += 1
        if not module.fully_binary:
            off = [k for k in ("act", "weight") if not getattr(module, f"binarize_{k}")]
            msg = f"binarization switched off: {', '.join(off)}"
            if msg not in check.problems:
                check.problems.append(msg)

    def exit(self, name: str, module: nn.Module, args: tuple, out: Any) -> None:
        self.seen.discard(name)

    def call(self, tracer: CallTracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = tracer.scope
        if func in WEIGHT_OPS and name in self.results and name not in self.seen:
            self.seen.add(name)
            x, w = operands(args, kwargs)
            check = self.results[name]
            check.problems.extend(p for p in _check_operands(x, w) if p not in check.problems)
            check.constant_input = check.constant_input or bool((x == x.flatten()[0]).all())


@torch.no_grad()
def check_binary(model: nn.Module, sample: Any) -> BinaryCheck:
    """Run ``model(sample)`` once (in its current mode) and check every binarized layer."""
    layers = list(binary_layers(model))
    results = {n: LayerCheck(n) for n, _ in layers}
    with trace(model, [_OperandCheck(results)], modules=layers):
        model(*(sample if isinstance(sample, tuple) else (sample,)))
    return BinaryCheck(results)
