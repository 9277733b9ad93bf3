"""Inference modules that run binarized layers on the packed engine, and the swap that puts
them into a network.

A :class:`PackedBinaryConv2d` / :class:`PackedBinaryLinear` holds what the computation needs
and nothing else: the sign bits of the weight as 64-bit words (:func:`kernels.pack_weight`),
alpha, and the bias, RSign threshold and RPReLU parameters when the layer has them; no fp32
latent weight. Its forward is :func:`kernels.binary_conv2d` / :func:`kernels.binary_linear`
(the C++ extension, or its float simulation where the extension is not built).

:func:`to_engine` swaps every binarized layer of a network for its packed module (the
network is changed in place, like ``convert``); a layer the engine cannot run keeps its float
simulation, with a warning that names it and says why (:func:`engine_support`, asked before
any call: ``groups > 1``, binarization switched off, ...). Where one probe forward pass (the
structure probe of ``convert``) shows a binarized conv whose only user is an ``nn.PixelShuffle``
(an SR upsampler), the shuffle is fused into the conv's output pass and the ``PixelShuffle``
module becomes an ``nn.Identity``: the unshuffled tensor, the largest of the network, is never
made. A ``conv -> PixelShuffle -> conv`` chain at the end of the network then runs in bands of
output rows (:mod:`.bands`), so the shuffled tensor is never made whole either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...conversion.dataflow import DataflowGraph, default_probe, record_dataflow
from ...core.layers import BinaryConv2d, BinaryLayerMixin, BinaryLinear, channel_shortcut
from ...core.registry import binary_layers, form_of, register_form
from ...core.replace import replace_by_identity
from ...errors import EngineError
from . import kernels
from .bands import band_chains, module_uses, shuffle_after, upsample_chains

logger = logging.getLogger(__name__)


def _optional(layer: nn.Module, name: str) -> Optional[Tensor]:
    value = getattr(layer, name, None)
    return None if value is None else value.detach().clone().float()


EXTRAS = ("bias", "threshold", "act_shift_in", "act_slope", "act_shift_out")
LayerState = dict[str, Optional[Tensor]]


class _PackedLayer(nn.Module):
    """State shared by the packed modules: packed weight words, alpha, bias, RSign, RPReLU."""

    weight_bits: Tensor
    alpha: Tensor

    def _take(self, layer: BinaryLayerMixin, state: Optional[LayerState]) -> None:
        """The computation's tensors: from ``state`` when given (a packed file's: ``signs``,
        +-1 of the weight's shape, ``alpha`` and the extra tensors the layer has), else from
        ``layer`` itself (which then needs real weights; with ``state`` a meta-device layer
        gives only its geometry)."""
        self.shortcut = layer.shortcut
        out = layer.weight.shape[0]
        if state is None:
            signs, alpha = layer.weight.detach().float(), layer.alpha()
            state = {name: _optional(layer, name) for name in EXTRAS}
        else:
            signs, alpha = state["signs"].float(), state.get("alpha")
        self.register_buffer("weight_bits", kernels.pack_weight(signs))
        self.register_buffer("alpha", (alpha if alpha is not None else torch.ones(out)).detach().clone().float())
        for name in EXTRAS:
            value = state.get(name)
            self.register_buffer(name, None if value is None else value.detach().clone().float())

    def _rprelu(self) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        if self.act_slope is None:
            return None
        return self.act_shift_in, self.act_slope, self.act_shift_out

    def extra_repr(self) -> str:
        extra = (", rsign=True" if self.threshold is not None else "") + (
            ", rprelu=True" if self.act_slope is not None else "")
        return f"shortcut={self.shortcut}, engine={kernels.isa() if kernels.available() else 'float simulation'}" \
               + extra


class PackedBinaryConv2d(_PackedLayer):
    """A binarized conv for inference on the packed engine (see the module docstring).

    Args:
        layer: the :class:`~bsr_plugin.BinaryConv2d` it replaces (``groups == 1``).
        state: its tensors from a packed file (``signs``, ``alpha``, extras), else taken from
            ``layer``, which may then be on the meta device.
    """

    def __init__(self, layer: BinaryConv2d, state: Optional[LayerState] = None) -> None:
        super().__init__()
        _check_layer(layer, BinaryConv2d, type(self).__name__, from_state=state is not None)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.dilation = layer.kernel_size, layer.stride, layer.dilation
        left, right, top, bottom = layer._reversed_padding_repeated_twice
        self.pad = (top, bottom, left, right)
        self.padding_mode = layer.padding_mode
        self.pixel_shuffle = 1  # > 1: the output is pixel-shuffled by this factor (set by to_engine)
        self._take(layer, state)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding_mode == "zeros":
            return kernels.binary_conv2d(
                x, self.weight_bits, in_channels=self.in_channels, kernel_size=self.kernel_size, stride=self.stride,
                padding=self.pad, dilation=self.dilation, scale=self.alpha, bias=self.bias, threshold=self.threshold,
                shortcut=self.shortcut, rprelu=self._rprelu(), pixel_shuffle=self.pixel_shuffle)
        top, bottom, left, right = self.pad  # reflect/replicate/circular: pad the float input, then convolve
        y = kernels.binary_conv2d(
            F.pad(x, (left, right, top, bottom), mode=self.padding_mode), self.weight_bits,
            in_channels=self.in_channels, kernel_size=self.kernel_size, stride=self.stride, padding=0,
            dilation=self.dilation, scale=self.alpha, bias=self.bias, threshold=self.threshold, shortcut="none",
            rprelu=self._rprelu())
        if self.shortcut != "none":
            y = y + channel_shortcut(x, self.shortcut, self.in_channels, self.out_channels)
        return F.pixel_shuffle(y, self.pixel_shuffle) if self.pixel_shuffle > 1 else y

    def extra_repr(self) -> str:
        shuffle = f", pixel_shuffle={self.pixel_shuffle}" if self.pixel_shuffle > 1 else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.pad}, dilation={self.dilation}{shuffle}, " + super().extra_repr())


class PackedBinaryLinear(_PackedLayer):
    """A binarized linear layer for inference on the packed engine (packed GEMM).

    Args:
        layer: the :class:`~bsr_plugin.BinaryLinear` it replaces.
        state: as for :class:`PackedBinaryConv2d`.
    """

    def __init__(self, layer: BinaryLinear, state: Optional[LayerState] = None) -> None:
        super().__init__()
        _check_layer(layer, BinaryLinear, type(self).__name__, from_state=state is not None)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._take(layer, state)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.binary_linear(x, self.weight_bits, in_features=self.in_features, scale=self.alpha,
                                     bias=self.bias, threshold=self.threshold, shortcut=self.shortcut,
                                     rprelu=self._rprelu())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, " + super().extra_repr()


register_form(BinaryConv2d, "packed", PackedBinaryConv2d)
register_form(BinaryLinear, "packed", PackedBinaryLinear)


def is_packed(module: nn.Module) -> bool:
    """True for a layer that runs on the packed engine."""
    return isinstance(module, _PackedLayer)


def _packed_type(layer: nn.Module) -> Optional[type[_PackedLayer]]:
    return form_of(layer, "packed")  # type: ignore[return-value]


def engine_support(layer: nn.Module, native: bool = False, from_state: bool = False) -> Optional[str]:
    """Why ``layer`` cannot run on the packed engine, or None when it can: asked before any
    call (``to_engine`` keeps a layer with a reason on its float simulation and warns with it;
    the packed modules' constructors raise it as an :class:`~bsr_plugin.EngineError`).

    A layer can run when it has a packed module (a :class:`~bsr_plugin.BinaryConv2d` or
    :class:`~bsr_plugin.BinaryLinear`), both its binarizations are on, its weight is a floating
    point CPU tensor and its shape is one the engine runs (:func:`kernels.conv_support`,
    :func:`kernels.linear_support`: ``groups == 1``, ``C * KH * KW < 2**24``). Without the C++
    extension such a layer still runs, on the float simulation; ``native=True`` also requires
    the native kernels (the extension loaded and ``BSR_ENGINE_ISA`` usable).
    """
    if _packed_type(layer) is None:
        return f"{type(layer).__name__} has no packed module (binarized convs and linears only)"
    if not layer.fully_binary:
        return "its binarization is switched off (binarize_act and binarize_weight must both be on)"
    weight = layer.weight
    devices = ("cpu", "meta") if from_state else ("cpu",)  # from a file's state: the layer gives its geometry only
    if not weight.is_floating_point() or weight.device.type not in devices:
        return f"its weight is {weight.dtype} on {weight.device}; the packed engine packs floating point CPU weights"
    if isinstance(layer, BinaryConv2d):
        problem = kernels.conv_support(layer.in_channels, layer.out_channels, layer.kernel_size, layer.groups)
    else:
        problem = kernels.linear_support(layer.in_features, layer.out_features)
    if problem is None and native:
        problem = kernels.unavailable_reason() or kernels.isa_problem()
        problem = problem and f"the native kernels cannot run: {problem}"
    return problem


def _check_layer(layer: nn.Module, expected: type, name: str, from_state: bool = False) -> None:
    if not isinstance(layer, expected):
        raise EngineError(f"{name}: layer must be a {expected.__name__}, got {type(layer).__name__}")
    problem = engine_support(layer, from_state=from_state)
    if problem is not None:
        raise EngineError(f"{name}: the packed engine cannot run this layer: {problem}")


def _packed_for(name: str, layer: nn.Module) -> Optional[nn.Module]:
    problem = engine_support(layer)
    if problem is not None:
        logger.warning("engine: %s keeps its float simulation: %s", name, problem)
        return None
    return _packed_type(layer)(layer)  # type: ignore[misc]


def _shuffle_fusions(model: nn.Module, graph: DataflowGraph) -> dict[str, str]:
    """``{conv: pixel shuffle module}`` for binarized convs whose output goes to one
    ``nn.PixelShuffle`` and nowhere else (each module used once)."""
    modules, uses = dict(model.named_modules()), module_uses(graph)
    found = {}
    for node in graph.nodes:
        shuffle = shuffle_after(graph, node, modules, uses)
        if shuffle is not None and isinstance(modules.get(node.target), BinaryConv2d):
            found[node.target] = shuffle.scope
    return found


@dataclass
class EnginePlan:
    """What one probe forward pass of a binarized network tells the engine: the binarized convs
    whose ``nn.PixelShuffle`` it fuses (``{conv: shuffle}``) and the ``conv -> PixelShuffle ->
    conv`` chains it runs in bands."""

    fusions: dict[str, str]
    chains: list[tuple[str, str, str]]


@torch.no_grad()
def plan_engine(model: nn.Module, example_input: Optional[Tensor] = None) -> EnginePlan:
    """Probe ``model`` once in eval mode (on its device: the meta device works too) for its
    :class:`EnginePlan`. ``example_input``: default a random ``2 x C x 32 x 32`` batch."""
    model.eval()
    graph = record_dataflow(model, default_probe(model) if example_input is None else example_input, train=False)
    return EnginePlan(_shuffle_fusions(model, graph), upsample_chains(model, graph))


@torch.no_grad()
def install_engine(model: nn.Module, plan: EnginePlan, packed: dict[str, nn.Module]) -> None:
    """Put the ``packed`` modules (by layer name) into ``model`` in place of its binarized
    layers, fusing the plan's pixel shuffles into them (banding the plan's chains is a separate
    step, :func:`~.bands.band_chains`: it renames the state of the convs it wraps)."""
    swaps: dict[int, nn.Module] = {}
    for name, module in packed.items():
        swaps[id(model.get_submodule(name))] = module
        if name in plan.fusions and isinstance(module, PackedBinaryConv2d):
            shuffle = model.get_submodule(plan.fusions[name])
            module.pixel_shuffle = shuffle.upscale_factor
            swaps[id(shuffle)] = nn.Identity()
    replace_by_identity(model, swaps)


@torch.no_grad()
def to_engine(model: nn.Module, example_input: Optional[Tensor] = None) -> list[str]:
    """Swap every binarized layer of ``model`` (in place, eval mode) for its packed module,
    fusing conv -> PixelShuffle pairs (module docstring); returns the names of the layers that
    keep their float simulation (each warned about). ``example_input``: the probe's input
    (default: a random ``2 x C x 32 x 32`` batch)."""
    plan = plan_engine(model, example_input)
    kept: list[str] = []
    packed: dict[str, nn.Module] = {}
    for name, layer in binary_layers(model):  # a layer shared under several names is packed once
        module = _packed_for(name, layer)
        if module is None:
            kept.append(name)
        else:
            packed[name] = module
    install_engine(model, plan, packed)
    band_chains(model, plan.chains)
    return kept
