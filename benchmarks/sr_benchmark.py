"""Equal-budget benchmark: full precision, k-bit fake quantization, plain BNN, the shipped
default and each training ingredient added to it (RSign, RPReLU, the BBCU block, the upsampler
binarized, distillation from a float teacher, starting from the float checkpoint), all on
EDSR, trained through the ``basicsr train`` command with identical data, iterations and recipe,
three seeds per row that decides a default.

    python benchmarks/sr_benchmark.py --preset cpu --jobs 2          # the committed grid (~3 h on 2 cores)
    python benchmarks/sr_benchmark.py --preset cpu --timing          # step times only (idle machine)
    python benchmarks/sr_benchmark.py --preset cpu --variants fp,default --set iters=8000 --seeds 0 --out ...
    python benchmarks/sr_benchmark.py --preset cpu --budgets 2000,4000,8000 --variants fp,default,bbcu_a --jobs 2 \
        --out benchmarks/results/cpu_r3                              # learning curves (round 3)
    python benchmarks/sr_benchmark.py --preset smoke                  # seconds: CI keeps the script alive
    python benchmarks/sr_benchmark.py --redraw benchmarks/results/cpu_r2/results.json

Every finished run is saved at once (``<out>/runs/<variant>_seed<k>.json``), so an interrupted
grid resumes where it stopped. Writes ``results.json`` (everything needed to redraw),
``results.md`` (table, paired differences, decisions), ``val_psnr.png`` and ``flip_ratio.png``
into ``--out`` (default ``benchmarks/results/<preset>``). Datasets come from ``$BSR_DATASETS``
(default ``../shared/datasets``).
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
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.engine_conv import cpu_model  # noqa: E402
from benchmarks.sr_report import write_outputs  # noqa: E402

log = logging.getLogger("sr_benchmark")

# -- what is compared -----------------------------------------------------------------------
# Each variant: model kind and binarize options, the pixel loss, and for the new rows: the block
# ("bbcu"), the upsampler binarized, distillation from the full-precision run of the same seed,
# initialisation from that run's checkpoint, and a multiple of the preset's iterations.
ROUND1 = {"act_grad": "approxsign", "shortcut": "auto", "nested_skips": "cut_first", "relu": "leaky",
          "scale": "learned"}
DEFAULT = {"prior_a": "A", "act_grad": "approxsign", "scale": "learned", "shortcut": "auto",
           "nested_skips": "cut_all", "relu": "leaky"}
VARIANTS: dict[str, dict[str, Any]] = {
    "fp": {"kind": "float", "loss": "l1", "label": "full precision"},
    "q5": {"kind": "quant", "bits": 5, "loss": "l1", "label": "5-bit W/A (LSQ)"},
    "q4": {"kind": "quant", "bits": 4, "loss": "l1", "label": "4-bit W/A (LSQ)"},
    "bnn": {"kind": "binary", "binarize": {**ROUND1, "prior_a": None, "act_grad": "ste", "shortcut": "none"},
            "loss": "l1", "label": "plain BNN (STE, no prior, no added shortcuts)"},
    # round 2: the shipped default and each ingredient added to it
    "default": {"kind": "binary", "binarize": DEFAULT, "loss": "curriculum",
                "label": "shipped default (prior, EDSR's own skips, curriculum)"},
    "default_rsign": {"kind": "binary", "binarize": {**DEFAULT, "rsign": True}, "loss": "curriculum",
                      "label": "default + RSign (learned threshold)"},
    "default_rprelu": {"kind": "binary", "binarize": {**DEFAULT, "rprelu": True}, "loss": "curriculum",
                       "label": "default + RPReLU"},
    "default_bbcu": {"kind": "binary", "binarize": DEFAULT, "block": "bbcu", "loss": "curriculum",
                     "label": "BBCU block (shortcut per conv, block skip removed)"},
    "default_upsampler": {"kind": "binary", "binarize": DEFAULT, "upsampler": True, "loss": "curriculum",
                          "label": "default + upsampler binarized"},
    "default_distill": {"kind": "binary", "binarize": DEFAULT, "distill": True, "loss": "curriculum",
                        "label": "default + distillation from the FP run (from scratch)"},
    "ckpt": {"kind": "binary", "binarize": DEFAULT, "init": "fp", "loss": "curriculum",
             "label": "default started from the FP checkpoint"},
    "ckpt_distill": {"kind": "binary", "binarize": DEFAULT, "init": "fp", "distill": True, "loss": "curriculum",
                     "label": "FP checkpoint + distillation from it"},
    "default_2x": {"kind": "binary", "binarize": DEFAULT, "iters_mult": 2, "loss": "curriculum",
                   "label": "default, twice the iterations (= teacher + student budget)"},
    # round 1 (benchmarks/results/cpu_merged), kept so those results can be reproduced
    "bireal": {"kind": "binary", "binarize": {**ROUND1, "prior_a": None}, "loss": "l1",
               "label": "BNN + real identity shortcuts (Bi-Real style)"},
    "ours": {"kind": "binary", "binarize": {**ROUND1, "prior_a": "A"}, "loss": "curriculum",
             "label": "prior + shortcuts + curriculum"},
    "ours_no_prior": {"kind": "binary", "binarize": {**ROUND1, "prior_a": None}, "loss": "curriculum",
                      "label": "ours without the prior"},
    "ours_no_shortcut": {"kind": "binary", "binarize": {**ROUND1, "prior_a": "A", "shortcut": "none"},
                         "loss": "curriculum", "label": "ours without the shortcuts"},
    "ours_no_curriculum": {"kind": "binary", "binarize": {**ROUND1, "prior_a": "A"}, "loss": "l1",
                           "label": "ours without the curriculum"},
    "ours_cut_last": {"kind": "binary", "binarize": {**ROUND1, "prior_a": "A", "nested_skips": "cut_last"},
                      "loss": "curriculum", "label": "ours, shortcut dropped at the last conv of a skipped block"},
    "ours_a1": {"kind": "binary", "binarize": {**ROUND1, "prior_a": 1.0}, "loss": "curriculum", "label": "ours, a = 1"},
    "ours_a0.1": {"kind": "binary", "binarize": {**ROUND1, "prior_a": 0.1}, "loss": "curriculum",
                  "label": "ours, a = 0.1"},
    "ours_a0.01": {"kind": "binary", "binarize": {**ROUND1, "prior_a": 0.01}, "loss": "curriculum",
                   "label": "ours, a = 0.01"},
    "ours_a0.001": {"kind": "binary", "binarize": {**ROUND1, "prior_a": 0.001}, "loss": "curriculum",
                    "label": "ours, a = 0.001"},
}
# round 3: candidates whose binary branches carry their own real identity, aligned (each branch
# calibrated to ALIGN times its input), and the ingredients tried on them (learning curves).
ALIGN = 0.1
ANNEAL = {"start": 0.667, "factor": 10.0}
CANDIDATES: dict[str, dict[str, Any]] = {
    "bbcu_a": {"kind": "binary", "binarize": {**DEFAULT, "align": ALIGN}, "block": "bbcu", "loss": "curriculum",
               "label": "BBCU block (identity per binary conv, no block skip), aligned"},
    "bbcu_full": {"kind": "binary", "binarize": {**DEFAULT, "align": ALIGN, "rsign": True, "rprelu": True},
                  "block": "bbcu", "loss": "curriculum",
                  "label": "faithful BBCU unit (RSign, sign, binary conv, RPReLU, + identity), aligned"},
    "res_a": {"kind": "binary", "binarize": {**DEFAULT, "align": ALIGN, "nested_skips": "cut_first"},
              "loss": "curriculum", "label": "EDSR block with an identity around its second binary conv, aligned"},
}
INGREDIENTS: dict[str, tuple[dict[str, Any], str]] = {
    "l1": ({"loss": "l1"}, "curriculum off (plain L1)"),
    "anneal": ({"anneal": ANNEAL}, "prior widened x10 over the last third"),
    "sgrad": ({"act_grad": "approxsign_scaled"}, "scale-aware activation gradient"),
    "lrdecay": ({"latent_lr": {"start": 0.5}}, "latent weights' lr to 0 over the second half"),
    "distill": ({"distill": True}, "distillation from the FP run (same budget, seed)"),
    "ckpt": ({"init": "fp"}, "started from the FP checkpoint (same budget, seed)"),
}


def _with(base: dict[str, Any], change: dict[str, Any], label: str) -> dict[str, Any]:
    v = {**base, "label": f"{base['label']} + {label}"}
    for key, value in change.items():
        if key == "act_grad":
            v["binarize"] = {**v["binarize"], key: value}
        else:
            v[key] = value
    return v


VARIANTS.update(CANDIDATES)
for _name, _base in CANDIDATES.items():
    for _suffix, (_change, _label) in INGREDIENTS.items():
        VARIANTS[f"{_name}_{_suffix}"] = _with(_base, _change, _label)
# ingredients that won alone at 8k, stacked (compared with the first of them alone)
COMBOS: tuple[tuple[str, tuple[str, ...]], ...] = (("bbcu_full", ("l1", "lrdecay")),)
for _name, _suffixes in COMBOS:
    _variant = VARIANTS[_name]
    for _suffix in _suffixes:
        _variant = _with(_variant, *INGREDIENTS[_suffix])
    VARIANTS["_".join((_name, *_suffixes))] = _variant

DISTILL = {"output_weight": 1.0, "feature_weight": 0.1, "features": [r"re:body\.\d+"]}


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
    seeds: tuple[int, ...] = (0, 1, 2)
    one_seed: tuple[str, ...] = ()  # variants run with the first seed only (reference rows)
    timing_steps: int = 8
    workers: int = 0
    train_sets: tuple[str, ...] = ("T91", "BSD200")
    # learning curves (``--budgets``): the seeds each budget runs with unless --seeds says otherwise
    ladder: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def seeds_at(self, iters: int) -> tuple[int, ...]:
        return dict(self.ladder).get(iters, self.seeds[:1])


GRID = ("fp", "q5", "bnn", "default", "default_rsign", "default_rprelu", "default_bbcu", "default_upsampler",
        "default_distill", "ckpt", "ckpt_distill", "default_2x")
PRESETS = {
    "smoke": Preset(scale=4, num_feat=8, num_block=2, batch=2, lr_patch=12, iters=4, lr=2e-4, val_freq=2,
                    print_freq=1, prior_a=0.01, eval_sets=("Set5",), variants=("fp", "default", "ckpt_distill"),
                    seeds=(0,), timing_steps=3, train_sets=("T91",)),
    "cpu": Preset(scale=4, num_feat=32, num_block=8, batch=8, lr_patch=24, iters=2000, lr=5e-4, val_freq=250,
                  print_freq=50, prior_a=0.01, eval_sets=("Set5", "Set14", "B100"), variants=GRID,
                  one_seed=("q5",), timing_steps=60,
                  ladder=((2000, (0, 1, 2)), (4000, (0, 1)), (8000, (0, 1)), (16000, (0, 1)))),
    "gpu": Preset(scale=4, num_feat=64, num_block=16, batch=16, lr_patch=48, iters=600, lr=2e-4, val_freq=200,
                  print_freq=50, prior_a=0.01, eval_sets=("Set5", "Set14", "B100"), variants=GRID,
                  one_seed=("q5",), timing_steps=20, workers=6),
}


@dataclass
class Run:
    variant: str
    seed: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> {psnr, ssim}
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (iter, Set5 PSNR)
    flip_curve: list[tuple[int, float]] = field(default_factory=list)  # (iter, mean flip ratio)
    wall_s: float = 0.0
    iters: int = 0  # iterations this run trained (a variant's iters_mult included)
    budget: int = 0  # the budget (rung of the ladder) it belongs to
    # (iter, value) at each print of: prior_edge, branch_ratio, curriculum_q
    log_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


# -- options ---------------------------------------------------------------------------------
def variant_for(name: str, preset: Preset) -> dict[str, Any]:
    v = dict(VARIANTS[name])
    if "binarize" in v:
        b = dict(v["binarize"])
        if b["prior_a"] == "A":
            b["prior_a"] = preset.prior_a
        if v.get("upsampler"):
            b["rules"] = [{"binarize": "type:Conv2d"}, {"keep": "first"}, {"keep": "last"},
                          {"keep": "conv_after_body"}, {"binarize": "upsampler"}]
        v["binarize"] = b
    return v


def run_name(variant: str, seed: int, iters: int, preset: Preset) -> str:
    """``<variant>_seed<k>`` at the preset's budget, ``<variant>_<iters>_seed<k>`` at another."""
    return f"{variant}_seed{seed}" if iters == preset.iters else f"{variant}_{iters}_seed{seed}"


