"""The demo: train a small binarized EDSR on CPU for a few minutes through the ``basicsr train``
path, on photos that ship inside scikit-image (no download), then deploy it: export the packed
file, run the held-out photos through the packed XNOR-popcount engine, print PSNR/SSIM next to
bicubic and the engine's speed against the float network, and write a side-by-side picture
(bicubic | binarized | original, with a zoomed crop).

    bsr demo [--workdir bsr_demo] [--iters N] [--scale 2]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from ...errors import CLIError
from ...fileio import write_bytes_atomic
from .archs import SHIPPED_UNIT
from .models import SHIPPED_TRAIN

TRAIN_IMAGES = ("astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                "retina.jpg", "brick.png", "grass.png", "gravel.png", "camera.png", "moon.png", "phantom.png")
VAL_IMAGES = ("chelsea.png", "coffee.png")


@dataclass
class DemoResult:
    psnr: float
    ssim: float
    psnr_bicubic: float
    ssim_bicubic: float
    iters: int
    seconds: float
    engine: str
    packed_bytes: int
    ms_engine: float
    ms_float: float
    picture: Path


def _write_png(path: Path, img: Any) -> None:
    """An image written atomically (encoded in memory, temporary file, fsync, rename)."""
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise CLIError(f"cannot encode {path} as PNG")
    write_bytes_atomic(path, buf.tobytes())


def write_sample_images(folder: Path, names: Sequence[str]) -> None:
    """Copy scikit-image's bundled sample photos into ``folder`` as 3-channel PNGs."""
    import cv2

    try:
        import skimage.data
    except ImportError:
        raise CLIError("the demo needs scikit-image: pip install 'bsr_plugin[basicsr]'") from None
    src = Path(skimage.data.__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        img = cv2.imread(str(src / name), cv2.IMREAD_COLOR)
        if img is None:
            raise CLIError(f"scikit-image's sample {name} is missing from {src}: reinstall scikit-image")
        _write_png(folder / (Path(name).stem + ".png"), img)


def demo_options(data: Path, scale: int, iters: int, name: str) -> dict:
    """BasicSR options for the demo: a small binarized EDSR, T91-style training on photo crops."""
    val = max(iters // 4, 1)
    return {
        "name": name, "model_type": "BinarySRModel", "scale": scale, "num_gpu": "auto", "manual_seed": 0,
        "datasets": {
            "train": {"name": "skimage_train", "type": "BicubicPairDataset", "dataroot_gt": str(data / "train"),
                      "gt_size": 32 * scale, "use_hflip": True, "use_rot": True, "num_worker_per_gpu": 0,
                      "batch_size_per_gpu": 16, "dataset_enlarge_ratio": 50, "prefetch_mode": None,
                      "pin_memory": False},
            "val": {"name": "skimage_val", "type": "BicubicPairDataset", "dataroot_gt": str(data / "val")},
        },
        "network_g": {"type": "EDSRBin", "num_feat": 32, "num_block": 4, "upscale": scale, **SHIPPED_UNIT},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {
            "ema_decay": 0, "optim_g": {"type": "Adam", "lr": 1e-3, "weight_decay": 0, "betas": [0.9, 0.99]},
            "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [iters], "restart_weights": [1],
                          "eta_min": 1e-5},
            "total_iter": iters, "warmup_iter": -1,
            **SHIPPED_TRAIN,
        },
        "val": {"val_freq": val, "save_img": False,
                "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": scale, "test_y_channel": True},
                            "ssim": {"type": "calculate_ssim", "crop_border": scale, "test_y_channel": True}}},
        "logger": {"print_freq": max(iters // 20, 1), "save_checkpoint_freq": iters, "use_tb_logger": False,
                   "wandb": {"project": None, "resume_id": None}},
    }


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _val_dataset(opt: dict) -> Any:
    from .datasets import BicubicPairDataset

    return BicubicPairDataset(dict(opt["datasets"]["val"], scale=opt["scale"], phase="val"))


def deploy(opt: dict, checkpoint: Path, workdir: Path) -> tuple[Any, int]:
    """The trained network as a packed file, loaded back on the packed engine (where built)."""
    from ...deploy.packed import export_packed, load_packed
    from .network import build_options_network, load_weights

    net = build_options_network(opt["network_g"], "the demo's options")
    load_weights(net, str(checkpoint), "params")
    info = export_packed(net.eval(), workdir / "demo.bsrpack")
    return load_packed(workdir / "demo.bsrpack"), info.file_bytes


def _timed(net: Any, x: Any, repeats: int = 3) -> float:
    import torch

    with torch.no_grad():
        net(x)
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return 1e3 * (time.perf_counter() - start) / repeats


