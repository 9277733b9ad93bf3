"""One call tracer: run a forward pass and tell listeners which module is running and which
torch calls it makes.

``convert``'s structure probe, ``check_binary`` and the complexity counter all need the same
two things: the stack of running modules (forward pre/post hooks) and every torch call made
inside them (a ``TorchFunctionMode``). They subscribe to :func:`trace` as
:class:`TraceListener`\\ s instead of each installing its own hooks and mode. The one list of
the conv/linear kernels they care about is :data:`WEIGHT_OPS`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# Every conv/linear kernel a module can call, by kind: "conv" (weight: out, in/groups, *k),
# "conv_transpose" (weight: in, out/groups, *k) and "linear" (weight: out, in).
WEIGHT_OPS: dict[Callable[..., Any], str] = {
    F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv",
    torch.conv1d: "conv", torch.conv2d: "conv", torch.conv3d: "conv",
    F.conv_transpose1d: "conv_transpose", F.conv_transpose2d: "conv_transpose", F.conv_transpose3d: "conv_transpose",
    F.linear: "linear",
}
WEIGHT_OP_NAMES = frozenset(getattr(f, "__name__", str(f)) for f in WEIGHT_OPS)


def op_name(func: Any) -> str:
    """The short name of a traced torch function (``conv2d``, ``add``, ``__getitem__``, ...)."""
    return getattr(func, "__name__", None) or str(func)


def operands(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """``(input, weight)`` of a :data:`WEIGHT_OPS` call, wherever they were passed."""
    x = args[0] if args else kwargs.get("input")
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    return x, w


class TraceListener:
    """What a subscriber of :func:`trace` may react to; every method is optional."""

    def enter(self, name: str, module: nn.Module, args: tuple) -> None:
        """``module`` (qualified ``name``) is about to run on ``args``."""

    def exit(self, name: str, module: nn.Module, args: tuple, out: Any) -> None:
        """``module`` returned ``out``."""

    def call(self, tracer: CallTracer, func: Callable[..., Any], args: tuple, kwargs: dict, out: Any) -> None:
        """A torch function was called (after it ran); ``tracer.scope`` is the running module."""


class CallTracer(TorchFunctionMode):
    """The ``TorchFunctionMode`` half of :func:`trace`: the running-module stack and the calls."""

    def __init__(self, listeners: Sequence[TraceListener]) -> None:
        super().__init__()
        self.listeners = list(listeners)
        self.stack: list[tuple[str, nn.Module]] = []

    @property
    def scope(self) -> str:
        """Qualified name of the innermost running module (``""``: the root or none)."""
        return self.stack[-1][0] if self.stack else ""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        for listener in self.listeners:
            listener.call(self, func, args, kwargs, out)
        return out


@contextlib.contextmanager
def trace(model: nn.Module, listeners: Sequence[TraceListener],
          modules: Optional[Sequence[tuple[str, nn.Module]]] = None) -> Iterator[CallTracer]:
    """Within the ``with`` block, every forward call of ``model``'s modules (or only of
    ``modules``) and every torch call reaches ``listeners``.

    Args:
        model: the network to watch.
        listeners: the subscribers.
        modules: ``(name, module)`` pairs to hook (default: every module of ``model``, under
            every name it has).
    """
    tracer = CallTracer(listeners)
    chosen = list(model.named_modules(remove_duplicate=False)) if modules is None else list(modules)
    names = {id(m): n for n, m in reversed(chosen)}  # a shared module reports its first name
    handles = []

    def pre(mod: nn.Module, args: tuple) -> None:
        name = names[id(mod)]
        tracer.stack.append((name, mod))
        for listener in tracer.listeners:
            listener.enter(name, mod, args)

    def post(mod: nn.Module, args: tuple, out: Any) -> None:
        name = names[id(mod)]
        tracer.stack.pop()
        for listener in tracer.listeners:
            listener.exit(name, mod, args, out)

    seen: set[int] = set()
    for _, mod in chosen:
        if id(mod) not in seen:
            seen.add(id(mod))
            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(post))
    try:
        with tracer:
            yield tracer
    finally:
        for h in handles:
            h.remove()
