"""Whole-network benchmark of the packed engine: EDSR-baseline x4 (64 features, 16 blocks) at
320x180, the float network against the binarized one loaded from its packed file, on the
packed engine and on its float simulation, with the upsampler full precision (the default) and
binarized too (the ``binarize: upsampler`` rule); time end to end and per layer, and peak
memory, side by side in one run, at 1 thread and at all threads.

The comparison a user weighs: the engine networks with their full-precision parts in bf16 and
int8 (:mod:`bsr_plugin.deploy.engine.lowp`, residual blocks fused by
:mod:`bsr_plugin.deploy.engine.blocks`: ``<variant>/engine/{fused,bf16,int8}``) against the float
network in bf16 and int8 (``float/bf16``, ``float/int8``: the same oneDNN kernels per layer;
``float/int8:<tool>``: OpenVINO + NNCF, onnxruntime QDQ, PT2E + inductor, see
benchmarks/int8_float.py). End-to-end times run once per instruction set in a subprocess of its
own: ``avx512`` (the engine's AVX-512 kernels, oneDNN and ATen unrestricted) and ``avx2`` (the
engine's AVX2 kernels, ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2``: what a CPU
without AVX-512 gets; bf16 is refused there). A per-op profile shows where each engine
network's time goes, and ``--psnr-from`` scores every precision path on trained networks
(benchmarks/fp_parts_psnr.py) and plots speed against PSNR.

    python benchmarks/engine_network.py                      # writes benchmarks/results/engine_network/
    python benchmarks/engine_network.py --psnr-from benchmarks/results/cpu_r3/work   # + PSNR and its plot
    python benchmarks/engine_network.py --repeats 3 --threads 1 --out /tmp/engine_network
    python benchmarks/engine_network.py --repeats 1 --parts speed,profile --isas avx512   # a quick look

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
import resource
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


def shipped_network_options() -> dict[str, Any]:
    """The binarized network of ``options/edsr_bin.yml`` (EDSR-baseline x4): its block and
    binarize options, so the ``shipped`` rows time what users train."""
    import yaml

    spec = yaml.safe_load((REPO / "options" / "edsr_bin.yml").read_text())["network_g"]
    return {k: spec[k] for k in ("block", "binarize") if k in spec}


# EDSRBin options per variant: the shipped recipe, the round-2 default (EDSR's residual block,
# 32 body convs binarized), and that with the upsampler binarized too
VARIANTS = {"shipped": shipped_network_options(), "body": {}, "upsampler": {"binarize": {"rules": UPSAMPLER_RULES}}}


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
    for name, options in VARIANTS.items():
        torch.manual_seed(0)
        files[name] = folder / f"edsr_baseline_x4_{name}.bsrpack"
        export_packed(as_if_trained(EDSRBin(**EDSR_BASELINE, **options)), files[name])
    return files


CL = "@channels_last"
BANDED = "float/banded"
TOOL = "float/int8:"  # + a tool of benchmarks/int8_float.py other than torch_onednn
PRECISIONS = ("bf16", "int8")


def calibration_inputs() -> list[torch.Tensor]:
    """The int8 rows' calibration images: two random 90x160 inputs (the weights are random too;
    the time does not depend on the ranges; the PSNR rows calibrate on training images)."""
    g = torch.Generator().manual_seed(2)
    return [torch.rand(1, 3, 90, 160, generator=g) for _ in range(2)]


def _lowered(net: nn.Module, precision: str) -> nn.Module:
    """``net`` with fused residual blocks and its full-precision convs in ``precision``
    (``fused``: fp32)."""
    from bsr_plugin.deploy.engine.blocks import fuse_residual_blocks
    from bsr_plugin.deploy.engine.lowp import calibrate_fp_parts, lower_fp_parts

    fuse_residual_blocks(net)
    if precision == "fused":
        return net
    images = [x.contiguous(memory_format=torch.channels_last) for x in calibration_inputs()]
    return lower_fp_parts(net, precision, calibrate_fp_parts(net, images) if precision == "int8" else None)


def _tool_network(tool: str) -> Any:
    from benchmarks import int8_float
    from bsr_plugin.integrations.basicsr.archs import build_float_arch

    net = build_float_arch({"type": "EDSR", **EDSR_BASELINE}).eval()
    example = torch.rand(1, 3, 180, 320)
    return int8_float.build(tool, net, calibration_inputs(), Path(tempfile.mkdtemp(prefix="int8_tool_")), example)


def network(name: str, files: dict[str, Path]) -> Any:
    """``float``, ``float/banded`` (its last upsampling step run in bands of rows, as the engine
    runs it), ``float/{bf16,int8}``, ``float/int8:<tool>``, ``<variant>/engine``,
    ``<variant>/engine/{fused,bf16,int8}`` or ``<variant>/simulation``; a ``@channels_last``
    suffix puts the network (and, in :func:`input_for`, its input) in channels_last memory format."""
    from bsr_plugin import load_packed
    from bsr_plugin.deploy.engine.bands import band_upsamplers
    from bsr_plugin.integrations.basicsr.archs import build_float_arch

    base = name.removesuffix(CL)
    if base.startswith(TOOL):
        return _tool_network(base[len(TOOL):])
    parts = base.split("/")
    if parts[0] == "float":
        net = build_float_arch({"type": "EDSR", **EDSR_BASELINE}).eval()
        if base == BANDED:  # the engine's banded upsampling, on the float network: the saving apart from binarizing
            band_upsamplers(net)
    else:
        net = load_packed(files[parts[0]], engine="packed" if parts[1] == "engine" else "float")
    # load_packed puts engine networks in channels_last; the plain names are measured in NCHW
    net = net.to(memory_format=torch.channels_last if name.endswith(CL) else torch.contiguous_format)
    precision = parts[-1] if parts[-1] in PRECISIONS + ("fused",) else None
    return net if precision is None else _lowered(net, precision)


def input_for(name: str, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if name.endswith(CL) else x


NAMES = ("float", "float" + CL, BANDED, BANDED + CL,
         "shipped/engine", "shipped/engine" + CL, "shipped/simulation",
         "body/engine", "body/engine" + CL, "body/simulation",
         "upsampler/engine", "upsampler/engine" + CL, "upsampler/simulation")
LOWP_NAMES = ("float/bf16" + CL, "float/int8" + CL,
              "shipped/engine/fused" + CL, "shipped/engine/bf16" + CL, "shipped/engine/int8" + CL,
              "body/engine/fused" + CL, "body/engine/bf16" + CL, "body/engine/int8" + CL,
              "upsampler/engine/fused" + CL, "upsampler/engine/bf16" + CL, "upsampler/engine/int8" + CL)
TARGET = "shipped"  # the network the targets are about: the shipped recipe
DEFAULT_TOOLS = ("openvino_nncf", "ort_qdq")  # pt2e_inductor on request: its compile takes minutes


def all_names(tools: list[str]) -> list[str]:
    """Every row: :data:`NAMES`, :data:`LOWP_NAMES`, one per int8 tool."""
    return [*NAMES, *LOWP_NAMES, *(TOOL + t for t in tools if t != "torch_onednn")]


def refusal(name: str) -> Optional[str]:
    """Why row ``name`` cannot run here (its precision is not supported), else ``None``."""
    from bsr_plugin.deploy.engine.lowp import fp_parts_support

    precision = next((p for p in PRECISIONS if f"/{p}" in name), None)
    return None if precision is None else fp_parts_support(precision)


def networks(files: dict[str, Path], names: Optional[list[str]] = None) -> dict[str, Any]:
    """The networks of ``names`` (default :data:`NAMES`) that can run here."""
    return {name: network(name, files) for name in (names or NAMES) if refusal(name) is None}


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def end_to_end(nets: dict[str, Any], x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """Wall time (median, min) and the process's CPU time (median: every thread's, the runtimes'
    own pools included; at 1 thread, the work done, whatever else the machine runs) per network."""
    inputs = {name: input_for(name, x) for name in nets}
    cpu: dict[str, list[float]] = {name: [] for name in nets}

    def call(name: str) -> Any:
        start = _process_cpu()
        nets[name](inputs[name])
        cpu[name].append(_process_cpu() - start)

    calls = {name: (None, lambda name=name: call(name)) for name in nets}
    with torch.no_grad():
        times = time_round_robin(calls, repeats, warmup=1)
    return {name: {"min_ms": 1e3 * min(t["wall"]), "median_ms": 1e3 * statistics.median(t["wall"]),
                   "cpu_median_ms": 1e3 * statistics.median(cpu[name][-repeats:])} for name, t in times.items()}


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
state = net.state_dict() if hasattr(net, "state_dict") else {}
weights = sum(t.numel() * t.element_size() for t in state.values())
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


def peak_memory(files: dict[str, Path], threads: int, size_hw: tuple[int, int],
                names: Optional[list[str]] = None) -> dict[str, dict[str, int]]:
    """Memory each network's inference adds, measured in a fresh process per network, with
    glibc's default allocation policy and with a fixed mmap threshold (:data:`MMAP_THRESHOLD`:
    every block above it goes back to the system when freed, so the peak is what is alive)."""
    result = {}
    paths = json.dumps({k: str(v) for k, v in files.items()})
    fixed = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    for name in [n for n in (names or NAMES) if refusal(n) is None]:
        result[name] = _peak_in_fresh_process(name, paths, threads, size_hw)
        result[name]["added_bytes_fixed_mmap"] = _peak_in_fresh_process(name, paths, threads, size_hw,
                                                                        fixed)["added_bytes"]
        logger.info("peak memory %s: %.0f MB added (%.0f MB with a fixed mmap threshold)", name,
                    result[name]["added_bytes"] / 2**20, result[name]["added_bytes_fixed_mmap"] / 2**20)
    return result


# Each instruction-set configuration of the end-to-end times runs in a subprocess of its own.
ISA_ENVIRONMENTS = {"avx512": {"BSR_ENGINE_ISA": "avx512"},
                    "avx2": {"BSR_ENGINE_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
PROFILED = ("shipped/engine" + CL, "shipped/engine/bf16" + CL, "shipped/engine/int8" + CL,
            "body/engine/int8" + CL, "upsampler/engine/int8" + CL)
PARTS = ("speed", "per_layer", "memory", "profile")


def speed(size_hw: tuple[int, int], threads_list: list[int], repeats: int, names: list[str]) -> dict[str, Any]:
    """End-to-end times of ``names`` in this process: ``{"times": {threads: {name: ...}},
    "refused": {name: why}, "engine": ...}``."""
    from bsr_plugin.deploy.engine import kernels
    from bsr_plugin.deploy.engine.lowp import onednn_isa_cap

    with tempfile.TemporaryDirectory() as tmp:
        nets = networks(make_packed_files(Path(tmp)), names)
        x = torch.rand(1, 3, *size_hw, generator=torch.Generator().manual_seed(0))
        timing, saved = {}, torch.get_num_threads()
        try:
            for t in threads_list:
                torch.set_num_threads(t)
                logger.info("end to end, %d thread(s), %s", t, kernels.status_line())
                timing[str(t)] = end_to_end(nets, x, repeats)
        finally:
            torch.set_num_threads(saved)
    return {"times": timing, "refused": {n: refusal(n) for n in names if refusal(n) is not None},
            "engine": kernels.status_line(), "onednn_cap": onednn_isa_cap(),
            "aten": torch.backends.cpu.get_cpu_capability()}


def speed_in_subprocess(isa: str, size_hw: tuple[int, int], threads_list: list[int], repeats: int,
                        tools: list[str]) -> dict[str, Any]:
    """:func:`speed` of every row in a fresh process configured by :data:`ISA_ENVIRONMENTS`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", isa, "--out", str(out), "--size",
                f"{size_hw[1]}x{size_hw[0]}", "--threads", ",".join(map(str, threads_list)), "--repeats",
                str(repeats), "--int8-tools", ",".join(tools)]
        env = {**os.environ, **ISA_ENVIRONMENTS[isa]}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=7200, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"the {isa} run failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def profiles(files: dict[str, Path], size_hw: tuple[int, int], threads: int) -> dict[str, list[dict[str, Any]]]:
    """Per-op profile (benchmarks/engine_profile.py) of each network of :data:`PROFILED` that can run here."""
    from benchmarks.engine_profile import op_profile

    x = torch.rand(1, 3, *size_hw, generator=torch.Generator().manual_seed(0))
    saved, out = torch.get_num_threads(), {}
    torch.set_num_threads(threads)
    try:
        for name, net in networks(files, list(PROFILED)).items():
            logger.info("profile %s", name)
            out[name] = op_profile(net, input_for(name, x))
    finally:
        torch.set_num_threads(saved)
    return out