def side_by_side(net: Any, dataset: Any, scale: int, path: Path) -> Path:
    """bicubic | binarized | original of the first held-out photo, a 4x zoomed crop of each
    below; the picture is written to ``path``."""
    import cv2
    import numpy as np
    from basicsr.utils import tensor2img

    from .evaluation import bicubic_upscaler, network_upscaler

    item = dataset[0]
    panels = [tensor2img(f(item["lq"])) for f in (bicubic_upscaler(scale), network_upscaler(net))]
    panels.append(tensor2img(item["gt"]))
    h, w = panels[-1].shape[:2]
    size = min(h, w) // 4
    top, left = (h - size) // 2, (w - size) // 2
    crops = [cv2.resize(p[top:top + size, left:left + size], (w, w), interpolation=cv2.INTER_NEAREST)
             for p in panels]
    for p in panels:
        cv2.rectangle(p, (left, top), (left + size, top + size), (0, 0, 255), 2)
    picture = np.concatenate([np.concatenate(panels, 1), np.concatenate(crops, 1)], 0)
    for k, label in enumerate(("bicubic", "binarized (packed engine)", "original")):
        cv2.putText(picture, label, (k * w + 8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    _write_png(path, picture)
    return path


def evaluate(opt: dict, checkpoint: Path, workdir: Path) -> DemoResult:
    """Scores of the deployed network (packed file, packed engine) and of bicubic on the val
    photos, the engine's time against the float network, and the side-by-side picture."""
    from ...deploy.engine.bench import float_twin
    from ...deploy.packed import load_packed
    from .evaluation import bicubic_upscaler, network_upscaler, score

    scale = opt["scale"]
    net, packed_bytes = deploy(opt, checkpoint, workdir)
    ds = _val_dataset(opt)
    ours, bicubic = score(network_upscaler(net), ds, scale), score(bicubic_upscaler(scale), ds, scale)
    x = ds[0]["lq"][None]
    float_net = float_twin(load_packed(workdir / "demo.bsrpack", engine="float"))
    picture = side_by_side(net, ds, scale, workdir / "side_by_side.png")
    return DemoResult(ours["psnr"], ours["ssim"], bicubic["psnr"], bicubic["ssim"], 0, 0.0, net.bsr_engine,
                      packed_bytes, _timed(net, x), _timed(float_net, x), picture)


def run(workdir: Path, iters: int, scale: int) -> DemoResult:
    from . import register
    from .cli import main as basicsr_main

    register()
    workdir = workdir.resolve()
    data = workdir / "data"
    write_sample_images(data / "train", TRAIN_IMAGES)
    write_sample_images(data / "val", VAL_IMAGES)
    name = f"demo_EDSRBin_x{scale}"
    opt = demo_options(data, scale, iters, name)
    opt_path = workdir / f"{name}.yml"
    write_bytes_atomic(opt_path, yaml.safe_dump(opt, sort_keys=False).encode("utf-8"))
    start = time.time()
    level = logging.getLogger("bsr_plugin").level
    with _cwd(workdir):
        rc = basicsr_main(["train", "-opt", str(opt_path)])
    logging.getLogger("bsr_plugin").setLevel(level)  # the basicsr command logs the plugin at INFO
    if rc != 0:
        raise CLIError(f"the demo's training stopped (exit status {rc}; its error is above)")
    seconds = time.time() - start
    result = evaluate(opt, workdir / "experiments" / name / "models" / "net_g_latest.pth", workdir)
    result.iters, result.seconds = iters, seconds
    return result


MAX_ITERS = 10**6


def _arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The demo's command line, each mistake one line (exit status 2)."""
    from ...deploy.cli import OneLineParser, within

    parser = OneLineParser(prog="bsr demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bsr_demo"), help="where data and experiments go")
    parser.add_argument("--iters", type=int, default=600, help="training iterations (default 600)")
    parser.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    args = parser.parse_args(argv)
    within("--iters", args.iters, 1, MAX_ITERS)
    if args.workdir.exists() and not args.workdir.is_dir():
        raise CLIError(f"--workdir {args.workdir} is a file, not a folder: choose a folder for the demo's data and "
                       "experiments")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _arguments(argv)
    res = run(args.workdir, args.iters, args.scale)
    out = sys.stdout
    out.write(f"\nbinarized EDSR (32 features, 4 blocks, x{args.scale}), {res.iters} iterations in "
              f"{res.seconds:.0f} s on {args.workdir}/data/val (held out), Y channel:\n")
    out.write(f"  {'':<16}{'PSNR (dB)':>10}{'SSIM':>8}\n")
    out.write(f"  {'bicubic':<16}{res.psnr_bicubic:>10.2f}{res.ssim_bicubic:>8.4f}\n")
    out.write(f"  {'binarized EDSR':<16}{res.psnr:>10.2f}{res.ssim:>8.4f}   (from {args.workdir}/demo.bsrpack, "
              f"{res.packed_bytes:,} bytes, on the {res.engine})\n")
    verdict = "beats" if res.psnr > res.psnr_bicubic else "does NOT beat"
    out.write(f"  the binarized network {verdict} bicubic by {res.psnr - res.psnr_bicubic:+.2f} dB\n")
    out.write(f"  speed on one held-out photo: {res.ms_engine:.1f} ms, the float network {res.ms_float:.1f} ms "
              f"({res.ms_float / res.ms_engine:.2f}x; head, tail and upsampler stay full precision)\n")
    out.write(f"  side by side (bicubic | binarized | original, zoomed crop below): {res.picture}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
