"""The mmcv and timm extras are optional: with mmcv, mmengine and timm unimportable, the core
and the BasicSR path work, and asking for a missing integration names the extra to install.

One subprocess (a fresh interpreter whose import system refuses those packages) runs every
probe and reports a JSON line; each test reads its part."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("mmcv", "mmengine", "timm")

SCRIPT = textwrap.dedent('''
    import importlib.abc, json, sys, traceback

    BLOCKED = {blocked!r}

    class BlockExtras(importlib.abc.MetaPathFinder):
        """Behave as if the optional packages were not installed."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, BlockExtras())
    results = {{}}

    def probe(key, fn):
        try:
            results[key] = {{"ok": True, "value": fn()}}
        except BaseException as err:  # noqa: B036
            results[key] = {{"ok": False, "type": type(err).__name__, "message": str(err),
                             "trace": traceback.format_exc(limit=3)}}

    def blocked():
        out = []
        for name in BLOCKED:
            try:
                __import__(name)
                out.append(name + " imported")
            except ImportError:
                pass
        return out

    def core():
        import torch
        from torch import nn
        import bsr_plugin
        net = bsr_plugin.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                               nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)))
        bsr_plugin.check_binary(net, torch.randn(1, 3, 8, 8)).raise_if_failed()
        return net.bsr_report.binarized

    def basicsr():
        import torch
        import bsr_plugin.integrations.basicsr.archs as archs
        net = archs.EDSRBin(num_feat=8, num_block=1, upscale=2)
        y = net(torch.rand(1, 3, 6, 6))
        return [list(y.shape), net.bsr_report.binarized]

    def mmcv_ext():
        import bsr_plugin.integrations.mmcv  # noqa: F401

    def timm_import():
        import bsr_plugin.integrations.timm  # noqa: F401
        return "imported"

    def timm_use():
        from bsr_plugin.integrations.timm import create_binarized_model
        create_binarized_model("resnet10t")

    for key, fn in [("blocked", blocked), ("core", core), ("basicsr", basicsr), ("mmcv_ext", mmcv_ext),
                    ("timm_import", timm_import), ("timm_use", timm_use)]:
        probe(key, fn)
    probe("leaked", lambda: sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    print("RESULTS " + json.dumps(results))
''').format(blocked=BLOCKED)


@pytest.fixture(scope="module")
def without_extras() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"probe process failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULTS "):])


def _ok(results: dict, key: str):
    r = results[key]
    assert r["ok"], f"{key}: {r['type']}: {r['message']}\n{r['trace']}"
    return r["value"]


def test_extras_really_are_blocked(without_extras):
    assert _ok(without_extras, "blocked") == []
    assert _ok(without_extras, "leaked") == []  # nothing imported them behind our back


def test_core_works_without_extras(without_extras):
    assert _ok(without_extras, "core") == ["2"]


def test_basicsr_path_works_without_extras(without_extras):
    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("basicsr is not installed")
    shape, binarized = _ok(without_extras, "basicsr")
    assert shape == [1, 3, 12, 12]
    assert binarized == ["body.0.conv1", "body.0.conv2"]


def test_missing_mmcv_names_the_extra(without_extras):
    r = without_extras["mmcv_ext"]
    assert not r["ok"] and r["type"] in ("ImportError", "ModuleNotFoundError")
    assert "pip install 'bsr_plugin[mmcv]'" in r["message"]


def test_missing_timm_names_the_extra(without_extras):
    assert _ok(without_extras, "timm_import") == "imported"  # the module itself imports timm lazily
    r = without_extras["timm_use"]
    assert not r["ok"] and r["type"] in ("ImportError", "ModuleNotFoundError")
    assert "pip install 'bsr_plugin[timm]'" in r["message"]
