"""What tiled inference needs to know about a network before it runs, so that tiling never
silently changes the answer and ``--tile`` is advised only where it helps.

* :func:`probe` runs the network once on a small input with forward hooks and returns its
  scale and its *receptive radius*: how many input pixels of context an output pixel depends
  on, the sum over every spatial layer (conv, pool; packed engine convs alike) of its reach
  ``dilation * (kernel - 1) / 2`` at the resolution it runs at (a conv after a x2 upsampler
  reaches half as far in input pixels), and of every smooth interpolation (bilinear, bicubic:
  ``F.interpolate`` and ``nn.Upsample``, seen through a torch function mode).
  The sum over all layers bounds every path through the network, so a tile pad of at least
  this radius gives exactly the whole-image output (up to float summation order). The radius is
  ``None`` when the network has layers whose reach is not local (linear layers over pixels,
  attention): then only a measurement can tell (:func:`seam_error`).
* :func:`memory_needed` and :func:`available_memory`: the bytes an image needs whatever the
  tiling (the decoded input, its float tensor, the output array), against what this process
  may still allocate.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

PROBE = 24
UNKNOWN_RADIUS_PAD = 16
"""The tile pad used where the receptive radius cannot be computed (``bsr run`` then measures the seams)."""
INTERPOLATION_REACH = {"nearest": 0, "nearest-exact": 0, "linear": 1, "bilinear": 1, "bicubic": 2}
"""Input pixels (at the interpolation's input resolution) an interpolated pixel reads on either side."""


@dataclass(frozen=True)
class Probe:
    """A network's scale and receptive radius (None: not local, see the module docstring)."""

    scale: int
    radius: Optional[int]


def _pair(v: object) -> tuple[int, int]:
    return (int(v[0]), int(v[-1])) if isinstance(v, (tuple, list)) else (int(v), int(v))  # type: ignore[call-overload]


def _reach(module: nn.Module) -> float:
    """Input pixels (at the module's own resolution) a spatial layer reaches on either side."""
    kernel = _pair(module.kernel_size)  # type: ignore[arg-type]
    dilation = _pair(getattr(module, "dilation", 1))
    return max(math.ceil(d * (k - 1) / 2) for k, d in zip(kernel, dilation))


class _Interpolations(TorchFunctionMode):
    """Records the reach of every ``F.interpolate`` call (in probe-input pixels)."""

    def __init__(self) -> None:
        super().__init__()
        self.reach: list[float] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.interpolate and args and isinstance(args[0], Tensor) and args[0].dim() == 4:
            mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
            self.reach.append(INTERPOLATION_REACH.get(mode, 2) / (args[0].shape[-1] / PROBE))
        return func(*args, **kwargs)


@torch.no_grad()
def probe(net: nn.Module, channels: int) -> Probe:
    """Run ``net`` once on a ``PROBE x PROBE`` input (module docstring)."""
    reach: dict[int, float] = {}
    nonlocal_layers: list[str] = []

    def spatial(module: nn.Module, args: tuple, out: object) -> None:
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.dim() == 4 and x.shape[-1] > 0:
            ratio = x.shape[-1] / PROBE
            reach[id(module)] = max(reach.get(id(module), 0.0), _reach(module) / ratio)

    def pointwise_only(module: nn.Module, args: tuple, out: object) -> None:
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.dim() >= 3:
            nonlocal_layers.append(type(module).__name__)

    handles = []
    for module in net.modules():
        if hasattr(module, "kernel_size"):
            handles.append(module.register_forward_hook(spatial))
        elif isinstance(module, (nn.Linear, nn.MultiheadAttention)):
            handles.append(module.register_forward_hook(pointwise_only))
    try:
        with _Interpolations() as interpolations:
            y = net(torch.zeros(1, channels, PROBE, PROBE))
    finally:
        for h in handles:
            h.remove()
    scale = max(1, round(y.shape[-1] / PROBE)) if isinstance(y, Tensor) and y.dim() == 4 else 1
    radius = None if nonlocal_layers else math.ceil(sum(reach.values()) + sum(interpolations.reach) - 1e-9)
    return Probe(scale, radius)


def memory_needed(height: int, width: int, channels: int, scale: int, depth: int) -> int:
    """Bytes an image needs in memory whatever the tiling: the decoded file, its float tensor
    and the output array (tiling bounds only the network's activations)."""
    sample = 2 if depth == 16 else 1
    return height * width * channels * (sample + 4) + height * width * scale * scale * channels * sample


def available_memory() -> Optional[int]:
    """Bytes this process may still allocate: the system's available memory, or what is left
    under an address-space limit (``ulimit -v``) if that is less; None where unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as fh:
                size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
            found.append(max(soft - size, 0))
    except (OSError, ValueError, StopIteration):
        pass
    return min(found) if found else None


def seam_error(whole: np.ndarray, tiled: np.ndarray) -> tuple[int, float]:
    """The largest difference (in levels of the image's bit depth) between a whole-image and a
    tiled output, and the fraction of values that differ."""
    diff = np.abs(whole.astype(np.int64) - tiled.astype(np.int64))
    return int(diff.max(initial=0)), float((diff > 0).mean()) if diff.size else 0.0

