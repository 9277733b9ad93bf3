"""The k-bit baseline of the benchmark: uniform fake-quantized weights and activations (LSQ,
Esser et al., ICLR 2020) in exactly the layers ``bsr_plugin.convert`` would binarize.

Imported by ``basicsr train --plugin benchmarks.fakequant``, it registers the BasicSR
architecture ``FakeQuantArch``::

    network_g: {type: FakeQuantArch, bits: 5, arch: {type: EDSR, ...}, binarize: {...}}

``binarize`` only chooses the layers (the binarized network's report names them); those
layers then quantize their input and weight to ``bits`` bits, signed, with learned step sizes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from bsr_plugin.integrations.basicsr import register as register_bsr
from bsr_plugin.integrations.basicsr.archs import EDSRBin, build_float_arch


def _round_ste(x: Tensor) -> Tensor:
    """Forward ``round(x)``; gradient identity."""
    return (x.round() - x).detach() + x


def _grad_scale(x: Tensor, scale: float) -> Tensor:
    """Forward ``x``; gradient ``scale * g`` (LSQ's step-size gradient scaling)."""
    return (x - x * scale).detach() + x * scale


class LSQ(nn.Module):
    """Signed uniform quantizer with a learned step size: forward
    ``s * round(clamp(x / s, -Qn, Qp))``, gradient straight through inside the range, LSQ's
    gradient for ``s``. The step starts at ``2 mean|x| / sqrt(Qp)`` on the first batch."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.qn, self.qp = 2 ** (bits - 1) - 1, 2 ** (bits - 1) - 1
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            with torch.no_grad():
                self.step.copy_(2 * x.detach().abs().mean() / math.sqrt(self.qp) + 1e-8)
                self.initialized.fill_(True)
        s = _grad_scale(self.step, 1.0 / math.sqrt(x.numel() * self.qp))
        return _round_ste(torch.clamp(x / s, -self.qn, self.qp)) * s


class FakeQuantConv2d(nn.Conv2d):
    """Conv2d whose input and weight are fake-quantized to ``bits`` bits (LSQ)."""

    def __init__(self, conv: nn.Conv2d, bits: int) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        self.load_state_dict(conv.state_dict())
        self.act_q, self.weight_q = LSQ(bits), LSQ(bits)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_q(x), self.weight_q(self.weight), self.bias)


def FakeQuantArch(arch: Mapping[str, Any], bits: int, binarize: Optional[Mapping[str, Any]] = None) -> nn.Module:  # noqa: N802
    """A float BasicSR architecture whose would-be-binarized layers are ``bits``-bit fake-quantized.

    Args:
        arch: the float architecture (``type`` and its options).
        bits: bit width of weights and activations.
        binarize: the binarize config that chooses the layers (EDSR: its residual body, as
            ``EDSRBin`` does).
    """
    if arch.get("type") == "EDSR" and binarize is None:
        kwargs = {k: v for k, v in arch.items() if k != "type"}
        names = EDSRBin(**kwargs).bsr_report.binarized
    else:
        from bsr_plugin import convert

        names = convert(build_float_arch(arch), binarize).bsr_report.binarized
    net = build_float_arch(arch)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        setattr(owner, child, FakeQuantConv2d(getattr(owner, child), bits))
    net.quantized_layers = names
    return net


def register() -> None:
    register_bsr()
    from basicsr.utils.registry import ARCH_REGISTRY

    if "FakeQuantArch" not in ARCH_REGISTRY:
        ARCH_REGISTRY.register(FakeQuantArch)


register()
