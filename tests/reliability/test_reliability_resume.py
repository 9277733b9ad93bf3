"""Crash safety of training: checkpoints and training states are written atomically, and
``--auto_resume`` skips a newest state (or its network file) that does not load, says so in one
line and resumes from the previous good one; an explicit ``path.resume_state`` that does not
load is one line and exit status 2, before anything is written."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from bsr_plugin import CheckpointError
from bsr_plugin.integrations.basicsr import resume
from bsr_plugin.integrations.basicsr.runtime import patch_runtime

from ..basicsr_runs import load_yaml, read_logs, run_basicsr, small_train_options, write
from .helpers import FULL_DISK, UNSAFE_ENV, InterruptedWrite, assert_refused, code_running_checkpoint, snapshot

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets_dir: Path) -> Path:
    """A 4-iteration training run (states and networks at iterations 2 and 4)."""
    root = tmp_path_factory.mktemp("trained")
    opt = small_train_options("edsr_bin.yml", datasets_dir, iters=4, name="crash")
    opt["val"]["val_freq"] = 100
    write(opt, root / "train.yml")
    res = run_basicsr(["train", "-opt", str(root / "train.yml")], root)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _exp(root: Path) -> Path:
    return root / "experiments" / "crash"


def test_truncated_newest_state_resumes_from_the_previous_one(run_dir: Path) -> None:
    """A kill while ``4.state`` was written (truncated file): --auto_resume trains from 2 again."""
    exp = _exp(run_dir)
    state = exp / "training_states" / "4.state"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    kept = (exp / "models" / "net_g_2.pth").read_bytes()
    res = run_basicsr(["train", "-opt", str(run_dir / "train.yml"), "--auto_resume"], run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    skipped = [line for line in res.stderr.splitlines() if "--auto_resume" in line]
    assert len(skipped) == 1 and re.search(r"skipped 4\.state \(truncated or corrupt\); resuming from .*/2\.state",
                                           skipped[0]), res.stderr[-2000:]
    assert "Resuming training from epoch: 0, iter: 2." in read_logs(exp, "train_*.log")
    assert torch.load(state, weights_only=True)["iter"] == 4  # written again, whole
    assert (exp / "models" / "net_g_2.pth").read_bytes() == kept
    assert not list(exp.rglob("*.tmp"))


def test_explicit_resume_state_that_does_not_load(run_dir: Path) -> None:
    exp = _exp(run_dir)
    state = exp / "training_states" / "4.state"
    state.write_bytes(state.read_bytes()[:100])
    opt = load_yaml(run_dir / "train.yml")
    opt["path"]["resume_state"] = str(state)
    yml = write(opt, run_dir / "resume.yml")
    before = snapshot(run_dir)
    res = run_basicsr(["train", "-opt", str(yml)], run_dir)
    assert_refused(res.returncode, res.stderr, r"path\.resume_state .*4\.state cannot be resumed: truncated or "
                   r"corrupt; point it at another training state, or use --auto_resume", before, run_dir,
                   prefix="basicsr train: error: ")


# -- the resume loader (API) ------------------------------------------------------------------
def _opt(root: Path) -> dict:
    exp = _exp(root)
    return {"name": "crash", "auto_resume": True, "num_gpu": 0, "network_g": {"type": "EDSRBin"},
            "path": {"training_states": str(exp / "training_states"), "models": str(exp / "models"),
                     "param_key_g": "params_ema"}}


def _resume(root: Path, caplog: pytest.LogCaptureFixture) -> tuple[dict | None, dict, list[str]]:
    opt = _opt(root)
    before = snapshot(root)
    with caplog.at_level(logging.WARNING, logger=resume.__name__):
        state = resume.load_resume_state(opt)
    assert snapshot(root) == before  # the loader never deletes or rewrites anything
    return state, opt, [r.getMessage() for r in caplog.records if r.name == resume.__name__]


@pytest.mark.parametrize("damage, why", [
    (lambda exp: (exp / "models" / "net_g_4.pth").unlink(), r"its network file net_g_4\.pth is missing"),
    (lambda exp: (exp / "models" / "net_g_4.pth").write_bytes(b"PK\x03\x04"), r"net_g_4\.pth is truncated or corrupt"),
    (lambda exp: (exp / "training_states" / "4.state").write_bytes(b""), r"4\.state \(truncated or corrupt\)"),
    (lambda exp: torch.save([1, 2], exp / "training_states" / "4.state"), r"not a BasicSR training state"),
])
def test_resume_skips_a_broken_newest_state(damage, why, run_dir, caplog, capsys) -> None:
    damage(_exp(run_dir))
    state, opt, logged = _resume(run_dir, caplog)
    assert state["iter"] == 2 and opt["path"]["resume_state"].endswith("2.state")
    assert opt["path"]["pretrain_network_g"].endswith("net_g_2.pth")  # what BasicSR's check_resume then loads
    assert opt["path"]["param_key_g"] == "params"
    assert len(logged) == 1 and re.search(why, logged[0]) and "resuming from" in logged[0]
    capsys.readouterr()


def test_resume_ignores_leftovers_of_a_kill(run_dir, caplog, capsys) -> None:
    """A temporary file of an interrupted write and an unrelated name are not states."""
    states = _exp(run_dir) / "training_states"
    (states / ".6.state.123.abcd1234.tmp").write_bytes(b"half a state")
    (states / "notes.state").write_text("not a state")
    state, _, logged = _resume(run_dir, caplog)
    assert state["iter"] == 4 and logged == []
    capsys.readouterr()


def test_resume_with_no_usable_state_starts_again(run_dir, caplog) -> None:
    for state in (_exp(run_dir) / "training_states").glob("*.state"):
        state.write_bytes(b"\x00" * 10)
    state, _, logged = _resume(run_dir, caplog)
    assert state is None
    assert len(logged) == 1 and "no training state" in logged[0] and "starting from iteration 0" in logged[0]


def test_resume_never_runs_a_code_running_state(run_dir, caplog, capsys, monkeypatch) -> None:
    monkeypatch.setenv(*next(iter(UNSAFE_ENV.items())))
    marker = run_dir / "MARKER"
    code_running_checkpoint(_exp(run_dir) / "training_states" / "6.state", marker, iter=6, epoch=0)
    state, _, logged = _resume(run_dir, caplog)
    assert state["iter"] == 4 and not marker.exists()
    assert len(logged) == 1 and "6.state (truncated or corrupt)" in logged[0]
    capsys.readouterr()


# -- atomic writes -------------------------------------------------------------------------------
@pytest.fixture
def model(tmp_path: Path):
    """A BinarySRModel whose checkpoints go to ``tmp_path``, with BasicSR's savers patched."""
    from basicsr.models import build_model

    patch_runtime()
    opt = {"name": "atomic", "model_type": "BinarySRModel", "scale": 2, "num_gpu": 0, "dist": False, "rank": 0,
           "world_size": 1, "is_train": True, "manual_seed": 0,
           "network_g": {"type": "EDSRBin", "num_feat": 8, "num_block": 1, "upscale": 2},
           "path": {"pretrain_network_g": None, "models": str(tmp_path), "training_states": str(tmp_path)},
           "train": {"ema_decay": 0, "optim_g": {"type": "Adam", "lr": 1e-3},
                     "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5}, "total_iter": 10,
                     "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}},
           "logger": {"print_freq": 100}}
    return build_model(opt)


@pytest.mark.parametrize("fault", [FULL_DISK, KeyboardInterrupt()],
                         ids=["full_disk", "kill"])
def test_checkpoints_are_written_atomically(fault, model, tmp_path, monkeypatch, caplog) -> None:
    from bsr_plugin import fileio

    model.save(epoch=0, current_iter=2)
    saved = snapshot(tmp_path)
    assert torch.load(tmp_path / "2.state", weights_only=True)["iter"] == 2
    assert set(torch.load(tmp_path / "net_g_2.pth", weights_only=True)["params"]) == set(model.net_g.state_dict())
    with torch.no_grad():
        next(model.net_g.parameters()).add_(1.0)  # a later state, so a partial write would differ
    monkeypatch.setattr(fileio, "open", lambda path, mode: InterruptedWrite(open(path, mode), fault), raising=False)
    monkeypatch.setattr("time.sleep", lambda s: None)
    if isinstance(fault, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            model.save(epoch=0, current_iter=2)
    else:
        log = logging.getLogger("basicsr")  # BasicSR's logger does not propagate to the root
        log.addHandler(caplog.handler)
        try:
            model.save(epoch=0, current_iter=2)  # as in BasicSR: retried, then logged; training goes on
        finally:
            log.removeHandler(caplog.handler)
        assert sum("Still cannot save" in r.getMessage() for r in caplog.records) == 2
    assert snapshot(tmp_path) == saved  # the previous files, whole; no temporary file left


def test_explicit_resume_state_error_names_the_fix(run_dir) -> None:
    state = _exp(run_dir) / "training_states" / "4.state"
    (_exp(run_dir) / "models" / "net_g_4.pth").unlink()
    opt = dict(_opt(run_dir), auto_resume=False)
    opt["path"]["resume_state"] = str(state)
    with pytest.raises(CheckpointError, match=r"4\.state cannot be resumed: its network file net_g_4\.pth is "
                                              r"missing; point it at another training state"):
        resume.load_resume_state(opt)
