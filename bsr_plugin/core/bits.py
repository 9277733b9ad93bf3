"""Sign bits packed eight to a byte: the one bit-layout shared by the flip-ratio record and
the packed model file (the CPU engine repacks these bits into 64-bit words per pixel).

Layout: the tensor is flattened in C order (for a conv weight: out, in, kh, kw); element
``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``; the bit is 1 for a
non-negative value (sign +1) and 0 for a negative one (sign -1). The last byte is padded
with zero bits.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def packed_size(numel: int) -> int:
    """Bytes needed for ``numel`` sign bits."""
    return (numel + 7) // 8


def pack_signs(x: Tensor) -> Tensor:
    """Pack ``x >= 0`` into a flat ``uint8`` tensor of ``packed_size(x.numel())`` bytes."""
    bits = (x.detach().reshape(-1) >= 0).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return (bits.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """The ``numel`` bits of ``packed`` as a ``bool`` tensor (True = sign +1)."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed signs must be a flat uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if packed.numel() != packed_size(numel):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold exactly {numel} signs "
                         f"({packed_size(numel)} bytes expected)")
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    return (packed.view(-1, 1) & weights).ne(0).view(-1)[:numel]


def unpack_signs(packed: Tensor, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_signs`: a tensor of ``shape`` holding exactly +-1."""
    numel = 1
    for s in shape:
        numel *= int(s)
    bits = unpack_bits(packed, numel)
    return torch.where(bits, 1.0, -1.0).to(dtype).view(tuple(shape))


def popcount(packed: Tensor) -> int:
    """Number of set bits in a ``uint8`` tensor."""
    return int(_POPCOUNT.to(packed.device)[packed.long()].sum())
