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

Every network built here carries ``bsr_build = {"builder": "basicsr", "spec": <network_g>}``:
the BasicSR spec that builds it again (a packed file records it, so ``load_packed`` and the
``bsr`` command rebuild the network through the builder this integration registers).
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Optional

from torch import Tensor, nn

from ...conversion import DEFAULT_RULES, BinarizeConfig, convert
from ...core.replace import replace_modules
from ...errors import ConfigError
from .shims import import_basicsr

BLOCKS = ("residual", "bbcu")
# The recipe options/edsr_bin.yml and msrresnet_bin.yml ship (round 3, benchmarks/README.md):
# BBCU's unit, each binary branch aligned to 0.1x its input, RSign and RPReLU. The backbones'
# own defaults stay round 2's (``block: residual``) so option files and checkpoints written
# before it still build the network they were trained as.
SHIPPED_UNIT: dict[str, Any] = {"block": "bbcu", "binarize": {"align": 0.1, "rsign": True, "rprelu": True}}


def float_arch_registry():
    import_basicsr()
    from basicsr.utils.registry import ARCH_REGISTRY

    return ARCH_REGISTRY


def check_arch_spec(spec: Any) -> str:
    """Validate ``{type: <registered float arch>, ...}``; returns the type name."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"network_g.arch must be a mapping with a 'type' (a BasicSR architecture), got {spec!r}")
    registry = float_arch_registry()
    name = spec["type"]
    if name not in registry:
        close = difflib.get_close_matches(str(name), list(registry.keys()), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown float architecture {name!r} in network_g.arch.type: it is not in BasicSR's "
                          f"ARCH_REGISTRY.{hint} (a custom architecture must be imported before training starts)")
    if name in BINARIZED_ARCHS:
        raise ConfigError(f"network_g.arch.type {name!r} is already a binarized architecture; name the float one")
    return name


def build_float_arch(spec: Mapping[str, Any]) -> nn.Module:
    """Build a float network from BasicSR's registry: ``{type: EDSR, num_feat: 64, ...}``."""
    name = check_arch_spec(spec)
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    return float_arch_registry().get(name)(**kwargs)


def _binarized(float_net: nn.Module, binarize: Optional[Mapping[str, Any]], spec: dict[str, Any]) -> nn.Module:
    """``convert`` of ``float_net`` (in place), tagged with the BasicSR spec that rebuilds it."""
    net = convert(float_net, BinarizeConfig.from_dict(binarize), inplace=True)
    net.bsr_build = {"builder": "basicsr", "spec": spec}
    return net


def BinarizedArch(arch: Mapping[str, Any], binarize: Optional[Mapping[str, Any]] = None) -> nn.Module:  # noqa: N802
    """Any registered float architecture, binarized.

    Args:
        arch: the float architecture's options, with its registered ``type``.
        binarize: a :class:`bsr_plugin.BinarizeConfig` as a dict (``None``: defaults).
    """
    spec = {"type": "BinarizedArch", "arch": dict(arch), "binarize": dict(binarize or {})}
    return _binarized(build_float_arch(arch), binarize, spec)


class ShortcutUnitBlock(nn.Module):
    """A residual block (BasicSR's ``ResidualBlockNoBN``) rebuilt as BBCU's binary unit
    (Xia et al., "Basic Binary Convolution Unit for Binarized Image Restoration Network", ICLR
    2023): ``conv2(conv1(x))`` where each conv, once binarized, carries its own real identity
    shortcut (``y = B(x) + x``); the block's own skip, its ReLU and ``res_scale`` are gone, so
    the input is not added twice. The convs keep their names, so float checkpoints still load.

    Args:
        conv1, conv2: the block's two convs.
    """

    def __init__(self, conv1: nn.Module, conv2: nn.Module) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


