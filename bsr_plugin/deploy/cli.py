"""The ``bsr`` command: complexity summary, packed export, load-and-run on the packed engine,
binary check, engine timing, and the integrations' commands (``bsr demo``).

::

    bsr summary -opt options/edsr_bin.yml [--checkpoint net_g_latest.pth] [--input-size 3 180 320]
    bsr export  -opt options/edsr_bin.yml --checkpoint net_g_latest.pth -o edsr_bin_x4.bsrpack [--fp16]
                [--onnx edsr_bin_x4.onnx]
    bsr run     edsr_bin_x4.bsrpack input.png -o output.png [--tile 256] [--engine packed] [--check]
    bsr check   --packed edsr_bin_x4.bsrpack [--image input.png | --input-size 3 48 48]
    bsr bench   edsr_bin_x4.bsrpack --size 320x180 [--threads 1,2]
    bsr engine                                          # which engine runs, and why
    bsr demo    [demo options]

A network comes from a packed file (``--packed``; rebuilt by the builder the file names, or by
``--model my_pkg.nets:make_net``, a function of yours that returns the float network) or from a
BasicSR options file (``-opt``, needs the basicsr extra; weights from ``--checkpoint`` or the
file's ``path.pretrain_network_g``). User mistakes (bad files, paths, formats, out of memory)
print one line and exit 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from ..analysis.check import check_binary
from ..analysis.complexity import CONVENTIONS, summary
from ..core.registry import input_channels
from ..errors import BsrError, CLIError
from ..fileio import atomic_path, not_regular, terminate_as_exit
from .builders import builder_from_reference, get_builder
from .file_format import FP_PARTS_CHOICES, SUFFIX
from .inference import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    Progress,
    check_output_path,
    header_size,
    read_image,
    tiles_of,
    upscale,
    write_image,
)
from .packed import ENGINES, export_packed, load_packed
from .tiling import UNKNOWN_RADIUS_PAD, Probe, available_memory, memory_needed, probe, seam_error

logger = logging.getLogger(__name__)

COMMAND_GROUP = "bsr_plugin.commands"


# -- building the network -------------------------------------------------------------------
def load_network(args: argparse.Namespace, need_weights: bool = True, engine: str = "float") -> nn.Module:
    """The network named by ``--packed`` (+ ``--model``) or ``-opt`` (+ checkpoint), in eval mode."""
    if args.packed:
        builder = builder_from_reference(args.model) if getattr(args, "model", None) else None
        return load_packed(args.packed, engine=engine, builder=builder)
    build = get_builder("basicsr")
    return build.from_options(args.opt, args.checkpoint, args.param_key, need_weights)


def _calibration(args: argparse.Namespace, net: nn.Module) -> tuple[Optional[dict], int]:
    """``--calibrate DIR``: the activation ranges of the full-precision convs on the first
    ``--calibrate-count`` images of DIR (sorted), for int8 full-precision parts."""
    if not args.calibrate:
        if args.fp_parts == "int8":
            raise CLIError("--fp-parts int8 needs --calibrate DIR (a few low-resolution images of the kind the network "
                           "will see): int8 activations are calibrated at export")
        return None, 0
    from .engine.lowp import calibrate_fp_parts

    within("--calibrate-count", args.calibrate_count, 1, 1000)
    folder = Path(args.calibrate)
    if not folder.is_dir():
        raise CLIError(f"--calibrate {args.calibrate}: not a folder of images")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not not_regular(f))
    if not files:
        raise CLIError(f"--calibrate {args.calibrate} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    images = [read_image(str(f), input_channels(net), args.max_pixels)[0] for f in files[:args.calibrate_count]]
    with _memory_guard(f"the calibration images of {args.calibrate}", "give smaller images or fewer"):
        return calibrate_fp_parts(net, images), len(images)


MAX_COUNT_SIDE = 2**14
"""Largest --input-size height or width ``bsr summary`` counts at (on the meta device)."""
MAX_RUN_SIDE = 4096
"""Largest --input-size height or width of a real forward pass (``bsr check``, the ONNX sample)."""
MAX_TILE, MAX_TILE_PAD, MAX_PIXELS_LIMIT = 2**16, 4096, 2**34
MAX_BENCH_SIDE, MAX_THREADS, MAX_REPEATS = 8192, 1024, 1000


def within(name: str, value: int, low: int, high: int, hint: str = "") -> int:
    """``value`` of the argument ``name`` if it lies in ``[low, high]``, else a one-line CLIError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CLIError(f"{name} {value}: give a whole number in [{low:,}, {high:,}]{hint}")
    return value


