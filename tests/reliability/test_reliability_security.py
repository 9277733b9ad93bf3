"""No input runs code: options files (YAML tags), ``--force_yml`` (BasicSR ``exec``s its keys and
``eval``s list values), checkpoints, teachers and training states (pickles) -- also with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which turns torch's safe default off. Each attack would
create a marker file; none is created, the command says what it refused in one line (exit
status 2) and nothing is written."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml

from bsr_plugin import CheckpointError
from bsr_plugin.deploy.cli import main as bsr_main
from bsr_plugin.integrations.basicsr.cli import main as basicsr_main
from bsr_plugin.integrations.basicsr.runtime import patch_runtime
from bsr_plugin.integrations.basicsr.safe_load import checkpoint_state, safe_torch_load
from bsr_plugin.safety import weights_only_loads

from ..basicsr_runs import small_test_options, small_train_options, write
from .helpers import BASICSR, UNSAFE_ENV, assert_refused, code_running_checkpoint, run, snapshot

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

TAG = '!!python/object/apply:os.system ["touch {marker}"]'


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder, with torch's safe default switched off for this process."""
    monkeypatch.chdir(tmp_path)
    for key, value in UNSAFE_ENV.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_the_attacks_are_real(root: Path) -> None:
    """Loaded the unsafe way, each payload does create its marker (so the tests below mean something)."""
    code_running_checkpoint(root / "evil.pth", root / "M1")
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(root / "evil.pth")  # the environment variable makes this weights_only=False
    yaml.unsafe_load(TAG.format(marker=root / "M2"))
    assert (root / "M1").exists() and (root / "M2").exists()


# -- options files and --force_yml -------------------------------------------------------------------
def test_yaml_tag_in_options_real_command(root: Path) -> None:
    (root / "evil.yml").write_text(f"name: {TAG.format(marker=root / 'MARKER')}\nscale: 4\n")
    before = snapshot(root)
    res = run([BASICSR, "train", "-opt", "evil.yml"], root, env=UNSAFE_ENV)
    assert_refused(res.returncode, res.stderr, r"evil\.yml is not valid YAML at line 1.*could not determine a "
                   r"constructor for the tag.*python/object/apply:os\.system.*refused", before, root,
                   prefix="basicsr train: error in evil.yml: ")
    assert not (root / "MARKER").exists()


@pytest.mark.parametrize("command", ["test", "summary", "export"])
def test_yaml_tag_in_options(command: str, root: Path, capsys: pytest.CaptureFixture) -> None:
    (root / "evil.yml").write_text(f"network_g:\n  type: {TAG.format(marker=root / 'MARKER')}\n")
    before = snapshot(root)
    if command == "test":
        rc = basicsr_main(["test", "-opt", "evil.yml"])
    else:
        rc = bsr_main([command, "-opt", "evil.yml"] + (["-o", "m.bsrpack"] if command == "export" else []))
    assert_refused(rc, capsys.readouterr().err, r"evil\.yml is not valid YAML at line 2.*refused", before, root)
    assert not (root / "MARKER").exists()


def test_force_yml_key_that_would_run_code_real_command(root: Path, datasets_dir: Path) -> None:
    """BasicSR builds ``opt["<key>"]=value`` and ``exec``s it: this key would run ``touch``."""
    write(small_train_options("edsr_bin.yml", datasets_dir), root / "train.yml")
    key = f'train"]; import os; os.system("touch {root / "MARKER"}"); opt["train'
    before = snapshot(root)
    res = run([BASICSR, "train", "-opt", "train.yml", "--force_yml", f"{key}=1"], root, env=UNSAFE_ENV)
    assert_refused(res.returncode, res.stderr, r"the options file has no key 'train\"\]; import os;.*--force_yml "
                   r"only changes keys the options file has", before, root,
                   prefix="basicsr train: error in train.yml: ")
    assert not (root / "MARKER").exists()


