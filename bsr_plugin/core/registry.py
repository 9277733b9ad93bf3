"""The one table of binarized layer types, in every direction.

Registering a binarized type records its float type (what :func:`bsr_plugin.convert` replaces
with it), how to read a layer's channels, and, registered by the tiers that own them, the
other forms a binarized layer takes (``packed``: the engine module that runs it, ``export``: the
module ONNX export traces, ``float``: a plain float layer of the same geometry, for speed
comparisons)::

    bsr_plugin.register_binary_layer(MyConv, MyBinaryConv)              # convert() uses it
    register_form(MyBinaryConv, "packed", MyPackedConv)                  # the engine runs it

A binarized type provides ``from_float(layer, **layer_options)``. Lookups walk the MRO, so a
subclass of ``nn.Conv2d`` maps to ``BinaryConv2d`` unless a more specific entry exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from torch import nn

from ..errors import ConfigError

FORMS = ("packed", "export", "float")
Channels = Callable[[nn.Module], tuple[int, int]]


def attribute_channels(layer: nn.Module) -> tuple[int, int]:
    """``(in, out)`` channels of a conv-like (``in_channels``) or linear-like (``in_features``) layer."""
    for a, b in (("in_channels", "out_channels"), ("in_features", "out_features")):
        if hasattr(layer, a) and hasattr(layer, b):
            return int(getattr(layer, a)), int(getattr(layer, b))
    raise ConfigError(f"cannot read the channels of {type(layer).__name__}: register its binarized type with "
                      "channels=<function returning (in, out)>")


@dataclass
class LayerType:
    """What the table knows about one binarized layer type."""

    binary_type: type[nn.Module]
    float_type: type[nn.Module]
    channels: Channels = attribute_channels
    forms: dict[str, Callable[[nn.Module], nn.Module]] = field(default_factory=dict)


_BY_FLOAT: dict[type[nn.Module], LayerType] = {}
_BY_BINARY: dict[type[nn.Module], LayerType] = {}


def register_binary_layer(float_type: type[nn.Module], binary_type: type[nn.Module], *,
                          channels: Optional[Channels] = None) -> None:
    """Binarize layers of ``float_type`` (and its subclasses) as ``binary_type``.

    Args:
        float_type: a float layer class, e.g. ``nn.Conv2d``.
        binary_type: its binarized counterpart; must provide ``from_float(layer, **options)``
            taking the :class:`~bsr_plugin.LayerOptions` fields as keywords.
        channels: ``layer -> (in, out)`` for layers of either type (default: the
            ``in_channels``/``out_channels`` or ``in_features``/``out_features`` attributes).

    Raises:
        ConfigError: ``binary_type`` has no ``from_float``, or ``float_type`` is already
            mapped to another binarized type.
    """
    if not callable(getattr(binary_type, "from_float", None)):
        raise ConfigError(f"{binary_type.__name__} has no from_float(layer, **options) classmethod, so "
                          f"convert() could not build it from a {float_type.__name__}")
    known = _BY_FLOAT.get(float_type)
    if known is not None and known.binary_type is not binary_type:
        raise ConfigError(f"{float_type.__name__} is already binarized as {known.binary_type.__name__}")
    entry = _BY_BINARY.get(binary_type) or LayerType(binary_type, float_type)
    entry.channels = channels or entry.channels
    _BY_FLOAT[float_type] = _BY_BINARY[binary_type] = entry


def register_form(binary_type: type[nn.Module], form: str, make: Callable[[nn.Module], nn.Module]) -> None:
    """Record how a layer of ``binary_type`` becomes its ``form`` (one of :data:`FORMS`):
    ``make(layer)`` returns the module that replaces it there."""
    if form not in FORMS:
        raise ConfigError(f"unknown layer form {form!r}; known: {', '.join(FORMS)}")
    entry = _BY_BINARY.get(binary_type)
    if entry is None:
        raise ConfigError(f"{binary_type.__name__} is not a registered binarized layer type: "
                          "register_binary_layer(float_type, binary_type) first")
    entry.forms[form] = make


def _lookup(table: dict[type[nn.Module], LayerType], layer: nn.Module) -> Optional[LayerType]:
    for cls in type(layer).__mro__:
        if cls in table:
            return table[cls]
    return None


def binary_type_for(layer: nn.Module) -> Optional[type[nn.Module]]:
    """The binarized type registered for ``layer``'s class (or its nearest base), else ``None``."""
    entry = _lookup(_BY_FLOAT, layer)
    return entry.binary_type if entry else None


def form_of(layer: nn.Module, form: str) -> Optional[Callable[[nn.Module], nn.Module]]:
    """How binarized ``layer`` becomes its ``form`` (``None``: not registered for it)."""
    entry = _lookup(_BY_BINARY, layer)
    return entry.forms.get(form) if entry else None


def layer_channels(layer: nn.Module) -> tuple[int, int]:
    """``(in, out)`` channels of a registered float or binarized layer."""
    entry = _lookup(_BY_BINARY, layer) or _lookup(_BY_FLOAT, layer)
    return (entry.channels if entry else attribute_channels)(layer)


def input_channels(model: nn.Module, default: int = 3) -> int:
    """The input channels of ``model``: those of its first registered float or binarized
    layer, or other layer with an integer ``in_channels`` (a deployed form), in definition
    order; else ``default``."""
    for mod in model.modules():
        if isinstance(mod, float_types() + binary_types()):
            return layer_channels(mod)[0]
        if isinstance(getattr(mod, "in_channels", None), int):
            return mod.in_channels
    return default


def float_types() -> tuple[type[nn.Module], ...]:
    """Every registered float layer type (what convert() can binarize)."""
    return tuple(_BY_FLOAT)


def binary_types() -> tuple[type[nn.Module], ...]:
    """Every registered binarized layer type."""
    return tuple(_BY_BINARY)


def is_binary(module: nn.Module) -> bool:
    """True for a binarized layer (any registered binarized type)."""
    return isinstance(module, binary_types())


def binary_layers(model: nn.Module, every_name: bool = False) -> Iterator[tuple[str, Any]]:
    """``(name, layer)`` for every binarized layer of ``model`` (the one listing of them); a
    layer shared under several names comes once, or under each name with ``every_name``."""
    for name, mod in model.named_modules(remove_duplicate=not every_name):
        if is_binary(mod):
            yield name, mod


def require_fully_binary(model: nn.Module, why: str) -> None:
    """Raise :class:`ConfigError` naming every binarized layer of ``model`` whose activation or
    weight binarization is switched off (``why``: what needs them on)."""
    off = sorted({n for n, m in binary_layers(model, every_name=True) if not m.fully_binary})
    if off:
        raise ConfigError(f"binarization is switched off in {len(off)} layers ({', '.join(off[:4])}"
                          f"{' ...' if len(off) > 4 else ''}): {why}. Switch it on first: "
                          "bsr_plugin.set_binarization(model, act=True, weight=True)")