def _with_blocks(net: nn.Module, block: str) -> nn.Module:
    """``net`` with every ``ResidualBlockNoBN`` of its body rebuilt as ``block`` (:data:`BLOCKS`)."""
    if block != "bbcu":
        return net
    from basicsr.archs.arch_util import ResidualBlockNoBN

    def unit(name: str, module: nn.Module) -> Optional[nn.Module]:
        if name.startswith("body.") and isinstance(module, ResidualBlockNoBN):
            return ShortcutUnitBlock(module.conv1, module.conv2)
        return None

    return replace_modules(net, unit)


def _body_only(binarize: Optional[Mapping[str, Any]], keep: str, block: str) -> dict[str, Any]:
    """The paper backbones binarize their residual body only: besides the first, last and
    upsampler convs, the conv after the body (EDSR) or at HR resolution (SRResNet) stays full
    precision unless ``binarize.rules`` says otherwise. ``block: bbcu`` needs the shortcuts."""
    if block not in BLOCKS:
        raise ConfigError(f"network_g.block: {block!r} is not one of {BLOCKS}")
    data = dict(binarize or {})
    data.setdefault("rules", [{a: p} for a, p in DEFAULT_RULES] + [{"keep": keep}])
    if block == "bbcu" and data.get("shortcut", "auto") not in ("auto", "identity"):
        raise ConfigError(f"network_g: block 'bbcu' gives every binarized conv its own real identity shortcut; "
                          f"binarize.shortcut {data['shortcut']!r} contradicts it (use auto, or block 'residual')")
    return data


def _backbone(arch: dict[str, Any], name: str, keep: str, block: str,
              binarize: Optional[Mapping[str, Any]]) -> nn.Module:
    spec = dict(arch, type=name, block=block, binarize=dict(binarize or {}))
    config = _body_only(binarize, keep, block)
    return _binarized(_with_blocks(build_float_arch(arch), block), config, spec)


def EDSRBin(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,  # noqa: N802
            upscale: int = 4, res_scale: float = 1, img_range: float = 255.,
            rgb_mean: tuple = (0.4488, 0.4371, 0.4040), block: str = "residual",
            binarize: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Binarized EDSR (Lim et al., CVPR-W 2017); defaults are EDSR-baseline x4. Only the 2 x
    ``num_block`` convs of the residual blocks are binarized by default.

    Args:
        num_in_ch, num_out_ch: image channels. num_feat: features. num_block: residual blocks.
        upscale: scale factor. res_scale: residual scaling. img_range, rgb_mean: EDSR's
            input normalisation.
        block: ``residual`` (EDSR's block: its skip kept, no shortcut added inside) or ``bbcu``
            (each binarized conv with its own real identity shortcut, the block's skip and ReLU
            removed: :class:`ShortcutUnitBlock`; the shipped recipe, :data:`SHIPPED_UNIT`).
        binarize: the binarize config as a dict.
    """
    arch = dict(type="EDSR", num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_block=num_block,
                upscale=upscale, res_scale=res_scale, img_range=img_range, rgb_mean=list(rgb_mean))
    return _backbone(arch, "EDSRBin", "conv_after_body", block, binarize)


def MSRResNetBin(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,  # noqa: N802
                 upscale: int = 4, block: str = "residual", binarize: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Binarized SRResNet (BasicSR's MSRResNet: Ledig et al., CVPR 2017, without BN). Only the
    2 x ``num_block`` convs of the residual blocks are binarized by default.

    Args:
        num_in_ch, num_out_ch: image channels. num_feat: features. num_block: residual blocks.
        upscale: scale factor (2, 3 or 4).
        block: ``residual`` or ``bbcu``, as for :func:`EDSRBin`.
        binarize: the binarize config as a dict.
    """
    arch = dict(type="MSRResNet", num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                num_block=num_block, upscale=upscale)
    return _backbone(arch, "MSRResNetBin", "conv_hr", block, binarize)


BINARIZED_ARCHS = {f.__name__: f for f in (BinarizedArch, EDSRBin, MSRResNetBin)}
