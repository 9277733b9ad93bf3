"""BinaryConv2d / BinaryLinear: conv arguments pass through, shortcuts, exact padding,
float checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bsr_plugin import BinaryConv2d, BinaryLinear
from bsr_plugin.core.bits import pack_signs, unpack_signs

CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=2),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="replicate"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="circular"),
    dict(in_channels=4, out_channels=4, kernel_size=(1, 3), padding="same", bias=False),
]


@pytest.mark.parametrize("kw", CONV_CASES)
def test_binarization_off_equals_conv2d(kw):
    conv = nn.Conv2d(**kw)
    b = BinaryConv2d.from_float(conv, binarize_act=False, binarize_weight=False, shortcut="none")
    x = torch.randn(2, 4, 9, 11)
    torch.testing.assert_close(b(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", CONV_CASES)
def test_binary_conv_matches_reference(kw):
    """With +1 padding the layer computes conv(sign(pad(x)), alpha * sign(w))."""
    conv = nn.Conv2d(**kw)
    b = BinaryConv2d.from_float(conv, shortcut="none")
    x = torch.randn(2, 4, 9, 11)
    pads = conv._reversed_padding_repeated_twice
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = nn.functional.pad(x, pads, mode=mode) if any(pads) else x
    xb = torch.where(xp >= 0, 1.0, -1.0)
    wb = torch.where(b.weight >= 0, 1.0, -1.0) * b.scale.view(-1, 1, 1, 1)
    ref = nn.functional.conv2d(xb, wb, b.bias, conv.stride, 0, conv.dilation, conv.groups)
    torch.testing.assert_close(b(x), ref)


def test_shortcut_modes():
    x = torch.randn(2, 4, 5, 5)
    assert BinaryConv2d(4, 4, 3, padding=1).shortcut == "identity"
    assert BinaryConv2d(4, 8, 3, padding=1).shortcut == "repeat"
    assert BinaryConv2d(8, 4, 3, padding=1).shortcut == "mean"
    assert BinaryConv2d(4, 6, 3, padding=1).shortcut == "none"
    assert BinaryConv2d(4, 4, 3, padding=1, stride=2).shortcut == "none"
    assert BinaryConv2d(4, 4, 3, padding=0).shortcut == "none"
    with pytest.raises(ValueError, match="does not fit"):
        BinaryConv2d(4, 6, 3, padding=1, shortcut="repeat")
    # repeat followed by PixelShuffle is the nearest upsampling of x
    up = BinaryConv2d(4, 16, 3, padding=1, shortcut="repeat")
    with torch.no_grad():
        up.scale.zero_()
        up.bias.zero_()
    y = nn.PixelShuffle(2)(up(x))
    torch.testing.assert_close(y, nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    down = BinaryConv2d(8, 4, 3, padding=1)
    with torch.no_grad():
        down.scale.zero_()
        down.bias.zero_()
    x8 = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(down(x8), x8.view(2, 4, 2, 5, 5).mean(2))


def test_linear_binary_and_off():
    lin = nn.Linear(6, 12)
    off = BinaryLinear.from_float(lin, binarize_act=False, binarize_weight=False, shortcut="none")
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(off(x), lin(x))
    b = BinaryLinear.from_float(lin)
    assert b.shortcut == "repeat"
    wb = torch.where(b.weight >= 0, 1.0, -1.0) * b.scale.view(-1, 1)
    ref = nn.functional.linear(torch.where(x >= 0, 1.0, -1.0), wb, b.bias) + x.repeat_interleave(2, -1)
    torch.testing.assert_close(b(x), ref)


def test_from_float_rescales_into_prior_and_keeps_signs():
    conv = nn.Conv2d(4, 6, 3)
    b = BinaryConv2d.from_float(conv, prior_a=1e-3)
    assert b.weight.abs().max() <= 1e-3 + 1e-12
    assert torch.equal(b.weight >= 0, conv.weight >= 0)
    torch.testing.assert_close(b.scale, conv.weight.abs().flatten(1).mean(1))
    torch.testing.assert_close(b.weight.abs().flatten(1).amax(1), torch.full((6,), 1e-3))
    # the real weight a learned-scale latent stands for is the float weight
    torch.testing.assert_close(b.real_weight(), conv.weight)


def test_float_state_dict_initialises_binary_layer():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    b = BinaryConv2d(4, 4, 3, padding=1)
    b.load_state_dict(conv.state_dict())
    ref = BinaryConv2d.from_float(conv)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)


def test_binary_state_dict_round_trip():
    b = BinaryConv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        b.weight.mul_(0.5)
        b.scale.add_(1.0)
    c = BinaryConv2d(4, 4, 3, padding=1)
    c.load_state_dict(b.state_dict())
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(b(x), c(x))


def test_bad_layer_options():
    """Layers, BinarizeConfig and LayerOptions validate in one place: the same mistake is the
    same ConfigError with the same words, whoever makes it."""
    from bsr_plugin import BinarizeConfig, ConfigError

    for bad, match in (({"prior_a": 0}, "prior_a must be a number > 0"), ({"scale": "max"}, "binarize.scale: 'max'"),
                       ({"act_grad": "tanh"}, "binarize.act_grad: 'tanh'"), ({"shortcut": "sum"}, "binarize.shortcut"),
                       ({"rsign": "yes"}, "binarize.rsign must be true or false")):
        messages = []
        for make, args in ((BinaryConv2d, (4, 4, 3)), (BinaryLinear, (4, 4)), (BinarizeConfig, ())):
            with pytest.raises(ConfigError, match=match) as err:
                make(*args, **bad)
            messages.append(str(err.value))
        assert len(set(messages)) == 1, messages
    with pytest.raises(ConfigError, match="BinaryConv2d: unknown key 'prior'"):
        BinaryConv2d(4, 4, 3, prior=0.1)


def test_pack_round_trip():
    x = torch.randn(3, 5, 7)
    packed = pack_signs(x)
    assert packed.dtype == torch.uint8 and packed.numel() == (x.numel() + 7) // 8
    assert torch.equal(unpack_signs(packed, x.shape), torch.where(x >= 0, 1.0, -1.0))
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_signs(packed[:-1], x.shape)