def depends_on(variant: str) -> Optional[str]:
    """The variant whose checkpoint (same seed, same budget) this one needs: its teacher or its start."""
    v = VARIANTS[variant]
    return "fp" if v.get("distill") or v.get("init") else None


def network_options(name: str, preset: Preset) -> dict[str, Any]:
    v = variant_for(name, preset)
    base = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": preset.num_feat, "num_block": preset.num_block,
            "upscale": preset.scale}
    if v["kind"] == "float":
        return {"type": "EDSR", **base}
    if v["kind"] == "quant":
        return {"type": "FakeQuantArch", "bits": v["bits"], "arch": {"type": "EDSR", **base}}
    return {"type": "EDSRBin", **base, "block": v.get("block", "residual"), "binarize": v["binarize"]}


def train_options(name: str, seed: int, preset: Preset, datasets: Path, train_folder: Path,
                  work: Path, budget: Optional[int] = None) -> dict[str, Any]:
    """BasicSR options of one run: ``budget`` iterations (default: the preset's), with the lr
    milestone, the curriculum, the prior annealing and the validation interval scaled to it."""
    v = variant_for(name, preset)
    s = preset.scale
    budget = budget or preset.iters
    iters = budget * v.get("iters_mult", 1)
    val_freq = max(preset.val_freq * budget // preset.iters, 1)
    pixel = ({"type": "CurriculumL1Loss", "loss_weight": 1.0, "reduction": "mean", "q0": 0.5, "until": 0.5}
             if v["loss"] == "curriculum" else {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"})
    train: dict[str, Any] = {
        "ema_decay": 0, "optim_g": {"type": "Adam", "lr": preset.lr, "weight_decay": 0, "betas": [0.9, 0.999]},
        "scheduler": {"type": "MultiStepLR", "milestones": [int(iters * 2 / 3)], "gamma": 0.5},
        "total_iter": iters, "warmup_iter": -1, "pixel_opt": pixel}
    if v.get("anneal"):
        train["prior_anneal"] = dict(v["anneal"])
    if v.get("latent_lr"):
        train["latent_lr"] = dict(v["latent_lr"])
    path: dict[str, Any] = {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None}
    dep = depends_on(name)
    if dep:
        ckpt = str(checkpoint_of(work, run_name(dep, seed, budget, preset)))
        if v.get("distill"):
            train["distill"] = {"network": network_options(dep, preset), "pretrain": ckpt, "param_key": "params",
                                **DISTILL}
        if v.get("init"):
            path.update(pretrain_network_g=ckpt, param_key_g="params")
    return {
        "name": run_name(name, seed, budget, preset),
        "model_type": "BinarySRModel" if v["kind"] == "binary" else "SRModel",
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
        "path": path,
        "train": train,
        "val": {"val_freq": val_freq, "save_img": False,
                "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": s, "test_y_channel": True}}},
        "logger": {"print_freq": preset.print_freq, "save_checkpoint_freq": iters, "use_tb_logger": False,
                   "wandb": {"project": None, "resume_id": None}},
    }


def checkpoint_of(work: Path, name: str) -> Path:
    return work / "experiments" / name / "models" / "net_g_latest.pth"


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


def train(opt: dict[str, Any], work: Path, threads: int) -> float:
    """``basicsr train -opt X.yml --plugin benchmarks.fakequant`` in ``work``; returns seconds."""
    import yaml

    yml = work / f"{opt['name']}.yml"
    yml.write_text(yaml.safe_dump(opt, sort_keys=False))
    basicsr = Path(sys.executable).parent / "basicsr"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    res = subprocess.run([str(basicsr), "train", "-opt", str(yml), "--plugin", "benchmarks.fakequant"], cwd=work,
                         env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"training {opt['name']} failed:\n{res.stderr[-4000:]}")
    return time.time() - start


LOGGED = ("flip_ratio", "prior_edge", "branch_ratio", "curriculum_q")


def parse_log(text: str) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(iter, Set5 PSNR) after each validation, and (iter, value) at each print of every
    :data:`LOGGED` quantity. The iteration of a validation is the last one printed before it
    (``val_freq`` is a multiple of ``print_freq``); the repeat validation BasicSR runs after
    training is dropped."""
    val: dict[int, float] = {}
    curves: dict[str, list[tuple[int, float]]] = {k: [] for k in LOGGED}
    it = 0
    for line in text.splitlines():
        m = re.search(r"iter:\s*([0-9,]+)", line)
        if m:
            it = int(m.group(1).replace(",", ""))
            for key in LOGGED:
                f = re.search(key + r": ([0-9.e+-]+)", line)
                if f:
                    curves[key].append((it, float(f.group(1))))
        if line.strip().startswith("# psnr:"):
            val.setdefault(it, float(line.split("psnr:")[1].split()[0]))
    return sorted(val.items()), curves


def score_sets(upscale: Callable[[Any], Any], datasets: Path, sets: tuple[str, ...], scale: int) -> dict[str, dict]:
    """Mean Y-channel PSNR/SSIM of ``upscale`` on each benchmark set (its LR files)."""
    from basicsr.data import build_dataset

    from bsr_plugin.integrations.basicsr.evaluation import score

    return {name: score(upscale, build_dataset({
        "name": name, "type": "PairedImageDataset", "phase": "test", "scale": scale,
        "dataroot_gt": str(datasets / name / "HR"), "dataroot_lq": str(datasets / name / "LR_bicubic" / f"X{scale}"),
        "filename_tmpl": f"{{}}x{scale}", "io_backend": {"type": "disk"}}), scale) for name in sets}


def evaluate(opt: dict[str, Any], checkpoint: Path, datasets: Path, sets: tuple[str, ...]) -> dict[str, dict]:
    """The trained network's scores (its ``net_g_latest.pth``)."""
    from bsr_plugin.integrations.basicsr.evaluation import network_upscaler
    from bsr_plugin.integrations.basicsr.network import build_options_network
    from bsr_plugin.integrations.basicsr.safe_load import checkpoint_state

    net = build_options_network(opt["network_g"], opt["name"])
    net.load_state_dict(checkpoint_state(checkpoint, "params"))
    return score_sets(network_upscaler(net), datasets, sets, opt["scale"])


def bicubic_metrics(datasets: Path, sets: tuple[str, ...], scale: int) -> dict[str, dict]:
    """Scores of MATLAB-style bicubic upsampling."""
    from bsr_plugin.integrations.basicsr.evaluation import bicubic_upscaler

    return score_sets(bicubic_upscaler(scale), datasets, sets, scale)


def training_step(opt: dict[str, Any], preset: Preset) -> Callable[[], None]:
    """One training step of ``opt``'s network on a fixed batch of the preset's size: forward,
    loss, backward, Adam, and for binarized networks the prior's projection; with distillation
    the teacher's forward pass."""
    import torch
    from basicsr.losses import build_loss

    from bsr_plugin import project_to_prior_
    from bsr_plugin.integrations.basicsr.network import build_options_network

    torch.manual_seed(0)
    net = build_options_network(opt["network_g"], opt["name"]).train()
    loss_fn = build_loss(dict(opt["train"]["pixel_opt"]))
    optim = torch.optim.Adam(net.parameters(), lr=preset.lr)
    x = torch.rand(preset.batch, 3, preset.lr_patch, preset.lr_patch)
    y = torch.rand(preset.batch, 3, preset.lr_patch * preset.scale, preset.lr_patch * preset.scale)
    binary = opt["model_type"] == "BinarySRModel"
    distiller = None
    if opt["train"].get("distill"):
        from bsr_plugin.integrations.basicsr.distill import Distiller

        d = opt["train"]["distill"]
        teacher = build_options_network(dict(d["network"]), opt["name"])
        distiller = Distiller(teacher, net, d["output_weight"], d["feature_weight"], d["features"])

    def step() -> None:
        optim.zero_grad()
        out = net(x)
        loss = loss_fn(out, y)
        if distiller is not None:
            loss = loss + sum(distiller.losses(x, out).values())
        loss.backward()
        optim.step()
        if binary:
            project_to_prior_(net)

    return step


Job = tuple[str, int, int]  # (variant, seed, budget)


def _one_run(variant: str, seed: int, budget: int, preset: Preset, datasets: Path, work: Path, runs_dir: Path,
             threads: int) -> Run:
    opt = train_options(variant, seed, preset, datasets, work / "train_hr", work, budget)
    wall = train(opt, work, threads)
    exp = work / "experiments" / opt["name"]
    val, curves = parse_log("\n".join(p.read_text() for p in sorted(exp.glob("train_*.log"))))
    metrics = evaluate(opt, exp / "models" / "net_g_latest.pth", datasets, preset.eval_sets)
    flips = curves.pop("flip_ratio")
    run = Run(variant, seed, metrics, val, flips, wall, opt["train"]["total_iter"], budget,
              {k: c for k, c in curves.items() if c})
    tmp = runs_dir / f".{opt['name']}.json.tmp"
    tmp.write_text(json.dumps(asdict(run), indent=1))
    tmp.replace(runs_dir / f"{opt['name']}.json")
    log.info("    %s seed %d, %d its: %s (%.0f s)", variant, seed, budget,
             {s: round(m["psnr"], 2) for s, m in metrics.items()}, wall)
    return run


def _jobs(preset: Preset, variants: list[str], seeds: Optional[list[int]], budgets: Optional[list[int]]) -> list[Job]:
    """Every (variant, seed, budget) asked for: ``budgets`` (default: the preset's iterations)
    run with ``seeds`` if given, else the seeds the preset's ladder gives that budget."""
    jobs = []
    for budget in budgets or [preset.iters]:
        for variant in variants:
            if seeds is not None:
                chosen: tuple[int, ...] | list[int] = seeds
            elif budgets:
                chosen = preset.seeds_at(budget)
            else:
                chosen = preset.seeds[:1] if variant in preset.one_seed else preset.seeds
            jobs += [(variant, s, budget) for s in chosen]
    return jobs


def run_grid(preset: Preset, datasets: Path, out: Path, variants: list[str], seeds: Optional[list[int]],
             jobs: int, budgets: Optional[list[int]] = None) -> list[dict]:
    """Train and score every (variant, seed, budget) not already in ``out/runs``, ``jobs`` at a
    time (each with ``cores // jobs`` threads); a run waits for the run it depends on (same
    seed and budget)."""
    from benchmarks import fakequant  # noqa: F401  (registers FakeQuantArch here too)

    for sub in ("Set5", *preset.eval_sets, *preset.train_sets):
        if not (datasets / sub / "HR").is_dir():
            raise FileNotFoundError(f"dataset folder {datasets / sub / 'HR'} is missing: set BSR_DATASETS to the "
                                    "shared datasets folder")
    work, runs_dir = out / "work", out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    link_training_images(datasets, preset.train_sets, work / "train_hr")
    threads = max((os.cpu_count() or 1) // jobs, 1)
    done = {p.stem for p in runs_dir.glob("*.json")}

    def name(job: Job) -> str:
        return run_name(job[0], job[1], job[2], preset)

    def dep_name(job: Job) -> Optional[str]:
        dep = depends_on(job[0])
        return run_name(dep, job[1], job[2], preset) if dep else None

    pending = [j for j in _jobs(preset, variants, seeds, budgets) if name(j) not in done]
    for job in pending:
        dep = dep_name(job)
        if dep and dep not in done and dep not in {name(j) for j in pending}:
            raise SystemExit(f"{name(job)} needs the run {dep}: add {depends_on(job[0])} to --variants")
    log.info("%d runs to do (%d already in %s), %d at a time with %d threads each", len(pending), len(done),
             runs_dir, jobs, threads)
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [j for j in pending if dep_name(j) is None or dep_name(j) in done]
            for job in ready[:max(jobs - len(running), 0)]:
                pending.remove(job)
                log.info("training %s; %d queued", name(job), len(pending))
                running[pool.submit(_one_run, *job, preset, datasets, work, runs_dir, threads)] = job
            if not running:
                raise SystemExit(f"runs whose dependencies failed: {pending}")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                fut.result()
                done.add(name(job))
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]


def timing(preset: Preset, datasets: Path, out: Path, variants: list[str]) -> dict[str, float]:
    """Median seconds of one training step of every variant, timed round-robin (one step of each
    per round, ``timing_steps`` rounds after two warm-up rounds), so a disturbance hits all
    variants alike (run it on an otherwise idle machine)."""
    from benchmarks import fakequant  # noqa: F401

    work = out / "work"
    steps = {v: training_step(train_options(v, 0, preset, datasets, work / "train_hr", work), preset)
             for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(preset.timing_steps + 2):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= 2:
                times[variant].append(time.perf_counter() - start)
    result = {v: statistics.median(t) for v, t in times.items()}
    for variant, seconds in result.items():
        log.info("step time %s: %.3f s (%.2fx fp)", variant, seconds, seconds / result.get("fp", seconds))
    return result


def environment() -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "threads": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "processor": cpu_model(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _override(preset: Preset, items: list[str]) -> Preset:
    """``--set iters=100`` style overrides, for trying a preset at another size."""
    types = {f.name: f.type for f in fields(Preset)}
    changes: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--set: unknown preset field {key!r}; fields: {', '.join(types)}")
        if "tuple" in str(types[key]):
            parts = tuple(value.split(",")) if value else ()
            changes[key] = tuple(int(p) for p in parts) if key == "seeds" else parts
        else:
            changes[key] = float(value) if types[key] in ("float", float) else int(value)
    return replace(preset, **changes)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<preset>)")
    parser.add_argument("--variants", help="comma-separated subset of the variants (default: the preset's)")
    parser.add_argument("--seeds", help="comma-separated seeds for every chosen variant (default: the preset's)")
    parser.add_argument("--budgets", help="comma-separated iteration budgets, each its own full-schedule run "
                        "(learning curves; seeds per budget from the preset's ladder unless --seeds)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (threads split evenly)")
    parser.add_argument("--timing", action="store_true", help="only measure step times (idle machine)")
    parser.add_argument("--redraw", type=Path, help="rewrite results.md and the plots from a results.json")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override preset fields (e.g. iters=100); the output says so")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.redraw:
        write_outputs(json.loads(args.redraw.read_text()), args.redraw.parent)
        return 0
    datasets = Path(os.environ.get("BSR_DATASETS", REPO.parent / "shared" / "datasets"))
    out = (args.out or REPO / "benchmarks" / "results" / args.preset).resolve()
    preset = _override(PRESETS[args.preset], args.set)
    variants = args.variants.split(",") if args.variants else list(preset.variants)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
    budgets = [int(v) for v in args.budgets.split(",")] if args.budgets else None
    if budgets and min(budgets) < 1:
        parser.error("--budgets must be positive iteration counts")
    results_path = out / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.is_file() else {}
    start = time.time()
    if args.timing:
        runs = previous.get("runs", [])
        step_times = {**previous.get("step_time_s", {}), **timing(preset, datasets, out, variants)}
    else:
        runs = run_grid(preset, datasets, out, variants, seeds, args.jobs, budgets)
        step_times = previous.get("step_time_s", {})
    if args.preset == "smoke" and not step_times:
        step_times = timing(preset, datasets, out, variants)
    names = sorted({r["variant"] for r in runs} | set(step_times))
    results = {
        "preset": args.preset + ("+" + ",".join(args.set) if args.set else ""), "config": asdict(preset),
        "variants": {v: variant_for(v, preset) for v in names}, "runs": runs, "step_time_s": step_times,
        "bicubic": previous.get("bicubic") or bicubic_metrics(datasets, preset.eval_sets, preset.scale),
        "grid_wall_s": previous.get("grid_wall_s", 0.0) + time.time() - start, "environment": environment(),
        "distill": DISTILL, "ladder": bool(budgets or previous.get("ladder")),
        "paper_recipe": "EDSR-baseline (64 features, 16 blocks), DIV2K, batch 16, LR patch 48, 300k iterations, "
                        "lr 2e-4 halved at 200k",
    }
    write_outputs(results, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
