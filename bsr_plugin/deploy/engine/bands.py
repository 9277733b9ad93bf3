"""Banded execution of an SR network's last upsampling step, so its largest tensor is never made.

In an SR network most inference memory is not in the body (64 channels at the input size, 32x
smaller still once the engine packs them) but at the end: the last upsampler conv makes
``C * r^2`` channels at the *output's* height and width / r, the pixel shuffle copies them to ``C``
channels at the output size, and the last conv reads that. For EDSR-baseline x4 at 320x180 these
two tensors are 236 MB each, most of the float network's peak.

:class:`BandedUpsample` computes ``last(pixel_shuffle(first(x)))`` in bands of output rows:
each band convolves only the input rows it needs (plus the receptive-field halo of both convs)
and writes its rows of the final output, so only one band of the large tensors exists at a time.
Both convs are treated as black boxes that keep the size ("same" padding, stride 1): a band's
rows next to a cut are recomputed by the neighbouring band, rows next to the image border are
computed with the layers' own padding, so every output row is the one the whole-image pass gives
(up to float rounding: the float conv kernels may sum in another order for another shape).

:func:`band_upsamplers` finds ``conv -> PixelShuffle -> conv`` chains (each module used once,
nothing else reading the intermediate tensors) in one probe pass of the dataflow recorder and
swaps them in place; it works on any network, float ones included (the benchmark applies it to
the float EDSR too, so the saving is shown apart from binarization). :func:`to_engine` calls it.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...conversion.dataflow import DataflowGraph, Node, default_probe, record_dataflow
from ...core.replace import replace_by_identity
from ...errors import EngineError

logger = logging.getLogger(__name__)

DEFAULT_BAND_ROWS = 128


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def same_halo(module: nn.Module) -> Optional[int]:
    """Rows above and below an output row that a size-keeping, stride-1 conv reads (``None``
    for any other module: it cannot be banded)."""
    kernel, stride, dilation = (getattr(module, a, None) for a in ("kernel_size", "stride", "dilation"))
    if kernel is None or stride is None or dilation is None or tuple(stride) != (1, 1):
        return None
    pad = getattr(module, "pad", None)  # PackedBinaryConv2d: (top, bottom, left, right)
    if pad is None:
        padding = getattr(module, "padding", None)
        if not isinstance(padding, tuple):  # "same"/"valid" strings are not handled
            return None
        pad = (padding[0], padding[0], padding[1], padding[1])
    halo_h, halo_w = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
    if halo_h % 2 or halo_w % 2 or pad != (halo_h // 2, halo_h // 2, halo_w // 2, halo_w // 2):
        return None
    return halo_h // 2


class BandedUpsample(nn.Module):
    """``last(pixel_shuffle(first(x), r))`` computed in bands of output rows (module docstring).

    Args:
        first: the upsampler conv (size-keeping, stride 1); with ``shuffled=True`` its output is
            already pixel-shuffled (a packed conv with the shuffle fused into it).
        last: the conv that reads the shuffled tensor (size-keeping, stride 1).
        upscale: the pixel shuffle's factor r.
        shuffled: whether ``first`` shuffles its own output.
        band_rows: output rows per band (a multiple of ``upscale``; more rows: less halo
            recomputation, more memory).
    """

    def __init__(self, first: nn.Module, last: nn.Module, upscale: int, shuffled: bool = False,
                 band_rows: int = DEFAULT_BAND_ROWS) -> None:
        super().__init__()
        for what, module in (("first", first), ("last", last)):
            if not isinstance(module, nn.Module):
                raise EngineError(f"BandedUpsample: {what} must be an nn.Module (a size-keeping stride-1 conv), got "
                                  f"{type(module).__name__}")
        halo_first, halo_last = same_halo(first), same_halo(last)
        if halo_first is None or halo_last is None:
            raise EngineError("BandedUpsample needs two size-keeping stride-1 convs (first, last), got "
                              f"{type(first).__name__} and {type(last).__name__}")
        if not _is_int(upscale) or upscale < 1:
            raise EngineError(f"BandedUpsample: upscale must be a positive int (the pixel shuffle's factor), got "
                              f"{upscale!r}")
        if not _is_int(band_rows) or band_rows < upscale or band_rows % upscale:
            raise EngineError(f"BandedUpsample: band_rows must be a positive multiple of the upscale factor {upscale}, "
                              f"got {band_rows!r}")
        if not isinstance(shuffled, bool):
            raise EngineError(f"BandedUpsample: shuffled must be a bool, got {shuffled!r}")
        self.first, self.last = first, last
        self.upscale, self.shuffled, self.band_rows = upscale, shuffled, band_rows
        self.halo_first, self.halo_last = halo_first, halo_last

    def _band(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Output rows ``[start, stop)`` of ``last(shuffle(first(x)))`` (bounds in output rows)."""
        r, h = self.upscale, x.shape[-2]
        lo, hi = max(start - self.halo_last, 0), min(stop + self.halo_last, h * r)  # rows `last` reads
        in_lo, in_hi = max(lo // r - self.halo_first, 0), min(-(-hi // r) + self.halo_first, h)
        y = self.first(x[..., in_lo:in_hi, :])
        if not self.shuffled:
            y = F.pixel_shuffle(y, r)
        y = self.last(y[..., lo - in_lo * r:hi - in_lo * r, :])
        return y[..., start - lo:stop - lo, :]

    def forward(self, x: Tensor) -> Tensor:
        rows = x.shape[-2] * self.upscale
        out: Optional[Tensor] = None
        for start in range(0, rows, self.band_rows):
            stop = min(start + self.band_rows, rows)
            band = self._band(x, start, stop)
            if out is None:
                shape = (*band.shape[:-2], rows, band.shape[-1])
                channels_last = band.dim() == 4 and band.is_contiguous(memory_format=torch.channels_last)
                out = torch.empty(shape, dtype=band.dtype, device=band.device,
                                  memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            out[..., start:stop, :] = band
        assert out is not None  # rows >= 1
        return out

    def extra_repr(self) -> str:
        return f"upscale={self.upscale}, band_rows={self.band_rows}, shuffled={self.shuffled}"


def module_uses(graph: DataflowGraph) -> dict[str, int]:
    """How many recorded calls ran in (op) or as (module) each module."""
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.kind == "module":
            uses[node.target] = uses.get(node.target, 0) + 1
        elif node.scope:
            uses[node.scope] = uses.get(node.scope, 0) + 1
    return uses


def shuffle_after(graph: DataflowGraph, node: Node, modules: dict[str, nn.Module],
                  uses: dict[str, int]) -> Optional[Node]:
    """The pixel-shuffle op node that is the only user of module ``node``'s output, when both
    the module and its ``nn.PixelShuffle`` are called once (``None`` otherwise)."""
    if node.kind != "module" or len(node.users) != 1 or uses.get(node.target) != 1:
        return None
    user = graph.nodes[node.users[0]]
    if (user.kind == "op" and user.target == "pixel_shuffle" and isinstance(modules.get(user.scope), nn.PixelShuffle)
            and uses.get(user.scope) == 1):
        return user
    return None


def upsample_chains(model: nn.Module, graph: DataflowGraph) -> list[tuple[str, str, str]]:
    """``(first, shuffle, last)`` module names of the ``conv -> nn.PixelShuffle -> conv`` chains
    whose tensors go nowhere else, each module called once, both convs bandable. Chains share no
    module; where two would (x4 = two x2 steps: conv, shuffle, conv, shuffle, conv), the later
    one, which makes the larger tensors, is taken."""
    modules, uses = dict(model.named_modules()), module_uses(graph)
    chains: list[tuple[str, str, str]] = []
    taken: set[str] = set()
    for node in reversed(graph.nodes):
        shuffle = shuffle_after(graph, node, modules, uses)
        if shuffle is None or len(shuffle.users) != 1 or same_halo(modules.get(node.target)) is None:
            continue
        last = graph.nodes[shuffle.users[0]]
        if (last.kind == "module" and same_halo(modules.get(last.target)) is not None
                and uses.get(last.target) == 1 and not taken & {node.target, last.target}):
            chains.append((node.target, shuffle.scope, last.target))
            taken |= {node.target, last.target}
    return chains[::-1]


@torch.no_grad()
def band_chains(model: nn.Module, chains: list[tuple[str, str, str]], band_rows: int = DEFAULT_BAND_ROWS) -> None:
    """Swap each ``(first, shuffle, last)`` chain for a :class:`BandedUpsample` at ``first``'s
    name (its keys become ``first.first.*`` and ``first.last.*``; ``shuffle`` and ``last``
    become ``nn.Identity``). A ``first`` whose ``pixel_shuffle`` attribute is already above 1
    (the engine fused the shuffle into it) is not shuffled again."""
    swaps: dict[int, nn.Module] = {}
    for first, shuffle, last in chains:
        first_module, shuffle_module = model.get_submodule(first), model.get_submodule(shuffle)
        last_module = model.get_submodule(last)
        fused = getattr(first_module, "pixel_shuffle", 1) > 1
        upscale = first_module.pixel_shuffle if fused else shuffle_module.upscale_factor
        rows = max(band_rows // upscale, 1) * upscale
        swaps[id(first_module)] = BandedUpsample(first_module, last_module, upscale, shuffled=fused, band_rows=rows)
        swaps[id(last_module)] = nn.Identity()
        if not fused:
            swaps[id(shuffle_module)] = nn.Identity()
        logger.debug("banded %s -> %s -> %s in bands of %d rows", first, shuffle, last, rows)
    replace_by_identity(model, swaps)


def band_upsamplers(model: nn.Module, example_input: Optional[Tensor] = None,
                    band_rows: int = DEFAULT_BAND_ROWS) -> list[str]:
    """Run every ``conv -> PixelShuffle -> conv`` chain of ``model`` (in place, for inference)
    in bands of ``band_rows`` output rows (module docstring); returns the names of the first
    convs of the chains banded. ``example_input``: the probe's input (default: a random
    ``2 x C x 32 x 32`` batch)."""
    graph = record_dataflow(model, default_probe(model) if example_input is None else example_input, train=False)
    chains = upsample_chains(model, graph)
    band_chains(model, chains, band_rows)
    return [c[0] for c in chains]
