"""``convert(model)``: rewrite any float network into a binarized one with real identity
shortcuts, in one call (the torchao ``quantize_`` pattern, with a module swap like timm's
``freeze_batch_norm_2d``)."""

from __future__ import annotations

import copy
import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from torch import nn

from ..core.registry import binary_type_for, float_types, is_binary
from ..core.replace import replace_by_identity
from ..errors import ConfigError
from .config import KEYWORDS, BinarizeConfig
from .dataflow import DataflowGraph, default_probe, record_dataflow, weight_layer_names
from .structure import (
    functional_weight_ops,
    input_layers,
    nested_skip_cuts,
    nonnegative_feeders,
    ordered_layers,
    upsampler_layers,
)

logger = logging.getLogger(__name__)

# Called as fixup(model, report) at the end of every convert(): integrations register what a
# toolkit's modules need around binarized layers (e.g. mmcv's ConvModule).
Fixup = Callable[[nn.Module, "ConversionReport"], None]
_FIXUPS: dict[str, Fixup] = {}


def register_fixup(name: str, fixup: Fixup) -> None:
    """Run ``fixup(model, report)`` at the end of every :func:`convert` (idempotent by name).

    For toolkits whose container modules would bypass a binarized layer (mmcv's
    ``ConvModule`` with ``efficient_conv_bn_eval``); the fixup notes what it changed in the report.
    """
    _FIXUPS[name] = fixup


@dataclass
class LayerDecision:
    """What ``convert`` did with one conv/linear layer, and why."""

    name: str
    type: str
    action: str  # "binarized" | "kept" | "already binary"
    reason: str
    shortcut: Optional[str] = None


