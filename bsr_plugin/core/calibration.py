"""Scale calibration and residual alignment: how large each binary branch starts, and how
large it is against the stream it adds to.

A binarized layer sees ``sign(x)`` whatever the magnitude of ``x``. :func:`calibrate_scales_`
sizes each learned scale once, on a real batch: a layer without a shortcut of its own gets
the float layer's size (XNOR-Net's activation scale, ``alpha * mean|x|``); a layer with its
own real shortcut and ``align = rho`` gets a branch ``rho`` times as large as its input, so the
full-precision path dominates (BBCU's residual alignment). :func:`branch_ratios` reads, for
each layer with a shortcut, ``mean|branch| / mean|input|`` and ``mean|input|`` during a forward
pass, the quantities a training log follows.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import BinaryLayerMixin, channel_shortcut
from .registry import binary_layers


def _mean_abs(t: Tensor) -> Tensor:
    return t.detach().abs().mean()


def calibration_factor(layer: BinaryLayerMixin, x: Tensor) -> Tensor:
    """The factor by which :func:`calibrate_scales_` multiplies ``layer``'s learned scale for
    input ``x``: ``rho * mean|x| / mean|branch(x)|`` for an aligned layer with a shortcut,
    else ``mean|x|``."""
    magnitude = _mean_abs(x)
    align = layer.options.align
    if align is None or layer.shortcut == "none":
        return magnitude
    branch = _mean_abs(layer.branch(x.detach()))
    if not branch > 0:
        return branch.new_zeros(())
    return align * magnitude / branch


@torch.no_grad()
def calibrate_scales_(model: nn.Module, *inputs: Any, force: bool = False) -> list[str]:
    """Size each binarized layer's learned weight scale on real data, once.

    This runs ``model(*inputs)`` once and, just before each layer runs, multiplies its learned
    scale by :func:`calibration_factor` of its input, so the layers after it see calibrated
    outputs: a layer without a shortcut of its own then outputs what the float layer it
    replaces would (``mean|x|`` times larger than with ``sign(x)`` alone: in a network whose
    features are large, as EDSR's 0..255 range, uncalibrated binary branches would be
    negligible next to the skips and stay so); a layer with a shortcut and ``align = rho``
    adds a branch ``rho`` times the size of its input. The factor is kept in the layer's
    ``calibrated`` buffer (0 = not calibrated), which is in the state dict: resuming or
    loading a trained binary checkpoint does not calibrate again, loading float weights resets
    it.

    Args:
        model: the binarized network.
        *inputs: one real input batch (as ``model(*inputs)`` takes it).
        force: recalibrate layers that are already calibrated: their scale first goes back to
            the uncalibrated value (divided by the stored factor), so calling this twice gives
            the same scales as calling it once. A layer whose factor is unknown (calibrated by
            bsr_plugin 0.1, or loaded from a packed file, whose scales are final) cannot be
            recalibrated: that is a :class:`ConfigError`.

    Returns:
        The names of the layers calibrated.
    """
    layers = {name: layer for name, layer in binary_layers(model) if layer.scale is not None}
    todo = {name: layer for name, layer in layers.items() if force or not bool(layer.calibrated)}
    unknown = [n for n, layer in todo.items() if bool(layer.calibrated) and not torch.isfinite(layer.calibrated)]
    if unknown:
        raise ConfigError(f"calibrate_scales_(force=True): the uncalibrated scale of {', '.join(unknown[:3])} is "
                          "not known (calibrated by an older version, or loaded from a packed file whose scales are "
                          "final); convert the float network again to recalibrate")
    for layer in todo.values():
        if bool(layer.calibrated):
            layer.scale.div_(layer.calibrated)
            layer.calibrated.zero_()
    done: list[str] = []
    handles = []
    for name, layer in todo.items():
        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            if name not in done:  # before the layer runs: what follows sees calibrated outputs
                factor = calibration_factor(mod, args[0]).to(mod.calibrated.dtype)
                if factor > 0:
                    mod.scale.mul_(factor)
                    mod.calibrated.copy_(factor)
                done.append(name)
        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.random.fork_rng(devices=[]):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return [n for n in done if bool(layers[n].calibrated)]


@contextmanager
def branch_ratios(model: nn.Module) -> Iterator[dict[str, tuple[float, float]]]:
    """Within the block, every forward pass records, for each binarized layer with a real
    shortcut, ``(mean|branch| / mean|input|, mean|input|)`` of its last call (the branch is
    the layer's output minus its shortcut). Yields the dict it fills."""
    stats: dict[str, tuple[float, float]] = {}
    handles = []
    for name, layer in binary_layers(model):
        if layer.shortcut == "none":
            continue

        def hook(mod: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
            with torch.no_grad():
                x = args[0]
                dim = mod.channel_dim
                c_in, c_out = x.shape[dim], out.shape[dim]
                branch = out - channel_shortcut(x, mod.shortcut, c_in, c_out, dim=dim)
                stream = float(_mean_abs(x))
                stats[name] = (float(_mean_abs(branch)) / stream if stream > 0 else float("nan"), stream)
        handles.append(layer.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
