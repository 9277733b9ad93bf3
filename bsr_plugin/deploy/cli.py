"""The ``bsr`` command: complexity summary, packed export, load-and-run, binary check, demo.

::

    bsr summary -opt options/EDSRBin_x4.yml [--checkpoint net_g_latest.pth] [--input-size 3 180 320]
    bsr export  -opt options/EDSRBin_x4.yml --checkpoint net_g_latest.pth -o edsr_bin_x4.bsrpack [--fp16]
                [--onnx edsr_bin_x4.onnx]
    bsr run     edsr_bin_x4.bsrpack input.png -o output.png [--check]
    bsr check   --packed edsr_bin_x4.bsrpack [--image input.png | --input-size 3 48 48]
    bsr demo    [demo options]

The network comes from a BasicSR options file (``-opt``; its ``network_g``, with the weights
of ``--checkpoint`` or else ``path.pretrain_network_g``) or from a packed file
(``--packed``). basicsr is imported only when needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import PackedFormatError
from .check import check_binary
from .complexity import CONVENTIONS, summary
from .packed import export_packed, load_packed

logger = logging.getLogger(__name__)


class CLIError(Exception):
    """A command-line problem to report in one line (exit status 2)."""


# -- building the network -------------------------------------------------------------------
def _read_options(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"options file {path} does not exist")
    with p.open() as fh:
        opt = yaml.safe_load(fh)
    if not isinstance(opt, dict) or not isinstance(opt.get("network_g"), dict):
        raise CLIError(f"{path}: no network_g section (a BasicSR options file describes its network under "
                       "network_g: {type: ..., ...})")
    return opt


def network_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build ``network_g`` of a BasicSR options file: the plugin's binarized architectures
    (``BinarizedArch``, ``EDSRBin``, ``MSRResNetBin``) or any float BasicSR architecture."""
    from ..basicsr_ext import archs

    kwargs = dict(spec)
    arch_type = kwargs.pop("type", None)
    if arch_type is None:
        raise CLIError("network_g has no 'type'")
    if arch_type in archs.BINARIZED_ARCHS:
        return archs.BINARIZED_ARCHS[arch_type](**kwargs)
    return archs.build_float_arch(dict(kwargs, type=arch_type))


def load_checkpoint(net: nn.Module, path: str, param_key: Optional[str] = None) -> None:
    """Load a BasicSR checkpoint (``{'params': ..., 'params_ema': ...}``) or a plain state dict
    into ``net`` (strict). ``param_key`` defaults to ``params_ema`` if present, else ``params``."""
    if not Path(path).is_file():
        raise CLIError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise CLIError(f"{path} holds a {type(ckpt).__name__}, not a state dict")
    if param_key is not None:
        if param_key not in ckpt:
            raise CLIError(f"{path} has no key {param_key!r}; it has {sorted(map(str, ckpt))[:6]}")
        state = ckpt[param_key]
    elif "params_ema" in ckpt:
        state = ckpt["params_ema"]
    elif "params" in ckpt:
        state = ckpt["params"]
    else:
        state = ckpt
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CLIError(f"{path}: no state dict found (pass --param-key)")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CLIError(f"{path} does not fit network_g: {err}") from err


def build_network(args: argparse.Namespace, need_weights: bool = True) -> nn.Module:
    """The network named by ``-opt`` (+ checkpoint) or ``--packed``, in eval mode.

    Without ``--checkpoint`` the options file's ``path.pretrain_network_g`` is loaded; when
    that file does not exist it is an error, unless ``need_weights`` is false (``summary``
    counts do not depend on the weights)."""
    if args.packed:
        return load_packed(args.packed)
    opt = _read_options(args.opt)
    net = network_from_spec(opt["network_g"])
    checkpoint = args.checkpoint
    param_key = args.param_key
    if checkpoint is None:
        path_opt = opt.get("path") or {}
        checkpoint = path_opt.get("pretrain_network_g")
        param_key = param_key or path_opt.get("param_key_g")
        if checkpoint and not Path(checkpoint).is_file():
            if need_weights:
                raise CLIError(f"{args.opt}: path.pretrain_network_g {checkpoint} does not exist; train first or "
                               "pass --checkpoint")
            logger.warning("path.pretrain_network_g %s does not exist: counting the untrained network", checkpoint)
            checkpoint = None
    if checkpoint:
        load_checkpoint(net, checkpoint, param_key)
    elif need_weights:
        logger.warning("no checkpoint given (--checkpoint or path.pretrain_network_g): the network has its "
                       "initial weights")
    return net.eval()


def _in_channels(net: nn.Module) -> int:
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            return mod.in_channels
    return 3


def _input_size(args: argparse.Namespace, net: nn.Module, default_hw: tuple[int, int]) -> tuple[int, ...]:
    if args.input_size:
        return tuple(args.input_size)
    return (_in_channels(net),) + default_hw


