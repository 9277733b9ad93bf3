"""README.md and the docs stay true: every shell command in them is run by a named test (or
CI), their Python blocks run, their YAML blocks are valid."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import REPO

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [b for doc in DOCS for b in re.findall(r"```(\w+)\n(.*?)```", doc.read_text(), flags=re.S)]

# Each command prefix in the README -> the tests that run it (or the shrunk options derived
# from the same shipped YAML). A new README command without a test fails here.
COVERED = {
    "make demo": ["integrations/test_demo.py::test_make_demo_beats_bicubic"],
    "make test-fast": ["(the fast lane: a subset of make test)"],
    "make test": ["(CI: .ci/run runs it)"],
    "basicsr train -opt options/edsr_bin.yml": ["integrations/test_basicsr_e2e.py::test_train_resume_test"],
    "basicsr test  -opt options/test/edsr_bin.yml": ["integrations/test_basicsr_e2e.py::test_train_resume_test"],
    "torchrun --nproc_per_node": ["integrations/test_distributed.py::test_two_process_gloo_training"],
    "mkdir -p datasets": ["test_readme.py::test_dataset_links_resolve"],
    "bsr summary": ["test_readme.py::test_bsr_summary_commands"],
    "bsr export": ["deploy/test_cli_deploy.py::test_export_run_check"],
    "bsr run     edsr_bin_x4.bsrpack datasets/Set5/LR_bicubic/X4 -o": [
        "deploy/test_engine_deploy.py::test_bsr_run_on_a_folder"],
    "bsr run": ["deploy/test_cli_deploy.py::test_export_run_check",
                "deploy/test_engine_deploy.py::test_bsr_run_uses_the_engine_and_tiles"],
    "bsr bench": ["deploy/test_engine_deploy.py::test_bsr_bench_reports_three_networks"],
    "bsr engine": ["deploy/test_engine_deploy.py::test_bsr_engine_says_what_runs"],
    "basicsr train -opt options/edsr.yml": ["integrations/test_from_float_e2e.py::test_binarize_a_trained_float_edsr"],
    "basicsr train -opt options/edsr_bin_from_float.yml": [
        "integrations/test_from_float_e2e.py::test_binarize_a_trained_float_edsr"],
    "bsr check": ["deploy/test_cli_deploy.py::test_export_run_check"],
}


def _commands() -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang == "bash":
            lines += [ln.split("#")[0].strip() for ln in body.splitlines() if ln.strip() and not ln.startswith("#")]
    return lines


def test_every_command_is_covered():
    for cmd in _commands():
        hits = [k for k in COVERED if cmd.startswith(k)]
        assert hits, f"README command without a test: {cmd!r} (add it to COVERED with the test that runs it)"
        for ref in COVERED[hits[0]]:
            if ref.startswith("("):
                continue
            module, func = ref.split("::")
            mod = importlib.import_module("tests." + module[:-3].replace("/", "."))
            assert hasattr(mod, func), f"{ref} (for {cmd!r}) does not exist"


def test_bsr_summary_commands(tmp_path):
    bsr = str(Path(sys.executable).parent / "bsr")
    for cmd in _commands():
        if cmd.startswith("bsr summary"):
            res = subprocess.run([bsr, *cmd.split()[1:]], cwd=REPO, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stderr[-2000:]
            assert "1,179,648" in res.stdout or '"binary_params": 1179648' in res.stdout


def test_dataset_links_resolve(datasets_dir, tmp_path):
    """The docs' ``ln -s "$BENCHMARK"/{Set5,Set14,B100} datasets/`` with BENCHMARK the folder
    holding the sets."""
    import os

    cmd = next(c for c in _commands() if c.startswith("mkdir -p datasets"))
    clone = tmp_path / "main"
    clone.mkdir()
    subprocess.run(cmd, shell=True, cwd=clone, check=True, executable="/bin/bash",
                   env=dict(os.environ, BENCHMARK=str(datasets_dir)))
    for s in ("Set5", "Set14", "B100"):
        assert (clone / "datasets" / s / "HR").is_dir()


def test_python_blocks_run():
    from bsr_plugin.integrations.basicsr.archs import build_float_arch

    float_net = build_float_arch({"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 2,
                                  "upscale": 2})
    lr = torch.rand(2, 3, 8, 8)
    ns = {"float_net": float_net, "lr_batch": lr, "total_iters": 2, "torch": torch,
          "loader": [(lr, torch.rand(2, 3, 16, 16))] * 2}
    for lang, body in BLOCKS:
        if lang == "python":
            exec(compile(body, "README.md", "exec"), ns)  # noqa: S102
    assert "flips" in ns and "net" in ns and "block" in ns


def test_yaml_block_is_valid():
    from bsr_plugin import BinarizeConfig
    from bsr_plugin.integrations.basicsr.options_check import BINARY_TRAIN_KEYS, SR_TRAIN_KEYS

    (body,) = [b for lang, b in BLOCKS if lang == "yaml"]
    opt = yaml.safe_load(body)
    BinarizeConfig.from_dict(opt["network_g"]["binarize"])
    assert set(opt["train"]) <= SR_TRAIN_KEYS | BINARY_TRAIN_KEYS


@pytest.mark.parametrize("extra", ["basicsr", "mmcv", "timm", "onnx", "bench", "test", "all"])
def test_extras_named_in_readme_exist(extra):
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert extra in meta["project"]["optional-dependencies"]
