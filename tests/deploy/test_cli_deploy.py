"""The ``bsr`` command: summary, export, run, check (in-process, tiny networks)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from bsr_plugin import binary_layers, load_packed
from bsr_plugin.deploy.cli import main
from bsr_plugin.integrations.basicsr.archs import EDSRBin

NET = dict(type="EDSRBin", num_feat=8, num_block=1, upscale=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An options file, a BasicSR-style checkpoint of a 'trained' network and an LR image."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(3)
    net = EDSRBin(**{k: v for k, v in NET.items() if k != "type"})
    with torch.no_grad():
        for _, layer in binary_layers(net):
            layer.weight.uniform_(-0.01, 0.01)
            layer.scale.uniform_(0.001, 0.01)
    ckpt = root / "net_g_10.pth"
    torch.save({"params": net.state_dict()}, ckpt)
    opt = root / "edsr_bin.yml"
    opt.write_text(yaml.safe_dump({"name": "tiny", "scale": 2, "network_g": NET}))
    opt_pretrain = root / "edsr_bin_pretrain.yml"
    opt_pretrain.write_text(yaml.safe_dump({"network_g": NET, "path": {"pretrain_network_g": str(ckpt),
                                                                        "param_key_g": "params"}}))
    opt_float = root / "edsr.yml"
    opt_float.write_text(yaml.safe_dump({"network_g": dict(type="EDSR", num_in_ch=3, num_out_ch=3, num_feat=8,
                                                           num_block=1, upscale=2)}))
    img = root / "lr.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8))
    return dict(root=root, net=net.eval(), ckpt=ckpt, opt=opt, opt_pretrain=opt_pretrain, opt_float=opt_float,
                img=img)


def test_summary_from_options_and_checkpoint(files, capsys):
    assert main(["summary", "-opt", str(files["opt"]), "--checkpoint", str(files["ckpt"]),
                 "--input-size", "3", "10", "14"]) == 0
    out = capsys.readouterr().out
    assert "body.0.conv1" in out and "OPs (bireal64)" in out and "compression" in out
    assert main(["summary", "-opt", str(files["opt"]), "--input-size", "3", "10", "14", "--json",
                 "--convention", "xnor8"]) == 0
    data = json.loads(capsys.readouterr().out)
    totals = data["totals"]
    assert data["convention"] == "xnor8" and totals["binary_params"] == 2 * 8 * 8 * 9
    assert totals["binary_macs"] == 2 * 10 * 14 * 8 * 8 * 9
    assert totals["ops"] == totals["fp_macs"] + totals["binary_macs"] / 8
    assert main(["summary", "-opt", str(files["opt_float"]), "--input-size", "3", "10", "14", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["binary_params"] == 0


def test_export_run_check(files, capsys):
    root = files["root"]
    pack, onnx = root / "tiny.bsrpack", root / "tiny.onnx"
    assert main(["export", "-opt", str(files["opt_pretrain"]), "-o", str(pack), "--onnx", str(onnx)]) == 0
    out = capsys.readouterr().out
    assert "theoretical packed size" in out and onnx.is_file()
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(load_packed(pack, engine="float")(x), files["net"](x))  # weights from pretrain_network_g

    sr = root / "sr.png"
    assert main(["run", str(pack), str(files["img"]), "-o", str(sr), "--check"]) == 0
    assert "2/2 binarized layers" in capsys.readouterr().out
    out_img = cv2.imread(str(sr), cv2.IMREAD_COLOR)
    assert out_img.shape == (20, 28, 3)
    lr = torch.from_numpy(cv2.cvtColor(cv2.imread(str(files["img"])), cv2.COLOR_BGR2RGB).astype(np.float32) / 255)
    with torch.no_grad():
        ref = files["net"](lr.permute(2, 0, 1)[None])[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0)
    assert np.array_equal(cv2.cvtColor(out_img, cv2.COLOR_BGR2RGB), ref.numpy())

    assert main(["check", "--packed", str(pack)]) == 0
    assert main(["check", "-opt", str(files["opt"]), "--checkpoint", str(files["ckpt"]),
                 "--image", str(files["img"])]) == 0
    capsys.readouterr()
    assert main(["check", "-opt", str(files["opt_float"])]) == 1  # a float network has no binarized layer
    assert "no binarized layer" in capsys.readouterr().out


def test_missing_pretrain_path_is_an_error_except_for_summary(files, capsys):
    opt = files["root"] / "untrained.yml"
    opt.write_text(yaml.safe_dump({"network_g": NET, "path": {"pretrain_network_g": "experiments/none.pth"}}))
    assert main(["summary", "-opt", str(opt), "--input-size", "3", "8", "8"]) == 0
    assert main(["export", "-opt", str(opt), "-o", str(files["root"] / "u.bsrpack")]) == 2
    assert "experiments/none.pth does not exist" in capsys.readouterr().err


def test_clear_errors(files, capsys):
    root = files["root"]
    bad = root / "bad.bsrpack"
    bad.write_bytes(b"BSRPACK\0" + b"\1" * 40)
    assert main(["run", str(bad), str(files["img"]), "-o", str(root / "x.png")]) == 2
    assert "bsr run: error:" in capsys.readouterr().err
    assert main(["summary", "-opt", str(root / "missing.yml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["summary", "-opt", str(files["opt"]), "--checkpoint", str(files["ckpt"]),
                 "--param-key", "params_ema"]) == 2
    assert "has no key 'params_ema'" in capsys.readouterr().err


@pytest.mark.slow
def test_console_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "bsr_plugin.deploy.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for command in ("summary", "export", "run", "check", "demo"):
        assert command in proc.stdout
