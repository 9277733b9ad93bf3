"""Whole-network benchmark of the packed engine: EDSR-baseline x4 (64 features, 16 blocks) at
320x180, the float network against the binarized one loaded from its packed file, on the
packed engine and on its float simulation, with the upsampler full precision (the default) and
binarized too (the ``binarize: upsampler`` rule); time end to end and per layer, and peak
memory, side by side in one run, at 1 thread and at all threads.

    python benchmarks/engine_network.py                      # writes benchmarks/results/engine_network/
    python benchmarks/engine_network.py --repeats 3 --threads 1 --out /tmp/engine_network

Run it on an otherwise idle machine. Weights are random (as if trained): the time of a network
does not depend on them. End-to-end times are taken round-robin (one run of each network per
round; minimum and median over the rounds reported); per-layer times from one more pass with
forward hooks. Peak memory: each network runs once in a fresh process, after building and one
warm-up run; the peak resident set (VmHWM, reset through /proc/self/clear_refs) minus the
resident set just before the measured run is what that inference added (activations and
workspace), reported with the weights' bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.engine_conv import cpu_model, git_commit, load_average, time_round_robin  # noqa: E402

logger = logging.getLogger("engine_network")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "engine_network"
EDSR_BASELINE = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 16, "upscale": 4}
UPSAMPLER_RULES = [{"binarize": "type:Conv2d"}, {"keep": "first"}, {"keep": "last"}, {"keep": "conv_after_body"},
                   {"binarize": "upsampler"}]
VARIANTS = {"body": {}, "upsampler": {"rules": UPSAMPLER_RULES}}


@torch.no_grad()
def as_if_trained(net: nn.Module) -> nn.Module:
    from bsr_plugin import binary_layers

    g = torch.Generator().manual_seed(1)
    for _, layer in binary_layers(net):
        layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1) * (layer.prior_a or 1.0))
        if layer.scale is not None:
            layer.scale.copy_(torch.rand(layer.scale.shape, generator=g) + 0.5)
    return net.eval()


def make_packed_files(folder: Path) -> dict[str, Path]:
    """One packed EDSR-baseline x4 per variant (the body binarized; the upsampler too)."""
    from bsr_plugin import export_packed
    from bsr_plugin.integrations.basicsr.archs import EDSRBin

    files = {}
    for name, binarize in VARIANTS.items():
        torch.manual_seed(0)
        files[name] = folder / f"edsr_baseline_x4_{name}.bsrpack"
        export_packed(as_if_trained(EDSRBin(**EDSR_BASELINE, binarize=binarize)), files[name])
    return files


CL = "@channels_last"
BANDED = "float/banded"


def network(name: str, files: dict[str, Path]) -> nn.Module:
    """``float``, ``float/banded`` (its last upsampling step run in bands of rows, as the engine
    runs it), ``<variant>/engine`` or ``<variant>/simulation``; a ``@channels_last`` suffix
    puts the network (and, in :func:`input_for`, its input) in channels_last memory format."""
    from bsr_plugin import load_packed
    from bsr_plugin.deploy.engine.bands import band_upsamplers
    from bsr_plugin.integrations.basicsr.archs import build_float_arch

    base = name.removesuffix(CL)
    if base in ("float", BANDED):
        net = build_float_arch({"type": "EDSR", **EDSR_BASELINE}).eval()
        if base == BANDED:  # the engine's banded upsampling, on the float network: the saving apart from binarizing
            band_upsamplers(net)
    else:
        variant, engine = base.split("/")
        net = load_packed(files[variant], engine="packed" if engine == "engine" else "float")
    # load_packed puts engine networks in channels_last; the plain names are measured in NCHW
    return net.to(memory_format=torch.channels_last if name.endswith(CL) else torch.contiguous_format)


def input_for(name: str, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if name.endswith(CL) else x


NAMES = ("float", "float" + CL, BANDED, BANDED + CL, "body/engine", "body/engine" + CL, "body/simulation",
         "upsampler/engine", "upsampler/engine" + CL, "upsampler/simulation")


def networks(files: dict[str, Path]) -> dict[str, nn.Module]:
    """Every network of :data:`NAMES`."""
    return {name: network(name, files) for name in NAMES}


def end_to_end(nets: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    inputs = {name: input_for(name, x) for name in nets}
    calls = {name: (None, lambda net=net, xi=inputs[name]: net(xi)) for name, net in nets.items()}
    with torch.no_grad():
        times = time_round_robin(calls, repeats, warmup=1)
    return {name: {"min_ms": 1e3 * min(t["wall"]), "median_ms": 1e3 * statistics.median(t["wall"])}
            for name, t in times.items()}


def per_layer(nets: dict[str, nn.Module], x: torch.Tensor) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant: binarized layer -> milliseconds (median of 3) on the engine, the simulation and
    the float network, and on the engine and the float network in channels_last."""
    from bsr_plugin import is_binary
    from bsr_plugin.deploy.engine.bench import per_layer_times

    out = {}
    for variant in VARIANTS:
        sim = nets[f"{variant}/simulation"]
        names = [n for n, m in sim.named_modules() if is_binary(m)]
        xc = input_for(CL, x)
        times = {"engine": per_layer_times(nets[f"{variant}/engine"], x, names, 3),
                 "simulation": per_layer_times(sim, x, names, 3), "float": per_layer_times(nets["float"], x, names, 3),
                 "engine" + CL: per_layer_times(nets[f"{variant}/engine" + CL], xc, names, 3),
                 "float" + CL: per_layer_times(nets["float" + CL], xc, names, 3)}
        out[variant] = {n: {k: 1e3 * v[n] for k, v in times.items()} for n in names}
    return out


