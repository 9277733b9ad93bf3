"""The packed engine as users meet it: ``load_packed`` puts binarized layers on it (bits and
scales only), ``bsr run`` uses it and says so, ``bsr bench`` times it against the float
simulation and the float network, a layer it cannot run keeps its float simulation with a named
warning, and without the C++ extension everything still works on the float simulation, said
in one line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import bsr_plugin
from bsr_plugin import binary_layers, export_packed, load_packed
from bsr_plugin.deploy.engine import kernels
from bsr_plugin.deploy.engine.bands import BandedUpsample
from bsr_plugin.deploy.engine.modules import PackedBinaryConv2d, is_packed, to_engine

from ..nets import needs_basicsr

pytestmark = pytest.mark.slow  # real commands in subprocesses: `make test`, not the fast lane

BSR = str(Path(sys.executable).parent / "bsr")


@torch.no_grad()
def _as_if_trained(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(2)
    for _, layer in binary_layers(net):
        layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1) * (layer.prior_a or 1.0))
        if layer.scale is not None:
            layer.scale.copy_(torch.rand(layer.scale.shape, generator=g) + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def edsr_pack(tmp_path_factory) -> Path:
    needs_basicsr()
    from bsr_plugin.integrations.basicsr.archs import EDSRBin

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engine") / "edsr_x4.bsrpack"
    rules = [{"binarize": "type:Conv2d"}, {"keep": "first"}, {"keep": "last"}, {"keep": "conv_after_body"},
             {"binarize": "upsampler"}]
    export_packed(_as_if_trained(EDSRBin(num_feat=16, num_block=2, upscale=4, binarize={"rules": rules})), path)
    return path


def test_loaded_network_holds_bits_not_latent_weights(edsr_pack):
    net = load_packed(edsr_pack, engine="packed")
    packed = [m for m in net.modules() if is_packed(m)]
    assert len(packed) == 6 and not any(bsr_plugin.is_binary(m) for m in net.modules())
    for layer in packed:  # the sign bits as 64-bit words and per-channel vectors; no fp32 latent weight
        assert layer.weight_bits.dtype == torch.int64 and not hasattr(layer, "weight")
        assert all(t.dim() == 1 for name, t in layer.state_dict().items() if name != "weight_bits")
    assert net.bsr_engine.startswith("packed engine")
    sim = load_packed(edsr_pack, engine="float")
    x = torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(net(x), sim(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(bsr_plugin.ConfigError, match="engine 'fast'"):
        load_packed(edsr_pack, engine="fast")


def test_set5_psnr_equal_on_both_engines(edsr_pack, datasets_dir):
    from benchmarks.sr_benchmark import score_sets
    from bsr_plugin.integrations.basicsr.evaluation import network_upscaler

    scores = {engine: score_sets(network_upscaler(load_packed(edsr_pack, engine=engine)), datasets_dir, ("Set5",),
                                 4)["Set5"]["psnr"] for engine in ("packed", "float")}
    assert abs(scores["packed"] - scores["float"]) < 0.01, scores


def test_layer_the_engine_cannot_run_keeps_its_simulation(caplog):
    net = bsr_plugin.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                           nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                                           nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)))
    _as_if_trained(net)
    x = torch.rand(1, 3, 7, 6)
    with torch.no_grad():
        expected = net(x)
    with caplog.at_level(logging.WARNING):
        kept = to_engine(net)
    assert kept == ["2"] and "2 keeps its float simulation" in caplog.text and "groups=2" in caplog.text
    assert bsr_plugin.is_binary(net[2]) and isinstance(net[4], PackedBinaryConv2d)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)  # never a wrong result


def _image(path: Path, h: int = 12, w: int = 10) -> Path:
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def test_bsr_run_uses_the_engine_and_tiles(edsr_pack, tmp_path):
    img = _image(tmp_path / "lr.png", 21, 17)
    res = subprocess.run([BSR, "run", str(edsr_pack), str(img), "-o", str(tmp_path / "sr.png")], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    expected = "engine: packed engine (" if kernels.available() else "engine: float simulation"
    assert expected in res.stdout, res.stdout
    tiled = subprocess.run([BSR, "run", str(edsr_pack), str(img), "-o", str(tmp_path / "sr_tiled.png"), "--tile", "8",
                            "--tile-pad", "8"], capture_output=True, text=True, timeout=300)
    assert tiled.returncode == 0, tiled.stderr
    import cv2

    whole, pieces = cv2.imread(str(tmp_path / "sr.png")), cv2.imread(str(tmp_path / "sr_tiled.png"))
    assert whole.shape == pieces.shape == (84, 68, 3)
    # with 8 pixels of context (more than this network's receptive field) tiles give the same image
    assert abs(whole.astype(int) - pieces.astype(int)).max() <= 1


def test_bsr_bench_reports_three_networks(edsr_pack):
    res = subprocess.run([BSR, "bench", str(edsr_pack), "--size", "24x16", "--threads", "1", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "1 thread(s), end to end: packed engine" in res.stdout and "float network" in res.stdout
    assert "body.0.conv1" in res.stdout and "upsample.2" in res.stdout


BLOCK_EXTENSION = textwrap.dedent('''
    import importlib.abc, sys

    class _NoEngine(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "bsr_plugin.deploy.engine._C":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoEngine())
''')


def test_without_the_extension_the_float_simulation_runs_and_says_so(edsr_pack, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_EXTENSION)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    img = _image(tmp_path / "lr.png")
    res = subprocess.run([BSR, "run", str(edsr_pack), str(img), "-o", str(tmp_path / "sr.png")], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "engine: float simulation" in res.stdout
    notice = [ln for ln in res.stderr.splitlines() if "packed engine unavailable" in ln]
    assert len(notice) == 1 and "float simulation" in notice[0] and "pip install" in notice[0]
    probe = subprocess.run([sys.executable, "-c", "import sys, torch, bsr_plugin; from bsr_plugin.deploy.engine "
                            "import kernels; net = bsr_plugin.load_packed(sys.argv[1], engine='packed'); "
                            "print(kernels.available(), net.bsr_engine); net(torch.rand(1, 3, 5, 5))",
                            str(edsr_pack)], capture_output=True, text=True, timeout=300, env=env)
    assert probe.returncode == 0 and probe.stdout.startswith("False packed engine (its float simulation"), probe.stderr


def test_conv_then_pixel_shuffle_is_fused(edsr_pack):
    """The binarized upsampler convs write pixel-shuffled output: the PixelShuffle modules become
    Identity and the unshuffled tensor is never made; the last one runs banded with the last conv
    (tests/deploy/test_bands.py); the output does not change."""
    net = load_packed(edsr_pack, engine="packed")
    sim = load_packed(edsr_pack, engine="float")
    assert net.upsample[0].pixel_shuffle == net.upsample[2].first.pixel_shuffle == 2
    assert isinstance(net.upsample[1], nn.Identity) and isinstance(net.upsample[3], nn.Identity)
    assert isinstance(net.upsample[2], BandedUpsample) and net.upsample[2].shuffled
    assert isinstance(net.conv_last, nn.Identity) and isinstance(net.upsample[2].last, nn.Conv2d)
    assert isinstance(sim.upsample[1], nn.PixelShuffle)
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(net(x), sim(x), rtol=1e-5, atol=1e-5)


def test_bsr_run_on_a_folder(edsr_pack, tmp_path):
    folder = tmp_path / "lr"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        _image(folder / name, 9, 8)
    res = subprocess.run([BSR, "run", str(edsr_pack), str(folder), "-o", str(tmp_path / "sr"), "--tile", "4"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import cv2

    assert [cv2.imread(str(tmp_path / "sr" / n)).shape for n in ("a.png", "b.png")] == [(36, 32, 3)] * 2


def test_bsr_engine_says_what_runs():
    res = subprocess.run([BSR, "engine"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("packed engine")
    if kernels.available():
        assert kernels.isa() in res.stdout and "instruction sets on this CPU" in res.stdout


def test_shipped_recipe_runs_on_the_engine(tmp_path):
    """The network options/edsr_bin.yml trains (BBCU unit: identity per binary conv, aligned,
    RSign, RPReLU) keeps its options in the packed file and runs on the engine as simulated."""
    needs_basicsr()
    from bsr_plugin.integrations.basicsr.archs import SHIPPED_UNIT, EDSRBin

    torch.manual_seed(0)
    net = _as_if_trained(EDSRBin(num_feat=16, num_block=2, upscale=2, **SHIPPED_UNIT))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in binary_layers(net):  # learned thresholds and RPReLUs away from their init
            for p in (layer.threshold, layer.act_shift_in, layer.act_slope, layer.act_shift_out):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    export_packed(net, tmp_path / "shipped.bsrpack")
    engine, sim = (load_packed(tmp_path / "shipped.bsrpack", engine=e) for e in ("packed", "float"))
    assert engine.bsr_engine.startswith("packed engine")
    assert all(layer.options.rsign and layer.options.rprelu and layer.options.align == 0.1
               for _, layer in binary_layers(sim))
    x = torch.rand(1, 3, 10, 7)
    with torch.no_grad():
        torch.testing.assert_close(engine(x), net(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sim(x), net(x), rtol=1e-5, atol=1e-5)
