"""The one table of float layer type -> binarized layer type.

:func:`bsr_plugin.convert` looks every layer up here, so a user can binarize their own float
layer type by registering a binarized counterpart (a class with a ``from_float(layer,
**layer_options)`` classmethod)::

    bsr_plugin.register_binary_layer(MyConv, MyBinaryConv)

The lookup walks the float layer's MRO, so a subclass of ``nn.Conv2d`` maps to
``BinaryConv2d`` unless a more specific entry exists. :func:`is_binary` answers for every
registered binarized type.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from torch import nn

from ..errors import ConfigError

_TABLE: dict[type[nn.Module], type[nn.Module]] = {}


def register_binary_layer(float_type: type[nn.Module], binary_type: type[nn.Module]) -> None:
    """Binarize layers of ``float_type`` (and its subclasses) as ``binary_type``.

    Args:
        float_type: a float layer class, e.g. ``nn.Conv2d``.
        binary_type: its binarized counterpart; must provide ``from_float(layer, **options)``
            taking the :class:`~bsr_plugin.LayerOptions` fields as keywords.

    Raises:
        ConfigError: ``binary_type`` has no ``from_float``, or ``float_type`` is already
            mapped to another binarized type.
    """
    if not callable(getattr(binary_type, "from_float", None)):
        raise ConfigError(f"{binary_type.__name__} has no from_float(layer, **options) classmethod, so "
                          f"convert() could not build it from a {float_type.__name__}")
    known = _TABLE.get(float_type)
    if known is not None and known is not binary_type:
        raise ConfigError(f"{float_type.__name__} is already binarized as {known.__name__}")
    _TABLE[float_type] = binary_type


def binary_type_for(layer: nn.Module) -> Optional[type[nn.Module]]:
    """The binarized type registered for ``layer``'s class (or its nearest base), else ``None``."""
    for cls in type(layer).__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return None


def float_types() -> tuple[type[nn.Module], ...]:
    """Every registered float layer type (what convert() can binarize)."""
    return tuple(_TABLE)


def binary_types() -> tuple[type[nn.Module], ...]:
    """Every registered binarized layer type."""
    return tuple(dict.fromkeys(_TABLE.values()))


def is_binary(module: nn.Module) -> bool:
    """True for a binarized layer (any registered binarized type)."""
    return isinstance(module, binary_types())


def binary_layers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """``(name, layer)`` for every binarized layer of ``model`` (the one listing of them)."""
    for name, mod in model.named_modules():
        if is_binary(mod):
            yield name, mod
