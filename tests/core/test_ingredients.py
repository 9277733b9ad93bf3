"""The round-2 training ingredients: RSign, RPReLU, the BBCU block, distillation from a frozen
float teacher. Each trains (forward, backward, every new parameter gets a gradient), round-trips
through the state dict, the packed file (both engines) and ONNX with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bsr_plugin
from bsr_plugin import BinaryConv2d, BinaryLinear, binary_layers, check_binary, export_packed, load_packed

from ..nets import needs_basicsr

INGREDIENTS = [
    {"rsign": True},
    {"rprelu": True},
    {"rsign": True, "rprelu": True},
]


@torch.no_grad()
def _perturb(net: nn.Module, seed: int = 3) -> nn.Module:
    """Move every RSign / RPReLU parameter away from its start value (as training would)."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in binary_layers(net):
        for name in ("threshold", "act_shift_in", "act_slope", "act_shift_out"):
            p = getattr(layer, name, None)
            if p is not None:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net


@pytest.mark.parametrize("options", INGREDIENTS)
def test_layer_computes_rsign_then_rprelu_then_shortcut(options):
    layer = BinaryConv2d(6, 6, 3, padding=1, **options)
    _perturb(nn.Sequential(layer))
    x = torch.randn(2, 6, 5, 7)
    beta = layer.threshold.view(1, -1, 1, 1) if layer.rsign else 0.0
    xb = nn.functional.pad(torch.where(x - beta >= 0, 1.0, -1.0), (1, 1, 1, 1), value=1.0)
    y = nn.functional.conv2d(xb, layer.binary_weight(), layer.bias)
    if layer.rprelu:
        t = y - layer.act_shift_in.view(1, -1, 1, 1)
        y = torch.where(t >= 0, t, t * layer.act_slope.view(1, -1, 1, 1)) + layer.act_shift_out.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), y + x)


@pytest.mark.parametrize("options", INGREDIENTS)
def test_every_new_parameter_trains(options):
    conv = BinaryConv2d(4, 4, 3, padding=1, **options)
    lin = BinaryLinear(4, 8, **options)
    (conv(torch.randn(2, 4, 6, 6)).sum() + lin(torch.randn(3, 4)).sum()).backward()
    for layer in (conv, lin):
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert conv.rsign == options.get("rsign", False) and conv.rprelu == options.get("rprelu", False)
    if conv.rprelu:  # starts as PReLU(0.25) with zero shifts (ReActNet / BBCU)
        fresh = BinaryConv2d(4, 4, 3, padding=1, **options)
        assert torch.equal(fresh.act_slope, torch.full((4,), 0.25)) and not fresh.act_shift_in.any()


def test_reset_parameters_rederives_binary_state():
    layer = BinaryConv2d(4, 4, 3, padding=1, prior_a=0.01, rsign=True, rprelu=True)
    _perturb(nn.Sequential(layer))
    layer.reset_parameters()  # what toolkit init code calls
    assert layer.weight.abs().max() <= 0.01 + 1e-9  # back inside the prior
    assert (layer.scale > 0).all()  # mean |w| of the new float weight
    assert torch.equal(layer.sign_ref, bsr_plugin.core.bits.pack_signs(layer.weight))
    assert not layer.threshold.any() and torch.equal(layer.act_slope, torch.full((4,), 0.25))
    assert float(layer.calibrated) == 0


@pytest.mark.slow
@pytest.mark.parametrize("options", INGREDIENTS)
def test_state_dict_packed_and_onnx_round_trips(options, tmp_path):
    torch.manual_seed(0)
    net = _perturb(bsr_plugin.convert(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                                    nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                                    nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                                    nn.Conv2d(16, 3, 3, padding=1)), **options)).eval()
    x = torch.randn(1, 3, 9, 7)
    with torch.no_grad():
        y = net(x)
    twin = bsr_plugin.convert(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                            nn.Conv2d(16, 3, 3, padding=1)), **options).eval()
    twin.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(twin(x), y)
    export_packed(net, tmp_path / "net.bsrpack")
    skeleton = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "net.bsrpack", model=skeleton, engine="float")(x), y)
        torch.testing.assert_close(load_packed(tmp_path / "net.bsrpack", model=skeleton, engine="packed")(x), y,
                                   rtol=1e-5, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    path = bsr_plugin.export_onnx(net, tmp_path / "net.onnx", x)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"lr": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), y, rtol=0, atol=1e-5)


def test_bbcu_block_has_a_shortcut_per_conv_and_no_block_skip():
    needs_basicsr()
    from bsr_plugin.integrations.basicsr.archs import EDSRBin, ShortcutUnitBlock

    plain = EDSRBin(num_feat=8, num_block=2, upscale=2)
    bbcu = EDSRBin(num_feat=8, num_block=2, upscale=2, block="bbcu", binarize={"rprelu": True})
    assert {d.shortcut for d in plain.bsr_report.layers if d.action == "binarized"} == {"none"}
    assert {d.shortcut for d in bbcu.bsr_report.layers if d.action == "binarized"} == {"identity"}
    block = bbcu.body[0]
    assert isinstance(block, ShortcutUnitBlock) and not hasattr(block, "relu")
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():  # y = B2(B1(x) + x) + (B1(x) + x): the input is added once, not doubled
        h = block.conv1(x)
        torch.testing.assert_close(block(x), block.conv2(h))
    bbcu.load_state_dict(plain.state_dict(), strict=False)  # the same conv names: float checkpoints load
    check_binary(bbcu, torch.rand(1, 3, 6, 6)).raise_if_failed()
    with pytest.raises(bsr_plugin.ConfigError, match="block 'bbcu'"):
        EDSRBin(num_feat=8, num_block=1, block="bbcu", binarize={"shortcut": "none"})
    with pytest.raises(bsr_plugin.ConfigError, match="network_g.block"):
        EDSRBin(num_feat=8, num_block=1, block="bbcu2")


