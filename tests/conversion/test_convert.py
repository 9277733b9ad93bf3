"""convert(): any float network -> binarized network with identity shortcuts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bsr_plugin
from bsr_plugin import BinaryConv2d, ConfigError, check_binary, convert, is_binary

from ..nets import BASICSR_ARCHS, assert_converted_network_works, assert_initialised_from, basicsr_arch, needs_basicsr


@pytest.mark.parametrize("arch", BASICSR_ARCHS)
def test_convert_basicsr_networks(arch):
    float_net = basicsr_arch(arch)
    net = convert(float_net)
    report = net.bsr_report
    keep_rules = ("rule keep: first", "rule keep: last", "rule keep: upsampler?")
    kept = [d.name for d in report.layers if d.reason in keep_rules]
    assert report.layers[0].name in kept and report.layers[-1].name in kept  # first and last conv
    assert_converted_network_works(float_net, net, torch.rand(2, 3, 12, 12), kept)
    # the float network is untouched
    assert not any(is_binary(m) for m in float_net.modules())


def test_upsampler_and_first_last_found_in_edsr():
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    net = convert(EDSR(3, 3, num_feat=8, num_block=2, upscale=4))
    reasons = {d.name: d.reason for d in net.bsr_report.layers}
    assert reasons["conv_first"] == "rule keep: first"
    assert reasons["conv_last"] == "rule keep: last"
    assert reasons["upsample.0"] == reasons["upsample.2"] == "rule keep: upsampler?"
    assert net.bsr_report.binarized == ["body.0.conv1", "body.0.conv2", "body.1.conv1", "body.1.conv2",
                                        "conv_after_body"]


def test_binarize_upsampler_rule_uses_repeat_shortcut():
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    net = convert(EDSR(3, 3, num_feat=8, num_block=1, upscale=2),
                  rules=list(bsr_plugin.DEFAULT_RULES) + [("binarize", "upsampler")])
    assert isinstance(net.upsample[0], BinaryConv2d) and net.upsample[0].shortcut == "repeat"


def test_no_doubling_through_nested_skips():
    """With every binary branch zeroed, EDSR's body is exactly the identity: the converter did
    not stack a shortcut on top of a block's own skip (which would give 2**16 over 16 blocks)."""
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    net = convert(EDSR(3, 3, num_feat=8, num_block=16, upscale=2))
    for layer in net.modules():
        if is_binary(layer):
            with torch.no_grad():
                layer.scale.zero_()
                layer.bias.zero_()
    feats = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(net.body(feats), feats)
    torch.testing.assert_close(net.conv_after_body(net.body(feats)) + feats, feats)


def test_relu_before_binarized_layer_is_replaced():
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    net = convert(EDSR(3, 3, num_feat=8, num_block=2, upscale=2))
    assert isinstance(net.body[0].relu, nn.LeakyReLU)
    kept = convert(EDSR(3, 3, num_feat=8, num_block=2, upscale=2), relu="keep")
    assert isinstance(kept.body[0].relu, nn.ReLU)
    assert "body.0.conv2" in check_binary(kept, torch.rand(1, 3, 8, 8)).constant_inputs
    assert any("constant +1" in n for n in kept.bsr_report.warnings)


@pytest.mark.slow
def test_timm_cnn():
    timm = pytest.importorskip("timm")
    float_net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    net = convert(float_net)
    assert net.bsr_report.decision("conv1").reason == "rule keep: first"
    assert net.bsr_report.decision("fc").action == "kept"
    assert net.bsr_report.decision("layer4.1.conv2").action == "binarized"
    assert_converted_network_works(float_net, net, torch.randn(2, 3, 32, 32), ["conv1"])


def test_plain_sequential():
    float_net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16), nn.Conv2d(16, 16, 3, padding=1),
                              nn.PReLU(16), nn.Conv2d(16, 16, 3, padding=1), nn.PReLU(16),
                              nn.Conv2d(16, 3 * 4, 3, padding=1), nn.PixelShuffle(2))
    net = convert(float_net)
    assert net.bsr_report.binarized == ["2", "4"]
    assert net.bsr_report.decision("6").reason == "rule keep: upsampler?"  # last and upsampler: the later rule wins
    assert_converted_network_works(float_net, net, torch.randn(2, 3, 8, 8), ["0", "6"])


def test_linear_layers_of_swinir_when_asked():
    float_net = basicsr_arch("SwinIR")
    net = convert(float_net, rules=list(bsr_plugin.DEFAULT_RULES) + [("binarize", "type:Linear")])
    names = net.bsr_report.binarized
    assert any(n.endswith("attn.qkv") for n in names) and any(n.endswith("mlp.fc2") for n in names)
    assert_converted_network_works(float_net, net, torch.rand(1, 3, 8, 8), ["conv_first", "conv_last"])


def test_convert_twice_never_double_wraps():
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    once = convert(EDSR(3, 3, num_feat=8, num_block=2, upscale=2))
    twice = convert(once)
    assert [type(m) for m in once.modules()] == [type(m) for m in twice.modules()]
    assert {d.action for d in twice.bsr_report.layers if d.name in once.bsr_report.binarized} == {"already binary"}
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(once.eval()(x), twice.eval()(x))


