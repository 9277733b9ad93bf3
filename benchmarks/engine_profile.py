"""Per-op profile of a network: where its time goes, op by op, with the module that ran each op.

Every module call is wrapped in a ``record_function`` range (forward pre/post hooks), so each
low-level op of ``torch.profiler``'s record (aten ops, oneDNN's int8 convs, the packed engine's
``bsr_engine::binary_conv2d``) is attributed to the innermost module that ran it. Rows are
``(scope, op)``: ``scope`` is that module's name with block indices folded (``body.*.conv1``),
``""`` for ops of the network's own ``forward`` (EDSR's mean subtraction, global add, output
scaling); times are self CPU time per forward pass, summed over the threads' work as the
profiler sees it on the calling thread.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

LABEL = "## "


def folded_names(net: nn.Module) -> dict[str, str]:
    """Each module's name with the index of a repeated block folded to ``*`` (``body.12.conv1``
    -> ``body.*.conv1``): a child of a container whose three or more children share its type."""
    folded = {"": ""}
    for name, module in net.named_modules():
        children = list(module.named_children())
        repeated = len(children) >= 3 and len({type(c) for _, c in children}) == 1
        for child, _ in children:
            full = f"{name}.{child}" if name else child
            folded[full] = f"{folded[name]}.{'*' if repeated else child}".lstrip(".")
    return folded


def _label_modules(net: nn.Module) -> list[Any]:
    """Forward hooks that open a ``record_function`` range named after each module call."""
    handles, open_ranges = [], []
    folded = folded_names(net)

    def enter(name: str):
        def hook(_module: nn.Module, _args: tuple) -> None:
            rf = record_function(LABEL + name)
            rf.__enter__()
            open_ranges.append(rf)
        return hook

    def leave(_module: nn.Module, _args: tuple, _out: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    for name, module in net.named_modules():
        if name:
            handles += [module.register_forward_pre_hook(enter(folded[name])), module.register_forward_hook(leave)]
    return handles


def _owner(event: Any) -> str:
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith(LABEL):
        parent = parent.cpu_parent
    return "" if parent is None else parent.name[len(LABEL):]


@torch.no_grad()
def op_profile(net: nn.Module, x: Tensor, passes: int = 2) -> list[dict[str, Any]]:
    """``[{"scope", "op", "ms", "calls", "share"}]`` per forward pass of ``net(x)`` (after one
    warm-up pass), largest first; ``share`` is the fraction of the pass's total self time."""
    net(x)
    handles = _label_modules(net)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(passes):
                net(x)
    finally:
        for h in handles:
            h.remove()
    rows: dict[tuple[str, str], list[float]] = {}
    for event in prof.events():
        if event.name.startswith(LABEL) or event.self_cpu_time_total <= 0:
            continue
        row = rows.setdefault((_owner(event), event.name), [0.0, 0])
        row[0] += event.self_cpu_time_total / 1e3 / passes
        row[1] += 1 / passes
    total = sum(ms for ms, _ in rows.values()) or 1.0
    out = [{"scope": s, "op": op, "ms": ms, "calls": round(n, 2), "share": ms / total}
           for (s, op), (ms, n) in rows.items()]
    return sorted(out, key=lambda r: -r["ms"])


def profile_markdown(name: str, rows: list[dict[str, Any]], threads: int, top: int = 25) -> list[str]:
    """The profile of one network as a markdown table (the ``top`` rows, then the rest summed)."""
    total = sum(r["ms"] for r in rows)
    lines = ["", f"Per-op profile of `{name}`, {threads} thread(s): self CPU time per pass ({total:.0f} ms in all; "
             "`scope`: the module that ran the op, block indices folded; `(network)`: the network's own forward).",
             "", "| scope | op | calls | ms | share |", "|---|---|---|---|---|"]
    for r in rows[:top]:
        lines.append(f"| {r['scope'] or '(network)'} | {r['op']} | {r['calls']:g} | {r['ms']:.1f} | "
                     f"{100 * r['share']:.1f} % |")
    rest = rows[top:]
    if rest:
        lines.append(f"| (other {len(rest)} rows) | | | {sum(r['ms'] for r in rest):.1f} | "
                     f"{100 * sum(r['share'] for r in rest):.1f} % |")
    return lines
