"""timm integration: convert on timm CNN families built small, create_binarized_model, and the
opt-in names in timm's registry. Never downloads: pretrained=False, HF_HUB_OFFLINE=1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from bsr_plugin import BinarizeConfig, ConfigError, check_binary, convert, is_binary  # noqa: E402
from bsr_plugin.integrations.timm import create_binarized_model, probe_input, register_binarized_model  # noqa: E402

from ..nets import assert_converted_network_works  # noqa: E402

# family: (model name, first conv, classifier, ReLUs that must have been replaced)
FAMILIES = {
    "resnet": ("resnet10t", "conv1.0", "fc", ["act1", "layer1.0.act1"]),
    "mobilenet": ("mobilenetv3_small_050", "conv_stem", "classifier", ["blocks.0.0.bn1.act", "blocks.1.0.bn2.act"]),
    "convnext": ("convnext_atto", "stem.0", "head.fc", []),
    "regnet": ("regnetx_002", "stem.conv", "head.fc", ["stem.bn.act"]),
}


def _conv_linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_convert_timm_family(family):
    name, first, classifier, relus = FAMILIES[family]
    float_net = timm.create_model(name, pretrained=False, num_classes=4)
    net = convert(float_net)
    report = net.bsr_report
    convs = [n for n, m in float_net.named_modules() if isinstance(m, nn.Conv2d)]
    # the report names every conv/linear layer: all convs binarized but the stem, classifier kept
    assert [d.name for d in report.layers] == _conv_linear_names(float_net)
    assert report.decision(first).reason == "rule keep: first"
    assert report.decision(classifier).action == "kept" and report.decision(classifier).reason == "rule keep: last"
    assert report.kept == [first, classifier]
    assert report.binarized == [n for n in convs if n != first]
    assert {d.shortcut for d in report.layers if d.action == "binarized"} <= {"identity", "repeat", "mean", "none"}
    replaced = " ".join(n for n in report.notes if "ReLUs feeding binarized layers replaced" in n)
    for relu in relus:
        assert isinstance(net.get_submodule(relu), nn.LeakyReLU), relu
    if relus:
        assert relus[0] in replaced
    assert not any("constant +1" in n for n in report.warnings)
    x = torch.randn(2, 3, 32, 32)
    assert_converted_network_works(float_net, net, x, [first, classifier])
    check_binary(net.eval(), x).raise_if_failed()
    assert net(x).shape == (2, 4)


def test_create_binarized_model_equals_convert_of_timm_model():
    torch.manual_seed(5)
    net = create_binarized_model("resnet10t", num_classes=3)
    torch.manual_seed(5)
    ref = convert(timm.create_model("resnet10t", pretrained=False, num_classes=3))
    assert type(net) is type(ref) and net.bsr_report.to_dict() == ref.bsr_report.to_dict()
    sd, ref_sd = net.state_dict(), ref.state_dict()
    assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    assert net.num_classes == 3 and callable(net.forward_features)  # still the timm class


def test_create_binarized_model_passes_config_and_timm_options():
    net = create_binarized_model("mobilenetv3_small_050", {"prior_a": 1e-3, "act_grad": "ste"}, num_classes=2,
                                 in_chans=1)
    layer = net.get_submodule(net.bsr_report.binarized[0])
    assert layer.prior_a == 1e-3 and layer.act_grad == "ste" and net.bsr_config.prior_a == 1e-3
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_binarize_option_given_to_timm_is_named():
    with pytest.raises(ConfigError, match=r"'prior_a' is a binarize option.*binarize=\{'prior_a': ...\}"):
        create_binarized_model("resnet10t", prior_a=1e-3)


def test_probe_uses_a_patch_embedding_models_image_size():
    kw = dict(img_size=48, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
    assert probe_input(vit).shape == (2, 3, 48, 48)
    net = create_binarized_model("vit_tiny_patch16_224", {"rules": [{"binarize": "type:Linear"}, {"keep": "first"},
                                                                    {"keep": "last"}]}, **kw)
    assert "blocks.0.attn.qkv" in net.bsr_report.binarized and net.bsr_report.kept == ["patch_embed.proj", "head"]
    check_binary(net, torch.randn(1, 3, 48, 48)).raise_if_failed()


def test_opt_in_name_in_timm_registry():
    name = register_binarized_model("resnet10t", {"prior_a": 1e-3}, prefix="bsrtest_")
    assert name == "bsrtest_resnet10t" and timm.is_model(name) and name in timm.list_models("bsrtest_*")
    assert register_binarized_model("resnet10t", BinarizeConfig(prior_a=1e-3), prefix="bsrtest_") == name
    torch.manual_seed(2)
    net = timm.create_model(name, num_classes=3)
    torch.manual_seed(2)
    ref = create_binarized_model("resnet10t", {"prior_a": 1e-3}, num_classes=3)
    assert net.bsr_config.prior_a == 1e-3 and net.bsr_report.to_dict() == ref.bsr_report.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    assert not timm.is_model_pretrained(name)  # no binarized weights are advertised
    with pytest.raises(ValueError, match="already registered with another binarize config"):
        register_binarized_model("resnet10t", {"prior_a": 1e-2}, prefix="bsrtest_")


def test_opt_in_registration_rejects_bad_names():
    with pytest.raises(ValueError, match="not a timm model name"):
        register_binarized_model("resnet10t.gluon_in1k", prefix="bsrtest_")
    with pytest.raises(ValueError, match="not a timm model name"):
        register_binarized_model("no_such_net")
    with pytest.raises(ValueError, match="timm already has a model named 'seresnet18'"):
        register_binarized_model("resnet18", prefix="se")
    with pytest.raises(ValueError, match="prefix must be non-empty"):
        register_binarized_model("resnet18", prefix="")
    assert not timm.is_model("bsr_no_such_net")


def test_relu_behind_pooling_or_identity_is_replaced():
    """Found on timm ResNets: a ReLU reaching a binarized conv through a max-pool (the stem) or
    an nn.Identity placeholder (timm's ``aa`` / ``drop_block``) made its 1-bit input constant +1."""
    float_net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Identity(),
                              nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1))
    net = convert(float_net)
    assert net.bsr_report.binarized == ["3", "6"]
    assert isinstance(net[1], nn.LeakyReLU) and isinstance(net[4], nn.LeakyReLU)
    x = torch.randn(2, 3, 8, 8)
    assert check_binary(net, x).constant_inputs == []
    assert_converted_network_works(float_net, net, x, ["0", "7"])
    assert not any(is_binary(m) for m in float_net.modules())
