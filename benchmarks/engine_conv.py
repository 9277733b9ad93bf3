"""Packed-engine conv benchmark: one binarized 64 -> 64 3x3 conv (padding 1) on a
1 x 64 x 180 x 320 float input, end to end (sign + pack, XOR-popcount conv, scale/bias, float
output), against torch's fp32 ``F.conv2d`` at the same thread count, for every ISA the CPU has,
NCHW and channels_last, at 1 thread and at all threads. Also the pure XOR + popcount roofline
of each ISA (a debug op: words per second in a tight L1-resident loop with the conv's
instruction mix), so the conv's word rate can be put next to the machine's.

All variants of one thread count are timed round-robin (one run of each per round), so load
from other jobs on a shared machine hits them alike; the table gives the minimum and the
median over the rounds, and the speedups from both.

    python benchmarks/engine_conv.py                       # writes benchmarks/results/engine_conv/
    python benchmarks/engine_conv.py --repeats 30 --threads 1,2 --out /tmp/engine_conv
    python benchmarks/engine_conv.py --redraw benchmarks/results/engine_conv/results.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from bsr_plugin.deploy import engine as E

logger = logging.getLogger("engine_conv")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "engine_conv"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


Timed = tuple[Optional[str], Callable[[], Any]]  # (ISA to select before the call, or None; the call)


def time_round_robin(fns: dict[str, Timed], repeats: int, warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """Wall and calling-thread CPU seconds of each call, ``repeats`` rounds of one call of every
    function (its ISA selected outside the timed region). At 1 thread every op runs on the
    calling thread, so its CPU time leaves out the time other jobs held the core."""
    for _ in range(warmup):
        for isa, fn in fns.values():
            if isa:
                E.set_isa(isa)
            fn()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": [], "faults": []} for name in fns}
    for _ in range(repeats):
        for name, (isa, fn) in fns.items():
            if isa:
                E.set_isa(isa)
            faults = minor_faults()
            start, cpu = time.perf_counter(), time.thread_time()
            fn()
            times[name]["cpu"].append(time.thread_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - start)
            times[name]["faults"].append(minor_faults() - faults)
    return times


def keep_freed_memory() -> bool:
    """glibc malloc: serve large blocks from the heap and keep freed memory (M_MMAP_THRESHOLD at
    its 32 MiB maximum, M_TRIM_THRESHOLD 1 GiB). By default glibc's dynamic mmap threshold
    sometimes hands every call a freshly mapped output (one page fault per 4 KiB: 3600 for a
    14.7 MB output, several ms), erratically and for both sides alike."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))
    except (OSError, AttributeError):
        return False