@dataclass
class ConversionReport:
    """Every conv/linear layer converted or kept, with the reason; notes on what else was
    changed (replaced activations); warnings on what may not be what the user wants (parts
    that stay full precision, 1-bit inputs that are constant, layers bypassed in eval mode)."""

    layers: list[LayerDecision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        logger.info("convert: %s", text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        logger.warning("convert: %s", text)

    @property
    def binarized(self) -> list[str]:
        return [d.name for d in self.layers if d.action in ("binarized", "already binary")]

    @property
    def kept(self) -> list[str]:
        return [d.name for d in self.layers if d.action == "kept"]

    def decision(self, name: str) -> LayerDecision:
        for d in self.layers:
            if d.name == name:
                return d
        raise KeyError(f"no conv/linear layer named {name!r} in this report")

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [vars(d).copy() for d in self.layers], "notes": list(self.notes),
                "warnings": list(self.warnings)}

    def __str__(self) -> str:
        width = max([len(d.name) for d in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'type':<14} {'action':<14} {'shortcut':<9} reason"]
        for d in self.layers:
            lines.append(f"{d.name:<{width}}  {d.type:<14} {d.action:<14} {d.shortcut or '-':<9} {d.reason}")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {n}" for n in self.warnings]
        return "\n".join(lines)


def _pattern_matches(pattern: str, chain: list[tuple[str, nn.Module]], keywords: Mapping[str, set[str]]) -> bool:
    """Does ``pattern`` match the layer (``chain[-1]``) or one of its parents?"""
    layer_name = chain[-1][0]
    if pattern in KEYWORDS:
        return layer_name in keywords[pattern]
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return any(rx.fullmatch(name) for name, _ in chain if name)
    if pattern.startswith("type:"):
        tname = pattern[5:]
        return any(cls.__name__ == tname for _, mod in chain for cls in type(mod).__mro__)
    return any(fnmatch.fnmatchcase(name, pattern) for name, _ in chain if name)


def _chains(model: nn.Module, layers: list[str]) -> dict[str, list[tuple[str, nn.Module]]]:
    out = {}
    for name in layers:
        parts = name.split(".")
        out[name] = [(".".join(parts[:i]), model.get_submodule(".".join(parts[:i]))) for i in range(len(parts) + 1)]
    return out


def _unsupported_hint(model: nn.Module, pattern: str) -> str:
    """Name non-binarizable modules a pattern would have matched, for the error message."""
    hits = []
    for name, mod in model.named_modules():
        if name and not isinstance(mod, float_types()) and _pattern_matches(pattern, [(name, mod)], {}):
            hits.append(f"{name} ({type(mod).__name__})")
    if hits:
        shown = ", ".join(hits[:3]) + (" ..." if len(hits) > 3 else "")
        supported = ", ".join(t.__name__ for t in float_types())
        return f"; it matches only modules that cannot be binarized: {shown}. Binarizable types: {supported}"
    return ""


def _decide(model: nn.Module, config: BinarizeConfig, layers: list[str],
            keywords: Mapping[str, set[str]]) -> dict[str, tuple[bool, str]]:
    """Apply the ordered rules: ``{layer: (binarize?, reason)}``; last matching rule wins."""
    chains = _chains(model, layers)
    decisions = {name: (False, "no rule selects it") for name in layers}
    for action, raw in config.rules:
        optional = raw.endswith("?")
        pattern = raw.rstrip("?")
        hit = [n for n in layers if _pattern_matches(pattern, chains[n], keywords)]
        if not hit and not optional:
            kw = " (no layer of that kind was found)" if pattern in KEYWORDS else ""
            raise ConfigError(f"binarize rule {{{action}: {raw}}} matches no conv/linear layer of "
                              f"{type(model).__name__}{kw}{_unsupported_hint(model, pattern)}. Fix or remove the "
                              f"rule (end its pattern with '?' to make it optional).")
        for n in hit:
            decisions[n] = (action == "binarize", f"rule {action}: {raw}")
    return decisions


def _binary_from(layer: nn.Module, options: dict[str, Any]) -> nn.Module:
    binary_type = binary_type_for(layer)
    assert binary_type is not None, "weight_layer_names returns registered float types only"
    return binary_type.from_float(layer, **options)


def convert(model: nn.Module, config: BinarizeConfig | Mapping[str, Any] | None = None, *, inplace: bool = False,
            example_input: Any = None, **overrides: Any) -> nn.Module:
    """Binarize ``model``: every conv/linear the rules select becomes a :class:`BinaryConv2d`
    or :class:`BinaryLinear` with 1-bit weights and activations, the compact uniform prior on
    its latent weight and a real identity shortcut.

    Args:
        model: any float network (a module; it is not modified unless ``inplace``).
        config: a :class:`BinarizeConfig`, its dict form, or ``None`` for the defaults.
        inplace: convert ``model`` itself instead of a deep copy.
        example_input: an input for the one probe forward pass that reveals the structure
            (default: a random ``2 x C x 32 x 32`` batch for the first conv's ``C``).
        **overrides: config fields to change, e.g. ``prior_a=1e-3``.

    Returns:
        The binarized network, carrying ``bsr_config`` (the config used) and ``bsr_report``
        (a :class:`ConversionReport`). Float weights carry over; already binarized layers are
        left as they are.
    """
    if not isinstance(model, nn.Module):
        hint = (" (this looks like a state dict: build the network, load the dict into it, then convert it)"
                if isinstance(model, Mapping) else "")
        raise ConfigError(f"convert() needs a torch.nn.Module, got {type(model).__name__}{hint}")
    config = BinarizeConfig.coerce(config)
    if overrides:
        config = config.replace(**overrides)
    if not inplace:
        model = copy.deepcopy(model)

    layers = weight_layer_names(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} holds no layer convert() can binarize "
                          f"({', '.join(t.__name__ for t in float_types())}): nothing to binarize")
    probe_input = default_probe(model) if example_input is None else example_input
    try:
        graph = record_dataflow(model, probe_input)
        eval_ran = set(record_dataflow(model, probe_input, train=False).executed_modules())
    except Exception as err:
        raise ConfigError(
            f"convert() could not run a probe forward pass of {type(model).__name__} on an input of shape "
            f"{tuple(getattr(probe_input, 'shape', ()))} ({type(err).__name__}: {err}). Pass a valid input as "
            "convert(model, example_input=...).") from err

    report = ConversionReport()
    mapping = _plan(model, config, layers, graph, report)
    silent = [d.name for d in report.layers if d.action == "binarized" and d.name not in eval_ran]
    if silent:
        report.warn(f"{len(silent)} binarized layers do not run in eval mode ({', '.join(silent[:3])}"
                            f"{' ...' if len(silent) > 3 else ''}): the network computes with their weights another "
                            "way at inference (e.g. re-parameterization), so its eval output is not binary")
    model = replace_by_identity(model, mapping)
    model.bsr_config = config
    model.bsr_report = report
    for fixup in _FIXUPS.values():
        fixup(model, report)
    n_bin = len(report.binarized)
    logger.info("binarized %d of %d conv/linear layers of %s", n_bin, len(report.layers), type(model).__name__)
    return model


def _plan(model: nn.Module, config: BinarizeConfig, layers: list[str], graph: DataflowGraph,
          report: ConversionReport) -> dict[int, nn.Module]:
    """Decide every layer, fill ``report``, and return the module replacements by identity."""
    ran = ordered_layers(graph, layers)
    keywords = {"first": input_layers(graph, layers) or set(ran[:1]), "last": set(ran[-1:]),
                "upsampler": upsampler_layers(graph, layers)}
    decisions = _decide(model, config, layers, keywords)
    modules = dict(model.named_modules())
    chosen = [n for n in layers if decisions[n][0] and not is_binary(modules[n])]

    options = config.layer_kwargs()
    built = {n: _binary_from(modules[n], options) for n in dict.fromkeys(chosen)}  # the shortcut each would get
    cuts: dict[str, str] = {}
    if config.nested_skips != "keep":
        cuttable = {n for n in chosen if built[n].shortcut != "none"}
        cuts = nested_skip_cuts(graph, cuttable, config.nested_skips)

    mapping: dict[int, nn.Module] = {}
    for name in layers:
        mod = modules[name]
        binarize, reason = decisions[name]
        tname = type(mod).__name__
        if is_binary(mod):
            report.layers.append(LayerDecision(name, tname, "already binary", "left as it is", mod.shortcut))
            continue
        if not binarize:
            report.layers.append(LayerDecision(name, tname, "kept", reason))
            continue
        if name not in ran:
            report.warn(f"{name} did not run in the probe forward pass; its place in the network "
                                "(first/last/upsampler, skips) is unknown")
        if id(mod) not in mapping:
            mapping[id(mod)] = _binary_from(mod, dict(options, shortcut="none")) if name in cuts else built[name]
        new = mapping[id(mod)]
        why = reason + (f"; shortcut cut: {cuts[name]}" if name in cuts else "")
        report.layers.append(LayerDecision(name, tname, "binarized", why, new.shortcut))
        if type(mod) not in float_types() and type(mod).forward not in (nn.Conv2d.forward, nn.Linear.forward):
            report.warn(f"{name} is a {tname} with its own forward; the binarized layer computes a plain "
                                f"{'conv' if isinstance(mod, nn.Conv2d) else 'linear'} op instead")

    if config.binarize_act:
        _apply_relu_policy(graph, config, chosen, mapping, report)
    scopes = list(dict.fromkeys(n.scope or "<root>" for n in functional_weight_ops(graph)))
    if scopes:
        report.warn(f"{len(scopes)} modules compute with functional conv/linear calls that stay full precision "
                            f"(only Conv2d/Linear modules are binarized): {', '.join(scopes[:4])}"
                            f"{' ...' if len(scopes) > 4 else ''}")
    return mapping


def _apply_relu_policy(graph: DataflowGraph, config: BinarizeConfig, chosen: list[str],
                       mapping: dict[int, nn.Module], report: ConversionReport) -> None:
    """Replace ReLUs that feed a binarized layer (their output's sign is constant +1)."""
    replaced: list[str] = []
    for name in chosen:
        for node in nonnegative_feeders(graph, name):
            if node.kind == "module" and isinstance(node.module, (nn.ReLU, nn.ReLU6)) and config.relu != "keep":
                if id(node.module) in mapping:
                    continue
                inplace = getattr(node.module, "inplace", False)
                mapping[id(node.module)] = (nn.LeakyReLU(config.leaky_slope, inplace=inplace)
                                            if config.relu == "leaky" else nn.Identity())
                replaced.append(node.target)
            else:
                what = node.target if node.kind == "module" else f"a functional {node.target} in '{node.scope}'"
                report.warn(f"{what} feeds binarized {name} with values >= 0, so its 1-bit input is "
                                    "constant +1; use a sign-preserving activation there")
    if replaced:
        new = f"LeakyReLU({config.leaky_slope})" if config.relu == "leaky" else "Identity"
        report.note(f"{len(replaced)} ReLUs feeding binarized layers replaced by {new} (relu: {config.relu}): "
                            f"{', '.join(replaced[:4])}{' ...' if len(replaced) > 4 else ''}")