# -- images ---------------------------------------------------------------------------------
def read_image(path: str, channels: int = 3) -> Tensor:
    """An image file as a ``1 x C x H x W`` float tensor in [0, 1] (RGB order, as BasicSR)."""
    import cv2

    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise CLIError(f"cannot read image {path}")
    if channels == 1:
        img = img[:, :, None]
    elif channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise CLIError(f"the network takes {channels} input channels; only 1 (gray) or 3 (RGB) images are read")
    scale = 65535.0 if img.dtype.itemsize == 2 else 255.0
    return torch.from_numpy(img.astype("float32") / scale).permute(2, 0, 1).unsqueeze(0).contiguous()


def write_image(path: str, img: Tensor) -> None:
    """Write a ``1 x C x H x W`` tensor in [0, 1] as an 8-bit image (clamped, rounded)."""
    import cv2

    arr = (img[0].detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), arr):
        raise CLIError(f"cannot write image {path} (use a .png file name)")


# -- commands -------------------------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    net = build_network(args, need_weights=False)
    result = summary(net, _input_size(args, net, (180, 320)), convention=args.convention)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    net = build_network(args)
    info = export_packed(net, args.output, fp16=args.fp16)
    print(info)
    if args.onnx:
        from .onnx_export import export_onnx

        sample = torch.rand((1,) + _input_size(args, net, (48, 48)))
        export_onnx(net, args.onnx, sample)
        print(f"{args.onnx}: ONNX graph ({Path(args.onnx).stat().st_size:,} bytes)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    net = load_packed(args.model)
    x = read_image(args.input, _in_channels(net))
    with torch.no_grad():
        y = net(x)
    write_image(args.output, y)
    print(f"{args.input} ({x.shape[3]}x{x.shape[2]}) -> {args.output} ({y.shape[3]}x{y.shape[2]})")
    if args.check:
        result = check_binary(net, x)
        print(result)
        return 0 if result.ok else 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    net = build_network(args)
    if args.image:
        x = read_image(args.image, _in_channels(net))
    else:
        torch.manual_seed(0)
        x = torch.rand((1,) + _input_size(args, net, (48, 48)))
    result = check_binary(net, x)
    print(result)
    return 0 if result.ok else 1


def cmd_demo(rest: Sequence[str]) -> int:
    from ..basicsr_ext.demo import main as demo_main

    return demo_main(list(rest))


# -- parser ---------------------------------------------------------------------------------
def _add_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-opt", "--opt", metavar="YML", help="BasicSR options file (its network_g is built)")
    src.add_argument("--packed", metavar="FILE", help="a packed model file written by `bsr export`")
    p.add_argument("--checkpoint", metavar="PTH", help="weights for -opt (BasicSR net_g_*.pth or a state dict); "
                   "default: path.pretrain_network_g of the options file")
    p.add_argument("--param-key", default=None, help="key in the checkpoint (default: params_ema if present, "
                   "else params)")


def _add_input_size(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help=f"one input, without the batch dimension (default: the network's channels x {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsr", description="Binarized super-resolution networks: complexity "
                                     "summary, bit-packed export, load-and-run, binary check.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("summary", help="params, storage, FP/binary MACs and OPs, per layer and in total")
    _add_source(p)
    _add_input_size(p, "180 x 320 (a 320x180 image)")
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="bireal64",
                   help="OPs = FP MACs + binary MACs / 64 (bireal64, default) or / 8 (xnor8)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("export", help="write a bit-packed model file (and optionally ONNX)")
    _add_source(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="packed file to write (*.bsrpack)")
    p.add_argument("--fp16", action="store_true", help="store full-precision tensors in fp16 (not bit exact)")
    p.add_argument("--onnx", metavar="FILE", help="also export an ONNX graph (dynamic height and width)")
    _add_input_size(p, "48 x 48 (the ONNX sample input)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="load a packed file and super-resolve one image")
    p.add_argument("model", help="packed model file")
    p.add_argument("input", help="input (low-resolution) image")
    p.add_argument("-o", "--output", required=True, help="output image (.png)")
    p.add_argument("--check", action="store_true", help="also prove on this image that every binarized layer "
                   "computed with +-1 inputs and +-alpha weights")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="run one forward pass and prove every binarized layer is binary")
    _add_source(p)
    p.add_argument("--image", help="input image (default: a random input of --input-size)")
    _add_input_size(p, "48 x 48")
    p.set_defaults(func=cmd_check)

    sub.add_parser("demo", help="the end-to-end demo (its options: bsr demo --help)", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``bsr`` console command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    rest = argv[1:] if verbose else argv
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if rest and rest[0] == "demo":
        command, run = "demo", lambda: cmd_demo(rest[1:])
    else:
        args = build_parser().parse_args(argv)
        command, run = args.command, lambda: args.func(args)
    try:
        return run()
    except (CLIError, PackedFormatError, FileNotFoundError, ValueError, KeyError, ImportError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"bsr {command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