@pytest.mark.parametrize("value, pattern", [
    ("[__import__('os').system('touch MARKER')]", r"name: .*__import__.* must be a plain folder name"),
    ('!!python/object/apply:os.system ["touch MARKER"]', r"the value is not plain YAML.*tags such as !!python/\.\.\. "
                                                        r"are refused"),
])
def test_force_yml_value_that_would_run_code(value: str, pattern: str, root: Path, datasets_dir: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """BasicSR ``eval``s a value starting with ``[``; here it is YAML, read safely."""
    write(small_train_options("edsr_bin.yml", datasets_dir), root / "train.yml")
    before = snapshot(root)
    rc = basicsr_main(["train", "-opt", "train.yml", "--force_yml", f"name={value}"])
    assert_refused(rc, capsys.readouterr().err, pattern, before, root, prefix="basicsr train: error in train.yml: ")
    assert not (root / "MARKER").exists()


# -- pickles -------------------------------------------------------------------------------------------
def test_code_running_pretrain_network_real_command(root: Path, datasets_dir: Path) -> None:
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    opt["path"]["pretrain_network_g"] = str(code_running_checkpoint(root / "evil.pth", root / "MARKER"))
    write(opt, root / "train.yml")
    before = snapshot(root)
    res = run([BASICSR, "train", "-opt", "train.yml"], root, env=UNSAFE_ENV)
    assert_refused(res.returncode, res.stderr, r"pretrain_network_g: .*evil\.pth cannot be loaded safely: it is not a "
                   r"plain PyTorch checkpoint of tensors", before, root, prefix="basicsr train: error in train.yml: ")
    assert not (root / "MARKER").exists()


def test_code_running_resume_state_real_command(root: Path, datasets_dir: Path) -> None:
    opt = small_train_options("edsr_bin.yml", datasets_dir, name="evil_resume")
    state = code_running_checkpoint(root / "6.state", root / "MARKER", iter=6, epoch=0)
    opt["path"]["resume_state"] = str(state)
    write(opt, root / "train.yml")
    before = snapshot(root)
    res = run([BASICSR, "train", "-opt", "train.yml"], root, env=UNSAFE_ENV)
    assert_refused(res.returncode, res.stderr, r"path\.resume_state .*6\.state cannot be resumed: truncated or corrupt",
                   before, root, prefix="basicsr train: error: ")
    assert not (root / "MARKER").exists()


def test_code_running_teacher(root: Path, datasets_dir: Path, capsys: pytest.CaptureFixture) -> None:
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    opt["train"]["distill"] = {"network": {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8,
                                           "num_block": 2, "upscale": 4},
                               "pretrain": str(code_running_checkpoint(root / "teacher.pth", root / "MARKER"))}
    write(opt, root / "train.yml")
    before = snapshot(root)
    rc = basicsr_main(["train", "-opt", "train.yml"])
    assert_refused(rc, capsys.readouterr().err, r"train\.distill\.pretrain: .*teacher\.pth cannot be loaded safely",
                   before, root, prefix="basicsr train: error in train.yml: ")
    assert not (root / "MARKER").exists()


def test_code_running_weights_for_basicsr_test(root: Path, datasets_dir: Path, capsys: pytest.CaptureFixture) -> None:
    opt = small_test_options("edsr_bin.yml", datasets_dir, code_running_checkpoint(root / "w.pth", root / "MARKER"),
                             sets=("Set5",))
    write(opt, root / "test.yml")
    before = snapshot(root)
    rc = basicsr_main(["test", "-opt", "test.yml"])
    assert_refused(rc, capsys.readouterr().err, r"w\.pth cannot be loaded safely", before, root,
                   prefix="basicsr test: error in test.yml: ")
    assert not (root / "MARKER").exists()


@pytest.mark.parametrize("command", ["summary", "check"])
def test_code_running_checkpoint_for_bsr(command: str, root: Path, capsys: pytest.CaptureFixture) -> None:
    (root / "net.yml").write_text(yaml.safe_dump({"network_g": {"type": "EDSRBin", "num_feat": 8, "num_block": 1,
                                                                "upscale": 2}}))
    code_running_checkpoint(root / "evil.pth", root / "MARKER")
    before = snapshot(root)
    rc = bsr_main([command, "-opt", "net.yml", "--checkpoint", "evil.pth"])
    assert_refused(rc, capsys.readouterr().err, r"evil\.pth cannot be loaded safely.*never unpickles code", before,
                   root, prefix=f"bsr {command}: error: ")
    assert not (root / "MARKER").exists()


@pytest.mark.parametrize("load", [safe_torch_load, checkpoint_state])
def test_api_refuses_code_running_checkpoint(load, root: Path) -> None:
    code_running_checkpoint(root / "evil.pth", root / "MARKER")
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely") as exc:
        load(root / "evil.pth")
    assert "\n" not in str(exc.value) and "weights_only=False" not in str(exc.value)
    assert not (root / "MARKER").exists()


def test_basicsr_own_loaders_load_weights_only(root: Path) -> None:
    """Under the guard (every bsr/basicsr command, load_packed), BasicSR's architecture loaders
    (here SpyNet's) cannot unpickle code either; torch.load is itself again afterwards."""
    from basicsr.archs.spynet_arch import SpyNet

    original = torch.load
    code_running_checkpoint(root / "spynet.pth", root / "MARKER")
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        SpyNet(load_path=str(root / "spynet.pth"))
    assert torch.load is original and torch.serialization.load is original
    assert not (root / "MARKER").exists()


def test_basicsr_load_network_is_the_safe_one(root: Path) -> None:
    """The models the basicsr command builds (BasicSR's SRModel included) load weights only; BasicSR's
    BaseModel itself is not patched."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.registry import MODEL_REGISTRY

    from bsr_plugin.integrations.basicsr.archs import EDSRBin
    from bsr_plugin.integrations.basicsr.safe_models import SafeModelMixin

    patch_runtime()
    assert BaseModel.load_network.__module__ == "basicsr.models.base_model"
    code_running_checkpoint(root / "evil.pth", root / "MARKER")
    for name in ("SRModel", "BinarySRModel"):
        cls = MODEL_REGISTRY.get(name)
        assert issubclass(cls, SafeModelMixin) and cls.__name__ == name
        with pytest.raises(CheckpointError, match="cannot be loaded safely"):
            cls.__new__(cls).load_network(EDSRBin(num_feat=8, num_block=1, upscale=2), str(root / "evil.pth"))
    assert not (root / "MARKER").exists()
