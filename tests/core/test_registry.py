"""The layer-type table in every direction, and the one module-replacement helper: a third
binarized layer type registered by a user runs through convert, export, load and the engine's
float fallback without any change to the package."""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bsr_plugin
from bsr_plugin import ConfigError
from bsr_plugin.core.layers import BinaryLayerMixin
from bsr_plugin.core.registry import (
    form_of,
    input_channels,
    is_binary,
    layer_channels,
    register_binary_layer,
    register_form,
)
from bsr_plugin.core.replace import replace_modules


class BinaryConv1d(BinaryLayerMixin, nn.Conv1d):
    """A user's binarized Conv1d (zero padding only): sign(pad(x)) conv alpha*sign(w)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True, **options: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self._init_binary(options, in_channels, out_channels, 2 * padding == kernel_size - 1)

    @classmethod
    def from_float(cls, conv: nn.Conv1d, **options: Any) -> BinaryConv1d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.padding[0],
                  conv.bias is not None, **options)
        new.init_from_float_(conv.weight.detach())
        if conv.bias is not None:
            with torch.no_grad():
                new.bias.copy_(conv.bias)
        return new

    def branch(self, x: Tensor, bias: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tensor:
        w = self.effective_weight() if weight is None else weight
        xb = F.pad(self._binary_input(x), (self.padding[0],) * 2, value=1.0) if self.binarize_act else x
        return F.conv1d(xb, w, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self._finish(self.branch(x, self._branch_bias()), x, self.in_channels, self.out_channels)


class Net1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv1d(2, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv1d(8, 8, 3, padding=1))
        self.tail = nn.Conv1d(8, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.body(self.head(x)))


@pytest.fixture(scope="module", autouse=True)
def conv1d_registered():
    """Conv1d binarizable for this module only (the table is process-wide; other tests expect
    convert() to refuse Conv1d)."""
    from bsr_plugin.core import registry

    saved = dict(registry._BY_FLOAT), dict(registry._BY_BINARY)
    register_binary_layer(nn.Conv1d, BinaryConv1d)
    yield
    registry._BY_FLOAT.clear()
    registry._BY_FLOAT.update(saved[0])
    registry._BY_BINARY.clear()
    registry._BY_BINARY.update(saved[1])


def test_third_layer_type_through_convert_export_load_and_engine_fallback(tmp_path, caplog):
    torch.manual_seed(0)
    float_net = Net1d()
    net = bsr_plugin.convert(float_net, example_input=torch.randn(2, 2, 16),
                             rules=[{"binarize": "type:Conv1d"}, {"keep": "first"}, {"keep": "last"}])
    kinds = {n: type(m).__name__ for n, m in net.named_modules() if isinstance(m, nn.Conv1d)}
    assert kinds == {"head": "Conv1d", "body.0": "BinaryConv1d", "body.2": "BinaryConv1d", "tail": "Conv1d"}
    assert net.body[0].shortcut == "identity"  # read through the table, not assumed Conv2d/Linear
    x = torch.randn(3, 2, 16)
    net.eval()
    expected = net(x)
    info = bsr_plugin.export_packed(net, tmp_path / "net1d.bsrpack")
    assert info.binary_layers == 2
    loaded = bsr_plugin.load_packed(tmp_path / "net1d.bsrpack", model=float_net, engine="float")
    assert torch.equal(loaded(x), expected)
    with caplog.at_level(logging.WARNING):
        on_engine = bsr_plugin.load_packed(tmp_path / "net1d.bsrpack", model=float_net, engine="packed")
    assert "keeps its float simulation" in caplog.text and "has no packed module" in caplog.text
    assert torch.equal(on_engine(x.contiguous()), expected)
    assert is_binary(on_engine.body[0]) and form_of(on_engine.body[0], "packed") is None


def test_table_reads_channels_and_input_channels():
    net = bsr_plugin.convert(Net1d(), example_input=torch.randn(2, 2, 16),
                             rules=[{"binarize": "type:Conv1d"}, {"keep": "first"}])
    assert layer_channels(net.body[0]) == (8, 8) and layer_channels(nn.Linear(5, 7)) == (5, 7)
    assert input_channels(net) == 2 and input_channels(nn.Sequential(nn.ReLU())) == 3


def test_forms_must_be_known_and_types_registered():
    with pytest.raises(ConfigError, match="unknown layer form"):
        register_form(BinaryConv1d, "gpu", nn.Identity)
    with pytest.raises(ConfigError, match="not a registered binarized layer type"):
        register_form(nn.ReLU, "packed", nn.Identity)
    with pytest.raises(ConfigError, match="already binarized as BinaryConv1d"):
        register_binary_layer(nn.Conv1d, bsr_plugin.BinaryConv2d)


def test_replace_modules_walks_decides_replaces_shared_once():
    shared = nn.ReLU()
    net = nn.Sequential(nn.Conv2d(1, 1, 1), shared, nn.Sequential(shared, nn.Conv2d(1, 1, 1)))
    seen: list[str] = []

    def decide(name: str, module: nn.Module) -> Optional[nn.Module]:
        seen.append(name)
        return nn.Tanh() if isinstance(module, nn.ReLU) else None

    out = replace_modules(net, decide)
    assert out is net and seen.count("1") == 1 and "2.0" not in seen  # decided once, at its first name
    assert isinstance(net[1], nn.Tanh) and net[2][0] is net[1]  # replaced everywhere by the same module
    root = replace_modules(nn.ReLU(), lambda name, m: nn.Identity() if name == "" else None)
    assert isinstance(root, nn.Identity)
