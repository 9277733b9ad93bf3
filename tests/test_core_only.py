"""The core knows no toolkit: with basicsr, mmcv, mmengine and timm unimportable, ``import
bsr_plugin``, ``convert``, ``export_packed``, ``load_packed(path, model=...)`` work, the ``bsr``
command starts, and ``bsr summary/check/run`` serve a packed file of a user's own plain
PyTorch network (rebuilt by ``--model module:function``). A file can only select among
registered builders: it never makes the loader import or call what it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import bsr_plugin
from bsr_plugin import BuilderError, PackedFormatError

from .conftest import REPO

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

BLOCKED = ("basicsr", "mmcv", "mmengine", "timm")
BSR = str(Path(sys.executable).parent / "bsr")

BLOCKER = textwrap.dedent(f'''
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _Blocked())
''')

USER_NETS = textwrap.dedent('''
    from torch import nn

    def make_net():
        """A user's own x2 SR network: no toolkit, no builder of ours."""
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1),
                             nn.PixelShuffle(2))
''')

PROBE = textwrap.dedent('''
    import json, sys, torch
    import bsr_plugin
    from user_nets import make_net

    out = {}
    net = bsr_plugin.convert(make_net())
    bsr_plugin.export_packed(net, sys.argv[1])
    loaded = bsr_plugin.load_packed(sys.argv[1], model=make_net(), engine="float")
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        out["equal"] = bool(torch.equal(loaded(x), net.eval()(x)))
    out["binarized"] = net.bsr_report.binarized
    try:
        bsr_plugin.load_packed(sys.argv[2])  # built by BasicSR: its builder cannot load
    except bsr_plugin.BuilderError as err:
        out["builder_error"] = str(err)
    out["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED_NAMES)
    print("RESULTS " + json.dumps(out))
''').replace("BLOCKED_NAMES", repr(BLOCKED))


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("core_only")
    (root / "sitecustomize.py").write_text(BLOCKER)
    (root / "user_nets.py").write_text(USER_NETS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return env, root


@pytest.fixture(scope="module")
def basicsr_pack(tmp_path_factory) -> Path:
    """A packed file whose network is built by the BasicSR builder (made here, where basicsr exists)."""
    from .nets import needs_basicsr

    needs_basicsr()
    from bsr_plugin.integrations.basicsr.archs import EDSRBin

    path = tmp_path_factory.mktemp("bsr_pack") / "edsr.bsrpack"
    bsr_plugin.export_packed(EDSRBin(num_feat=8, num_block=1, upscale=2), path)
    return path


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_api_without_any_toolkit(blocked_env, basicsr_pack):
    env, root = blocked_env
    proc = _run([sys.executable, "-c", PROBE, str(root / "user.bsrpack"), str(basicsr_pack)], env, root)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULTS "):])
    assert out["equal"] and out["binarized"] == ["2", "4"]
    assert "'basicsr' integration, which cannot be loaded" in out["builder_error"]
    assert "pip install" in out["builder_error"]
    assert out["leaked"] == []


def test_bsr_serves_a_user_network_without_any_toolkit(blocked_env, basicsr_pack):
    env, root = blocked_env
    pack = root / "user_cli.bsrpack"
    made = _run([sys.executable, "-c", "import sys, bsr_plugin; from user_nets import make_net; "
                 "bsr_plugin.export_packed(bsr_plugin.convert(make_net()), sys.argv[1])", str(pack)], env, root)
    assert made.returncode == 0, made.stderr[-2000:]
    assert _run([BSR, "--help"], env, root).returncode == 0
    summary = _run([BSR, "summary", "--packed", str(pack), "--model", "user_nets:make_net", "--input-size", "3",
                    "18", "32"], env, root)
    assert summary.returncode == 0 and "binary" in summary.stdout, summary.stderr[-2000:]
    check = _run([BSR, "check", "--packed", str(pack), "--model", "user_nets:make_net"], env, root)
    assert check.returncode == 0 and "2/2 binarized layers" in check.stdout, check.stderr[-2000:]
    pytest.importorskip("cv2")
    import cv2
    import numpy as np

    cv2.imwrite(str(root / "lr.png"), np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8))
    run = _run([BSR, "run", str(pack), str(root / "lr.png"), "-o", str(root / "sr.png"), "--model",
                "user_nets:make_net"], env, root)
    assert run.returncode == 0 and "engine:" in run.stdout, run.stderr[-2000:]
    assert cv2.imread(str(root / "sr.png")).shape == (24, 20, 3)
    # a file built by BasicSR: one line naming what to install, no traceback
    refused = _run([BSR, "run", str(basicsr_pack), str(root / "lr.png"), "-o", str(root / "sr2.png")], env, root)
    assert refused.returncode == 2 and "pip install" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_file_selects_only_registered_builders(tmp_path):
    """A hand-written build entry naming a module:function is a builder name like any other:
    it is looked up, never imported."""
    net = bsr_plugin.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                           nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)))
    marker = "bsr_test_never_imported_module"
    net.bsr_build = {"builder": f"{marker}:make", "spec": {}}
    bsr_plugin.export_packed(net, tmp_path / "evil.bsrpack")
    with pytest.raises(BuilderError, match="no network builder named"):
        bsr_plugin.load_packed(tmp_path / "evil.bsrpack")
    assert marker not in sys.modules


def test_a_user_registered_builder_rebuilds_the_network(tmp_path):
    def make(spec):
        return nn.Sequential(nn.Conv2d(3, spec["width"], 3, padding=1), nn.ReLU(),
                             nn.Conv2d(spec["width"], spec["width"], 3, padding=1), nn.ReLU(),
                             nn.Conv2d(spec["width"], 3, 3, padding=1))

    bsr_plugin.register_builder("test_user_nets", make)
    net = bsr_plugin.convert(make({"width": 8}))
    net.bsr_build = {"builder": "test_user_nets", "spec": {"width": 8}}
    bsr_plugin.export_packed(net, tmp_path / "user.bsrpack")
    loaded = bsr_plugin.load_packed(tmp_path / "user.bsrpack", engine="float")
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    net.bsr_build = {"builder": "test_user_nets", "spec": {"width": 9}}  # a spec that builds another network
    bsr_plugin.export_packed(net, tmp_path / "other.bsrpack")
    with pytest.raises(PackedFormatError, match="does not match"):
        bsr_plugin.load_packed(tmp_path / "other.bsrpack")
