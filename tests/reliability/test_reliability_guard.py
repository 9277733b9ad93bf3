"""A packed file and an options file are data (:mod:`bsr_plugin.safety`): with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` set, no spec they hold makes any command or API run code,
read a file it names, connect, download or block. Each case goes through a real entry point,
asserts exit status 2 and one line naming the argument, that the marker a payload would create
does not exist, that nothing was written (the torch cache included: nothing fetched) and that
the command returned (a FIFO would block forever)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from bsr_plugin import UnsafeInputError, binary_layers, export_packed, load_packed
from bsr_plugin.deploy.cli import main as bsr_main
from bsr_plugin.integrations.basicsr.archs import EDSRBin
from bsr_plugin.integrations.basicsr.cli import main as basicsr_main

from ..basicsr_runs import small_test_options, small_train_options, write
from .helpers import (
    BASICSR,
    BSR,
    UNSAFE_ENV,
    assert_refused,
    code_running_checkpoint,
    fifo,
    rewrite_pack,
    run,
    snapshot,
    write_png,
)

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

TIMEOUT = 120  # seconds: a blocked command fails the case instead of hanging the suite


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guard")
    torch.manual_seed(0)
    net = EDSRBin(num_feat=8, num_block=1, upscale=2)
    with torch.no_grad():
        for _, layer in binary_layers(net):
            layer.scale.uniform_(0.01, 0.1)
    export_packed(net.eval(), root / "small.bsrpack")
    torch.save({"params": net.state_dict()}, root / "ck.pth")
    write_png(root / "lr.png", 12, 16)
    return root


@pytest.fixture
def root(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the inputs as the current folder, a code-running ``evil.pth``, torch's
    safe default switched off and the torch cache (where downloads go) inside the folder."""
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    code_running_checkpoint(tmp_path / "evil.pth", tmp_path / "MARKER")
    env = dict(UNSAFE_ENV, TORCH_HOME=str(tmp_path / "torch_home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def _refused_command(root: Path, cmd: list[str], pattern: str, prefix: str, **env: str) -> str:
    before = snapshot(root)
    res = run(cmd, root, env=dict(UNSAFE_ENV, TORCH_HOME=str(root / "torch_home"), **env), timeout=TIMEOUT)
    line = assert_refused(res.returncode, res.stderr, pattern, before, root, prefix=prefix)
    assert not (root / "MARKER").exists() and not (root / "torch_home").exists()
    return line


def _arch(**arch: Any):
    """A spec edit: the file's network becomes BasicSR's ``arch``, binarized."""
    return lambda m: m["build"].update(spec={"type": "BinarizedArch", "arch": arch})


def _spec(**spec: Any):
    return lambda m: m["build"].update(spec=spec)


# -- a packed file's spec: refused by the allow-list, before anything is built -------------------------
SPECS = {
    "spynet_load_path": (_arch(type="SpyNet", load_path="evil.pth"),
                         r"argument arch\.load_path = 'evil\.pth' is a path"),
    "basicvsr_spynet_path": (_arch(type="BasicVSR", num_feat=8, num_block=1, spynet_path="evil.pth"),
                             r"argument arch\.spynet_path = 'evil\.pth' is a path"),
    "dfdnet_dict_path": (_arch(type="DFDNet", num_feat=8, dict_path="./evil.pth"),
                         r"argument arch\.dict_path = '\./evil\.pth' is a path"),
    "iconvsr_paths_without_suffix": (_arch(type="IconVSR", num_feat=8, spynet_path="evil", edvr_path="evil"),
                                     r"arch\.(spynet|edvr)_path = 'evil' names a file \(a path-like argument\)"),
    "spynet_by_its_type": (_arch(type="SpyNet"), r"arch\.type 'SpyNet' loads load_path with torch\.load when built"),
    "vgg_would_download": (_spec(type="VGGFeatureExtractor", layer_name_list=["conv1_1"]),
                           r"type 'VGGFeatureExtractor' loads or downloads VGG weights"),
    "url_argument": (_spec(type="EDSRBin", num_feat=8, num_block=1, upscale=2, weights="https://example.com/w.pth"),
                     r"argument weights = 'https://example\.com/w\.pth' is a URL"),
    "fifo_argument": (_arch(type="SpyNet", load_path="fifo"), r"arch\.load_path = 'fifo' names a file"),
    "not_finite_argument": (_spec(type="EDSRBin", num_feat=8, num_block=1, upscale=2, res_scale=float("inf")),
                            r"argument res_scale is inf, not a finite number"),
    "millions_of_blocks": (_spec(type="EDSRBin", num_feat=8, num_block=10**7, upscale=2),
                           r"building its network would construct more than [\d,]+ modules"),
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_packed_spec_is_data(case: str, root: Path) -> None:
    edit, pattern = SPECS[case]
    fifo(root / "fifo")
    rewrite_pack(root / "small.bsrpack", root / "evil.bsrpack", edit)
    _refused_command(root, [BSR, "run", "evil.bsrpack", "lr.png", "-o", "sr.png"], rf"evil\.bsrpack: .*{pattern}",
                     "bsr run: error: ")


@pytest.mark.parametrize("args", [["check", "--packed", "evil.bsrpack"], ["bench", "evil.bsrpack", "--size", "8x8"],
                                  ["export", "--packed", "evil.bsrpack", "-o", "again.bsrpack"],
                                  ["summary", "--packed", "evil.bsrpack"]], ids=lambda a: a[0])
def test_every_bsr_command_refuses_the_spec(args: list[str], root: Path) -> None:
    rewrite_pack(root / "small.bsrpack", root / "evil.bsrpack", SPECS["spynet_load_path"][0])
    _refused_command(root, [BSR, *args], r"evil\.bsrpack: the network spec's argument arch\.load_path",
                     f"bsr {args[0]}: error: ")


def test_load_packed_refuses_the_spec(root: Path) -> None:
    rewrite_pack(root / "small.bsrpack", root / "evil.bsrpack", SPECS["dfdnet_dict_path"][0])
    with pytest.raises(UnsafeInputError, match=r"arch\.dict_path = '\./evil\.pth' is a path"):
        load_packed(root / "evil.bsrpack")
    assert not (root / "MARKER").exists()


# -- what a builder does while building: refused by the guard, even if the builder hides it ------------
class _ReadsAFile(nn.Module):
    def __init__(self, source: str = "notes") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        with open(source, "rb") as fh:
            fh.read()


class _HidesWhatItDid(_ReadsAFile):
    def __init__(self, source: str = "notes") -> None:
        try:
            super().__init__(source)
        except Exception:  # a builder that swallows the refusal: the guard still refuses at the end
            nn.Module.__init__(self)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)


class _Connects(nn.Module):
    def __init__(self, port: int = 9) -> None:
        super().__init__()
        import socket

        socket.create_connection(("127.0.0.1", port), timeout=1)


class _RunsAProgram(nn.Module):
    def __init__(self, program: str = "true") -> None:
        super().__init__()
        import subprocess

        subprocess.run([program], check=False)


@pytest.fixture
def registered() -> None:
    from basicsr.utils.registry import ARCH_REGISTRY

    for cls in (_ReadsAFile, _HidesWhatItDid, _Connects, _RunsAProgram):
        if cls.__name__ not in ARCH_REGISTRY:
            ARCH_REGISTRY.register(cls)


BUILDS = {
    "reads_a_file": ("_ReadsAFile", r"building its network would read the file 'notes'"),
    "hides_the_refusal": ("_HidesWhatItDid", r"building its network would read the file 'notes'"),
    "connects": ("_Connects", r"building its network would connect to the network"),
    "runs_a_program": ("_RunsAProgram", r"building its network would start a program"),
}


@pytest.mark.parametrize("case", sorted(BUILDS))
def test_builder_actions_are_refused(case: str, root: Path, registered: None, capsys: pytest.CaptureFixture) -> None:
    kind, pattern = BUILDS[case]
    (root / "notes").write_text("an auxiliary file")
    rewrite_pack(root / "small.bsrpack", root / "evil.bsrpack", _spec(type=kind))
    with pytest.raises(UnsafeInputError, match=pattern):
        load_packed(root / "evil.bsrpack")
    before = snapshot(root)
    rc = bsr_main(["run", "evil.bsrpack", "lr.png", "-o", "sr.png"])
    assert_refused(rc, capsys.readouterr().err, pattern, before, root, prefix="bsr run: error: evil.bsrpack: ")


def test_user_network_loads_weights_only(root: Path, capsys: pytest.CaptureFixture) -> None:
    """``--model`` is the user's own code (it may read its auxiliary files), but a torch.load it
    makes still loads weights only, whatever it asks for."""
    (root / "user_nets.py").write_text("import torch\nfrom bsr_plugin.integrations.basicsr.archs import EDSRBin\n\n"
                                       "def make_net():\n    torch.load('evil.pth', weights_only=False)\n"
                                       "    return EDSRBin(num_feat=8, num_block=1, upscale=2)\n")
    _refused_command(root, [BSR, "run", "small.bsrpack", "lr.png", "-o", "sr.png", "--model", "user_nets:make_net"],
                     r"small\.bsrpack: its network's builder loads a file that is not plain weights \(Trying to load "
                     r"unsupported GLOBAL posix\.system", "bsr run: error: ",
                     PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))


def test_guard_restores_torch_load(root: Path) -> None:
    original = torch.load
    rewrite_pack(root / "small.bsrpack", root / "evil.bsrpack", SPECS["vgg_would_download"][0])
    with pytest.raises(UnsafeInputError):
        load_packed(root / "evil.bsrpack")
    assert torch.load is original
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(root / "ck.pth")  # the environment's unsafe default is back outside the guard


# -- an options file's network: auxiliary files load weights only; no download, no FIFO ------------------
def _options(root: Path, network_g: dict) -> Path:
    return write({"network_g": network_g}, root / "net.yml")


OPTIONS = {
    "code_running_spynet_weights": ({"type": "SpyNet", "load_path": "evil.pth"},
                                    r"net\.yml: network_g loads a file that is not plain weights .*never unpickles "
                                    r"code"),
    "vgg_would_download": ({"type": "VGGFeatureExtractor", "layer_name_list": ["conv1_1"]},
                           r"net\.yml: building its network would (change the file system|connect to the "
                           r"network)"),
    "spynet_weights_from_a_fifo": ({"type": "SpyNet", "load_path": "fifo"},
                                   r"net\.yml: building its network would open 'fifo', which is not a regular file"),
    "constructor_refuses_its_options": ({"type": "EDSRBin", "num_feat": 8, "num_block": 1, "upscale": 2,
                                         "bogus": 1}, r"net\.yml: network_g cannot be built from its options"),
}


@pytest.mark.parametrize("case, command", [(case, "summary") for case in sorted(OPTIONS)] + [
    ("code_running_spynet_weights", "check"), ("code_running_spynet_weights", "export")])
def test_options_network_is_data(case: str, command: str, root: Path) -> None:
    """Each case through ``bsr summary -opt``; the code-running one through every ``-opt`` command."""
    network_g, pattern = OPTIONS[case]
    fifo(root / "fifo")
    _options(root, network_g)
    args = [BSR, command, "-opt", "net.yml"] + (["-o", "m.bsrpack"] if command == "export" else [])
    _refused_command(root, args, pattern, f"bsr {command}: error: ")


# -- the basicsr command: its preflight builds network_g, the teacher and the losses under the guard ----
def _train(root: Path, datasets_dir: Path, edit) -> dict:
    opt = small_train_options("edsr_bin.yml", datasets_dir)
    edit(opt)
    return opt


BASICSR_CASES = {
    "network_g_loads_code": (lambda o: o.update(network_g={"type": "SpyNet", "load_path": "evil.pth"}),
                             r"network_g: building it loads a file that is not plain weights \(.*GLOBAL posix\.system"),
    "teacher_loads_code": (lambda o: o["train"].update(distill={"network": {"type": "DFDNet", "num_feat": 8,
                                                                            "dict_path": "evil.pth"},
                                                               "pretrain": "ck.pth"}),
                           r"train\.distill\.network: building it loads a file that is not plain weights"),
    "perceptual_loss_would_download": (
        lambda o: o["train"].update(perceptual_opt={"type": "PerceptualLoss", "layer_weights": {"conv5_4": 1},
                                                    "vgg_type": "vgg19", "perceptual_weight": 1.0}),
        r"train\.perceptual_opt: .*building its network would (change the file system|connect to the network)"),
}


@pytest.mark.parametrize("case", sorted(BASICSR_CASES))
def test_basicsr_preflight_builds_under_the_guard(case: str, root: Path, datasets_dir: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    edit, pattern = BASICSR_CASES[case]
    opt = _train(root, datasets_dir, edit)
    if case == "network_g_loads_code":
        opt["model_type"] = "SRModel"
        for key in ("binarize_schedule", "project_prior", "prior_anneal", "latent_lr", "calibrate_scales"):
            opt["train"].pop(key, None)
    write(opt, root / "train.yml")
    before = snapshot(root)
    rc = basicsr_main(["train", "-opt", "train.yml"])
    assert_refused(rc, capsys.readouterr().err, pattern, before, root, prefix="basicsr train: error in train.yml: ")
    assert not (root / "MARKER").exists() and not (root / "torch_home").exists()


def test_basicsr_test_network_loads_code(root: Path, datasets_dir: Path) -> None:
    opt = small_test_options("edsr_bin.yml", datasets_dir, root / "ck.pth", sets=("Set5",))
    opt["network_g"] = {"type": "BinarizedArch", "arch": {"type": "SpyNet", "load_path": "evil.pth"}}
    opt["model_type"] = "SRModel"
    write(opt, root / "test.yml")
    _refused_command(root, [BASICSR, "test", "-opt", "test.yml"],
                     r"network_g: building it loads a file that is not plain weights",
                     "basicsr test: error in test.yml: ")


# -- a FIFO where a file is expected: refused at once, never waited on ------------------------------------
FIFOS = {
    "packed_file": ([BSR, "run", "fifo", "lr.png", "-o", "sr.png"], r"fifo: cannot read it \(it is not a regular"),
    "input_image": ([BSR, "run", "small.bsrpack", "fifo", "-o", "sr.png"], r"input fifo is not a regular file"),
    "check_image": ([BSR, "check", "--packed", "small.bsrpack", "--image", "fifo"],
                    r"input image fifo is not a regular file"),
    "options_file": ([BSR, "summary", "-opt", "fifo"], r"options file fifo is not a regular file"),
    "checkpoint": ([BSR, "export", "-opt", "net.yml", "--checkpoint", "fifo", "-o", "m.bsrpack"],
                   r"checkpoint fifo is not a regular file"),
    "basicsr_options_file": ([BASICSR, "train", "-opt", "fifo"], r"options file fifo is not a regular file"),
    "basicsr_pretrain_network": ([BASICSR, "train", "-opt", "train.yml"],
                                 r"path\.pretrain_network_g: 'fifo' is not a regular file"),
}


@pytest.mark.parametrize("case", sorted(FIFOS))
def test_fifo_never_blocks(case: str, root: Path, datasets_dir: Path) -> None:
    cmd, pattern = FIFOS[case]
    fifo(root / "fifo")
    _options(root, {"type": "EDSRBin", "num_feat": 8, "num_block": 1, "upscale": 2})
    write(_train(root, datasets_dir, lambda o: o["path"].update(pretrain_network_g="fifo")), root / "train.yml")
    name = Path(cmd[0]).name
    _refused_command(root, cmd, pattern, f"{name} {cmd[1]}: error")


def test_spec_allow_list_accepts_what_the_plugin_writes() -> None:
    """Every spec the plugin's own architectures record passes the allow-list (binarize rules included)."""
    from bsr_plugin.safety import check_spec_values

    net = EDSRBin(num_feat=8, num_block=1, upscale=2, binarize={"rules": [
        {"binarize": "type:Conv2d"}, {"keep": "first"}, {"keep": "last"}, {"keep": "upsampler?"},
        {"keep": r"re:conv_after_body"}], "prior_a": 0.01, "act_grad": "approxsign"})
    check_spec_values(net.bsr_build["spec"], "x.bsrpack")
    yaml.safe_dump(net.bsr_build)  # plain data
