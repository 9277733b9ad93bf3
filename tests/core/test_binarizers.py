"""Property tests of every binarizer: values exactly +-1 / +-alpha, never 0, gradients as
documented (after brevitas tests/brevitas/core/test_binary_quant.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bsr_plugin.core.binarizers import binarize_input, binarize_kernel, sign
from bsr_plugin.core.options import ACT_GRADS

floats = st.floats(min_value=-4, max_value=4, allow_nan=False, width=32)
vectors = arrays("float32", st.integers(1, 64), elements=floats)
# a weight of 1..4 output channels, each 1..16 long
weights = st.integers(1, 4).flatmap(lambda o: arrays("float32", (o, 3, 2, 2), elements=floats))


@settings(max_examples=60, deadline=None)
@given(vectors)
def test_sign_is_plus_minus_one_never_zero(x):
    s = sign(torch.from_numpy(x))
    assert set(s.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(s, torch.where(torch.from_numpy(x) >= 0, 1.0, -1.0))


def test_sign_of_zero_is_plus_one():
    assert sign(torch.tensor([0.0, -0.0])).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kind", ACT_GRADS)
@settings(max_examples=40, deadline=None)
@given(x=vectors)
def test_activation_forward_and_gradient(kind, x):
    t = torch.from_numpy(x).requires_grad_()
    y = binarize_input(t, kind)
    assert set(y.detach().unique().tolist()) <= {-1.0, 1.0}
    g = torch.randn_like(t)
    y.backward(g)
    a = t.detach().abs()
    s = a.mean().clamp_min(torch.finfo(a.dtype).tiny)  # a 1-D input is one channel
    expected = {
        "approxsign": g * torch.where(a < 1, 2 - 2 * a, torch.zeros_like(a)),
        "approxsign_scaled": g * torch.where(a < s, (2 - 2 * a / s) / s, torch.zeros_like(a)),
        "ste": g * (a <= 1).float(),
        "identity": g,
    }[kind]
    torch.testing.assert_close(t.grad, expected)


def test_scaled_approxsign_window_follows_each_channel():
    """The window of ``approxsign_scaled`` is each channel's own mean |x| (dimension 1 for
    convs, the last one for linear layers): a channel 100x larger gets a window 100x wider,
    gradients 100x smaller, and the same total gradient mass."""
    torch.manual_seed(0)
    base = torch.randn(4, 1, 8, 8)
    x = torch.cat([base, base * 100], dim=1).requires_grad_()
    binarize_input(x, "approxsign_scaled").sum().backward()
    g = x.grad
    assert torch.allclose(g[:, 1], g[:, 0] / 100, rtol=1e-4, atol=1e-9)
    assert (g[:, 0] > 0).float().mean() > 0.5  # most inputs lie inside |x| < mean|x| ... or near it
    plain = x.detach().clone().requires_grad_()
    binarize_input(plain, "approxsign").sum().backward()
    assert (plain.grad[:, 1] > 0).float().mean() < 0.05  # the fixed |x| < 1 window misses the large channel
    last = torch.cat([base, base * 100], dim=1).permute(0, 2, 3, 1).contiguous().requires_grad_()
    binarize_input(last, "approxsign_scaled", dim=-1).sum().backward()
    torch.testing.assert_close(last.grad, g.permute(0, 2, 3, 1))


def test_activation_without_grad_is_plain_sign():
    x = torch.randn(100)
    assert torch.equal(binarize_input(x), sign(x))
    with pytest.raises(ValueError, match="binarize.act_grad: 'tanh' is not one of"):
        binarize_input(x, "tanh")


@pytest.mark.parametrize("scale", ["learned", "mean_abs", "none"])
@settings(max_examples=40, deadline=None)
@given(w=weights, clip=st.sampled_from([None, 0.5, 1.0]))
def test_weight_values_are_plus_minus_alpha(scale, w, clip):
    wt = torch.from_numpy(w).requires_grad_()
    learned = (torch.rand(w.shape[0]) + 0.1).requires_grad_() if scale == "learned" else None
    b = binarize_kernel(wt, scale, learned, clip)
    alpha = {"learned": learned, "mean_abs": wt.detach().abs().flatten(1).mean(1),
             "none": torch.ones(w.shape[0])}[scale].detach()
    flat = b.detach().flatten(1)
    for c in range(w.shape[0]):
        vals = set(flat[c].unique().tolist())
        assert vals <= {alpha[c].item(), -alpha[c].item()}
    assert torch.equal(torch.sign(flat) * alpha.view(-1, 1), flat) or scale == "mean_abs"


@settings(max_examples=40, deadline=None)
@given(w=weights, clip=st.sampled_from([None, 0.5, 1.0]))
def test_weight_gradient_is_identity_inside_support(w, clip):
    wt = torch.from_numpy(w).requires_grad_()
    alpha = (torch.rand(w.shape[0]) + 0.1).requires_grad_()
    b = binarize_kernel(wt, "learned", alpha, clip)
    g = torch.randn_like(b)
    b.backward(g)
    mask = torch.ones_like(wt) if clip is None else (wt.detach().abs() <= clip).float()
    torch.testing.assert_close(wt.grad, g * alpha.detach().view(-1, 1, 1, 1) * mask)
    torch.testing.assert_close(alpha.grad, (g * sign(wt.detach())).flatten(1).sum(1))
