"""MMCV / mmengine integration: the binarized layers in mmengine's MODELS registry, built by
``build_conv_layer`` and ``ConvModule``, and ``convert`` on networks made of ConvModules."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

pytest.importorskip("mmengine")
mmcv_cnn = pytest.importorskip("mmcv.cnn")

import bsr_plugin  # noqa: E402
from bsr_plugin import BinaryConv2d, BinaryLinear, ConfigError, check_binary, is_binary  # noqa: E402
from bsr_plugin.core.bits import pack_signs  # noqa: E402
from bsr_plugin.integrations import mmcv as mmcv_ext  # noqa: E402

from ..nets import assert_converted_network_works  # noqa: E402

ConvModule = mmcv_cnn.ConvModule
build_conv_layer = mmcv_cnn.build_conv_layer


def _models():
    from mmengine.registry import MODELS

    return MODELS


def _assert_same_layer(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Same class, options, state and output (forward and input gradient)."""
    assert type(a) is type(b)
    assert a.extra_repr() == b.extra_repr()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    assert torch.equal(ya, yb)
    ya.square().mean().backward()
    yb.square().mean().backward()
    assert torch.equal(xa.grad, xb.grad)


def _assert_self_consistent(conv: BinaryConv2d) -> None:
    """The state BinaryConv2d's constructor promises: latent weight in the prior, learned scale
    = mean |w| of the weight it was built from (> 0), sign record up to date."""
    if conv.prior_a is not None:
        assert conv.weight.abs().max() <= conv.prior_a
    if conv.scale is not None:
        assert (conv.scale > 0).all()
    assert torch.equal(conv.sign_ref, pack_signs(conv.weight))


def test_names_are_registered_and_do_not_shadow_mmcv():
    models = _models()
    assert models.get("BinaryConv2d") is BinaryConv2d
    assert models.get("BinaryLinear") is BinaryLinear
    assert models.get("Conv2d") is not BinaryConv2d and models.get("Conv") is not BinaryConv2d


@pytest.mark.parametrize("seed", [0, 7])
def test_build_conv_layer_equals_direct_construction(seed):
    torch.manual_seed(seed)
    built = build_conv_layer(dict(type="BinaryConv2d"), 8, 8, 3, padding=1)
    torch.manual_seed(seed)
    direct = BinaryConv2d(8, 8, 3, padding=1)
    assert type(built) is BinaryConv2d
    _assert_same_layer(built, direct, torch.randn(2, 8, 6, 6))
    built.zero_grad()
    built(torch.randn(2, 8, 6, 6)).mean().backward()
    assert all(p.grad is not None for p in built.parameters())


def test_conv_module_equals_direct_construction():
    """ConvModule does not overwrite the binary conv with kaiming_init: the conv has exactly
    the state of a directly constructed one."""
    torch.manual_seed(3)
    block = ConvModule(8, 16, 3, padding=1, conv_cfg=dict(type="BinaryConv2d", prior_a=1e-3),
                       act_cfg=dict(type="LeakyReLU", negative_slope=0.1))
    torch.manual_seed(3)
    direct = BinaryConv2d(8, 16, 3, padding=1, prior_a=1e-3)
    assert isinstance(block.conv, BinaryConv2d)
    _assert_self_consistent(block.conv)
    _assert_same_layer(block.conv, direct, torch.randn(2, 8, 6, 6))
    x = torch.randn(2, 8, 6, 6)
    block(x).mean().backward()
    assert all(p.grad is not None for p in block.parameters())
    assert check_binary(block, x).raise_if_failed().layers.keys() == {"conv"}


def test_conv_cfg_with_the_class_keeps_its_init():
    """conv_cfg=dict(type=<class>) bypasses the registry; the layer's init is kept too."""
    block = ConvModule(8, 8, 3, padding=1, conv_cfg=dict(type=BinaryConv2d), norm_cfg=dict(type="BN"))
    assert block.conv.bias is None
    _assert_self_consistent(block.conv)


