"""The compact uniform prior: projection, loss, flip ratio."""

from __future__ import annotations

import math

import torch
from torch import nn

import bsr_plugin
from bsr_plugin import UniformPriorLoss, flip_ratios, prior_penalty, project_to_prior_


def _net(a=1e-2):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1))
    return bsr_plugin.convert(net, prior_a=a)


def test_projection_keeps_weights_in_support_during_training():
    net = _net(1e-3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(2, 3, 8, 8)).pow(2).mean().backward()
        opt.step()
        assert project_to_prior_(net) == 1
        w = net[1].weight
        assert w.abs().max() <= 1e-3


def test_prior_loss_zero_inside_grows_outside():
    net = _net(1e-2)
    assert prior_penalty(net).item() == 0.0
    loss = UniformPriorLoss(loss_weight=2.0)
    values = []
    for excess in (0.01, 0.02, 0.04):
        with torch.no_grad():
            net[1].weight.fill_(1e-2 + excess)
        values.append(loss(net).item())
    assert values[0] > 0
    assert values[0] < values[1] < values[2]
    assert math.isclose(values[0], 2.0 * 0.01 ** 2, rel_tol=1e-4)
    # gradient points back into the support
    net[1].weight.grad = None
    loss(net).backward()
    assert (net[1].weight.grad > 0).all()


def test_wasserstein_term_prefers_uniform_weights():
    net = _net(1.0)
    w = net[1].weight
    with torch.no_grad():
        w.copy_(torch.linspace(-1, 1, w.numel())[torch.randperm(w.numel())].view_as(w))
    uniform = prior_penalty(net, wasserstein=1.0).item()
    with torch.no_grad():
        w.mul_(0.1)
    peaked = prior_penalty(net, wasserstein=1.0).item()
    assert uniform < 1e-4 < peaked


def test_flip_ratio_counts_changed_signs():
    net = _net()
    layer = net[1]
    assert flip_ratios(net) == {"1": 0.0}
    with torch.no_grad():
        flat = layer.weight.view(-1)
        flat[:10] = -flat[:10]
    assert math.isclose(flip_ratios(net)["1"], 10 / flat.numel())
    assert flip_ratios(net)["1"] == 0.0  # re-armed at the reading
    assert "sign_ref" in dict(layer.named_buffers())


def test_uniform_weights_have_smaller_binarization_error():
    """method.md: with alpha = E|w| the relative error of alpha*sign(w) is 1/4 for uniform,
    1 - 2/pi for Gaussian, 1/2 for Laplacian weights."""
    g = torch.Generator().manual_seed(0)
    n = 2_000_000
    samples = {
        "uniform": torch.rand(n, generator=g) * 2 - 1,
        "gaussian": torch.randn(n, generator=g),
        "laplace": torch.distributions.Laplace(0.0, 1.0).sample((n,)),
    }
    expected = {"uniform": 0.25, "gaussian": 1 - 2 / math.pi, "laplace": 0.5}
    for name, w in samples.items():
        alpha = w.abs().mean()
        err = ((w - alpha * torch.where(w >= 0, 1.0, -1.0)) ** 2).mean() / (w ** 2).mean()
        assert math.isclose(err.item(), expected[name], abs_tol=5e-3), name


def test_calibration_folds_input_magnitude_into_scale_once():
    float_net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                              nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1))
    net = bsr_plugin.convert(float_net)
    x = torch.rand(2, 3, 8, 8) * 100
    before = {n: m.scale.clone() for n, m in bsr_plugin.binary_layers(net)}
    seen = {}

    def record(mod, args, name):
        seen.setdefault(name, args[0].abs().mean())

    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: record(mod, a, n))
             for n, m in bsr_plugin.binary_layers(net)]
    assert bsr_plugin.calibrate_scales_(net, x) == ["1", "2"]
    for h in hooks:
        h.remove()
    for n, m in bsr_plugin.binary_layers(net):
        # each layer's input was recorded after the layers before it were calibrated
        torch.testing.assert_close(m.scale, before[n] * seen[n])
        torch.testing.assert_close(m.calibrated, seen[n])  # the factor, kept for a forced recalibration
    assert bsr_plugin.calibrate_scales_(net, x) == []  # once
    calibrated = {n: m.scale.clone() for n, m in bsr_plugin.binary_layers(net)}
    assert bsr_plugin.calibrate_scales_(net, x, force=True) == ["1", "2"]  # from the uncalibrated scale:
    for n, m in bsr_plugin.binary_layers(net):  # idempotent, not multiplied again
        torch.testing.assert_close(m.scale, calibrated[n])
    net.load_state_dict(float_net.state_dict())  # float weights: calibrate again
    assert all(float(m.calibrated) == 0 for _, m in bsr_plugin.binary_layers(net))
    trained = bsr_plugin.convert(float_net)
    bsr_plugin.calibrate_scales_(trained, x)
    net.load_state_dict(trained.state_dict())  # a binary checkpoint keeps its calibration
    assert bsr_plugin.calibrate_scales_(net, x) == []