def run(size_hw: tuple[int, int], threads_list: list[int], repeats: int, folder: Path, isas: list[str],
        tools: list[str], parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Every measurement of ``parts`` (:data:`PARTS`), the end-to-end times once per ISA of ``isas``."""
    from bsr_plugin.deploy.engine import kernels

    files = make_packed_files(folder)
    names = all_names(tools)
    r: dict[str, Any] = {"input": [1, 3, *size_hw], "network": {"type": "EDSR", **EDSR_BASELINE},
                         "threads": threads_list, "repeats": repeats, "names": names, "int8_tools": tools,
                         "packed_bytes": {k: p.stat().st_size for k, p in files.items()}}
    if "speed" in parts:
        r["end_to_end"] = {isa: speed_in_subprocess(isa, size_hw, threads_list, repeats, tools) for isa in isas}
    if "per_layer" in parts:
        saved = torch.get_num_threads()
        torch.set_num_threads(max(threads_list))
        try:
            r["per_layer"] = per_layer(networks(files), torch.rand(1, 3, *size_hw,
                                                                   generator=torch.Generator().manual_seed(0)))
        finally:
            torch.set_num_threads(saved)
    if "profile" in parts:
        r["profile"] = profiles(files, size_hw, max(threads_list))
    if "memory" in parts:
        r["memory"] = peak_memory(files, max(threads_list), size_hw, names)
    r.update({"engine": kernels.status_line(), "isa": kernels.isa() if kernels.available() else None,
              "cpu": cpu_model(), "torch": torch.__version__, "commit": git_commit(), "load_average": load_average()})
    return r


def _speedup(t: dict[str, dict[str, float]], a: str, b: str, key: str = "median_ms") -> float:
    return t[a][key] / t[b][key]


def _header(r: dict[str, Any]) -> list[str]:
    h, w = r["input"][2:]
    runs = ", ".join(f"`{role}` rows: {run}" for role, run in r.get("psnr_runs", {}).items() if role in
                     ("float", *VARIANTS))
    return [f"# Packed engine, whole network: EDSR-baseline x4 at {w}x{h}", "",
            f"{r['cpu']}; {r['engine']}; torch {r['torch']}; commit {r['commit']}; load average at the end "
            f"{r['load_average']}. Median (min) of {r['repeats']} round-robin runs. `shipped`: the binarized "
            f"network of options/edsr_bin.yml ({json.dumps(VARIANTS['shipped'])}); `body`: round 2's default, the 32 "
            "convs of EDSR's residual blocks binarized, head, tail and upsampler full precision; `upsampler`: "
            "that with the two upsampler convs binarized too. `engine`: loaded from the packed file onto the "
            "XNOR-popcount engine; `simulation`: the same file as float convs on +-1 values; `float`: the float EDSR. "
            "`@channels_last`: network and input in channels_last memory format (oneDNN's float convs and the "
            "engine are both faster so). `cpu`: the process's CPU time per run (all its threads; at 1 thread "
            "the work done even on a busy machine). `engine/fused`: residual blocks fused (activation into the first "
            "binary conv's output pass, the residual add in place, no multiply by 1); `engine/bf16`, "
            "`engine/int8`: the same with the full-precision convs (16+ input channels) in bf16 / int8 "
            "through oneDNN (bsr_plugin.deploy.engine.lowp); `float/bf16`, `float/int8`: the float EDSR's "
            "convs so; `float/int8:<tool>`: the float EDSR quantized by that tool (benchmarks/int8_float.py). "
            "Speed-ups from the medians. PSNR: Set5 / Set14 / B100 of the trained network of that path "
            f"(see the PSNR table; {runs or 'none'}), where measured. In the `avx2` runs onnxruntime's own "
            "kernels (MLAS) ignore the oneDNN cap and use what the CPU has (VNNI, AMX): its row there is not an "
            "AVX2 machine's."]


def psnr_of(r: dict[str, Any], name: str) -> Optional[dict[str, dict[str, float]]]:
    """The scores of the trained network and path that row ``name`` stands for, if measured."""
    base = name.removesuffix(CL)
    parts = base.split("/")
    if parts[0] == "float":
        role, path = "float", "float" if base in ("float", BANDED) else base
    elif parts[0] in VARIANTS:
        role, path = parts[0], "engine" + (f"/{parts[2]}" if len(parts) > 2 and parts[2] in PRECISIONS else "")
    else:
        return None
    run = r.get("psnr_runs", {}).get(role)
    return r.get("psnr", {}).get(run, {}).get(path)


def _psnr_cell(r: dict[str, Any], name: str) -> str:
    scores = psnr_of(r, name)
    return " / ".join(f"{v['psnr']:.2f}" for v in scores.values()) if scores else "-"


def _speed_table(r: dict[str, Any], isa: str, e: dict[str, Any]) -> list[str]:
    times = e["times"]
    lines = ["", f"**{isa}**: {e['engine']}; oneDNN cap {e['onednn_cap'] or 'none'}; ATen {e['aten']}.", "",
             "| network | " + " | ".join(f"{t} thread(s): ms | vs float | vs float (channels_last)" for t in times)
             + " | PSNR |", "|---|" + "---|---|---|" * len(times) + "---|"]
    for name in r["names"]:
        if name in e["refused"]:
            lines.append(f"| {name} | refused: {e['refused'][name]} |" + " |" * (3 * len(times)))
            continue
        cells = [f"{t[name]['median_ms']:.0f} ({t[name]['min_ms']:.0f}; cpu {t[name].get('cpu_median_ms', 0):.0f}) | "
                 f"{_speedup(t, 'float', name):.2f}x | {_speedup(t, 'float' + CL, name):.2f}x" for t in times.values()
                 if name in t]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_psnr_cell(r, name)} |")
    return lines


def _ratios(t: dict[str, dict[str, float]], a: str, b: str) -> str:
    """``a``'s time over ``b``'s: wall-clock medians, and CPU-time medians in brackets."""
    cpu = _speedup(t, a, b, "cpu_median_ms") if t[b].get("cpu_median_ms") else float("nan")
    return f"{_speedup(t, a, b):.2f}x [cpu {cpu:.2f}x]"


def _checks(r: dict[str, Any]) -> list[str]:
    """The targets of the comparison, per ISA at the most threads: our body-binarized engine with
    low-precision parts against float channels_last fp32 and the fastest int8 float network, its
    memory and its PSNR against fp32 parts."""
    lines = ["", f"Targets (`{TARGET}`: the shipped recipe; the target in parentheses):", ""]
    for isa, e in r.get("end_to_end", {}).items():
        for threads, t in e["times"].items():
            int8_rows = sorted((n for n in t if n.startswith("float/int8")), key=lambda n: t[n]["median_ms"])
            for name in (f"{TARGET}/engine/int8" + CL, f"{TARGET}/engine/bf16" + CL):
                if name in t:
                    vs_int8 = ", ".join(f"{_ratios(t, n, name)} {n}" for n in int8_rows) + " (1.3x)"
                    lines.append(f"- {isa}, {threads} thread(s), `{name}`: {_ratios(t, 'float' + CL, name)} "
                                 f"float@channels_last (2.5x at 2 threads); {vs_int8}")
    mem = r.get("memory", {})
    for name in (f"{TARGET}/engine/int8" + CL, f"{TARGET}/engine/bf16" + CL):
        if name in mem and "float" in mem:
            ratios = [mem["float"][k] / max(mem[name][k], 1) for k in ("added_bytes", "added_bytes_fixed_mmap")]
            lines.append(f"- peak memory `{name}`: 1/{ratios[0]:.2f} of float's (default), 1/{ratios[1]:.2f} "
                         "(fixed mmap) (1/3)")
    for precision in PRECISIONS:
        low, ref = psnr_of(r, f"{TARGET}/engine/{precision}"), psnr_of(r, f"{TARGET}/engine")
        if low and ref:
            diff = statistics.mean(low[s]["psnr"] - ref[s]["psnr"] for s in low)
            lines.append(f"- PSNR `{TARGET}/engine/{precision}` - `{TARGET}/engine` (fp32 parts): {diff:+.3f} dB "
                         "(>= -0.05)")
    return lines


def markdown(r: dict[str, Any]) -> str:
    from benchmarks.engine_profile import profile_markdown
    from benchmarks.fp_parts_psnr import psnr_markdown

    lines = _header(r)
    for isa, e in r.get("end_to_end", {}).items():
        lines += _speed_table(r, isa, e)
    lines += _checks(r)
    if "memory" in r:
        lines += _memory_table(r["memory"])
    for name, rows in r.get("profile", {}).items():
        lines += profile_markdown(name, rows, max(r["threads"]))
    if "psnr" in r:
        lines += psnr_markdown(r["psnr"])
    for variant, rows in r.get("per_layer", {}).items():
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
             "the saving apart from binarizing. `float/int8:<tool>` rows are not comparable: OpenVINO and "
             "onnxruntime allocate their activation memory in the warm-up inference and keep it (see "
             "`peak_rss_bytes` in results.json).", ""]
    lines += ["| network | default (MB) | float / this | fixed mmap (MB) | float / this | float/banded / this "
              "| weights (MB) | output (MB) |", "|---|---|---|---|---|---|---|---|"]
    for name, m in mem.items():
        default, fixed = max(m["added_bytes"], 1), max(m["added_bytes_fixed_mmap"], 1)
        cells = [f"{default / 2**20:.0f}", f"{mem['float']['added_bytes'] / default:.2f}x", f"{fixed / 2**20:.0f}",
                 f"{mem['float']['added_bytes_fixed_mmap'] / fixed:.2f}x",
                 f"{mem[BANDED]['added_bytes_fixed_mmap'] / fixed:.2f}x" if BANDED in mem else "-",
                 f"{m['weights_bytes'] / 2**20:.2f}", f"{m['output_bytes'] / 2**20:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(r: dict[str, Any], out: Path) -> None:
    """``per_layer_speedup.png`` (the binarized layers) and ``speed_vs_psnr.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if r.get("per_layer"):
        _plot_per_layer(plt, r, out)
    if r.get("psnr") and r.get("end_to_end"):
        _plot_speed_psnr(plt, r, out)


def _plot_per_layer(plt: Any, r: dict[str, Any], out: Path) -> None:
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
    _save(plt, fig, out / "per_layer_speedup.png")


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_speed_psnr(plt: Any, r: dict[str, Any], out: Path) -> None:
    """Time at the most threads (each ISA a marker) against the mean PSNR over the sets."""
    fig, ax = plt.subplots(figsize=(9, 6))
    threads = str(max(r["threads"]))
    for (isa, e), marker in zip(r["end_to_end"].items(), "os^"):
        label = f"{isa} ({'circles' if marker == 'o' else 'squares' if marker == 's' else 'triangles'})"
        for name, t in e["times"][threads].items():
            scores = psnr_of(r, name)
            if scores:
                y = statistics.mean(v["psnr"] for v in scores.values())
                color = "tab:blue" if name.startswith("float") else "tab:red"
                ax.scatter(t["median_ms"], y, marker=marker, color=color, label=label)
                label = None
                ax.annotate(name.removesuffix(CL), (t["median_ms"], y), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
    ax.set_xlabel(f"ms per 320x180 input, EDSR-baseline x4, {threads} threads (lower is better)")
    ax.set_ylabel("PSNR (dB), mean of Set5 / Set14 / B100, trained cpu-preset networks")
    ax.set_title("Speed against quality: float (blue) and binarized (red) paths")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, out / "speed_vs_psnr.png")


def _arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="320x180", help="input width x height")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="thread counts, e.g. 1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--isas", default=None,
                        help="comma-separated: avx512,avx2 (default: those the engine has here)")
    parser.add_argument("--int8-tools", default=None,
                        help=f"int8 tools for the float network (default: {','.join(DEFAULT_TOOLS)} where installed; "
                             "pt2e_inductor compiles for minutes)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to measure, of {','.join(PARTS)}")
    parser.add_argument("--psnr-from", type=Path, default=None,
                        help="folder of trained cpu-preset runs (<run>.yml, experiments/<run>/models): "
                             "score every path")
    parser.add_argument("--psnr-runs",
                        default="float=fp_8000_seed1,shipped=bbcu_full_8000_seed1,body=default_8000_seed1",
                        help="which trained run stands for which rows (float, body, upsampler; other names: "
                             "scored for the PSNR table only, e.g. bbcu=bbcu_a_seed0)")
    parser.add_argument("--redraw", type=Path, default=None, help="a results.json: write its table and plots again")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one ISA's speed run (a subprocess)
    return parser.parse_args(argv)