@pytest.mark.parametrize("options", [
    dict(prior_a=1e-3),
    dict(prior_a=None, scale="mean_abs", act_grad="ste"),
    dict(shortcut="none", binarize_act=False),
    dict(scale="none", binarize_weight=False, act_grad="identity"),
])
def test_options_reach_the_layer(options):
    conv = build_conv_layer(dict(type="BinaryConv2d", **options), 8, 8, 3, padding=1)
    via_module = ConvModule(8, 8, 3, padding=1, conv_cfg=dict(type="BinaryConv2d", **options)).conv
    expected = {"prior_a": conv.prior_a, "scale": conv.options.scale, "act_grad": conv.act_grad,
                "shortcut": conv.shortcut, "binarize_act": conv.binarize_act,
                "binarize_weight": conv.binarize_weight}
    for layer in (conv, via_module):
        got = {"prior_a": layer.prior_a, "scale": layer.options.scale, "act_grad": layer.act_grad,
               "shortcut": layer.shortcut, "binarize_act": layer.binarize_act,
               "binarize_weight": layer.binarize_weight}
        assert got == expected
        for key, value in options.items():
            assert got[key] == value, key


def test_conv_arguments_pass_through():
    conv = build_conv_layer(dict(type="BinaryConv2d"), 8, 16, 3, stride=2, padding=2, dilation=2, groups=4,
                            bias=False)
    assert (conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias) == ((2, 2), (2, 2), (2, 2), 4, None)
    assert conv.shortcut == "none"  # the size changes
    assert conv(torch.randn(1, 8, 9, 9)).shape == (1, 16, 5, 5)


def test_bad_option_is_named():
    with pytest.raises(ValueError, match="binarize.act_grad: 'sign' is not one of"):
        build_conv_layer(dict(type="BinaryConv2d", act_grad="sign"), 8, 8, 3)


def test_binary_linear_builds_from_the_registry():
    torch.manual_seed(1)
    built = _models().build(dict(type="BinaryLinear", in_features=8, out_features=8, prior_a=1e-3))
    torch.manual_seed(1)
    _assert_same_layer(built, BinaryLinear(8, 8, prior_a=1e-3), torch.randn(3, 8))


def test_registering_again_is_harmless():
    before = dict(_models().module_dict)
    assert mmcv_ext.register() == mmcv_ext.register() == ["BinaryConv2d", "BinaryLinear"]
    importlib.reload(mmcv_ext)  # registers at import again
    assert dict(_models().module_dict) == before
    assert isinstance(build_conv_layer(dict(type="BinaryConv2d"), 4, 4, 1), BinaryConv2d)


def test_name_taken_by_another_class_is_an_error(monkeypatch):
    class Other(nn.Conv2d):
        pass

    monkeypatch.setitem(_models().module_dict, "BinaryConv2d", Other)
    with pytest.raises(ConfigError, match="already holds 'BinaryConv2d'.*dict\\(type=bsr_plugin.BinaryConv2d\\)"):
        mmcv_ext.register()


# -- convert on networks built from ConvModules --------------------------------------------
class ConvModuleSR(nn.Module):
    """A small SR network of ConvModules (conv + ReLU), with a global skip and a PixelShuffle."""

    def __init__(self, feat: int = 16, blocks: int = 3, scale: int = 2, norm_cfg=None, conv_cfg=None,
                 efficient_conv_bn_eval: bool = False) -> None:
        super().__init__()
        self.head = ConvModule(3, feat, 3, padding=1, act_cfg=None)
        self.body = nn.Sequential(*[ConvModule(feat, feat, 3, padding=1, norm_cfg=norm_cfg, conv_cfg=conv_cfg,
                                               efficient_conv_bn_eval=efficient_conv_bn_eval)
                                    for _ in range(blocks)])
        self.upsample = ConvModule(feat, 3 * scale * scale, 3, padding=1, act_cfg=None)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        feat = self.head(x)
        return self.shuffle(self.upsample(self.body(feat) + feat))


