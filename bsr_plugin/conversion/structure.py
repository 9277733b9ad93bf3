"""What a probe's dataflow record tells ``convert`` about a network's structure: the first and
last layers, the upsampler convs, the ReLUs that feed binarized layers, and the shortcuts that
the network's own skips already span."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Optional

from torch import nn

from ..core.registry import float_types, is_binary
from ..core.tracer import WEIGHT_OP_NAMES
from .dataflow import (
    ACTIVATIONS,
    ADD_OPS,
    BLOCKING_OPS,
    NONNEGATIVE_MODULES,
    NONNEGATIVE_OPS,
    SHAPE_OPS,
    UPSAMPLE_OPS,
    DataflowGraph,
    Node,
)


def _passthrough(node: Node) -> bool:
    """Nodes that neither compute features nor change resolution: activations, reshapes."""
    if node.kind == "module":
        return isinstance(node.module, ACTIVATIONS)
    return node.kind == "op" and node.target in SHAPE_OPS


def ordered_layers(graph: DataflowGraph, layer_names: Iterable[str]) -> list[str]:
    """The given weight layers in the order they first ran in the probe."""
    wanted = set(layer_names)
    return [n for n in graph.executed_modules() if n in wanted]


def input_layers(graph: DataflowGraph, layer_names: Iterable[str]) -> set[str]:
    """Layers that read the network input with no conv/linear in between (the stem; several
    for parallel stems such as RepVGG's)."""
    wanted = set(layer_names)
    found: set[str] = set()
    nodes = graph.nodes
    stack = [n.idx for n in nodes if n.kind == "input"]
    seen = set(stack)
    while stack:
        for j in nodes[stack.pop()].users:
            u = nodes[j]
            if u.kind == "module" and isinstance(u.module, float_types()):
                if u.target in wanted:
                    found.add(u.target)
            elif u.kind == "op" and u.target in WEIGHT_OP_NAMES:
                continue
            elif j not in seen:
                seen.add(j)
                stack.append(j)
    return found


def upsampler_layers(graph: DataflowGraph, layer_names: Iterable[str]) -> set[str]:
    """Layers whose output reaches a pixel shuffle, or whose input comes from an
    interpolation, through activations and reshapes only."""
    wanted = set(layer_names)
    found: set[str] = set()
    nodes = graph.nodes
    for node in nodes:
        if node.kind != "module" or node.target not in wanted:
            continue
        stack = list(node.users)
        while stack:
            u = nodes[stack.pop()]
            if u.kind == "op" and u.target == "pixel_shuffle":
                found.add(node.target)
                break
            if _passthrough(u):
                stack.extend(u.users)
        stack = list(node.inputs)
        while stack:
            p = nodes[stack.pop()]
            if p.kind == "op" and p.target in UPSAMPLE_OPS:
                found.add(node.target)
                break
            if _passthrough(p):
                stack.extend(p.inputs)
    return found


# Ops whose output is >= 0 wherever their input is: rearrangements, max / average pooling and
# means (a ReLU before a max-pool, or before an SE block's global mean, still feeds a constant
# +1 sign to the binarized layer after it).
SIGN_PRESERVING_OPS = SHAPE_OPS | frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "pixel_shuffle", "pixel_unshuffle", "mean",
})


def nonnegative_feeders(graph: DataflowGraph, layer: str) -> list[Node]:
    """Nodes whose output (>= 0 everywhere) reaches ``layer``'s input through reshapes, pooling,
    means and ``nn.Identity`` modules only."""
    nodes = graph.nodes
    found: list[Node] = []
    for node in graph.module_nodes(layer):
        stack = list(node.inputs[:1])
        while stack:
            p = nodes[stack.pop()]
            if p.kind == "module" and isinstance(p.module, NONNEGATIVE_MODULES):
                found.append(p)
            elif p.kind == "module" and isinstance(p.module, nn.Identity):
                stack.extend(p.inputs[:1])
            elif p.kind == "op" and p.target in NONNEGATIVE_OPS:
                found.append(p)
            elif p.kind == "op" and p.target in SIGN_PRESERVING_OPS:
                stack.extend(p.inputs[:1])
    return found


def functional_weight_ops(graph: DataflowGraph) -> list[Node]:
    """conv/linear calls made outside any Conv2d/Linear module (they stay full precision)."""
    return [n for n in graph.nodes if n.kind == "op" and n.target in WEIGHT_OP_NAMES]


