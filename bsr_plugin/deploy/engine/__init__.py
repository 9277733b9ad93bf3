"""The packed XNOR-popcount engine: CPU inference kernels of binarized convs and linears.

See :mod:`bsr_plugin.deploy.engine.kernels` for the semantics, the packed layout and the
fallback to the float simulation when the C++ extension is not built.
"""

from .kernels import (
    ISAS,
    SHORTCUTS,
    available,
    available_isas,
    binary_conv2d,
    binary_linear,
    conv_counts,
    isa,
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

__all__ = [
    "ISAS",
    "SHORTCUTS",
    "available",
    "available_isas",
    "binary_conv2d",
    "binary_linear",
    "conv_counts",
    "isa",
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
