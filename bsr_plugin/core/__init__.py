"""The core: binarizers, binarized layers and their options, the type table, the uniform
prior, the pixel-wise curriculum, the sign-bit layout. It needs only torch and numpy and
imports nothing else from bsr_plugin but :mod:`bsr_plugin.errors`."""

from .binarizers import binarize_input, binarize_kernel, sign
from .bits import pack_signs, unpack_signs
from .calibration import branch_ratios, calibrate_scales_
from .curriculum import PixelCurriculumL1
from .layers import BinaryConv2d, BinaryLayerMixin, BinaryLinear
from .options import LayerOptions
from .prior import (
    UniformPriorLoss,
    flip_ratios,
    prior_penalty,
    project_to_prior_,
    scale_parameters,
    set_binarization,
)
from .registry import binary_layers, binary_type_for, is_binary, register_binary_layer

__all__ = [
    "BinaryConv2d", "BinaryLayerMixin", "BinaryLinear", "LayerOptions", "PixelCurriculumL1", "UniformPriorLoss",
    "binarize_input", "binarize_kernel", "binary_layers", "binary_type_for", "branch_ratios", "calibrate_scales_",
    "flip_ratios",
    "is_binary", "pack_signs", "prior_penalty", "project_to_prior_", "register_binary_layer", "scale_parameters",
    "set_binarization", "sign", "unpack_signs",
]