def minor_faults() -> int:
    """Minor page faults of the process so far (fresh pages of a new allocation)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def summary(ts: dict[str, list[float]]) -> dict[str, float]:
    return {"min_ms": min(ts["wall"]) * 1e3, "median_ms": statistics.median(ts["wall"]) * 1e3,
            "cpu_min_ms": min(ts["cpu"]) * 1e3, "median_page_faults": statistics.median(ts["faults"])}


@dataclass
class Case:
    """The inputs of one benchmark shape, in both layouts."""

    inputs: dict[str, Tensor]
    float_weights: dict[str, Tensor]
    wp: Tensor
    kw: dict[str, Any]
    words: int  # XOR-popcount word operations of the conv
    ra: Tensor  # roofline operands (L1-resident)
    rw: Tensor


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def make_case(shape: tuple[int, int, int, int], out_channels: int) -> Case:
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(out_channels, c, 3, 3, generator=gen)
    scale = torch.rand(out_channels, generator=gen) + 0.1
    bias = torch.randn(out_channels, generator=gen)
    return Case(inputs={k: x.contiguous(memory_format=f) for k, f in LAYOUTS.items()},
                float_weights={k: weight.contiguous(memory_format=f) for k, f in LAYOUTS.items()},
                wp=E.pack_weight(weight), kw=dict(in_channels=c, kernel_size=3, padding=1, scale=scale, bias=bias),
                words=n * h * w * out_channels * 9 * ((c + 63) // 64),
                ra=torch.randint(-(2**62), 2**62, (512,), dtype=torch.int64, generator=gen),
                rw=torch.randint(-(2**62), 2**62, (32,), dtype=torch.int64, generator=gen))


def check_isas(case: Case, isas: list[str]) -> dict[str, float]:
    """Once per ISA: the benchmarked op against the float simulation (max |difference|)."""
    ref = E.reference_binary_conv2d(case.inputs["nchw"], case.wp, **case.kw)
    checks = {}
    for name in isas:
        with E.use_isa(name):
            checks[name] = max(float((E.binary_conv2d(case.inputs[lay], case.wp, **case.kw) - ref).abs().max())
                               for lay in LAYOUTS)
        logger.info("check %s: max |engine - simulation| = %.3g", name, checks[name])
    return checks


def timed_ops(case: Case, isas: list[str], roofline_repeats: int) -> dict[str, Timed]:
    """Every op timed at one thread count: float conv, binary conv and packing per ISA and
    layout, and the XOR-popcount roofline per ISA."""
    fns: dict[str, Timed] = {}
    for name in isas:
        fns[f"roofline:{name}"] = (name, lambda: torch.ops.bsr_engine.xor_popcount_roofline(
            case.ra, case.rw, roofline_repeats))
    for lay in LAYOUTS:
        fns[f"fp32/{lay}"] = (None, lambda lay=lay: F.conv2d(case.inputs[lay], case.float_weights[lay], None, 1, 1))
        for name in isas:
            fns[f"{name}/{lay}"] = (name, lambda lay=lay: E.binary_conv2d(case.inputs[lay], case.wp, **case.kw))
            fns[f"pack:{name}/{lay}"] = (name, lambda lay=lay: E.pack_input(case.inputs[lay], padding=1))
    return fns


def result_row(times: dict[str, Any], case: Case, threads: int, lay: str, name: str, roofline: float) -> dict:
    base, t, p = summary(times[f"fp32/{lay}"]), summary(times[f"{name}/{lay}"]), summary(times[f"pack:{name}/{lay}"])
    rate = case.words / (t["min_ms"] / 1e3)
    return {
        "threads": threads, "layout": lay, "isa": name,
        "fp32_min_ms": base["min_ms"], "fp32_median_ms": base["median_ms"],
        "binary_min_ms": t["min_ms"], "binary_median_ms": t["median_ms"],
        "speedup_min": base["min_ms"] / t["min_ms"], "speedup_median": base["median_ms"] / t["median_ms"],
        "fp32_cpu_min_ms": base["cpu_min_ms"], "binary_cpu_min_ms": t["cpu_min_ms"],
        "speedup_cpu": base["cpu_min_ms"] / t["cpu_min_ms"], "pack_min_ms": p["min_ms"],
        "fp32_median_page_faults": base["median_page_faults"],
        "binary_median_page_faults": t["median_page_faults"],
        "conv_gwords_per_s": rate / 1e9, "roofline_gwords_per_s": roofline / 1e9, "roofline_fraction": rate / roofline,
    }


def run(shape: tuple[int, int, int, int], out_channels: int, threads_list: list[int], isas: list[str],
        repeats: int, roofline_repeats: int) -> dict[str, Any]:
    case = make_case(shape, out_channels)
    checks = check_isas(case, isas)
    rows = []
    before, isa_before = torch.get_num_threads(), torch.ops.bsr_engine.isa_setting()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            fns = timed_ops(case, isas, roofline_repeats)
            logger.info("%d thread(s): timing %d variants x %d rounds", threads, len(fns), repeats)
            times = time_round_robin(fns, repeats)
            for name in isas:  # word operations per second, from the fastest round
                roofline = threads * roofline_repeats * case.ra.numel() * 4 / min(times[f"roofline:{name}"]["wall"])
                logger.info("%d thread(s) %s roofline: %.2f Gword/s", threads, name, roofline / 1e9)
                for lay in LAYOUTS:
                    row = result_row(times, case, threads, lay, name, roofline)
                    rows.append(row)
                    logger.info("%d thread(s) %-13s %-6s fp32 %7.2f ms  binary %6.2f ms  x%5.1f (median x%5.1f)  "
                                "%5.1f%% of roofline", threads, lay, name, row["fp32_min_ms"], row["binary_min_ms"],
                                row["speedup_min"], row["speedup_median"], 100 * row["roofline_fraction"])
    finally:
        torch.set_num_threads(before)
        E.set_isa(isa_before)
    return {"rows": rows, "checks": checks, "words": case.words}


def cpu_speedup(row: dict[str, Any]) -> str:
    return f"{row['speedup_cpu']:.1f}x" if row["threads"] == 1 else "-"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["setup"]
    lines = [
        "# Packed engine: binarized 3x3 conv vs fp32 F.conv2d",
        "",
        f"Input {s['shape']} float32 -> {s['out_channels']} channels, 3x3, padding 1; the binary op includes sign + "
        "pack, the XOR-popcount conv, scale/bias and the float output in the input's layout. fp32 is "
        "`F.conv2d` in the same layout at the same thread count.",
        "",
        f"Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, ISAs {', '.join(m['isas'])}, "
        f"commit {m['commit']}. Load average before/after: {m['load_before']} / {m['load_after']}"
        + (" (**shared machine: other jobs were running**, so times are noisy; minimums are the better "
           "estimate of the undisturbed cost)." if m["load_before"] and m["load_before"][0] > 1.5
           else " (no other job was running; the 1-minute average still holds the run before this one)."),
        "",
        f"Times in ms over {s['repeats']} round-robin rounds (wall clock, min / median). Speedup = fp32 time / "
        "binary time (from the minimums; from the medians in brackets). CPU speedup (1 thread only): the same "
        "from the calling thread's CPU time (minimums), which leaves out the time other jobs held the core. "
        "Roofline: XOR + popcount word operations per second of the ISA at that thread count in a tight "
        "L1-resident loop (timed in the same rounds); % = the conv's word rate "
        f"({result['words'] / 1e6:.1f} M word ops, end to end incl. packing and output, minimum time) / roofline.",
        "",
        "| threads | layout | ISA | fp32 ms | binary ms | speedup | CPU speedup | pack ms | conv Gword/s "
        "| roofline Gword/s | % roofline |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['threads']} | {r['layout']} | {r['isa']} | {r['fp32_min_ms']:.2f} / {r['fp32_median_ms']:.2f} "
            f"| {r['binary_min_ms']:.2f} / {r['binary_median_ms']:.2f} | **{r['speedup_min']:.1f}x** "
            f"({r['speedup_median']:.1f}x) | {cpu_speedup(r)} | {r['pack_min_ms']:.2f} | {r['conv_gwords_per_s']:.1f} "
            f"| {r['roofline_gwords_per_s']:.1f} | {100 * r['roofline_fraction']:.0f}% |")
    one = {r["layout"]: r["fp32_min_ms"] for r in result["rows"] if r["threads"] == 1}
    slower = sorted({r["threads"] for r in result["rows"] if r["threads"] > 1 and r["layout"] in one
                     and r["fp32_min_ms"] > one[r["layout"]]})
    if slower:
        lines += ["", f"**Warning**: at {', '.join(map(str, slower))} threads fp32 `F.conv2d` was slower than at 1 "
                  "thread: the cores were oversubscribed by other jobs while those rows were measured, so their times "
                  "and ratios say little about the kernels."]
    checks = ", ".join(f"{k}: {v:.2g}" for k, v in result["checks"].items())
    lines += ["", f"Check against the float simulation (max abs difference): {checks}.", ""]
    if m.get("malloc_keeps_freed_memory"):
        lines += ["glibc malloc kept freed memory (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB), so neither side "
                  "pays page faults for a freshly mapped output on every call (by default that happens erratically: "
                  "about 3600 faults for a 14.7 MB output). Median page faults per call are in results.json.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results.json and results.md")
    parser.add_argument("--redraw", type=Path, default=None, metavar="JSON",
                        help="only rewrite results.md next to this results.json (no measurement)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per thread count")
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts (default: 1 and all, torch.get_num_threads())")
    parser.add_argument("--isas", default=None, help="comma-separated ISAs (default: every one this CPU has)")
    parser.add_argument("--shape", default="1,64,180,320", help="input N,C,H,W")
    parser.add_argument("--out-channels", type=int, default=64)
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc malloc's dynamic mmap threshold alone (see keep_freed_memory)")
    parser.add_argument("--roofline-repeats", type=int, default=10000,
                        help="passes over 512 words per roofline call (per thread)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.redraw:
        args.redraw.with_name("results.md").write_text(markdown(json.loads(args.redraw.read_text())))
        return 0

    if not E.available():
        logger.error("%s", E.status_line())
        return 1
    all_threads = torch.get_num_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, all_threads})
    isas = args.isas.split(",") if args.isas else E.available_isas()
    for name in isas:
        if name not in E.available_isas():
            parser.error(f"ISA {name} is not available on this CPU ({', '.join(E.available_isas())})")
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 4:
        parser.error("--shape needs N,C,H,W")

    malloc_tuned = False if args.no_malloc_tuning else keep_freed_memory()
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
               "python": platform.python_version(), "isas": E.available_isas(), "default_isa": E.isa(),
               "max_threads": all_threads, "commit": git_commit(), "load_before": load_average(),
               "malloc_keeps_freed_memory": malloc_tuned}
    logger.info("%s | %s | torch %s | threads %s | ISAs %s | load %s", E.status_line(), machine["cpu"],
                machine["torch"], threads, isas, machine["load_before"])
    result = run(shape, args.out_channels, threads, isas, args.repeats, args.roofline_repeats)  # type: ignore[arg-type]
    machine["load_after"] = load_average()
    result = {"machine": machine, "setup": {"shape": list(shape), "out_channels": args.out_channels,
                                            "kernel": 3, "padding": 1, "repeats": args.repeats,
                                            "threads": threads, "isas": isas}, **result}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    logger.info("wrote %s and %s", args.out / "results.json", args.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
