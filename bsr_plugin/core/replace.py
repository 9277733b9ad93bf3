"""The one way modules are replaced in a network (timm's ``freeze_batch_norm_2d`` shape: walk,
decide, replace). ``convert``, the engine, the float twin, ONNX export and the banded
upsampler all go through :func:`replace_modules`."""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

Decide = Callable[[str, nn.Module], Optional[nn.Module]]


def replace_modules(model: nn.Module, decide: Decide) -> nn.Module:
    """Walk ``model`` top-down and replace every module for which ``decide(name, module)``
    returns another module (``None`` or the module itself: keep it, and look inside).

    ``name`` is the qualified name (``""`` for ``model`` itself). A module shared under several
    names is decided once, at its first name, and replaced everywhere; the children of a
    replaced module are not visited. Returns ``model``, or its replacement when ``decide``
    replaced the root.
    """
    seen: dict[int, nn.Module] = {}

    def visit(name: str, module: nn.Module) -> nn.Module:
        if id(module) in seen:
            return seen[id(module)]
        new = decide(name, module)
        if new is not None and new is not module:
            seen[id(module)] = new
            return new
        seen[id(module)] = module
        for child_name, child in list(module._modules.items()):
            if child is None:
                continue
            replaced = visit(f"{name}.{child_name}" if name else child_name, child)
            if replaced is not child:
                module._modules[child_name] = replaced
        return module

    return visit("", model)


def replace_by_identity(model: nn.Module, mapping: dict[int, nn.Module]) -> nn.Module:
    """:func:`replace_modules` with the decisions made beforehand: ``{id(old): new}``."""
    return replace_modules(model, lambda _name, module: mapping.get(id(module)))
