"""``check_binary(model, sample)``: a runtime proof that binarized layers are binary.

It runs one real forward pass and intercepts, with a ``TorchFunctionMode``, the conv/linear
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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .prior import binary_layers

_KERNELS = {F.conv2d, torch.conv2d, F.linear}


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
        if not self.layers:
            raise AssertionError("the model holds no binarized layer")
        if self.failures:
            lines = [f"  {n}: {'; '.join(p)}" for n, p in self.failures.items()]
            raise AssertionError("layers that did not compute in binary:\n" + "\n".join(lines))
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


class _Interceptor(TorchFunctionMode):
    def __init__(self, results: dict[str, LayerCheck]) -> None:
        super().__init__()
        self.results = results
        self.stack: list[str] = []
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _KERNELS and self.stack and self.stack[-1] not in self.seen:
            name = self.stack[-1]
            self.seen.add(name)
            x = args[0] if args else kwargs["input"]
            w = args[1] if len(args) > 1 else kwargs["weight"]
            check = self.results[name]
            check.problems.extend(p for p in _check_operands(x, w) if p not in check.problems)
            check.constant_input = check.constant_input or bool((x == x.flatten()[0]).all())
        return func(*args, **kwargs)


@torch.no_grad()
def check_binary(model: nn.Module, sample: Any) -> BinaryCheck:
    """Run ``model(sample)`` once (in its current mode) and check every binarized layer."""
    layers = dict(binary_layers(model))
    results = {n: LayerCheck(n) for n in layers}
    mode = _Interceptor(results)
    handles = []
    for name, layer in layers.items():
        def pre(mod, args, name=name):
            mode.stack.append(name)
            results[name].calls += 1
            if not (mod.binarize_act and mod.binarize_weight):
                off = [k for k in ("act", "weight") if not getattr(mod, f"binarize_{k}")]
                msg = f"binarization switched off: {', '.join(off)}"
                if msg not in results[name].problems:
                    results[name].problems.append(msg)

        def post(mod, args, out, name=name):
            mode.stack.pop()
            mode.seen.discard(name)

        handles.append(layer.register_forward_pre_hook(pre))
        handles.append(layer.register_forward_hook(post))
    try:
        with mode:
            model(*(sample if isinstance(sample, tuple) else (sample,)))
    finally:
        for h in handles:
            h.remove()
    return BinaryCheck(results)
