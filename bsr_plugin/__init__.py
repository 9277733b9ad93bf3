"""bsr_plugin: binarize super-resolution networks (1-bit weights and activations) with the
compact uniform prior, real identity shortcuts and pixel-wise curriculum learning of
Zhang, Lang, Wei and Zhang, "Embarrassingly Simple Binarization for Deep Single Imagery
Super-Resolution Networks", IEEE TIP 30, 2021.

The core needs only torch, numpy and pyyaml::

    import bsr_plugin
    binary_net = bsr_plugin.convert(float_net)            # or convert(net, prior_a=1e-3, ...)
    print(binary_net.bsr_report)
    print(bsr_plugin.summary(binary_net, (3, 180, 320)))  # FP/binary params, MACs, OPs, storage
    bsr_plugin.export_packed(binary_net, "net.bsrpack")   # 1 bit per binary weight; load_packed()

Toolkit integrations load lazily: ``bsr_plugin.basicsr_ext`` (BasicSR registries, the
``basicsr`` command), ``bsr_plugin.mmcv_ext`` and ``bsr_plugin.timm_ext``.
"""

from __future__ import annotations

import logging

from .binarizers import binarize_activation, binarize_weight, sign
from .check import BinaryCheck, check_binary
from .complexity import LayerSummary, ModelSummary, summary
from .config import DEFAULT_RULES, BinarizeConfig, ConfigError
from .convert import ConversionReport, LayerDecision, convert
from .curriculum import PixelCurriculumL1
from .layers import BinaryConv2d, BinaryLinear, is_binary
from .onnx_export import export_onnx
from .packed import PackedFormatError, PackedInfo, export_packed, load_packed, read_packed
from .prior import (
    UniformPriorLoss,
    binary_layers,
    calibrate_scales_,
    flip_ratios,
    prior_penalty,
    project_to_prior_,
    scale_parameters,
    set_binarization,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BinarizeConfig", "BinaryCheck", "BinaryConv2d", "BinaryLinear", "ConfigError", "ConversionReport",
    "DEFAULT_RULES", "LayerDecision", "LayerSummary", "ModelSummary", "PackedFormatError", "PackedInfo",
    "PixelCurriculumL1", "UniformPriorLoss", "binarize_activation", "binarize_weight", "binary_layers",
    "calibrate_scales_", "check_binary", "convert", "export_onnx", "export_packed", "flip_ratios", "is_binary",
    "load_packed", "prior_penalty", "project_to_prior_", "read_packed", "scale_parameters", "set_binarization",
    "sign", "summary", "__version__",
]
