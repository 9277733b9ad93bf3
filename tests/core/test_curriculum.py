"""Pixel-wise curriculum L1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bsr_plugin import PixelCurriculumL1


def _pair(n=2, c=3, h=16, w=16):
    torch.manual_seed(0)
    return torch.rand(n, c, h, w, requires_grad=True), torch.rand(n, c, h, w)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_hardest_share_has_zero_weight_at_start(mode):
    pred, target = _pair()
    crit = PixelCurriculumL1(q0=0.5, until=0.5, mode=mode)
    crit.set_progress(0.0)
    pixel = (pred - target).abs().mean(1).detach()
    v = crit.pixel_weights(pixel, crit.quantile())
    hardest = pixel.flatten() > pixel.flatten().kthvalue(pixel.numel() // 2).values
    assert (v.flatten()[hardest] == 0).all()
    assert (v.flatten() == 0).float().mean() >= 0.5 - 1 / pixel.numel()
    if mode == "hard":
        assert v.sum() == pixel.numel() // 2


@pytest.mark.parametrize("progress", [0.5, 0.75, 1.0])
def test_equals_l1_exactly_after_until(progress):
    pred, target = _pair()
    crit = PixelCurriculumL1(q0=0.3, until=0.5)
    crit.set_progress(progress)
    assert crit.quantile() == 1.0
    assert torch.equal(crit(pred, target), F.l1_loss(pred, target))


def test_quantile_rises_linearly():
    crit = PixelCurriculumL1(q0=0.5, until=0.5)
    qs = []
    for p in (0.0, 0.125, 0.25, 0.5):
        crit.set_progress(p)
        qs.append(crit.quantile())
    assert qs == [0.5, 0.625, 0.75, 1.0]
    off = PixelCurriculumL1(mode="off")
    assert off.quantile() == 1.0


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_gradients_reach_only_selected_pixels(mode):
    pred, target = _pair()
    crit = PixelCurriculumL1(q0=0.5, until=0.5, mode=mode)
    crit(pred, target).backward()
    pixel = (pred - target).abs().mean(1).detach()
    v = crit.pixel_weights(pixel, crit.quantile())
    grad_per_pixel = pred.grad.abs().sum(1)
    assert (grad_per_pixel[v == 0] == 0).all()
    assert (grad_per_pixel[v > 0] > 0).all()


def test_bad_options():
    with pytest.raises(ValueError, match="q0"):
        PixelCurriculumL1(q0=0)
    with pytest.raises(ValueError, match="mode"):
        PixelCurriculumL1(mode="linear")
    with pytest.raises(ValueError, match="shape"):
        PixelCurriculumL1()(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5))