def _input_size(args: argparse.Namespace, net: nn.Module, default_hw: tuple[int, int],
                max_side: int) -> tuple[int, int, int]:
    """``--input-size C H W`` (or the network's channels x ``default_hw``): C must be the
    network's input channels, H and W in ``[1, max_side]``."""
    channels = input_channels(net)
    if not args.input_size:
        return (channels,) + default_hw
    c, h, w = args.input_size
    if c != channels:
        raise CLIError(f"--input-size {c} {h} {w}: the network takes {channels}-channel inputs, not {c}")
    for side in (h, w):
        within("--input-size", side, 1, max_side, f" for the height and width (here {c} {h} {w})")
    return (c, h, w)


def _sample(args: argparse.Namespace, net: nn.Module, default_hw: tuple[int, int]) -> torch.Tensor:
    """A random input of ``--input-size`` that the network has run on once (a size it cannot
    take is the argument's fault, named in one line, before anything is written)."""
    size = _input_size(args, net, default_hw, MAX_RUN_SIDE)
    torch.manual_seed(0)
    x = torch.rand((1,) + size)
    what = "--input-size " + " ".join(map(str, size)) if args.input_size else f"the default {size[1]}x{size[2]} input"
    with torch.no_grad(), _memory_guard(what, "give a smaller --input-size"):
        try:
            net(x)
        except RuntimeError as err:
            if _is_out_of_memory(err):
                raise
            raise CLIError(f"{what}: the network cannot run on it ({str(err).splitlines()[0][:200]}); give an input "
                           "size it takes") from None
    return x


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    try:
        return pa.resolve() == pb.resolve() or (pa.exists() and pb.exists() and pa.samefile(pb))
    except OSError:
        return False


def refuse_overwrite(inputs: Sequence[Optional[str]], outputs: Sequence[Optional[str]]) -> None:
    """No command overwrites one of its inputs (or writes two outputs to one file)."""
    ins, outs = [p for p in inputs if p], [p for p in outputs if p]
    for out in outs:
        for src in ins:
            if _same_file(out, src):
                raise CLIError(f"refusing to write {out}: it is also an input ({src}); choose another output name")
    for i, a in enumerate(outs):
        if any(_same_file(a, b) for b in outs[i + 1:]):
            raise CLIError(f"two outputs are the same file ({a})")


# -- commands -------------------------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    net = load_network(args, need_weights=False)
    size = _input_size(args, net, (180, 320), MAX_COUNT_SIDE)
    with _memory_guard(f"counting at {size[2]}x{size[1]}", "give a smaller --input-size"):
        result = summary(net, size, convention=args.convention)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if Path(args.output).suffix != SUFFIX:
        raise CLIError(f"-o {args.output}: bsr export writes a packed model file; give it the {SUFFIX} suffix "
                       "(nothing else is ever overwritten with one)")
    if args.onnx and Path(args.onnx).suffix != ".onnx":
        raise CLIError(f"--onnx {args.onnx}: give the ONNX file the .onnx suffix")
    if args.input_size and not args.onnx:
        raise CLIError("--input-size is the size of the ONNX sample input: it needs --onnx FILE")
    refuse_overwrite([args.opt, args.checkpoint, args.packed], [args.output, args.onnx])
    net = load_network(args)
    calibration, count = _calibration(args, net)
    fp_parts = dict(fp_parts=args.fp_parts, calibration=calibration, calibration_images=count)
    if not args.onnx:
        print(export_packed(net, args.output, fp16=args.fp16, **fp_parts))
        return 0
    from .onnx_export import export_onnx

    sample = _sample(args, net, (48, 48))  # checked before either file is written
    with atomic_path(args.onnx) as onnx_file:  # the ONNX file appears only if the packed file was written too
        export_onnx(net, onnx_file, sample)
        info = export_packed(net, args.output, fp16=args.fp16, **fp_parts)
    print(info)
    print(f"{args.onnx}: ONNX graph ({Path(args.onnx).stat().st_size:,} bytes)")
    return 0


