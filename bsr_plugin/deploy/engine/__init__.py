"""The packed XNOR-popcount engine: CPU inference kernels of binarized convs and linears
(:mod:`.kernels`: the semantics, the packed layout, the fallback to the float simulation when
the C++ extension is not built, what the engine can run), the inference modules that run them
and the swap that puts them into a network (:mod:`.modules`; :func:`engine_support` says
beforehand whether a layer can run), banded execution of the last upsampling step (:mod:`.bands`),
and ``bsr bench`` (:mod:`.bench`).
"""

from .bands import BandedUpsample, band_upsamplers
from .kernels import (
    ISAS,
    SHORTCUTS,
    available,
    available_isas,
    binary_conv2d,
    binary_linear,
    conv_counts,
    conv_support,
    isa,
    isa_problem,
    linear_support,
    pack_input,
    pack_weight,
    reference_binary_conv2d,
    reference_binary_linear,
    reference_conv_counts,
    reference_pack_input,
    reference_pack_weight,
    set_isa,
    status_line,
    unavailable_reason,
    unpack_weight,
    use_isa,
    xor_popcount_roofline,
)
from .modules import PackedBinaryConv2d, PackedBinaryLinear, engine_support, is_packed, to_engine

__all__ = [
    "BandedUpsample",
    "band_upsamplers",
    "ISAS",
    "PackedBinaryConv2d",
    "PackedBinaryLinear",
    "engine_support",
    "is_packed",
    "to_engine",
    "SHORTCUTS",
    "available",
    "available_isas",
    "binary_conv2d",
    "binary_linear",
    "conv_counts",
    "conv_support",
    "isa",
    "isa_problem",
    "linear_support",
    "pack_input",
    "pack_weight",
    "reference_binary_conv2d",
    "reference_binary_linear",
    "reference_conv_counts",
    "reference_pack_input",
    "reference_pack_weight",
    "set_isa",
    "status_line",
    "unavailable_reason",
    "unpack_weight",
    "use_isa",
    "xor_popcount_roofline",
]
