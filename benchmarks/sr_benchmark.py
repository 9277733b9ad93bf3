"""Equal-budget benchmark: full precision, k-bit fake quantization, plain BNN, BNN with real
identity shortcuts (Bi-Real style), ours (compact uniform prior + shortcuts + pixel-wise
curriculum) and its ablations, all on EDSR, trained through the ``basicsr train`` command with
identical data, seed, iterations and recipe.

    python benchmarks/sr_benchmark.py --preset cpu        # ~90 min on 2 cores
    python benchmarks/sr_benchmark.py --preset gpu        # sized for ~9 min on one H100
    python benchmarks/sr_benchmark.py --preset smoke      # seconds: CI keeps the script alive
    python benchmarks/sr_benchmark.py --redraw benchmarks/results/cpu/results.json

Writes ``results.json`` (everything needed to redraw), ``results.md`` (the table and the
claims), ``val_psnr.png`` and ``flip_ratio.png`` into ``--out`` (default
``benchmarks/results/<preset>``). Datasets come from ``$BSR_DATASETS`` (default
``../shared/datasets``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("sr_benchmark")

# -- what is compared -----------------------------------------------------------------------
# Each variant: model type, the network's kind and options, and the pixel loss.
BINARY = {"act_grad": "approxsign", "shortcut": "auto", "nested_skips": "cut_first", "relu": "leaky",
          "scale": "learned"}
VARIANTS: dict[str, dict[str, Any]] = {
    "fp": {"kind": "float", "loss": "l1", "label": "full precision"},
    "q5": {"kind": "quant", "bits": 5, "loss": "l1", "label": "5-bit W/A (LSQ)"},
    "q4": {"kind": "quant", "bits": 4, "loss": "l1", "label": "4-bit W/A (LSQ)"},
    "bnn": {"kind": "binary", "binarize": {**BINARY, "prior_a": None, "act_grad": "ste", "shortcut": "none"},
            "loss": "l1", "label": "plain BNN (STE, no prior, no added shortcuts)"},
    "bireal": {"kind": "binary", "binarize": {**BINARY, "prior_a": None}, "loss": "l1",
               "label": "BNN + real identity shortcuts (Bi-Real style)"},
    "ours": {"kind": "binary", "binarize": {**BINARY, "prior_a": "A"}, "loss": "curriculum",
             "label": "prior + shortcuts + curriculum"},
    "ours_no_prior": {"kind": "binary", "binarize": {**BINARY, "prior_a": None}, "loss": "curriculum",
                      "label": "ours without the prior"},
    "ours_no_shortcut": {"kind": "binary", "binarize": {**BINARY, "prior_a": "A", "shortcut": "none"},
                         "loss": "curriculum", "label": "ours without the shortcuts"},
    "ours_no_curriculum": {"kind": "binary", "binarize": {**BINARY, "prior_a": "A"}, "loss": "l1",
                           "label": "ours without the curriculum"},
    "ours_cut_last": {"kind": "binary", "binarize": {**BINARY, "prior_a": "A", "nested_skips": "cut_last"},
                      "loss": "curriculum", "label": "ours, shortcut dropped at the last conv of a skipped block"},
    "ours_a1": {"kind": "binary", "binarize": {**BINARY, "prior_a": 1.0}, "loss": "curriculum", "label": "ours, a = 1"},
    "ours_a0.1": {"kind": "binary", "binarize": {**BINARY, "prior_a": 0.1}, "loss": "curriculum",
                  "label": "ours, a = 0.1"},
    "ours_a0.01": {"kind": "binary", "binarize": {**BINARY, "prior_a": 0.01}, "loss": "curriculum",
                   "label": "ours, a = 0.01"},
    "ours_a0.001": {"kind": "binary", "binarize": {**BINARY, "prior_a": 0.001}, "loss": "curriculum",
                    "label": "ours, a = 0.001"},
}
A_SWEEP = ("ours_a1", "ours_a0.1", "ours_a0.01", "ours_a0.001")


@dataclass(frozen=True)
class Preset:
    """Budget of one benchmark grid (the paper: 64 features, 16 blocks, batch 16, LR patch 48,
    300k iterations, lr 2e-4 halved at 200k, DIV2K)."""

    scale: int
    num_feat: int
    num_block: int
    batch: int
    lr_patch: int
    iters: int
    lr: float
    val_freq: int
    print_freq: int
    prior_a: float
    eval_sets: tuple[str, ...]
    variants: tuple[str, ...]
    extra_seeds: tuple[str, ...]  # variants also run with seed 1 (spread between seeds)
    timing_steps: int
    workers: int = 0
    train_sets: tuple[str, ...] = ("T91", "BSD200")


ALL = ("fp", "q5", "q4", "bnn", "bireal", "ours", "ours_no_prior", "ours_no_shortcut", "ours_no_curriculum",
       "ours_a1", "ours_a0.1", "ours_a0.001")
PRESETS = {
    "smoke": Preset(scale=4, num_feat=8, num_block=2, batch=2, lr_patch=12, iters=4, lr=2e-4, val_freq=2,
                    print_freq=1, prior_a=0.01, eval_sets=("Set5",), variants=("fp", "ours"), extra_seeds=(),
                    timing_steps=3, train_sets=("T91",)),
    "cpu": Preset(scale=4, num_feat=32, num_block=8, batch=8, lr_patch=24, iters=2000, lr=5e-4, val_freq=250,
                  print_freq=50, prior_a=0.01, eval_sets=("Set5", "Set14", "B100"), variants=ALL,
                  extra_seeds=("ours", "ours_no_prior", "bireal"), timing_steps=8),
    "gpu": Preset(scale=4, num_feat=64, num_block=16, batch=16, lr_patch=48, iters=600, lr=2e-4, val_freq=200,
                  print_freq=50, prior_a=0.01, eval_sets=("Set5", "Set14", "B100"), variants=ALL,
                  extra_seeds=("ours", "ours_no_prior", "bireal"), timing_steps=20, workers=6),
}


@dataclass
class Run:
    variant: str
    seed: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> {psnr, ssim}
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (iter, Set5 PSNR)
    flip_curve: list[tuple[int, float]] = field(default_factory=list)  # (iter, mean flip ratio)
    wall_s: float = 0.0


# -- options ---------------------------------------------------------------------------------
def variant_for(name: str, preset: Preset) -> dict[str, Any]:
    v = dict(VARIANTS[name])
    if "binarize" in v:
        b = dict(v["binarize"])
        if b["prior_a"] == "A":
            b["prior_a"] = preset.prior_a
        v["binarize"] = b
    return v


def network_options(name: str, preset: Preset) -> dict[str, Any]:
    v = variant_for(name, preset)
    base = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": preset.num_feat, "num_block": preset.num_block,
            "upscale": preset.scale}
    if v["kind"] == "float":
        return {"type": "EDSR", **base}
    if v["kind"] == "quant":
        return {"type": "FakeQuantArch", "bits": v["bits"], "arch": {"type": "EDSR", **base}}
    return {"type": "EDSRBin", **base, "binarize": v["binarize"]}


def train_options(name: str, seed: int, preset: Preset, datasets: Path, train_folder: Path) -> dict[str, Any]:
    v = variant_for(name, preset)
    s = preset.scale
    pixel = ({"type": "CurriculumL1Loss", "loss_weight": 1.0, "reduction": "mean", "q0": 0.5, "until": 0.5}
             if v["loss"] == "curriculum" else {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"})
    train: dict[str, Any] = {
        "ema_decay": 0, "optim_g": {"type": "Adam", "lr": preset.lr, "weight_decay": 0, "betas": [0.9, 0.999]},
        "scheduler": {"type": "MultiStepLR", "milestones": [int(preset.iters * 2 / 3)], "gamma": 0.5},
        "total_iter": preset.iters, "warmup_iter": -1, "pixel_opt": pixel}
    return {
        "name": f"{name}_seed{seed}", "model_type": "BinarySRModel" if v["kind"] == "binary" else "SRModel",
        "scale": s, "num_gpu": "auto", "manual_seed": seed,
        "datasets": {
            "train": {"name": "+".join(preset.train_sets), "type": "BicubicPairDataset",
                      "dataroot_gt": str(train_folder),
                      "gt_size": preset.lr_patch * s, "use_hflip": True, "use_rot": True,
                      "num_worker_per_gpu": preset.workers, "batch_size_per_gpu": preset.batch,
                      "dataset_enlarge_ratio": 100, "prefetch_mode": None, "pin_memory": False},
            "val": {"name": "Set5", "type": "PairedImageDataset", "dataroot_gt": str(datasets / "Set5" / "HR"),
                    "dataroot_lq": str(datasets / "Set5" / "LR_bicubic" / f"X{s}"), "filename_tmpl": f"{{}}x{s}",
                    "io_backend": {"type": "disk"}}},
        "network_g": network_options(name, preset),
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": train,
        "val": {"val_freq": preset.val_freq, "save_img": False,
                "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": s, "test_y_channel": True}}},
        "logger": {"print_freq": preset.print_freq, "save_checkpoint_freq": preset.iters, "use_tb_logger": False,
                   "wandb": {"project": None, "resume_id": None}},
    }


# -- running -----------------------------------------------------------------------------------
def link_training_images(datasets: Path, sets: tuple[str, ...], folder: Path) -> Path:
    """One folder of symbolic links to the HR images of ``sets`` (BasicSR takes one folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sets:
        for img in sorted((datasets / name / "HR").iterdir()):
            link = folder / f"{name}_{img.name}"
            if not link.exists():
                link.symlink_to(img.resolve())
    return folder


def train(opt: dict[str, Any], work: Path) -> float:
    """``basicsr train -opt X.yml --plugin benchmarks.fakequant`` in ``work``; returns seconds."""
    import yaml

    yml = work / f"{opt['name']}.yml"
    yml.write_text(yaml.safe_dump(opt, sort_keys=False))
    basicsr = Path(sys.executable).parent / "basicsr"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.time()
    res = subprocess.run([str(basicsr), "train", "-opt", str(yml), "--plugin", "benchmarks.fakequant"], cwd=work,
                         env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"training {opt['name']} failed:\n{res.stderr[-4000:]}")
    return time.time() - start


def parse_log(text: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(iter, Set5 PSNR) after each validation and (iter, mean flip ratio) at each print. The
    iteration of a validation is the last one printed before it (``val_freq`` is a multiple of
    ``print_freq``); the repeat validation BasicSR runs after training is dropped."""
    val: dict[int, float] = {}
    flips = []
    it = 0
    for line in text.splitlines():
        m = re.search(r"iter:\s*([0-9,]+)", line)
        if m:
            it = int(m.group(1).replace(",", ""))
            f = re.search(r"flip_ratio: ([0-9.e+-]+)", line)
            if f:
                flips.append((it, float(f.group(1))))
        if line.strip().startswith("# psnr:"):
            val.setdefault(it, float(line.split("psnr:")[1].split()[0]))
    return sorted(val.items()), flips


def score_sets(upscale: Callable[[Any], Any], datasets: Path, sets: tuple[str, ...], scale: int) -> dict[str, dict]:
    """Mean Y-channel PSNR/SSIM of ``upscale`` on each benchmark set (its LR files)."""
    from basicsr.data import build_dataset

    from bsr_plugin.basicsr_ext.evaluation import score

    return {name: score(upscale, build_dataset({
        "name": name, "type": "PairedImageDataset", "phase": "test", "scale": scale,
        "dataroot_gt": str(datasets / name / "HR"), "dataroot_lq": str(datasets / name / "LR_bicubic" / f"X{scale}"),
        "filename_tmpl": f"{{}}x{scale}", "io_backend": {"type": "disk"}}), scale) for name in sets}


def evaluate(opt: dict[str, Any], checkpoint: Path, datasets: Path, sets: tuple[str, ...]) -> dict[str, dict]:
    """The trained network's scores (its ``net_g_latest.pth``)."""
    import torch
    from basicsr.archs import build_network

    from bsr_plugin.basicsr_ext.evaluation import network_upscaler

    net = build_network(opt["network_g"])
    net.load_state_dict(torch.load(checkpoint, map_location="cpu")["params"])
    return score_sets(network_upscaler(net), datasets, sets, opt["scale"])


def bicubic_metrics(datasets: Path, sets: tuple[str, ...], scale: int) -> dict[str, dict]:
    """Scores of MATLAB-style bicubic upsampling."""
    from bsr_plugin.basicsr_ext.evaluation import bicubic_upscaler

    return score_sets(bicubic_upscaler(scale), datasets, sets, scale)


def step_time(opt: dict[str, Any], preset: Preset, steps: int) -> float:
    """Median seconds of one training step (forward, loss, backward, Adam, and for binarized
    networks the prior's projection), on a fixed batch of the preset's size."""
    import torch
    from basicsr.archs import build_network
    from basicsr.losses import build_loss

    from bsr_plugin import project_to_prior_

    torch.manual_seed(0)
    net = build_network(opt["network_g"]).train()
    loss_fn = build_loss(dict(opt["train"]["pixel_opt"]))
    optim = torch.optim.Adam(net.parameters(), lr=preset.lr)
    x = torch.rand(preset.batch, 3, preset.lr_patch, preset.lr_patch)
    y = torch.rand(preset.batch, 3, preset.lr_patch * preset.scale, preset.lr_patch * preset.scale)
    binary = opt["model_type"] == "BinarySRModel"
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        optim.zero_grad()
        loss_fn(net(x), y).backward()
        optim.step()
        if binary:
            project_to_prior_(net)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def run_grid(preset_name: str, preset: Preset, datasets: Path, out: Path, only: Optional[list[str]],
             seeds: Optional[list[int]] = None) -> dict:
    import torch

    from benchmarks import fakequant  # noqa: F401  (registers FakeQuantArch here too)

    for sub in ("Set5", *preset.eval_sets, *preset.train_sets):
        if not (datasets / sub / "HR").is_dir():
            raise FileNotFoundError(f"dataset folder {datasets / sub / 'HR'} is missing: set BSR_DATASETS to the "
                                    "shared datasets folder")
    variants = only or list(preset.variants)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if seeds is None:
        jobs = [(v, 0) for v in variants] + [(v, 1) for v in preset.extra_seeds if v in variants]
    else:
        jobs = [(v, seed) for seed in seeds for v in variants]
    runs: list[Run] = []
    grid_start = time.time()
    train_folder = link_training_images(datasets, preset.train_sets, work / "train_hr")
    for k, (variant, seed) in enumerate(jobs, 1):
        opt = train_options(variant, seed, preset, datasets, train_folder)
        log.info("[%d/%d] training %s (seed %d)", k, len(jobs), variant, seed)
        wall = train(opt, work)
        exp = work / "experiments" / opt["name"]
        val, flips = parse_log("\n".join(p.read_text() for p in sorted(exp.glob("train_*.log"))))
        metrics = evaluate(opt, exp / "models" / "net_g_latest.pth", datasets, preset.eval_sets)
        runs.append(Run(variant, seed, metrics, val, flips, wall))
        log.info("    %s: %s (%.0f s)", variant, {s: round(m["psnr"], 2) for s, m in metrics.items()}, wall)
    timing = {}
    for variant in variants:
        opt = train_options(variant, 0, preset, datasets, train_folder)
        timing[variant] = step_time(opt, preset, preset.timing_steps)
        log.info("step time %s: %.3f s", variant, timing[variant])
    return {
        "preset": preset_name, "config": asdict(preset), "variants": {v: variant_for(v, preset) for v in variants},
        "runs": [asdict(r) for r in runs], "step_time_s": timing,
        "bicubic": bicubic_metrics(datasets, preset.eval_sets, preset.scale),
        "grid_wall_s": time.time() - grid_start,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine(), "processor": _cpu_name(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "paper_recipe": "EDSR-baseline (64 features, 16 blocks), DIV2K, batch 16, LR patch 48, 300k iterations, "
                        "lr 2e-4 halved at 200k",
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# -- report ------------------------------------------------------------------------------------
def _by_variant(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results["runs"]:
        out.setdefault(r["variant"], []).append(r)
    return out


def _mean(runs: list[dict], s: str, key: str) -> float:
    return statistics.mean(r["metrics"][s][key] for r in runs)


def _spread(runs: list[dict], s: str) -> Optional[float]:
    vals = [r["metrics"][s]["psnr"] for r in runs]
    return max(vals) - min(vals) if len(vals) > 1 else None


def claims(results: dict) -> list[str]:
    """The four claims, judged on Set5 PSNR with the seed spread as the noise floor."""
    by = _by_variant(results)
    first = results["config"]["eval_sets"][0]
    spreads = [s for s in (_spread(r, first) for r in by.values()) if s is not None]
    noise = max(spreads) if spreads else None
    floor = noise if noise is not None else 0.05

    def delta(a: str, b: str) -> Optional[float]:
        if a in by and b in by:
            return _mean(by[a], first, "psnr") - _mean(by[b], first, "psnr")
        return None

    def verdict(d: Optional[float]) -> str:
        if d is None:
            return "not run"
        if d > floor:
            return "held"
        if d < -floor:
            return "did not hold (the opposite)"
        return "could not be told at this budget"

    lines = [f"Noise floor: largest spread between seeds on {first} = "
             + (f"{noise:.3f} dB" if noise is not None else "n/a (one seed; 0.05 dB used)")]
    d1 = delta("ours", "ours_no_prior")
    lines.append(f"1. Prior vs none (ours - ours_no_prior, {first}): "
                 + (f"{d1:+.3f} dB -> {verdict(d1)}" if d1 is not None else "not run"))
    d1b = delta("ours", "bnn")
    if d1b is not None:
        lines.append(f"   ours vs plain BNN: {d1b:+.3f} dB -> {verdict(d1b)}")
    d2a = delta("ours", "ours_no_shortcut")
    lines.append("2. Shortcuts (ours - ours_no_shortcut): " + (f"{d2a:+.3f} dB -> {verdict(d2a)}" if d2a is not None
                                                                  else "not run"))
    if d2a is not None and d1 is not None and "ours_no_shortcut" in by and "bnn" in by:
        with_sc = d1
        without_sc = delta("ours_no_shortcut", "bnn")
        lines.append(f"   prior's gain with shortcuts {with_sc:+.3f} dB, without (ours_no_shortcut - bnn, which also "
                     f"differs in estimator and curriculum) {without_sc:+.3f} dB")
    d3 = delta("ours", "ours_no_curriculum")
    lines.append("3. Curriculum (ours - ours_no_curriculum): " + (f"{d3:+.3f} dB -> {verdict(d3)}" if d3 is not None
                                                                     else "not run"))
    d4 = delta("ours", "q5")
    if d4 is not None:
        lines.append(f"4. Close to 5-bit (ours - q5): {d4:+.3f} dB; ours - q4: {delta('ours', 'q4'):+.3f} dB; "
                     f"gap to full precision: {delta('ours', 'fp'):+.3f} dB")
    return lines


def markdown(results: dict) -> str:
    by = _by_variant(results)
    sets = results["config"]["eval_sets"]
    cfg = results["config"]
    timing = results["step_time_s"]
    fp = by.get("fp")
    lines = [f"# SR binarization benchmark, preset `{results['preset']}`", "",
             f"EDSR x{cfg['scale']}, {cfg['num_feat']} features, {cfg['num_block']} blocks; batch {cfg['batch']}, "
             f"LR patch {cfg['lr_patch']}, {cfg['iters']} iterations, Adam lr {cfg['lr']} halved at 2/3; training "
             f"images {' + '.join(cfg['train_sets'])} (LR by bicubic on the fly); Y-channel PSNR/SSIM, border "
             f"{cfg['scale']} cropped. Paper recipe: {results['paper_recipe']}.",
             f"Machine: {results['environment']['processor']} ({results['environment']['threads']} threads)"
             + (f", GPU {results['environment']['cuda']}" if results['environment'].get('cuda') else "")
             + f"; grid wall time {results['grid_wall_s'] / 60:.1f} min.", "",
             "| variant | " + " | ".join(f"{s} PSNR / SSIM" for s in sets) + f" | gap to FP ({sets[0]}) | seeds | "
             "train wall (s) | step time vs FP |",
             "|---|" + "---|" * (len(sets) + 4)]
    bic = results["bicubic"]
    lines.append("| bicubic | " + " | ".join(f"{bic[s]['psnr']:.2f} / {bic[s]['ssim']:.4f}" for s in sets)
                 + (f" | {bic[sets[0]]['psnr'] - _mean(fp, sets[0], 'psnr'):+.2f}" if fp else " | ") + " | - | - | - |")
    for v, runs in by.items():
        cells = []
        for s in sets:
            sp = _spread(runs, s)
            cells.append(f"{_mean(runs, s, 'psnr'):.2f}{f' (±{sp / 2:.2f})' if sp is not None else ''} / "
                         f"{_mean(runs, s, 'ssim'):.4f}")
        gap = f"{_mean(runs, sets[0], 'psnr') - _mean(fp, sets[0], 'psnr'):+.2f}" if fp else "-"
        ratio = f"{timing[v] / timing['fp']:.2f}x" if v in timing and "fp" in timing else "-"
        wall = statistics.mean(r["wall_s"] for r in runs)
        lines.append(f"| {v}: {results['variants'][v]['label']} | " + " | ".join(cells)
                     + f" | {gap} | {len(runs)} | {wall:.0f} | {ratio} |")
    lines += ["", "(± = half the spread between the two seeds.) Step time: median training step on this machine "
              f"(batch {cfg['batch']}, LR patch {cfg['lr_patch']}), full precision "
              f"{timing.get('fp', float('nan')):.3f} s.", "", "## Claims", ""]
    lines += [f"- {c}" if not c.startswith("   ") else f"  - {c.strip()}" for c in claims(results)]
    if any(v in by for v in A_SWEEP):
        lines += ["", "## The prior's half-width a (Adam lr {})".format(cfg["lr"]), "",
                  f"| a | {sets[0]} PSNR | mean flip ratio per print interval (first / last) |", "|---|---|---|"]
        for v in A_SWEEP + ("ours_no_prior",):
            src = v if v in by else ("ours" if v == f"ours_a{cfg['prior_a']:g}" else None)
            if src and src in by:
                r0 = by[src][0]
                fl = r0["flip_curve"]
                fr = f"{fl[0][1]:.2e} / {fl[-1][1]:.2e}" if fl else "-"
                label = "none" if v == "ours_no_prior" else v.replace("ours_a", "")
                lines.append(f"| {label} | {_mean(by[src], sets[0], 'psnr'):.2f} | {fr} |")
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = _by_variant(results)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab20.colors
    for k, (v, runs) in enumerate(by.items()):
        curve = runs[0]["val_curve"]
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", ms=3, label=v,
                    color=colors[(2 * k) % 20 + (k >= 10)], ls="--" if v in ("fp", "q5", "q4") else "-")
    ax.set_xlabel("iteration")
    ax.set_ylabel("Set5 PSNR (dB, Y)")
    ax.set_title(f"validation PSNR, preset {results['preset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "val_psnr.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for v in ("ours", "ours_no_prior", "bireal", "bnn", *A_SWEEP):
        if v in by and by[v][0]["flip_curve"]:
            curve = by[v][0]["flip_curve"]
            ax.plot([c[0] for c in curve], [max(c[1], 1e-7) for c in curve], label=v,
                    ls="-" if "prior" not in v and v not in ("bireal", "bnn") else "--")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("fraction of weight signs flipped per print interval")
    ax.set_title("flip ratio with and without the prior (dashed: no prior)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "flip_ratio.png", dpi=120)
    plt.close(fig)


def merge(parts: list[dict]) -> dict:
    """One result from several runs of the same preset (e.g. more seeds run later): runs are
    concatenated; the first part's step times and bicubic scores are kept."""
    base = dict(parts[0])
    ignore = {"variants", "extra_seeds"}
    for other in parts[1:]:
        a = {k: v for k, v in base["config"].items() if k not in ignore}
        b = {k: v for k, v in other["config"].items() if k not in ignore}
        if a != b:
            raise SystemExit(f"cannot merge results of different configurations: {a} vs {b}")
        keys = {(r["variant"], r["seed"]) for r in base["runs"]}
        dup = [(r["variant"], r["seed"]) for r in other["runs"] if (r["variant"], r["seed"]) in keys]
        if dup:
            raise SystemExit(f"runs present twice: {dup}")
        base["runs"] = base["runs"] + other["runs"]
        base["variants"] = {**other["variants"], **base["variants"]}
        base["step_time_s"] = {**other["step_time_s"], **base["step_time_s"]}
        base["grid_wall_s"] = base["grid_wall_s"] + other["grid_wall_s"]
    base["merged_from"] = len(parts)
    return base


def write_outputs(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    plots(results, out)


def _override(preset: Preset, items: list[str]) -> Preset:
    """``--set iters=100`` style overrides, for trying a preset at another size."""
    from dataclasses import fields, replace

    types = {f.name: f.type for f in fields(Preset)}
    changes: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--set: unknown preset field {key!r}; fields: {', '.join(types)}")
        changes[key] = tuple(value.split(",")) if "tuple" in str(types[key]) else (
            float(value) if types[key] in ("float", float) else int(value))
    return replace(preset, **changes)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<preset>)")
    parser.add_argument("--variants", help="comma-separated subset of the preset's variants")
    parser.add_argument("--redraw", type=Path, help="rewrite results.md and the plots from a results.json")
    parser.add_argument("--seeds", help="comma-separated seeds to run every chosen variant with (default: seed 0, "
                        "plus seed 1 for the preset's extra_seeds)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="combine the runs of several results.json of the same preset into --out")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override preset fields (e.g. iters=100); the output says so")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.redraw:
        results = json.loads(args.redraw.read_text())
        write_outputs(results, args.redraw.parent)
        return 0
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        write_outputs(merge([json.loads(p.read_text()) for p in args.merge]), args.out)
        return 0
    datasets = Path(os.environ.get("BSR_DATASETS", REPO.parent / "shared" / "datasets"))
    out = (args.out or REPO / "benchmarks" / "results" / args.preset).resolve()
    only = args.variants.split(",") if args.variants else None
    if only:
        unknown = set(only) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    preset = _override(PRESETS[args.preset], args.set)
    name = args.preset + ("+" + ",".join(args.set) if args.set else "")
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
    results = run_grid(name, preset, datasets, out, only, seeds)
    write_outputs(results, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())


