"""Banded upsampling (bsr_plugin.deploy.engine.bands): the last ``conv -> PixelShuffle -> conv``
chain of an SR network runs in bands of output rows, gives the whole-image result, and never
makes the shuffled tensor whole; chains that cannot be banded are left alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from bsr_plugin.deploy.engine.bands import BandedUpsample, band_upsamplers, same_halo


class _Tail(nn.Module):
    """conv -> (conv -> shuffle) x steps -> conv, with a global skip read after the tail."""

    def __init__(self, upscale_steps: int = 2, dilation: int = 1, padding_mode: str = "zeros"):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(upscale_steps):
            layers += [nn.Conv2d(8, 32, 3, padding=dilation, dilation=dilation,
                                 padding_mode=padding_mode), nn.PixelShuffle(2)]
        self.upsample = nn.Sequential(*layers)
        self.last = nn.Conv2d(8, 3, 5, padding=2, padding_mode=padding_mode)
        self.scale = 2 ** upscale_steps

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.upsample(self.head(x))) + nn.functional.interpolate(x, scale_factor=self.scale)


class _MaxNumel(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, Tensor):
            self.largest = max(self.largest, out.numel())
        return out


def _banded(net: nn.Module, band_rows: int) -> tuple[nn.Module, list[str]]:
    banded = copy.deepcopy(net)
    return banded, band_upsamplers(banded, band_rows=band_rows)


SIZES = [(1, 3, 13, 11), (2, 3, 8, 9), (1, 3, 16, 16)]


@pytest.mark.parametrize(("size", "padding_mode"), [(s, m) for s in SIZES for m in ("zeros", "reflect")]
                         + [((1, 3, 1, 5), "zeros")])  # one input row (reflect padding needs two)
@pytest.mark.parametrize("band_rows", [2, 6, 128])
def test_banded_equals_whole_image(size, band_rows, padding_mode):
    torch.manual_seed(0)
    net = _Tail(padding_mode=padding_mode).eval()
    banded, names = _banded(net, band_rows)
    assert names == ["upsample.2"]  # the later of the two overlapping chains: it makes the largest tensors
    assert isinstance(banded.last, nn.Identity) and isinstance(banded.upsample[3], nn.Identity)
    x = torch.rand(size)
    with torch.no_grad():
        torch.testing.assert_close(banded(x), net(x), rtol=1e-5, atol=1e-6)


def test_dilated_convs_and_channels_last():
    torch.manual_seed(1)
    net = _Tail(upscale_steps=1, dilation=2).eval()
    banded, names = _banded(net, 4)
    assert names == ["upsample.0"]
    x = torch.rand(2, 3, 9, 7)
    with torch.no_grad():
        ref = net(x)
        banded = banded.to(memory_format=torch.channels_last)
        torch.testing.assert_close(banded(x.contiguous(memory_format=torch.channels_last)), ref,
                                   rtol=1e-5, atol=1e-6)


def test_the_shuffled_tensor_is_never_made_whole():
    torch.manual_seed(2)
    net = _Tail(upscale_steps=1).eval()
    banded, _ = _banded(net, 8)
    x = torch.rand(1, 3, 64, 64)
    whole, bands = _MaxNumel(), _MaxNumel()
    with torch.no_grad():
        with whole:
            net(x)
        with bands:
            banded(x)
    shuffled = 8 * 128 * 128  # 8 channels at the output size
    assert whole.largest >= shuffled
    assert bands.largest < shuffled / 2  # the final 3-channel output and one band of the rest


def test_chains_that_cannot_be_banded_are_left_alone():
    torch.manual_seed(3)
    strided = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, stride=2), nn.PixelShuffle(2),
                            nn.Conv2d(8, 3, 3, padding=1)).eval()  # a stride-2 conv does not keep the size
    assert band_upsamplers(strided) == []
    unpadded = nn.Sequential(nn.Conv2d(3, 32, 3), nn.PixelShuffle(2), nn.Conv2d(8, 3, 3, padding=1)).eval()
    assert band_upsamplers(unpadded) == []
    assert band_upsamplers(nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.PixelShuffle(2),
                                         nn.Conv2d(8, 3, 3, padding=1)).eval()) == ["0"]

    class ReadTwice(_Tail):  # the shuffled tensor is read by something else too
        def forward(self, x: Tensor) -> Tensor:
            y = self.upsample(self.head(x))
            return self.last(y) + y.mean()

    assert band_upsamplers(ReadTwice(upscale_steps=1).eval()) == []


def test_bad_arguments_are_refused():
    conv = nn.Conv2d(4, 16, 3, padding=1)
    with pytest.raises(ValueError, match="multiple of the upscale factor"):
        BandedUpsample(conv, nn.Conv2d(4, 3, 3, padding=1), upscale=2, band_rows=3)
    with pytest.raises(ValueError, match="size-keeping stride-1 convs"):
        BandedUpsample(conv, nn.Conv2d(4, 3, 3, padding=0), upscale=2)
    assert same_halo(nn.Conv2d(4, 4, 3, padding="same")) is None and same_halo(nn.ReLU()) is None
    assert same_halo(nn.Conv2d(4, 4, (5, 3), padding=(2, 1))) == 2


def test_per_layer_time_of_a_banded_conv_sums_its_bands():
    from bsr_plugin.deploy.engine.bench import per_layer_times

    torch.manual_seed(4)
    banded, _ = _banded(_Tail(upscale_steps=1).eval(), 4)
    calls = []
    banded.upsample[0].first.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        times = per_layer_times(banded, torch.rand(1, 3, 10, 6), ["upsample.0"], repeats=2)
    assert len(calls) == 3 * 5  # warm-up + 2 passes, 20 output rows in bands of 4
    assert list(times) == ["upsample.0"] and times["upsample.0"] > 0