def _min_vertex_cut(path: set[int], edges: dict[int, list[int]], src: int, dst: int, cuttable: set[int],
                    near_src: bool) -> Optional[set[int]]:
    """Fewest ``cuttable`` nodes separating ``src`` from ``dst`` in the DAG ``(path, edges)``;
    of several such cuts, the one nearest ``src`` (or ``dst``). ``None`` if some path holds no
    cuttable node. Max-flow on the node-split graph (BFS augmenting paths)."""
    inf = len(path) + 1
    cap: dict[tuple[Any, Any], int] = {}
    adj: dict[Any, list[Any]] = {}

    def arc(u: Any, v: Any, c: int) -> None:
        cap[(u, v)] = cap.get((u, v), 0) + c
        cap.setdefault((v, u), 0)
        adj.setdefault(u, []).append(v)
        adj.setdefault(v, []).append(u)

    for n in path:
        arc((n, 0), (n, 1), 1 if n in cuttable and n != src else inf)
        for m in edges.get(n, []):
            arc((n, 1), (m, 0), inf)
    source, sink = (src, 1), (dst, 1)
    flow = 0
    while flow < inf:
        prev = {source: source}
        queue = deque([source])
        while queue and sink not in prev:
            u = queue.popleft()
            for v in adj.get(u, []):
                if v not in prev and cap[(u, v)] > 0:
                    prev[v] = u
                    queue.append(v)
        if sink not in prev:
            break
        v = sink
        while v != source:
            u = prev[v]
            cap[(u, v)] -= 1
            cap[(v, u)] += 1
            v = u
        flow += 1
    if flow >= inf:
        return None

    def reach(start: Any, forward: bool) -> set[Any]:
        seen = {start}
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for v in adj.get(u, []):
                c = cap[(u, v)] if forward else cap[(v, u)]
                if v not in seen and c > 0:
                    seen.add(v)
                    queue.append(v)
        return seen

    if near_src:
        side = reach(source, True)
        return {n for n in path if (n, 0) in side and (n, 1) not in side}
    side = reach(sink, False)
    return {n for n in path if (n, 1) in side and (n, 0) not in side}


class _SkipPaths:
    """The dataflow graph as :func:`nested_skip_cuts` walks it: which nodes carry an identity
    copy of their input (activations, skips, layers with a shortcut), which block it, and which
    are shortcuts it may still cut."""

    def __init__(self, graph: DataflowGraph, cuttable: set[str], cuts: dict[str, str]) -> None:
        self.nodes, self.cuttable, self.cuts = graph.nodes, cuttable, cuts

    def kind(self, n: Node) -> str:
        if n.kind == "input":
            return "carry"
        if n.kind == "module":
            if n.target in self.cuttable:
                return "block" if n.target in self.cuts else "cut"
            if isinstance(n.module, float_types()):
                return "carry" if is_binary(n.module) and n.module.shortcut != "none" else "block"
            return "carry"
        return "block" if n.target in BLOCKING_OPS else "carry"

    def closure(self, start: int, step: Callable[[Node], list[int]], keep: Callable[[int], bool],
                stop: int) -> set[int]:
        seen = {start}
        stack = [start]
        while stack:
            n = self.nodes[stack.pop()]
            if n.idx == stop or (n.idx != start and self.kind(n) == "block"):
                continue
            for j in step(n):
                if j not in seen and keep(j):
                    seen.add(j)
                    stack.append(j)
        return seen

    def identity_path(self, src: int, dst: int) -> Optional[set[int]]:
        """The nodes on identity-carrying paths from ``src`` to ``dst`` (``None``: there are none)."""
        nodes = self.nodes
        back = self.closure(dst, lambda n: n.inputs, lambda j: j == src or self.kind(nodes[j]) != "block", src)
        if src not in back:
            return None
        return self.closure(src, lambda n: n.users, lambda j: j in back, dst)


def nested_skip_cuts(graph: DataflowGraph, cuttable: set[str], policy: str) -> dict[str, str]:
    """Layers whose shortcut to drop so that no skip of the network spans an identity path
    made of our shortcuts (which would add the skip's input twice).

    For every addition ``p + q`` whose operand ``q`` carries an identity copy of ``p`` (through
    activations, other skips and shortcuts of layers in ``cuttable``), the fewest shortcuts that
    break every such path are cut; of equally small cuts, the one nearest ``p`` (``cut_first``)
    or nearest the addition (``cut_last``); ``cut_all`` cuts every shortcut on such a path.
    Additions are taken in execution order, so inner skips are settled before outer ones. Returns ``{layer: reason}``.
    """
    nodes = graph.nodes
    cuts: dict[str, str] = {}
    paths = _SkipPaths(graph, cuttable, cuts)
    for add in nodes:
        if add.kind != "op" or add.target not in ADD_OPS or len(add.inputs) != 2:
            continue
        if len(add.in_shapes) != 2 or add.in_shapes[0] != add.in_shapes[1]:
            continue
        for src, dst in (tuple(add.inputs), tuple(reversed(add.inputs))):
            path = None if paths.kind(nodes[dst]) == "block" else paths.identity_path(src, dst)
            if path is None:
                continue
            edges = {n: [u for u in nodes[n].users if u in path]
                     for n in path if n != dst and (n == src or paths.kind(nodes[n]) != "block")}
            candidates = {n for n in path if paths.kind(nodes[n]) == "cut"}
            if policy == "cut_all":
                cut: Optional[set[int]] = candidates
            else:
                cut = _min_vertex_cut(path, edges, src, dst, candidates, near_src=policy == "cut_first")
            reason = f"the network's own skip (add in '{add.scope or '<root>'}') spans it"
            for n in cut or ():
                cuts[nodes[n].target] = reason
            break
    return cuts
