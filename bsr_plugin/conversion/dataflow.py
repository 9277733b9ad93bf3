"""A dataflow record of one probe forward pass, so ``convert`` can see a network's structure.

Module trees do not say which layer feeds which, where the skips are, or which conv feeds a
PixelShuffle. ``torch.fx`` would, but it fails on data-dependent Python (SwinIR) and mutates
some modules while tracing (EDSR). Instead we run the network once on a small input under a
``TorchFunctionMode`` and record every torch call outside the recorded leaf modules
(convs, linears, activation modules), which appear as single nodes. The record holds tensor
producers and users only: no values, no module state is changed (buffers are restored and the
RNG is forked).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ..core.registry import binary_types, float_types, input_channels
from ..core.tracer import WEIGHT_OP_NAMES, CallTracer, TraceListener, op_name, trace
from ..errors import ConfigError

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
               nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Identity)

# Ops through which a tensor does not carry an identity (a copy of its input) onward.
BLOCKING_OPS = WEIGHT_OP_NAMES | frozenset({
    "bilinear", "pixel_shuffle", "pixel_unshuffle", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear", "grid_sample", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
    "max_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool2d", "embedding", "mean", "sum", "std", "var", "norm",
    "amax", "amin", "max", "min", "softmax", "log_softmax", "zeros_like", "ones_like", "new_zeros", "new_ones",
    "full_like", "rand_like", "randn_like",
})
ADD_OPS = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__"})
UPSAMPLE_OPS = frozenset({"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"})
# Ops and activations after which every value is >= 0 (their sign is constant +1).
NONNEGATIVE_OPS = frozenset({"relu", "relu_", "relu6", "sigmoid", "sigmoid_", "softmax", "hardsigmoid", "softplus",
                             "abs", "abs_"})
NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
# Ops that only rearrange values (used to look through when finding what feeds a layer).
SHAPE_OPS = frozenset({"view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten", "clone",
                       "__getitem__", "chunk", "split", "squeeze", "unsqueeze", "type_as", "to", "float",
                       "dropout", "pad"})


@dataclass
class Node:
    """One recorded call: the model input, a leaf module call, or a torch op."""

    idx: int
    kind: str  # "input" | "module" | "op"
    target: str  # module name, or op name
    inputs: list[int]
    in_shapes: list[tuple[int, ...]]
    out_shape: Optional[tuple[int, ...]]
    scope: str = ""  # innermost module running when an op was called
    module: Optional[nn.Module] = None
    users: list[int] = field(default_factory=list)


class DataflowGraph:
    """Nodes in execution order, with producer -> user edges."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        for i in node.inputs:
            self.nodes[i].users.append(node.idx)
        return node

    def module_nodes(self, name: str) -> list[Node]:
        return [n for n in self.nodes if n.kind == "module" and n.target == name]

    def executed_modules(self) -> list[str]:
        """Names of recorded leaf modules in the order they first ran."""
        seen: dict[str, None] = {}
        for n in self.nodes:
            if n.kind == "module":
                seen.setdefault(n.target, None)
        return list(seen)


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _Recorder(TraceListener):
    """Builds the :class:`DataflowGraph`: leaf modules as single nodes, every other torch call
    that reads a recorded tensor as an op node."""

    def __init__(self, graph: DataflowGraph, leaf_types: tuple[type, ...]) -> None:
        self.graph = graph
        self.leaf_types = leaf_types
        self.producer: dict[int, int] = {}
        self.keep: list[Tensor] = []  # keeps ids unique while recording
        self.leaf_depth = 0
        self.pending: list[tuple[list[int], list[tuple[int, ...]]]] = []

    def producers(self, objs: Any) -> tuple[list[int], list[tuple[int, ...]]]:
        ids, shapes = [], []
        for t in _tensors(objs):
            p = self.producer.get(id(t))
            if p is not None and p not in ids:
                ids.append(p)
                shapes.append(tuple(t.shape))
        return ids, shapes

    def produced(self, out: Any, node: Node) -> None:
        for t in _tensors(out):
            self.producer[id(t)] = node.idx
            self.keep.append(t)

    def enter(self, name: str, module: nn.Module, args: tuple) -> None:
        if isinstance(module, self.leaf_types):
            if self.leaf_depth == 0:
                self.pending.append(self.producers(args))
            self.leaf_depth += 1

    def exit(self, name: str, module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(module, self.leaf_types):
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                ins, shapes = self.pending.pop()
                outs = list(_tensors(out))
                node = self.graph.add(Node(len(self.graph.nodes), "module", name, ins, shapes,
                                           tuple(outs[0].shape) if outs else None, module=module))
                self.produced(out, node)

    def call(self, tracer: CallTracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if self.leaf_depth == 0:
            ins, shapes = self.producers((args, kwargs))
            outs = list(_tensors(out))
            if ins and outs:
                node = self.graph.add(Node(len(self.graph.nodes), "op", op_name(func), ins, shapes,
                                           tuple(outs[0].shape), scope=tracer.scope))
                self.produced(out, node)


@contextlib.contextmanager
def _restored_state(model: nn.Module) -> Iterator[None]:
    buffers = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
               if not isinstance(v, nn.Parameter)}
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                if k in buffers and isinstance(v, Tensor) and v.shape == buffers[k].shape:
                    v.copy_(buffers[k])


def weight_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every layer convert() can binarize (registered float types and
    their subclasses, binarized ones included) in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, float_types())]


def default_probe(model: nn.Module, size: int = 32) -> Tensor:
    """A random probe input shaped for the first registered float or binarized layer of
    ``model``: ``2 x C`` plus one ``size`` per spatial dimension of its weight (a conv2d:
    ``2 x C x size x size``; a linear layer: ``2 x C``)."""
    for m in model.modules():
        if isinstance(m, float_types() + binary_types()):
            w = m.weight
            return torch.randn(2, input_channels(m), *[size] * (w.dim() - 2), device=w.device, dtype=w.dtype)
    raise ConfigError(f"{type(model).__name__} holds no layer convert() can binarize "
                      f"({', '.join(t.__name__ for t in float_types())})")


def record_dataflow(model: nn.Module, example_input: Any, train: bool = True) -> DataflowGraph:
    """Run ``model(example_input)`` once (no grad, in train or eval mode, state restored) and
    record it."""
    graph = DataflowGraph()
    rec = _Recorder(graph, float_types() + ACTIVATIONS)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    for t in _tensors(inputs):
        node = graph.add(Node(len(graph.nodes), "input", "input", [], [], tuple(t.shape)))
        rec.produced(t, node)
    modes = [(m, m.training) for m in model.modules()]
    try:
        with _restored_state(model), torch.no_grad():
            model.train(train)
            with trace(model, [rec]):
                model(*inputs)
    finally:
        for m, mode in modes:
            m.training = mode
    return graph
