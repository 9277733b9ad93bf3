"""Tiny networks shared by the tests."""

from __future__ import annotations

import pytest
import torch

from bsr_plugin import check_binary, is_binary

BASICSR_ARCHS = ("ECBSR", "EDSR", "MSRResNet", "RCAN", "RRDBNet", "SRVGGNetCompact", "SwinIR")


def needs_basicsr() -> None:
    """Skip the calling test where basicsr is not installed (the core tests run without it)."""
    try:
        from bsr_plugin.integrations.basicsr.shims import import_basicsr

        import_basicsr()
    except ImportError as err:
        pytest.skip(f"needs basicsr ({err})")


def basicsr_arch(name: str):
    """One of BasicSR's CPU-capable SR networks (:data:`BASICSR_ARCHS`), built small."""
    needs_basicsr()
    return basicsr_archs()[name]()


def basicsr_archs():
    """Constructors of BasicSR's CPU-capable SR networks, built small."""
    needs_basicsr()
    from basicsr.archs.ecbsr_arch import ECBSR
    from basicsr.archs.edsr_arch import EDSR
    from basicsr.archs.rcan_arch import RCAN
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from basicsr.archs.srresnet_arch import MSRResNet
    from basicsr.archs.srvgg_arch import SRVGGNetCompact
    from basicsr.archs.swinir_arch import SwinIR

    return {
        "EDSR": lambda: EDSR(3, 3, num_feat=16, num_block=2, upscale=2),
        "MSRResNet": lambda: MSRResNet(3, 3, num_feat=16, num_block=2, upscale=4),
        "RCAN": lambda: RCAN(3, 3, num_feat=16, num_group=2, num_block=2, squeeze_factor=4, upscale=2),
        "RRDBNet": lambda: RRDBNet(3, 3, scale=4, num_feat=16, num_block=1, num_grow_ch=8),
        "SRVGGNetCompact": lambda: SRVGGNetCompact(3, 3, num_feat=16, num_conv=4, upscale=4),
        "SwinIR": lambda: SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2],
                                 mlp_ratio=2, upsampler="pixelshuffle"),
        "ECBSR": lambda: ECBSR(3, 3, num_block=2, num_channel=8, with_idt=False, act_type="prelu", scale=2),
    }


def assert_converted_network_works(float_net, net, x, kept):
    """Shape, forward/backward, every parameter gets a gradient, hooks prove binary compute,
    kept layers untouched."""
    y_float = float_net(x)
    net.train()
    y = net(x)
    assert y.shape == y_float.shape
    y.abs().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    check = check_binary(net, x)
    check.raise_if_failed()
    assert check.layers, "nothing was binarized"
    float_modules = dict(float_net.named_modules())
    for name in kept:
        mod = net.get_submodule(name)
        assert type(mod) is type(float_modules[name]) and not is_binary(mod), name
        assert torch.equal(mod.weight, float_modules[name].weight), name


def assert_initialised_from(float_net, net):
    """``net`` (binarized) holds ``float_net``'s weights: kept layers equal, binarized layers
    with the same signs, scales = mean |w| per channel, latent weights inside the prior."""
    from torch import nn

    for name, mod in float_net.named_modules():
        if isinstance(mod, nn.Conv2d):
            new = net.get_submodule(name)
            if is_binary(new):
                assert torch.equal(new.weight >= 0, mod.weight >= 0), name
                torch.testing.assert_close(new.scale, mod.weight.abs().flatten(1).mean(1))
                assert new.prior_a is None or new.weight.abs().max() <= new.prior_a
            else:
                assert torch.equal(new.weight, mod.weight), name