PEAK_SCRIPT = r"""
import ctypes, gc, json, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from benchmarks.engine_network import input_for, network
torch.set_num_threads(int(sys.argv[3]))
name, files = sys.argv[1], {k: Path(v) for k, v in json.loads(sys.argv[2]).items()}
net = network(name, files)
x = input_for(name, torch.rand(1, 3, int(sys.argv[5]), int(sys.argv[6])))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with torch.no_grad():
    net(x)
    gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    y = net(x)
    peak = status("VmHWM")
weights = sum(t.numel() * t.element_size() for t in net.state_dict().values())
print(json.dumps({"added_bytes": peak - before, "peak_rss_bytes": peak, "weights_bytes": weights,
                  "output_bytes": y.numel() * y.element_size()}))
"""


# glibc raises its mmap threshold after a large block is freed, so later large blocks come from
# the heap and stay resident after they are freed: the peak resident set then depends on the
# order of allocations, not only on what is alive at once. Measured both ways.
MMAP_THRESHOLD = 128 * 1024


def _peak_in_fresh_process(name: str, paths: str, threads: int, size_hw: tuple[int, int],
                           env: Optional[dict[str, str]] = None) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, name, paths, str(threads), str(REPO),
                           str(size_hw[0]), str(size_hw[1])], capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peak memory of {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_memory(files: dict[str, Path], threads: int, size_hw: tuple[int, int]) -> dict[str, dict[str, int]]:
    """Memory each network's inference adds, measured in a fresh process per network, with
    glibc's default allocation policy and with a fixed mmap threshold (:data:`MMAP_THRESHOLD`:
    every block above it goes back to the system when freed, so the peak is what is alive)."""
    result = {}
    paths = json.dumps({k: str(v) for k, v in files.items()})
    fixed = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    for name in NAMES:
        result[name] = _peak_in_fresh_process(name, paths, threads, size_hw)
        result[name]["added_bytes_fixed_mmap"] = _peak_in_fresh_process(name, paths, threads, size_hw,
                                                                        fixed)["added_bytes"]
        logger.info("peak memory %s: %.0f MB added (%.0f MB with a fixed mmap threshold)", name,
                    result[name]["added_bytes"] / 2**20, result[name]["added_bytes_fixed_mmap"] / 2**20)
    return result


def run(size_hw: tuple[int, int], threads_list: list[int], repeats: int, folder: Path) -> dict[str, Any]:
    from bsr_plugin.deploy.engine import kernels

    files = make_packed_files(folder)
    nets = networks(files)
    x = torch.rand(1, 3, *size_hw, generator=torch.Generator().manual_seed(0))
    saved = torch.get_num_threads()
    timing, layers = {}, {}
    try:
        for t in threads_list:
            torch.set_num_threads(t)
            logger.info("end to end, %d thread(s)", t)
            timing[str(t)] = end_to_end(nets, x, repeats)
        torch.set_num_threads(max(threads_list))
        layers = per_layer(nets, x)
    finally:
        torch.set_num_threads(saved)
    memory = peak_memory(files, max(threads_list), size_hw)
    return {"input": [1, 3, *size_hw], "network": {"type": "EDSR", **EDSR_BASELINE}, "threads": threads_list,
            "repeats": repeats, "end_to_end": timing, "per_layer": layers, "memory": memory,
            "packed_bytes": {k: p.stat().st_size for k, p in files.items()},
            "engine": kernels.status_line(), "isa": kernels.isa() if kernels.available() else None,
            "cpu": cpu_model(), "torch": torch.__version__, "commit": git_commit(), "load_average": load_average()}


def _speedup(t: dict[str, dict[str, float]], a: str, b: str, key: str = "median_ms") -> float:
    return t[a][key] / t[b][key]


def markdown(r: dict[str, Any]) -> str:
    h, w = r["input"][2:]
    lines = [f"# Packed engine, whole network: EDSR-baseline x4 at {w}x{h}", "",
             f"{r['cpu']}; {r['engine']}; torch {r['torch']}; commit {r['commit']}; load average at the end "
             f"{r['load_average']}. Median (min) of {r['repeats']} round-robin runs. `body`: the 32 residual-block "
             "convs binarized (the default), head, tail and upsampler full precision; `upsampler`: the two "
             "upsampler convs binarized too. `engine`: loaded from the packed file onto the XNOR-popcount "
             "engine; `simulation`: the same file as float convs on +-1 values; `float`: the float EDSR. "
             "`@channels_last`: network and input in channels_last memory format (oneDNN's float convs and the "
             "engine are both faster so). Speed-ups from the medians.", "",
             "| network | " + " | ".join(f"{t} thread(s): ms | vs float | vs float (channels_last)"
                                         for t in r["end_to_end"]) + " |",
             "|---|" + "---|---|---|" * len(r["end_to_end"])]
    for name in NAMES:
        cells = []
        for times in r["end_to_end"].values():
            cells.append(f"{times[name]['median_ms']:.0f} ({times[name]['min_ms']:.0f}) | "
                         f"{_speedup(times, 'float', name):.2f}x | {_speedup(times, 'float' + CL, name):.2f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _memory_table(r["memory"])
    for variant, rows in r["per_layer"].items():
        lines += ["", f"Per binarized layer, variant `{variant}`, {max(r['threads'])} thread(s) (ms):", "",
                  "| layer | engine | simulation | float conv | float / engine | engine (channels_last) | float conv "
                  "(channels_last) | float / engine (channels_last) |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {t['engine']:.2f} | {t['simulation']:.2f} | {t['float']:.2f} | "
                  f"{t['float'] / t['engine']:.2f}x | {t['engine' + CL]:.2f} | {t['float' + CL]:.2f} | "
                  f"{t['float' + CL] / t['engine' + CL]:.2f}x |" for n, t in rows.items()]
    return "\n".join(lines) + "\n"


def _memory_table(mem: dict[str, dict[str, int]]) -> list[str]:
    """Peak memory rows: added by the inference with glibc's default policy and with a fixed mmap
    threshold, the ratios to the float network (and to the banded float network)."""
    lines = ["", "Peak memory of one inference (added to the resident set by the forward pass; weights and output "
             "listed apart). `default`: glibc's allocator as it is; `fixed mmap`: MALLOC_MMAP_THRESHOLD_="
             f"{MMAP_THRESHOLD} (freed large blocks go back to the system at once, so the peak is what is alive "
             "at once; with the default, glibc keeps some freed blocks resident). `float/banded`: the float "
             "network with the engine's banded last upsampling step (bsr_plugin.deploy.engine.bands), to show "
             "the saving apart from binarizing.", ""]
    lines += ["| network | default (MB) | float / this | fixed mmap (MB) | float / this | float/banded / this "
              "| weights (MB) | output (MB) |", "|---|---|---|---|---|---|---|---|"]
    for name, m in mem.items():
        default, fixed = max(m["added_bytes"], 1), max(m["added_bytes_fixed_mmap"], 1)
        cells = [f"{default / 2**20:.0f}", f"{mem['float']['added_bytes'] / default:.2f}x", f"{fixed / 2**20:.0f}",
                 f"{mem['float']['added_bytes_fixed_mmap'] / fixed:.2f}x",
                 f"{mem[BANDED]['added_bytes_fixed_mmap'] / fixed:.2f}x",
                 f"{m['weights_bytes'] / 2**20:.2f}", f"{m['output_bytes'] / 2**20:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(r: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(r["per_layer"]), figsize=(14, 5), sharey=True)
    for ax, (variant, rows) in zip(axes, r["per_layer"].items()):
        names = list(rows)
        pos = range(len(names))
        ax.bar([i - 0.2 for i in pos], [rows[n]["float"] / rows[n]["engine"] for n in names], width=0.4,
               color="tab:blue", label="NCHW")
        ax.bar([i + 0.2 for i in pos], [rows[n]["float" + CL] / rows[n]["engine" + CL] for n in names], width=0.4,
               color="tab:orange", label="channels_last")
        ax.legend(fontsize=8)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_title(f"{variant}: float conv time / packed engine time")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"speed-up per binarized layer ({max(r['threads'])} threads)")
    fig.tight_layout()
    fig.savefig(out / "per_layer_speedup.png", dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="320x180", help="input width x height")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="thread counts, e.g. 1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    width, height = (int(v) for v in args.size.split("x"))
    threads = sorted({int(t) for t in args.threads.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        result = run((height, width), threads, args.repeats, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "results.md").write_text(markdown(result))
    plot(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
