"""Residual blocks of an engine network without their extra elementwise passes.

BasicSR's ``ResidualBlockNoBN`` returns ``identity + conv2(relu(conv1(x))) * res_scale``: on
the packed engine, where each binarized conv takes ~2 ms at 320x180 (2 threads), the activation,
the multiply (by 1.0 in EDSR-baseline) and the add each read and write the block's whole
64-channel tensor, and the multiply and the add allocate a new one: measured 30 % of the
body-binarized EDSR-baseline's time once its full-precision parts run in int8
(benchmarks/results/engine_network, profile). :func:`fuse_residual_blocks` swaps each such
block for a :class:`FusedResidualBlock` computing the same values, bit for bit:

* the activation (``ReLU`` / ``LeakyReLU``) joins ``conv1``'s output pass as the engine's RPReLU
  epilogue (shift 0, slope = the negative slope) where ``conv1`` is a packed conv without a
  shortcut, RPReLU or fused shuffle of its own; otherwise it stays a module;
* the multiply is skipped when ``res_scale == 1`` and done in place otherwise;
* the add is done in place into ``conv2``'s freshly made output.

The add itself could join ``conv2``'s output pass too, with an engine op taking a tensor to add
(oneDNN's "sum" post-op; the packed engine's shortcut adds the conv's own input, not the block's).
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import torch
from torch import Tensor, nn

from ...core.replace import replace_modules
from .modules import PackedBinaryConv2d

logger = logging.getLogger(__name__)

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
_CONVS = (nn.Conv2d, PackedBinaryConv2d)  # each makes a fresh output tensor, which the block adds into


class FusedResidualBlock(nn.Module):
    """``x + res_scale * conv2(act(conv1(x)))`` with the multiply skipped at 1 and the add in
    place (module docstring).

    Args:
        conv1, conv2: the block's convs (any modules making a fresh tensor).
        act: the activation between them (``nn.Identity`` once fused into ``conv1``).
        res_scale: the residual scale.
    """

    def __init__(self, conv1: nn.Module, act: nn.Module, conv2: nn.Module, res_scale: float) -> None:
        super().__init__()
        self.conv1, self.relu, self.conv2 = conv1, act, conv2
        self.res_scale = float(res_scale)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        if self.res_scale != 1.0:
            out.mul_(self.res_scale)
        return out.add_(x)

    def extra_repr(self) -> str:
        return f"res_scale={self.res_scale}"


def _basicsr_block_type() -> Optional[type]:
    """BasicSR's ``ResidualBlockNoBN`` when BasicSR is loaded (a network holding one has loaded it)."""
    arch_util = sys.modules.get("basicsr.archs.arch_util")
    return getattr(arch_util, "ResidualBlockNoBN", None)


@torch.no_grad()
def fold_activation(conv: nn.Module, act: nn.Module) -> bool:
    """Put ``act`` (``ReLU`` / ``LeakyReLU``) into packed ``conv``'s output pass as its RPReLU
    epilogue (exact: ``t >= 0 ? t : slope * t`` with zero shifts); False when ``conv`` is not a
    packed conv free of shortcut, RPReLU and fused shuffle, or ``act`` is another module."""
    if not isinstance(conv, PackedBinaryConv2d) or not isinstance(act, _ACTIVATIONS):
        return False
    if conv.shortcut != "none" or conv.act_slope is not None or conv.pixel_shuffle != 1:
        return False
    slope = act.negative_slope if isinstance(act, nn.LeakyReLU) else 0.0
    zeros = torch.zeros_like(conv.alpha)
    conv.act_shift_in, conv.act_shift_out = zeros, zeros.clone()
    conv.act_slope = torch.full_like(conv.alpha, float(slope))
    return True


def fuse_residual_blocks(model: nn.Module) -> list[str]:
    """Swap every BasicSR ``ResidualBlockNoBN`` of ``model`` (in place, for inference) for a
    :class:`FusedResidualBlock` (module docstring); returns the names of the blocks swapped."""
    block_type = _basicsr_block_type()
    swapped: list[str] = []
    if block_type is None:
        return swapped

    def decide(name: str, module: nn.Module) -> Optional[nn.Module]:
        if type(module) is not block_type or not all(isinstance(c, _CONVS) for c in (module.conv1, module.conv2)):
            return None
        act = nn.Identity() if fold_activation(module.conv1, module.relu) else module.relu
        swapped.append(name)
        return FusedResidualBlock(module.conv1, act, module.conv2, module.res_scale)

    model = replace_modules(model, decide)
    logger.info("fused %d residual blocks (activation into conv1, add in place)", len(swapped))
    return swapped
