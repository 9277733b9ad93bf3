"""PSNR of each precision path of benchmarks/engine_network.py, from trained networks.

The networks are the ``cpu`` preset runs of benchmarks/sr_benchmark.py (EDSR x4, 32 features,
8 blocks, trained on T91 + BSD200): ``<dir>/<run>.yml`` (BasicSR options, ``network_g`` builds
it) and ``<dir>/experiments/<run>/models/net_g_latest.pth``. Each is scored as the benchmark
scores (Y channel, border of 4 pixels cropped, Set5 / Set14 / B100 x4) along every path a row of
the speed table takes:

* a float run (``network_g.type`` a float architecture): ``float`` (fp32), ``float/bf16`` and
  ``float/int8`` (its convs lowered by :func:`lower_fp_parts`), and ``float/int8:<tool>`` for each
  int8 tool of :mod:`benchmarks.int8_float` asked for;
* a binarized run: written with ``export_packed``, read back with ``load_packed(engine="packed")``,
  residual blocks fused, then ``engine`` (fp32 parts), ``engine/bf16`` and ``engine/int8``.

int8 activation ranges are calibrated on :data:`CALIBRATION_IMAGES` training images (T91, the
MATLAB-style bicubic x4 downsampling of the whole image, as training made its inputs), never on
the test sets.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger("fp_parts_psnr")
SETS = ("Set5", "Set14", "B100")
CALIBRATION_IMAGES = 8
SCALE = 4


def calibration_images(datasets: Path, count: int = CALIBRATION_IMAGES, scale: int = SCALE) -> list[Tensor]:
    """The first ``count`` T91 images (sorted names), downsampled ``scale`` times, [1, 3, h, w] RGB in [0, 1]."""
    import cv2
    from basicsr.utils.matlab_functions import imresize

    images = []
    for path in sorted((datasets / "T91" / "HR").glob("*.png"))[:count]:
        hr = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
        lr = np.clip(imresize(hr, 1 / scale), 0.0, 1.0).astype(np.float32)
        images.append(torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].contiguous())
    return images


def trained_runs(folder: Path) -> dict[str, tuple[dict[str, Any], Path]]:
    """``{run: (BasicSR options, checkpoint)}`` for every ``<run>.yml`` of ``folder`` whose run
    left ``net_g_latest.pth``."""
    import yaml

    runs = {}
    for opt_path in sorted(folder.glob("*.yml")):
        checkpoint = folder / "experiments" / opt_path.stem / "models" / "net_g_latest.pth"
        if checkpoint.is_file():
            runs[opt_path.stem] = (yaml.safe_load(opt_path.read_text()), checkpoint)
    return runs


def _trained(opt: dict[str, Any], checkpoint: Path) -> nn.Module:
    from bsr_plugin.integrations.basicsr.network import build_options_network
    from bsr_plugin.integrations.basicsr.safe_load import checkpoint_state

    net = build_options_network(copy.deepcopy(opt["network_g"]), str(checkpoint))
    net.load_state_dict(checkpoint_state(checkpoint, "params"))
    return net.eval()


def _lowered(net: nn.Module, precision: str, images: list[Tensor]) -> nn.Module:
    from bsr_plugin.deploy.engine.lowp import calibrate_fp_parts, lower_fp_parts

    net = copy.deepcopy(net)
    calibration = calibrate_fp_parts(net, images) if precision == "int8" else None
    # every conv in int8, as the speed table's 64-feature rows run (their convs all have enough work)
    return lower_fp_parts(net, precision, calibration, min_int8_work=0)


def float_paths(net: nn.Module, images: list[Tensor], tools: list[str], folder: Path) -> dict[str, Callable]:
    """The float network's paths (module docstring) as ``{name: net(x)}``."""
    from benchmarks import int8_float
    from bsr_plugin.deploy.engine.blocks import fuse_residual_blocks

    fused = copy.deepcopy(net).to(memory_format=torch.channels_last)
    fuse_residual_blocks(fused)
    paths: dict[str, Callable] = {"float": net}
    paths.update({f"float/{p}": _lowered(fused, p, images) for p in ("bf16", "int8")})
    for tool in tools:
        if tool != "torch_onednn":
            paths[f"float/int8:{tool}"] = int8_float.build(tool, net, images, folder, images[0])
    return paths


def engine_paths(net: nn.Module, images: list[Tensor], folder: Path) -> dict[str, Callable]:
    """The binarized network's paths (module docstring) as ``{name: net(x)}``."""
    from bsr_plugin import export_packed, load_packed
    from bsr_plugin.deploy.engine.blocks import fuse_residual_blocks

    export_packed(net, folder / "trained.bsrpack")
    engine = load_packed(folder / "trained.bsrpack", engine="packed")
    fuse_residual_blocks(engine)
    return {"engine": engine, **{f"engine/{p}": _lowered(engine, p, images) for p in ("bf16", "int8")}}


def _upscaler(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def upscale(lq: Tensor) -> Tensor:
        with torch.no_grad():
            return fn(lq[None].contiguous()).contiguous()

    return upscale


def score_runs(folder: Path, datasets: Path, tools: list[str], runs: Optional[list[str]] = None,
               sets: tuple[str, ...] = SETS) -> dict[str, Any]:
    """``{run: {path: {set: {"psnr", "ssim"}}}}`` for the trained runs ``runs`` of ``folder``
    (default: every one; a named run without its checkpoint is left out with a warning)."""
    from benchmarks.sr_benchmark import score_sets
    from bsr_plugin import is_binary

    images = calibration_images(datasets)
    scores: dict[str, Any] = {}
    found = trained_runs(folder)
    for run in sorted(set(runs or found) - set(found)):
        logger.warning("PSNR: run %s has no net_g_latest.pth in %s yet; left out", run, folder)
    for run, (opt, checkpoint) in found.items():
        if runs is not None and run not in runs:
            continue
        net = _trained(opt, checkpoint)
        binarized = any(is_binary(m) for m in net.modules())
        with tempfile.TemporaryDirectory() as tmp:
            paths = (engine_paths if binarized else lambda n, i, f: float_paths(n, i, tools, f))(net, images, Path(tmp))
            scores[run] = {}
            for name, fn in paths.items():
                scores[run][name] = score_sets(_upscaler(fn), datasets, sets, SCALE)
                logger.info("PSNR %s %s: %s", run, name,
                            ", ".join(f"{s} {v['psnr']:.3f}" for s, v in scores[run][name].items()))
    return scores


def psnr_markdown(scores: dict[str, Any]) -> list[str]:
    """One row per run and path: PSNR (SSIM) per set, and the difference to the run's fp32 path."""
    lines = ["", "PSNR (dB, Y channel, border 4) / SSIM of the trained `cpu` preset networks (EDSR x4, 32 "
             "features, 8 blocks) along each precision path; `vs fp32`: the mean PSNR difference to the same "
             "network with fp32 parts (`float` or `engine`).", "",
             "| run | path | " + " | ".join(SETS) + " | vs fp32 (dB) |", "|---|---|" + "---|" * (len(SETS) + 1)]
    for run, paths in scores.items():
        base = paths.get("float") or paths.get("engine")
        for name, sets in paths.items():
            diff = np.mean([sets[s]["psnr"] - base[s]["psnr"] for s in sets]) if base else float("nan")
            cells = " | ".join(f"{sets[s]['psnr']:.3f} ({sets[s]['ssim']:.4f})" for s in SETS if s in sets)
            lines.append(f"| {run} | {name} | {cells} | {diff:+.3f} |")
    return lines