def _distill_model(tmp_path, teacher_ckpt, **distill):
    from basicsr.models import build_model

    opt = {"name": "distill", "model_type": "BinarySRModel", "scale": 2, "num_gpu": 0, "dist": False, "rank": 0,
           "world_size": 1, "is_train": True, "manual_seed": 0,
           "network_g": {"type": "EDSRBin", "num_feat": 8, "num_block": 2, "upscale": 2},
           "path": {"pretrain_network_g": None, "strict_load_g": True, "models": str(tmp_path),
                    "training_states": str(tmp_path)},
           "train": {"ema_decay": 0, "optim_g": {"type": "Adam", "lr": 1e-3},
                     "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5}, "total_iter": 10,
                     "warmup_iter": -1, "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
                     "distill": {"network": {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8,
                                             "num_block": 2, "upscale": 2},
                                 "pretrain": str(teacher_ckpt), **distill}},
           "logger": {"print_freq": 1}}
    return build_model(opt)


def test_distillation_teacher_is_frozen_and_never_saved(tmp_path):
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    import bsr_plugin.integrations.basicsr  # noqa: F401

    teacher = EDSR(3, 3, num_feat=8, num_block=2, upscale=2)
    torch.save({"params": teacher.state_dict()}, tmp_path / "teacher.pth")
    model = _distill_model(tmp_path, tmp_path / "teacher.pth", output_weight=1.0, feature_weight=0.5,
                           features=[r"re:body\.\d+"])
    frozen = {k: v.clone() for k, v in model.distiller.teacher.state_dict().items()}
    assert torch.equal(frozen["conv_first.weight"], teacher.state_dict()["conv_first.weight"])  # weights loaded
    for it in range(1, 3):
        model.feed_data({"lq": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 16, 16)})
        model.optimize_parameters(it)
    assert {"l_pix", "l_distill_out", "l_distill_feat"} <= set(model.log_dict)
    assert model.distiller.names == ["body.0", "body.1"]
    assert not model.distiller.teacher.training
    assert all(not p.requires_grad for p in model.distiller.teacher.parameters())
    assert all(torch.equal(v, model.distiller.teacher.state_dict()[k]) for k, v in frozen.items())  # never trained
    teacher_params = {id(p) for p in model.distiller.teacher.parameters()}
    assert not any(id(p) in teacher_params for g in model.optimizer_g.param_groups for p in g["params"])
    model.save(epoch=0, current_iter=2)
    saved = torch.load(tmp_path / "net_g_2.pth", weights_only=True)["params"]
    assert set(saved) == set(model.net_g.state_dict())  # the student only
    state = torch.load(tmp_path / "2.state", weights_only=True)
    assert len(state["optimizers"]) == 1


def test_distillation_refuses_a_missing_feature_module(tmp_path):
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    import bsr_plugin.integrations.basicsr  # noqa: F401

    torch.save({"params": EDSR(3, 3, num_feat=8, num_block=2, upscale=2).state_dict()}, tmp_path / "t.pth")
    with pytest.raises(bsr_plugin.OptionsError, match="match no module of the student"):
        _distill_model(tmp_path, tmp_path / "t.pth", feature_weight=1.0, features=["re:nothing"])


def test_alignment_sizes_each_branch_to_rho_times_its_input():
    """``align = rho``: calibration makes the binary branch of a layer with its own shortcut
    rho times as large as its input; layers without a shortcut keep the float layer's size;
    the option travels with checkpoints and packed files and changes nothing at inference."""
    from bsr_plugin import calibrate_scales_
    from bsr_plugin.core import branch_ratios

    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.LeakyReLU(0.1),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.Conv2d(8, 3, 3, padding=1))  # ratio: no bias
    x = torch.randn(4, 3, 12, 12) * 30
    for rho in (0.05, 0.1):
        net = bsr_plugin.convert(body, align=rho)
        calibrate_scales_(net, x)
        with branch_ratios(net) as ratios:
            net(x)
        assert set(ratios) == {"1", "3"} and all(r == pytest.approx(rho, rel=1e-4) for r, _ in ratios.values())
    plain = bsr_plugin.convert(body)
    calibrate_scales_(plain, x)
    with branch_ratios(plain) as ratios:
        plain(x)
    assert all(r > 0.3 for r, _ in ratios.values())  # without alignment: the float layer's size
    assert net[1].options.align == 0.1 and "align=0.1" in repr(net[1])
    state = net.state_dict()
    again = bsr_plugin.convert(body, align=0.1)
    again.load_state_dict(state)
    assert torch.equal(again(x), net(x)) and float(again[1].calibrated) > 0  # not calibrated twice


def test_alignment_survives_packed_files(tmp_path):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1))
    net = bsr_plugin.convert(body, align=0.1).eval()
    bsr_plugin.calibrate_scales_(net, torch.randn(2, 3, 8, 8) * 30)
    export_packed(net, tmp_path / "a.bsrpack")
    x = torch.randn(2, 3, 9, 7)
    for engine in ("float", "packed"):
        loaded = load_packed(tmp_path / "a.bsrpack", model=body, engine=engine)
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-5)
    assert load_packed(tmp_path / "a.bsrpack", model=body, engine="float")[1].options.align == 0.1
