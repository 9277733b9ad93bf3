"""Conversion: ``convert(model)`` rewrites a float network into a binarized one, from one probe
forward pass (the structure: stems, upsamplers, skips, ReLUs feeding a sign) and ordered
rules (``BinarizeConfig``). Uses the core only."""

from .config import DEFAULT_RULES, BinarizeConfig
from .convert import ConversionReport, LayerDecision, convert, register_fixup

__all__ = ["BinarizeConfig", "ConversionReport", "DEFAULT_RULES", "LayerDecision", "convert", "register_fixup"]