def _run_jobs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(input, output)`` pairs: one file to ``-o FILE``, or several / a folder to ``-o FOLDER``."""
    sources: list[str] = []
    for item in args.inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not not_regular(f))
            if not found:
                raise CLIError(f"{item} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            sources += found
        elif not_regular(p):
            raise CLIError(f"input {item} {not_regular(p)}")
        else:
            sources.append(item)
    if len(args.inputs) == 1 and Path(args.inputs[0]).is_file():
        return [(sources[0], args.output)]
    if Path(args.output).suffix.lower() in IMAGE_SUFFIXES:
        raise CLIError(f"several inputs need a folder as -o, not {args.output}")
    return [(s, str(Path(args.output) / (Path(s).stem + ".png"))) for s in sources]


def cmd_run(args: argparse.Namespace) -> int:
    if args.tile:
        within("--tile", args.tile, 1, MAX_TILE, " (or 0: the whole image at once)")
    if args.tile_pad is not None:
        within("--tile-pad", args.tile_pad, 0, MAX_TILE_PAD)
    within("--max-pixels", args.max_pixels, 1, MAX_PIXELS_LIMIT)
    jobs = _run_jobs(args)
    refuse_overwrite([args.model_file, *(s for s, _ in jobs)], [o for _, o in jobs])
    for _, out in jobs:
        check_output_path(out)
    builder = builder_from_reference(args.model) if args.model else None
    net = load_packed(args.model_file, engine=args.engine, builder=builder, fp_parts=args.fp_parts)
    print(f"engine: {net.bsr_engine}")
    channels = input_channels(net)
    found = probe(net, channels)
    pad = _tile_pad(args, found)
    images = [(src, out, *_read_input(src, channels, found.scale, args)) for src, out in jobs]
    for _, out, _, depth in images:
        check_output_path(out, depth, channels)
    progress = Progress(sum(tiles_of(x, args.tile) for _, _, x, _ in images), "tiles" if args.tile else "images")
    for src, out, x, depth in images:
        what = f"{src} ({x.shape[3]}x{x.shape[2]})"
        with _memory_guard(what, _tile_advice(args.tile, max(x.shape[2:]))):
            arr = upscale(net, x, depth, args.tile, pad, progress)
        write_image(out, arr)
        print(f"{src} ({x.shape[3]}x{x.shape[2]}) -> {out} ({arr.shape[1]}x{arr.shape[0]})")
    if args.tile and found.radius is None:
        _warn_seams(net, images[0], args.tile, pad)
    if args.check:
        return _check_run(args, net, images[0][2])
    return 0


def _tile_pad(args: argparse.Namespace, found: Probe) -> int:
    """``--tile-pad``, by default the network's receptive radius; a smaller one is refused
    (tiles would differ from the whole-image output at their seams)."""
    if args.tile_pad is None:
        return found.radius if found.radius is not None else UNKNOWN_RADIUS_PAD
    if args.tile and found.radius is not None and args.tile_pad < found.radius:
        raise CLIError(f"--tile-pad {args.tile_pad} is smaller than the network's receptive field ({found.radius} "
                       f"input pixels): tiles would differ from the whole-image output at their seams; leave "
                       f"--tile-pad out (it defaults to {found.radius}) or give at least {found.radius}")
    return args.tile_pad


def _read_input(src: str, channels: int, scale: int, args: argparse.Namespace) -> tuple[torch.Tensor, int]:
    """One input image, its size checked from the header (``--max-pixels``, and what it needs in
    memory whatever the tiling) before it is decoded."""
    size = header_size(src)
    if size is not None and size[0] * size[1] <= args.max_pixels:
        needed, free = memory_needed(size[1], size[0], channels, scale, 8), available_memory()
        if free is not None and needed > free:
            raise CLIError(f"{src} ({size[0]}x{size[1]}): it needs {needed / 2**30:.1f} GiB in memory whatever the "
                           f"tiling (the image, its float copy and the x{scale} output), {free / 2**30:.1f} GiB are "
                           "available: crop or downscale it (--tile does not help here)")
    with _memory_guard(f"{src} (decoding)", "crop or downscale it (--tile does not help while decoding)"):
        return read_image(src, channels, args.max_pixels)


def _warn_seams(net: nn.Module, image: tuple, tile: int, pad: int) -> None:
    """Where the receptive field is unknown, measure what tiling changed on a crop of the first image."""
    src, _, x, depth = image
    side = 2 * (tile + pad)  # two tiles with their context: the seam between them is inside the crop
    crop = x[..., :min(x.shape[2], side), :min(x.shape[3], side)]
    with torch.no_grad():
        worst, share = seam_error(upscale(net, crop, depth), upscale(net, crop, depth, tile, pad))
    if worst:
        print(f"bsr run: warning: this network's receptive field cannot be computed (it has linear or attention "
              f"layers); on a {crop.shape[3]}x{crop.shape[2]} crop of {src}, tiles of {tile} with --tile-pad {pad} "
              f"differ from the whole image by up to {worst}/{2**depth - 1} on {share:.1%} of the values: raise "
              "--tile-pad until this warning goes", file=sys.stderr)


def _is_out_of_memory(err: BaseException) -> bool:
    """MemoryError (numpy, Python), or torch's allocator failing (``can't allocate memory``)."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("alloc" in text or "out of memory" in text)


