"""``bsr bench``: the time of a packed network on the packed engine, on its float simulation
and as the float network it stands for, side by side in one run, per binarized layer and end
to end, at each requested thread count.

The float network is the float simulation with every binarized layer back to a plain
``nn.Conv2d`` / ``nn.Linear`` of the same geometry (its real shortcut dropped): what the user
would run without binarization. Times are medians of ``repeats`` runs after one warm-up run;
per-layer times come from a separate pass with forward hooks (so the hooks do not slow the
end-to-end numbers).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ...core.registry import binary_layers, form_of, is_binary
from ...core.replace import replace_modules
from ..builders import Builder
from .bands import BandedUpsample

NETWORKS = ("engine", "simulation", "float")


@dataclass
class BenchRun:
    """Times at one thread count (seconds)."""

    threads: int
    end_to_end: dict[str, float]
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> {network: s}

    def speedup(self, a: str = "float", b: str = "engine") -> float:
        return self.end_to_end[a] / self.end_to_end[b]


@dataclass
class BenchReport:
    path: str
    input_size: tuple[int, int, int]
    engine: str
    runs: list[BenchRun]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        c, h, w = self.input_size
        lines = [f"{self.path}: input {c}x{h}x{w} (W x H = {w} x {h}), engine: {self.engine}"]
        for run in self.runs:
            e2e = run.end_to_end
            lines += ["", f"{run.threads} thread(s), end to end: packed engine {1e3 * e2e['engine']:.1f} ms | float "
                          f"simulation {1e3 * e2e['simulation']:.1f} ms | float network {1e3 * e2e['float']:.1f} ms"
                          f" -> engine {run.speedup():.2f}x faster than the float network, "
                          f"{run.speedup('simulation'):.2f}x than the simulation",
                      f"  {'layer':<28}{'engine ms':>11}{'sim ms':>10}{'float ms':>10}{'vs float':>10}"]
            for name, t in run.layers.items():
                lines.append(f"  {name:<28}{1e3 * t['engine']:>11.2f}{1e3 * t['simulation']:>10.2f}"
                             f"{1e3 * t['float']:>10.2f}{t['float'] / t['engine']:>9.2f}x")
        return "\n".join(lines)


def float_twin(net: nn.Module) -> nn.Module:
    """A copy of a float-simulation network with every binarized layer in its ``float`` form
    (:func:`~bsr_plugin.core.registry.form_of`): a plain float layer of the same geometry with
    its effective weight (no binarization, no added shortcut)."""

    def plain(_name: str, module: nn.Module) -> Optional[nn.Module]:
        make = form_of(module, "float") if is_binary(module) else None
        return make(module) if make else None

    return replace_modules(copy.deepcopy(net), plain).eval()


@torch.no_grad()
def _end_to_end(net: nn.Module, x: torch.Tensor, repeats: int) -> float:
    net(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def per_layer_times(net: nn.Module, x: torch.Tensor, names: list[str], repeats: int) -> dict[str, float]:
    """Median seconds per forward pass of each named layer of ``net`` over ``repeats`` passes
    (after one warm-up). A layer that runs several times per pass (a banded upsampler conv, one
    call per band, :mod:`.bands`) is timed as the sum of its calls, halo rows included."""
    modules = dict(net.named_modules())
    targets = {n: modules[n].first if isinstance(modules[n], BandedUpsample) else modules[n] for n in names}
    elapsed: dict[str, float] = dict.fromkeys(names, 0.0)
    starts: dict[str, float] = {}
    handles = []
    for name, module in targets.items():
        def pre(mod, args, name=name):
            starts[name] = time.perf_counter()

        def post(mod, args, out, name=name):
            elapsed[name] += time.perf_counter() - starts[name]
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    times: dict[str, list[float]] = {n: [] for n in names}
    try:
        for i in range(repeats + 1):
            elapsed.update(dict.fromkeys(names, 0.0))
            net(x)
            for n in names if i else ():
                times[n].append(elapsed[n])
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(t) for n, t in times.items()}


def bench_packed(path: str, size_hw: tuple[int, int], threads: list[int], repeats: int = 5,
                 builder: Optional[Builder] = None, fp_parts: Optional[str] = None) -> BenchReport:
    """Time the packed file's network on the engine (full-precision parts in ``fp_parts``, by
    default the file's choice), its float simulation and its float twin."""
    from ..packed import load_packed

    engine = load_packed(path, engine="packed", builder=builder, fp_parts=fp_parts)
    sim = load_packed(path, engine="float", builder=builder)
    nets = {"engine": engine, "simulation": sim, "float": float_twin(sim)}
    names = [n for n, _ in binary_layers(sim)]
    channels = next(m.in_channels for m in sim.modules() if isinstance(m, nn.Conv2d))
    x = torch.rand(1, channels, *size_hw, generator=torch.Generator().manual_seed(0))
    saved = torch.get_num_threads()
    runs = []
    try:
        for n in threads:
            torch.set_num_threads(n)
            e2e = {k: _end_to_end(net, x, repeats) for k, net in nets.items()}
            per = {k: per_layer_times(net, x, names, max(1, repeats // 2)) for k, net in nets.items()}
            runs.append(BenchRun(n, e2e, {name: {k: per[k][name] for k in NETWORKS} for name in names}))
    finally:
        torch.set_num_threads(saved)
    return BenchReport(str(path), (channels, *size_hw), engine.bsr_engine, runs)
