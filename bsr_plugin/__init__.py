"""bsr_plugin: binarize super-resolution networks (1-bit weights and activations) with the
compact uniform prior, real identity shortcuts and pixel-wise curriculum learning of
Zhang, Lang, Wei and Zhang, "Embarrassingly Simple Binarization for Deep Single Imagery
Super-Resolution Networks", IEEE TIP 30, 2021.

Tiers (dependencies run one way, upward): :mod:`bsr_plugin.core` (binarized layers, prior,
curriculum, calibration), :mod:`bsr_plugin.conversion` (``convert``),
:mod:`bsr_plugin.analysis` (counts, the binary check), :mod:`bsr_plugin.deploy` (packed
files, the CPU engine, ONNX, the ``bsr`` command), and the toolkit integrations in
:mod:`bsr_plugin.integrations` (``basicsr``, ``mmcv``, ``timm``), which load only when
imported. This package needs only torch, numpy and pyyaml::

    import bsr_plugin
    binary_net = bsr_plugin.convert(float_net)            # or convert(net, prior_a=1e-3, ...)
    print(binary_net.bsr_report)
    print(bsr_plugin.summary(binary_net, (3, 180, 320)))  # FP/binary params, MACs, OPs, storage
    bsr_plugin.export_packed(binary_net, "net.bsrpack")   # 1 bit per binary weight; load_packed()
"""

from __future__ import annotations

import logging

from .analysis.check import BinaryCheck, BinaryCheckError, check_binary
from .analysis.complexity import LayerSummary, ModelSummary, summary
from .conversion import DEFAULT_RULES, BinarizeConfig, ConversionReport, LayerDecision, convert, register_fixup
from .core import (
    BinaryConv2d,
    BinaryLinear,
    LayerOptions,
    PixelCurriculumL1,
    UniformPriorLoss,
    binarize_input,
    binarize_kernel,
    binary_layers,
    calibrate_scales_,
    flip_ratios,
    is_binary,
    prior_penalty,
    project_to_prior_,
    register_binary_layer,
    scale_parameters,
    set_binarization,
    sign,
)
from .deploy.builders import register_builder
from .deploy.onnx_export import export_onnx
from .deploy.packed import PackedInfo, export_packed, load_packed, read_packed
from .errors import (
    BsrError,
    BuilderError,
    CheckpointError,
    CLIError,
    ConfigError,
    EngineError,
    OptionsError,
    PackedFormatError,
    UnsafeInputError,
)
from .version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BinarizeConfig", "BinaryCheck", "BinaryCheckError", "BinaryConv2d", "BinaryLinear", "BsrError", "BuilderError",
    "CheckpointError", "CLIError", "ConfigError", "ConversionReport", "DEFAULT_RULES", "EngineError", "LayerDecision",
    "LayerOptions", "LayerSummary", "ModelSummary", "OptionsError", "PackedFormatError", "PackedInfo",
    "PixelCurriculumL1", "UniformPriorLoss", "binarize_input", "binarize_kernel", "binary_layers",
    "calibrate_scales_", "check_binary", "convert", "export_onnx", "export_packed", "flip_ratios", "is_binary",
    "load_packed", "prior_penalty", "project_to_prior_", "read_packed", "register_binary_layer", "register_builder",
    "register_fixup", "scale_parameters", "set_binarization", "sign", "summary", "UnsafeInputError", "__version__",
]