def _selected(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from benchmarks.int8_float import available_tools
    from bsr_plugin.deploy.engine import kernels

    isas = args.isas.split(",") if args.isas else [i for i in ISA_ENVIRONMENTS if i in kernels.available_isas()]
    tools = args.int8_tools.split(",") if args.int8_tools is not None else list(DEFAULT_TOOLS)
    return isas, [t for t in tools if t and t in available_tools()]


def _write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result))
    plot(result, out)
    print(markdown(result))


def main(argv: Optional[list[str]] = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.redraw:
        _write(json.loads(args.redraw.read_text()), args.out)
        return 0
    width, height = (int(v) for v in args.size.split("x"))
    threads = sorted({int(t) for t in args.threads.split(",")})
    isas, tools = _selected(args)
    if args.worker:
        args.out.write_text(json.dumps(speed((height, width), threads, args.repeats, all_names(tools))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        result = run((height, width), threads, args.repeats, Path(tmp), isas, tools, tuple(args.parts.split(",")))
    if args.psnr_from:
        from benchmarks.fp_parts_psnr import score_runs

        datasets = Path(os.environ.get("BSR_DATASETS", REPO.parent / "shared" / "datasets"))
        result["psnr_runs"] = dict(item.split("=") for item in args.psnr_runs.split(","))
        result["psnr"] = score_runs(args.psnr_from, datasets, tools, list(result["psnr_runs"].values()))
    _write(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
