"""Peak memory of loading a packed file: ``load_packed`` of EDSR-baseline x4 (body binarized)
straight onto the packed engine, against the float network's weights (the issue's bound:
below them plus 20 %), with the float-simulation load (which builds the fp32 network) beside it.

    python benchmarks/load_memory.py            # writes benchmarks/results/load_memory/results.{json,md}

Each load runs in a fresh process after a warm-up load of a tiny packed file (so code paths,
libraries and allocator arenas are in place); the peak resident set (VmHWM, reset through
/proc/self/clear_refs) minus the resident set just before the load is what loading added.
glibc's mmap threshold is fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_) so freed large blocks go
back to the system at once and the peak is what was alive at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("load_memory")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "load_memory"
EDSR_BASELINE = {"num_feat": 64, "num_block": 16, "upscale": 4}
TINY = {"num_feat": 8, "num_block": 1, "upscale": 4}


def _status(key: str) -> int:
    """A /proc/self/status value in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(path: str, tiny: str, engine: str) -> dict[str, int]:
    """In a fresh process: warm up on ``tiny``, then the peak memory ``load_packed(path)`` added."""
    import torch

    import bsr_plugin

    torch.set_num_threads(1)
    bsr_plugin.load_packed(tiny, engine=engine)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    net = bsr_plugin.load_packed(path, engine=engine)
    peak, after = _status("VmHWM"), _status("VmRSS")
    return {"peak_added": peak - before, "kept": after - before,
            "state_bytes": sum(t.numel() * t.element_size() for t in net.state_dict().values())}


def measure(engine: str, path: Path, tiny: Path) -> dict[str, int]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, __file__, "--child", str(path), str(tiny), engine], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "TINY", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child[:2], args.child[2])))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    import bsr_plugin
    from bsr_plugin.integrations.basicsr.archs import EDSRBin, build_float_arch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, spec in (("edsr", EDSR_BASELINE), ("tiny", TINY)):
            paths[name] = Path(tmp) / f"{name}.bsrpack"
            bsr_plugin.export_packed(EDSRBin(**spec).eval(), paths[name])
        float_net = build_float_arch({"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, **EDSR_BASELINE})
        float_bytes = sum(t.numel() * t.element_size() for t in float_net.state_dict().values())
        rows = {engine: measure(engine, paths["edsr"], paths["tiny"]) for engine in ("packed", "float")}
        file_bytes = paths["edsr"].stat().st_size
    result = {"float_weight_bytes": float_bytes, "file_bytes": file_bytes, "rows": rows,
              "bound_bytes": int(1.2 * float_bytes)}
    lines = ["# Peak memory of load_packed: EDSR-baseline x4, body binarized", "",
             f"Float network's weights: {float_bytes / 1e6:.2f} MB (bound: +20 % = {1.2 * float_bytes / 1e6:.2f} MB); "
             f"packed file {file_bytes / 1e6:.2f} MB. Fresh process per row, after a warm-up load; glibc mmap "
             "threshold 128 KiB.", "",
             "| load | peak added (MB) | / float weights | kept after loading (MB) | network state (MB) |",
             "|---|---|---|---|---|"]
    for engine, r in rows.items():
        what = "straight onto the packed engine" if engine == "packed" else "float simulation (fp32 network)"
        lines.append(f"| `engine=\"{engine}\"`: {what} | {r['peak_added'] / 1e6:.2f} | "
                     f"{r['peak_added'] / float_bytes:.2f}x | {r['kept'] / 1e6:.2f} | {r['state_bytes'] / 1e6:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
