"""MMEngine / MMCV integration: the binarized layers in mmengine's ``MODELS`` registry.

Importing this module registers :class:`~bsr_plugin.BinaryConv2d` as ``BinaryConv2d`` and
:class:`~bsr_plugin.BinaryLinear` as ``BinaryLinear`` (names MMCV does not use), so configs
build them like any MMCV layer, with the plugin's options beside the usual arguments::

    import bsr_plugin.integrations.mmcv  # noqa: F401
    # (or in a config: custom_imports=dict(imports=['bsr_plugin.integrations.mmcv']))
    from mmcv.cnn import ConvModule, build_conv_layer

    conv = build_conv_layer(dict(type="BinaryConv2d", prior_a=1e-3), 64, 64, 3, padding=1)
    block = ConvModule(64, 64, 3, padding=1, conv_cfg=dict(type="BinaryConv2d"),
                       act_cfg=dict(type="LeakyReLU", negative_slope=0.1))

A float network built from ``ConvModule``\\ s converts with :func:`bsr_plugin.convert`. Importing
this module also registers a conversion fixup: every ``convert`` then switches off
``ConvModule``'s ``efficient_conv_bn_eval`` around binarized convs (that mode fuses BN into a
float conv on the latent weight in eval mode, bypassing binarization) and notes it in the report.

Needs the ``mmcv`` extra: ``pip install 'bsr_plugin[mmcv]'`` (mmcv-lite and mmengine).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..conversion import ConversionReport, register_fixup
from ..core.layers import BinaryConv2d, BinaryLinear
from ..core.registry import is_binary
from ..errors import ConfigError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'bsr_plugin[mmcv]'"
# Registry name -> class. Neither name is one of MMCV's (checked against mmcv-lite 2.2.0).
REGISTERED: dict[str, type[nn.Module]] = {"BinaryConv2d": BinaryConv2d, "BinaryLinear": BinaryLinear}

__all__ = ["INSTALL_HINT", "REGISTERED", "disable_efficient_conv_bn_eval_", "models_registry", "register"]


def models_registry() -> Any:
    """mmengine's root ``MODELS`` registry, with MMCV's own layers registered in it.

    Raises:
        ImportError: mmcv or mmengine is missing; the message names the extra to install.
    """
    try:
        import mmcv.cnn  # noqa: F401  (registers MMCV's layers, so a name clash is seen here)
        from mmengine.registry import MODELS
    except ImportError as err:
        raise ImportError(f"bsr_plugin.integrations.mmcv needs mmcv and mmengine ({err}); install them with "
                          f"{INSTALL_HINT}") from err
    return MODELS


def _same_class(a: Any, b: type) -> bool:
    """``a`` is ``b``, or the same class from a reloaded module."""
    return a is b or (getattr(a, "__module__", None) == b.__module__
                      and getattr(a, "__qualname__", None) == b.__qualname__)


def register() -> list[str]:
    """Register the binarized layers in mmengine's ``MODELS``; safe to call any number of times.

    Returns:
        The registered names (``REGISTERED``'s keys).

    Raises:
        ImportError: mmcv or mmengine is missing.
        RuntimeError: another package already registered a different class under one of the names.
    """
    registry = models_registry()
    for name, cls in REGISTERED.items():
        existing = registry.module_dict.get(name)
        if existing is cls:
            continue
        if existing is not None and not _same_class(existing, cls):
            raise ConfigError(f"mmengine's MODELS already holds {name!r} as {existing.__module__}."
                               f"{existing.__qualname__}, so bsr_plugin cannot register its {cls.__name__} there. "
                               "Find which imported package registers that name, or build the layer by class: "
                               f"dict(type=bsr_plugin.{cls.__name__}).")
        registry.register_module(name=name, module=cls, force=existing is not None)
        logger.debug("registered %s in mmengine MODELS as %r", cls.__qualname__, name)
    return list(REGISTERED)


def disable_efficient_conv_bn_eval_(model: nn.Module) -> list[str]:
    """Switch off ``efficient_conv_bn_eval`` on every ``ConvModule`` whose conv is binarized.

    In eval mode that option replaces the conv's forward by a float convolution with the
    batch-norm folded into the latent weight: no 1-bit activations or weights, no shortcut.

    Args:
        model: a network holding ``ConvModule``\\ s (changed in place).

    Returns:
        The qualified names of the ``ConvModule``\\ s changed.
    """
    changed = []
    for name, module in model.named_modules():
        conv = getattr(module, "conv", None)
        if getattr(module, "efficient_conv_bn_eval_forward", None) is not None and conv is not None \
                and is_binary(conv):
            module.turn_on_efficient_conv_bn_eval(False)
            changed.append(name)
    return changed


def _convmodule_fixup(model: nn.Module, report: ConversionReport) -> None:
    """The conversion fixup this module registers: :func:`disable_efficient_conv_bn_eval_`,
    noted in the conversion report."""
    changed = disable_efficient_conv_bn_eval_(model)
    if changed:
        more = " ..." if len(changed) > 4 else ""
        report.note(f"efficient_conv_bn_eval switched off in {len(changed)} ConvModules with binarized convs "
                    f"(it computes a float conv in eval mode): {', '.join(changed[:4])}{more}")


register()
register_fixup("mmcv.ConvModule", _convmodule_fixup)