def test_convert_conv_module_network():
    float_net = ConvModuleSR()
    net = bsr_plugin.convert(float_net)
    report = net.bsr_report
    assert report.binarized == ["body.0.conv", "body.1.conv", "body.2.conv"]
    assert report.decision("head.conv").reason == "rule keep: first"
    assert report.decision("upsample.conv").reason == "rule keep: upsampler?"
    # the global skip spans the body: no shortcut is added inside it (default cut_all); with
    # cut_first only the first body conv's shortcut is cut, so the skip's input is not doubled
    assert [report.decision(f"body.{i}.conv").shortcut for i in range(3)] == ["none", "none", "none"]
    first = bsr_plugin.convert(float_net, nested_skips="cut_first").bsr_report
    assert [first.decision(f"body.{i}.conv").shortcut for i in range(3)] == ["none", "identity", "identity"]
    # ConvModule's ReLU feeding the next binarized conv becomes a LeakyReLU, and the report says so;
    # the last one feeds the (float) upsampler through the skip and stays
    assert isinstance(net.body[0].activate, nn.LeakyReLU) and isinstance(net.body[1].activate, nn.LeakyReLU)
    assert type(net.body[2].activate) is nn.ReLU
    assert any("2 ReLUs feeding binarized layers replaced by LeakyReLU(0.1)" in n
               and "body.0.activate, body.1.activate" in n for n in report.notes)
    x = torch.randn(2, 3, 8, 8)
    assert_converted_network_works(float_net, net, x, ["head.conv", "upsample.conv"])
    assert check_binary(net, x).constant_inputs == []
    assert not any(is_binary(m) for m in float_net.modules())


def test_convert_with_options_and_batch_norm():
    float_net = ConvModuleSR(norm_cfg=dict(type="BN"))
    net = bsr_plugin.convert(float_net, prior_a=1e-3, act_grad="ste")
    conv = net.body[1].conv
    assert is_binary(conv) and conv.bias is None and conv.prior_a == 1e-3 and conv.act_grad == "ste"
    _assert_self_consistent(conv)
    assert_converted_network_works(float_net, net, torch.randn(2, 3, 8, 8), ["head.conv", "upsample.conv"])
    check_binary(net.eval(), torch.randn(2, 3, 8, 8)).raise_if_failed()


def test_network_built_with_binary_conv_cfg_is_already_binary():
    net = ConvModuleSR(conv_cfg=dict(type="BinaryConv2d", prior_a=1e-3))
    again = bsr_plugin.convert(net)
    assert {again.bsr_report.decision(f"body.{i}.conv").action for i in range(3)} == {"already binary"}
    assert again.body[0].conv.prior_a == 1e-3
    check_binary(again, torch.randn(2, 3, 8, 8)).raise_if_failed()


def test_efficient_conv_bn_eval_is_switched_off():
    """That ConvModule option folds BN into a float conv on the latent weight in eval mode."""
    float_net = ConvModuleSR(norm_cfg=dict(type="BN"), efficient_conv_bn_eval=True)
    x = torch.randn(2, 3, 8, 8)
    net = bsr_plugin.convert(float_net)  # importing mmcv_ext registered its conversion fixup
    assert any("efficient_conv_bn_eval switched off in 3 ConvModules" in n for n in net.bsr_report.notes)
    check_binary(net.eval(), x).raise_if_failed()
    check_binary(net.train(), x).raise_if_failed()
    for module in net.modules():  # what the fixup prevents: eval mode bypasses the binarized convs
        if hasattr(module, "turn_on_efficient_conv_bn_eval"):
            module.turn_on_efficient_conv_bn_eval(True)
    assert not check_binary(net.eval(), x).ok


def test_mmengine_init_weights_keeps_binary_layers():
    """mmengine's runner calls init_weights() on the model; ConvModule would kaiming-init a conv
    without an init_weights of its own."""
    from mmengine.model import BaseModule

    class Net(BaseModule):
        def __init__(self):
            super().__init__()
            self.a = ConvModule(3, 8, 3, padding=1)
            self.b = ConvModule(8, 8, 3, padding=1)
            self.c = ConvModule(8, 3, 3, padding=1, act_cfg=None)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    net = bsr_plugin.convert(Net())
    assert is_binary(net.b.conv)
    before = {k: v.clone() for k, v in net.b.state_dict().items()}
    net.init_weights()
    after = net.b.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    _assert_self_consistent(net.b.conv)
