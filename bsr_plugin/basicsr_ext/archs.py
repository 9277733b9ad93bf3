"""BasicSR architectures: a binarizing wrapper around any registered float architecture, and
named binarized backbones of the paper (EDSR-baseline, SRResNet).

In a BasicSR YAML::

    network_g:
      type: BinarizedArch
      arch: {type: EDSR, num_in_ch: 3, num_out_ch: 3, num_feat: 64, num_block: 16, upscale: 4}
      binarize: {prior_a: 0.01}

``build_network`` calls the wrapper, which builds the float network from BasicSR's registry
and returns ``bsr_plugin.convert`` of it (the float network's own class, so float
checkpoints from ``path.pretrain_network_g`` load into it and the EMA copy is binarized too).
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Optional

from torch import nn

from ..config import DEFAULT_RULES, BinarizeConfig
from ..convert import convert
from .compat import import_basicsr


def float_arch_registry():
    import_basicsr()
    from basicsr.utils.registry import ARCH_REGISTRY

    return ARCH_REGISTRY


def check_arch_spec(spec: Any) -> str:
    """Validate ``{type: <registered float arch>, ...}``; returns the type name."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"network_g.arch must be a mapping with a 'type' (a BasicSR architecture), got {spec!r}")
    registry = float_arch_registry()
    name = spec["type"]
    if name not in registry:
        close = difflib.get_close_matches(str(name), list(registry.keys()), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown float architecture {name!r} in network_g.arch.type: it is not in BasicSR's "
                       f"ARCH_REGISTRY.{hint} (a custom architecture must be imported before training starts)")
    if name in BINARIZED_ARCHS:
        raise ValueError(f"network_g.arch.type {name!r} is already a binarized architecture; name the float one")
    return name


def build_float_arch(spec: Mapping[str, Any]) -> nn.Module:
    """Build a float network from BasicSR's registry: ``{type: EDSR, num_feat: 64, ...}``."""
    name = check_arch_spec(spec)
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    return float_arch_registry().get(name)(**kwargs)


def BinarizedArch(arch: Mapping[str, Any], binarize: Optional[Mapping[str, Any]] = None) -> nn.Module:  # noqa: N802
    """Any registered float architecture, binarized.

    Args:
        arch: the float architecture's options, with its registered ``type``.
        binarize: a :class:`bsr_plugin.BinarizeConfig` as a dict (``None``: defaults).
    """
    config = BinarizeConfig.from_dict(binarize)
    net = convert(build_float_arch(arch), config, inplace=True)
    net.bsr_arch = dict(arch)
    return net


def _body_only(binarize: Optional[Mapping[str, Any]], keep: str) -> dict[str, Any]:
    """The paper backbones binarize their residual body only: besides the first, last and
    upsampler convs, the conv after the body (EDSR) or at HR resolution (SRResNet) stays full
    precision unless ``binarize.rules`` says otherwise."""
    data = dict(binarize or {})
    data.setdefault("rules", [{a: p} for a, p in DEFAULT_RULES] + [{"keep": keep}])
    return data


def EDSRBin(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,  # noqa: N802
            upscale: int = 4, res_scale: float = 1, img_range: float = 255.,
            rgb_mean: tuple = (0.4488, 0.4371, 0.4040), binarize: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Binarized EDSR (Lim et al., CVPR-W 2017); defaults are EDSR-baseline x4. Only the 2 x
    ``num_block`` convs of the residual blocks are binarized by default.

    Args:
        num_in_ch, num_out_ch: image channels. num_feat: features. num_block: residual blocks.
        upscale: scale factor. res_scale: residual scaling. img_range, rgb_mean: EDSR's
        input normalisation. binarize: the binarize config as a dict.
    """
    return BinarizedArch(dict(type="EDSR", num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                              num_block=num_block, upscale=upscale, res_scale=res_scale, img_range=img_range,
                              rgb_mean=list(rgb_mean)), _body_only(binarize, "conv_after_body"))


def MSRResNetBin(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,  # noqa: N802
                 upscale: int = 4, binarize: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Binarized SRResNet (BasicSR's MSRResNet: Ledig et al., CVPR 2017, without BN). Only the
    2 x ``num_block`` convs of the residual blocks are binarized by default.

    Args:
        num_in_ch, num_out_ch: image channels. num_feat: features. num_block: residual blocks.
        upscale: scale factor (2, 3 or 4). binarize: the binarize config as a dict.
    """
    return BinarizedArch(dict(type="MSRResNet", num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                              num_block=num_block, upscale=upscale), _body_only(binarize, "conv_hr"))


BINARIZED_ARCHS = {f.__name__: f for f in (BinarizedArch, EDSRBin, MSRResNetBin)}
