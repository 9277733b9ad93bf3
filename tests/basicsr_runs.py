"""Helpers for end-to-end runs of the ``basicsr`` command on the shared datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO

BASICSR = str(Path(sys.executable).parent / "basicsr")


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def small_train_options(src: str, datasets: Path, iters: int = 4, name: str | None = None) -> dict[str, Any]:
    """A shipped training YAML shrunk for CPU: tiny network, T91 crops (bicubic LR made on the
    fly), Set5 validation from the shared datasets, a few iterations."""
    opt = load_yaml(REPO / "options" / src)
    scale = opt["scale"]
    opt["name"] = name or f"e2e_{Path(src).stem}"
    opt["datasets"]["train"] = {
        "name": "T91", "type": "BicubicPairDataset", "dataroot_gt": str(datasets / "T91" / "HR"),
        "gt_size": 16 * scale, "use_hflip": True, "use_rot": True, "num_worker_per_gpu": 0,
        "batch_size_per_gpu": 2, "dataset_enlarge_ratio": 1, "prefetch_mode": None, "pin_memory": False}
    val = opt["datasets"]["val"]
    val["dataroot_gt"] = str(datasets / "Set5" / "HR")
    val["dataroot_lq"] = str(datasets / "Set5" / "LR_bicubic" / f"X{scale}")
    opt["network_g"].update(num_feat=8, num_block=2)
    opt["train"]["total_iter"] = iters
    opt["val"]["val_freq"] = 2
    opt["logger"].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    return opt


def small_test_options(src: str, datasets: Path, checkpoint: Path, sets=("Set5", "Set14")) -> dict[str, Any]:
    opt = load_yaml(REPO / "options" / "test" / src)
    scale = opt["scale"]
    opt["name"] = f"e2e_test_{Path(src).stem}"
    opt["datasets"] = {
        f"test_{i}": {"name": s, "type": "PairedImageDataset", "dataroot_gt": str(datasets / s / "HR"),
                      "dataroot_lq": str(datasets / s / "LR_bicubic" / f"X{scale}"), "filename_tmpl": f"{{}}x{scale}",
                      "io_backend": {"type": "disk"}} for i, s in enumerate(sets, 1)}
    opt["network_g"].update(num_feat=8, num_block=2)
    opt["path"]["pretrain_network_g"] = str(checkpoint)
    return opt


def write(opt: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def run_basicsr(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BASICSR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_logs(folder: Path, pattern: str) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob(pattern)))