def test_inplace_and_copy():
    float_net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 3))
    copied = convert(float_net)
    assert copied is not float_net and not is_binary(float_net[1])
    same = convert(float_net, inplace=True)
    assert same is float_net and is_binary(float_net[1])


def test_float_checkpoint_loads_into_converted_network():
    make = lambda: basicsr_arch("EDSR")  # noqa: E731
    float_net = make()
    net = convert(make())  # other random init
    net.load_state_dict(float_net.state_dict())
    assert_initialised_from(float_net, net)


def test_converted_checkpoint_round_trip(tmp_path):
    make = lambda: basicsr_arch("RCAN")  # noqa: E731
    net = convert(make())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.rand(2, 3, 8, 8)).mean().backward()
    opt.step()
    bsr_plugin.project_to_prior_(net)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    fresh = convert(make())
    fresh.load_state_dict(torch.load(tmp_path / "net.pth"))
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(net.eval()(x), fresh.eval()(x))


def test_report_lists_every_layer_with_reason():
    float_net = basicsr_arch("MSRResNet")
    net = convert(float_net)
    names = [n for n, m in float_net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [d.name for d in net.bsr_report.layers] == names
    assert all(d.reason for d in net.bsr_report.layers)
    assert "conv_first" in str(net.bsr_report)
    assert net.bsr_config == bsr_plugin.BinarizeConfig()


# -- bad input ---------------------------------------------------------------------------
def _small():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ConvTranspose2d(8, 8, 2, stride=2), nn.Conv2d(8, 3, 3, padding=1))


def test_unknown_keyword():
    with pytest.raises(ConfigError, match="unknown key 'prior'"):
        convert(_small(), prior=1e-2)


def test_rule_that_matches_nothing():
    with pytest.raises(ConfigError, match=r"rule \{keep: body\.\*\} matches no conv/linear layer"):
        convert(_small(), rules=[("binarize", "type:Conv2d"), ("keep", "body.*")])
    convert(_small(), rules=[("binarize", "type:Conv2d"), ("keep", "body.*?")])  # optional: fine


@pytest.mark.parametrize("a", [0, -1e-3])
def test_non_positive_prior(a):
    with pytest.raises(ConfigError, match="prior_a must be a number > 0"):
        convert(_small(), prior_a=a)


def test_unsupported_layer_named_explicitly():
    with pytest.raises(ConfigError, match=r"ConvTranspose2d.*cannot be binarized.*Conv2d, Linear"):
        convert(_small(), rules=[("binarize", "type:ConvTranspose2d")])
    with pytest.raises(ConfigError, match=r"2 \(ConvTranspose2d\)"):
        convert(_small(), rules=[("binarize", "2")])


def test_non_module_argument():
    with pytest.raises(ConfigError, match="needs a torch.nn.Module, got OrderedDict.*state dict"):
        convert(_small().state_dict())


def test_probe_failure_asks_for_example_input():
    class NeedsTwo(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x, y):
            return self.conv(x) + y

    with pytest.raises(bsr_plugin.ConfigError, match="example_input"):
        convert(NeedsTwo())
    net = convert(NeedsTwo(), example_input=(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 6, 6)),
                  rules=[("binarize", "conv")])
    assert is_binary(net.conv)


def test_deepcopy_of_converted_network():
    net = convert(basicsr_arch("EDSR"))
    clone = copy.deepcopy(net)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(net.eval()(x), clone.eval()(x))


def test_parallel_stems_are_all_first():
    """RepVGG-like stems: every conv that reads the image directly stays full precision."""

    class TwoStems(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 1)
            self.body = nn.Conv2d(8, 8, 3, padding=1)
            self.tail = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            h = self.a(x) + self.b(x)
            return self.tail(self.body(h))

    net = convert(TwoStems())
    assert net.bsr_report.decision("a").reason == net.bsr_report.decision("b").reason == "rule keep: first"
    assert net.bsr_report.binarized == ["body"]


@pytest.mark.parametrize("policy, expected", [
    ("cut_all", ["none", "none"]), ("cut_first", ["none", "identity"]), ("cut_last", ["identity", "none"]),
    ("keep", ["identity", "identity"])])
def test_nested_skip_policies_on_an_edsr_block(policy, expected):
    needs_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    net = convert(EDSR(3, 3, num_feat=8, num_block=1, upscale=2), nested_skips=policy,
                  rules=list(bsr_plugin.DEFAULT_RULES) + [("keep", "conv_after_body")])
    assert [net.bsr_report.decision(f"body.0.conv{i}").shortcut for i in (1, 2)] == expected


def test_shortcuts_stay_where_the_network_has_no_skip():
    net = convert(basicsr_arch("SRVGGNetCompact"))
    assert {net.bsr_report.decision(n).shortcut for n in net.bsr_report.binarized} == {"identity"}