def _tile_advice(tile: int, longest: int) -> str:
    """What to do when the network runs out of memory: smaller tiles, where that still helps."""
    if tile and tile <= 32:
        return f"even tiles of {tile} do not fit: free memory, or crop or downscale the image"
    smaller = max(32, tile // 2 // 16 * 16) if tile else max(64, (longest // 4) // 32 * 32)
    return f"run it in tiles, e.g. --tile {smaller}" + (f" (smaller than --tile {tile})" if tile else "")


@contextlib.contextmanager
def _memory_guard(what: str, fix: str) -> Iterator[None]:
    """Out of memory inside the block is the user's to fix (``fix``): one line."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        raise CLIError(f"out of memory on {what}: {fix}") from None


def _check_run(args: argparse.Namespace, net: nn.Module, x: torch.Tensor) -> int:
    """``--check``: the float simulation is binary on this image, and ``net`` (the engine) equals it."""
    builder = builder_from_reference(args.model) if args.model else None
    sim = load_packed(args.model_file, engine="float", builder=builder)
    result = check_binary(sim, x)
    print(result)
    if sim is not net and net.bsr_engine != sim.bsr_engine:
        with torch.no_grad():
            diff = (net(x) - sim(x)).abs().max().item()
        print(f"{net.bsr_engine} vs float simulation on this image: max |difference| {diff:.3g}")
    return 0 if result.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    within("--max-pixels", args.max_pixels, 1, MAX_PIXELS_LIMIT)
    if args.image and args.input_size:
        raise CLIError("--image and --input-size both give the input: give one")
    net = load_network(args)
    if args.image:
        x, _ = read_image(args.image, input_channels(net), args.max_pixels)
    else:
        x = _sample(args, net, (48, 48))
    with _memory_guard(f"{x.shape[3]}x{x.shape[2]}", "give a smaller input"):
        result = check_binary(net, x)
    print(result)
    return 0 if result.ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from .engine.bench import bench_packed

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    except ValueError:
        raise CLIError(f"--size WxH (e.g. 320x180) and --threads N[,N...] take integers, got {args.size!r}, "
                       f"{args.threads!r}") from None
    for side in (width, height):
        within("--size", side, 1, MAX_BENCH_SIDE, f" for the width and the height (here {args.size})")
    for n in threads:
        within("--threads", n, 1, MAX_THREADS)
    within("--repeats", args.repeats, 1, MAX_REPEATS)
    builder = builder_from_reference(args.model) if args.model else None
    with _memory_guard(f"{width}x{height}", "give a smaller --size"):
        report = bench_packed(args.model_file, (height, width), threads, repeats=args.repeats, builder=builder,
                              fp_parts=args.fp_parts)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report)
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from .engine import kernels

    print(kernels.status_line())
    if kernels.available():
        print(f"instruction sets on this CPU: {', '.join(kernels.available_isas())}")
    return 0


# -- parser ---------------------------------------------------------------------------------
def _add_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-opt", "--opt", metavar="YML", help="BasicSR options file (its network_g is built; needs the "
                     "basicsr extra)")
    src.add_argument("--packed", metavar="FILE", help="a packed model file written by `bsr export`")
    p.add_argument("--checkpoint", metavar="PTH", help="weights for -opt (BasicSR net_g_*.pth or a state dict); "
                   "default: path.pretrain_network_g of the options file")
    p.add_argument("--param-key", default=None, help="key in the checkpoint (default: params_ema if present, "
                   "else params)")
    _add_model(p)


def _add_fp_parts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fp-parts", choices=FP_PARTS_CHOICES, default=None, help="precision of the full-precision "
                   "parts on the engine (default: the file's; auto: the fastest this machine runs)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="MODULE:FUNCTION", help="build a packed file's network with your own function "
                   "(returns the float network), instead of the builder the file names")


def _add_input_size(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help=f"one input, without the batch dimension (default: the network's channels x {default})")


def _add_max_pixels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse input images above N pixels, read from their header before decoding (default "
                        f"{DEFAULT_MAX_PIXELS:,})")


def _plugin_commands() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=COMMAND_GROUP)}


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a command-line mistake reported in one line (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_summary_command(sub: Any) -> None:
    p = sub.add_parser("summary", help="params, storage, FP/binary MACs and OPs, per layer and in total")
    _add_source(p)
    _add_input_size(p, "180 x 320 (a 320x180 image)")
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="bireal64",
                   help="OPs = FP MACs + binary MACs / 64 (bireal64, default) or / 8 (xnor8)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)


def _add_export_command(sub: Any) -> None:
    p = sub.add_parser("export", help="write a bit-packed model file (and optionally ONNX)")
    _add_source(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help=f"packed file to write (*{SUFFIX})")
    p.add_argument("--fp16", action="store_true", help="store full-precision tensors in fp16 (not bit exact)")
    p.add_argument("--onnx", metavar="FILE", help="also export an ONNX graph (dynamic height and width)")
    p.add_argument("--fp-parts", choices=FP_PARTS_CHOICES, default="auto", help="precision of the full-precision "
                   "parts on the engine, recorded in the file (default auto: the fastest the loading machine runs, "
                   "int8 with --calibrate, else bf16 where the CPU has it, else fp32; fp32 is exact)")
    p.add_argument("--calibrate", metavar="DIR", help="low-resolution images to calibrate int8 activations on")
    p.add_argument("--calibrate-count", type=int, default=8, help="how many of them (default 8)")
    _add_max_pixels(p)
    _add_input_size(p, "48 x 48 (the ONNX sample input)")
    p.set_defaults(func=cmd_export)


def _add_run_command(sub: Any) -> None:
    p = sub.add_parser("run", help="super-resolve images with a packed file (on the packed engine)")
    p.add_argument("model_file", metavar="MODEL", help="packed model file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="low-resolution image(s) or a folder of them")
    p.add_argument("-o", "--output", required=True, help="output image (one input) or folder (several)")
    p.add_argument("--tile", type=int, default=0, help="run in tiles of this many input pixels (0: whole image)")
    p.add_argument("--tile-pad", type=int, default=None, help="context pixels around each tile (default: the "
                   "network's receptive field, so tiles give exactly the whole-image output; less is refused)")
    _add_max_pixels(p)
    p.add_argument("--engine", choices=ENGINES, default="auto", help="packed (XNOR-popcount), float (simulation), "
                   "auto (packed where the extension is built)")
    _add_fp_parts(p)
    p.add_argument("--check", action="store_true", help="also prove on the first image that every binarized layer "
                   "computes with +-1 inputs and +-alpha weights, and compare the engine with the float simulation")
    _add_model(p)
    p.set_defaults(func=cmd_run)


def _add_check_command(sub: Any) -> None:
    p = sub.add_parser("check", help="run one forward pass and prove every binarized layer is binary")
    _add_source(p)
    p.add_argument("--image", help="input image (default: a random input of --input-size)")
    _add_max_pixels(p)
    _add_input_size(p, "48 x 48")
    p.set_defaults(func=cmd_check)


def _add_bench_command(sub: Any) -> None:
    p = sub.add_parser("bench", help="per-layer and end-to-end time: packed engine vs float simulation vs float "
                       "network")
    p.add_argument("model_file", metavar="MODEL", help="packed model file")
    p.add_argument("--size", default="320x180", help="input width x height (default 320x180)")
    p.add_argument("--threads", help="thread counts to time, e.g. 1,2 (default: torch's)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per network (median)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_fp_parts(p)
    _add_model(p)
    p.set_defaults(func=cmd_bench)


def _add_engine_command(sub: Any) -> None:
    p = sub.add_parser("engine", help="which engine runs binarized layers here, and why")
    p.set_defaults(func=cmd_engine)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bsr", description="Binarized super-resolution networks: complexity "
                                     "summary, bit-packed export, load-and-run on the packed CPU engine, binary check.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_summary_command(sub)
    _add_export_command(sub)
    _add_run_command(sub)
    _add_check_command(sub)
    _add_bench_command(sub)
    _add_engine_command(sub)
    for name, ep in _plugin_commands().items():
        sub.add_parser(name, help=f"{ep.value} (its options: bsr {name} --help)", add_help=False)
    return parser


OS_ERROR_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write to another disk",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is not a folder: check the path",
    errno.EISDIR: "it is a folder, not a file: give a file name",
}


def os_error_line(err: OSError) -> str:
    """An OSError in one line: the file, what happened and what to do."""
    what = OS_ERROR_FIXES.get(err.errno) or err.strerror or (str(err).splitlines() or [type(err).__name__])[0]
    return f"{err.filename}: {what}" if err.filename else what


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``bsr`` console command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    rest = argv[1:] if verbose else argv
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    plugins = _plugin_commands()
    if rest and rest[0] in plugins:
        command = rest[0]

        def run() -> int:
            try:
                entry = plugins[command].load()
            except ImportError as err:
                raise CLIError(f"bsr {command} comes from an integration that cannot be loaded: {err}") from None
            return entry(rest[1:])
    else:
        args = build_parser().parse_args(argv)
        command = args.command

        def run() -> int:
            return args.func(args)
    try:
        with terminate_as_exit():  # a SIGTERM mid-write leaves the previous file whole
            return run()
    except BsrError as err:
        print(f"bsr {command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # files and disks: missing, unreadable, read-only, full
        print(f"bsr {command}: error: {os_error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
