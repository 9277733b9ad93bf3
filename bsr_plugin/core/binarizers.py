"""Binarizers: the sign function and its gradient estimators, and the weight scale.

Every binarizer here states its forward and its gradient (the larq convention). The sign
never returns 0: ``sign(x) = +1 for x >= 0, -1 otherwise`` (``torch.sign`` returns 0 at 0,
which would make a "binary" tensor ternary).

Activation binarizers (choose with ``act_grad``):

* ``approxsign`` (Bi-Real Net, Liu et al. ECCV 2018), the default.
  Forward ``sign(x)``. Gradient ``g * (2 - 2|x|)`` for ``|x| < 1``, else 0.
* ``approxsign_scaled``: ApproxSign with its window stretched to the input's scale.
  Forward ``sign(x)``. Gradient ``g * (2 - 2|x|/s) / s`` for ``|x| < s``, else 0, where ``s``
  is the mean ``|x|`` of each channel over the batch (no gradient through ``s``): the
  derivative of ``s * approxsign(x / s)``, the real input that a calibrated scale
  (``alpha * mean|x|``) stands for. Same total gradient mass as ``approxsign``, spread over
  the channel's actual range instead of ``|x| < 1``. Nothing changes at inference.
* ``ste`` (straight-through estimator, Hubara et al. 2016).
  Forward ``sign(x)``. Gradient ``g`` for ``|x| <= 1``, else 0.
* ``identity``.
  Forward ``sign(x)``. Gradient ``g`` everywhere.

Weight binarizer: forward ``alpha * sign(w)`` with ``alpha`` one value per output channel.
Gradient to ``w``: ``alpha * g`` (identity through the sign), zeroed where ``|w| > clip``
(outside the prior's support), where ``clip`` is the prior's half-width ``a`` or ``None``
(no mask). Gradient to ``alpha`` (when it is a learned parameter): ``sum(g * sign(w))`` over
the channel, the ordinary product rule.

Weight scales (choose with ``scale``):

* ``learned``: a parameter per output channel, initialised from the mean ``|w|`` of the float
  weights the layer replaces.
* ``mean_abs``: ``mean |w|`` of the latent weight per output channel, without gradient.
* ``none``: ``alpha = 1``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from .options import ACT_GRADS, SCALES, check_choice


def sign(x: Tensor) -> Tensor:
    """Forward: +1 where ``x >= 0``, -1 elsewhere (never 0). No gradient (piecewise constant).

    Computed as ``copysign(1, x + 0)`` (adding +0 turns -0 into +0), an order of magnitude
    faster on CPU than ``torch.where(x >= 0, 1, -1)``; while tracing (ONNX export) it is
    spelled ``where(x >= 0, 1, -1)``, which every ONNX runtime has. (NaN, which has no sign,
    gives -1 there and +-1 here.)"""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return torch.copysign(x.new_ones(()), x + 0.0)


def channel_magnitude(x: Tensor, dim: int) -> Tensor:
    """Mean ``|x|`` of each channel (dimension ``dim``) over all other dimensions, shaped to
    broadcast over ``x`` (a 1-D ``x`` is one channel); never 0."""
    tiny = torch.finfo(x.dtype).tiny
    if x.dim() < 2:
        return x.abs().mean().clamp_min(tiny)
    d = dim % x.dim()
    others = [i for i in range(x.dim()) if i != d]
    return x.abs().mean(dim=others, keepdim=True).clamp_min(tiny)


def _act_grad_input(x: Tensor, g: Tensor, kind: str, dim: int) -> Tensor:
    """``g`` times the surrogate derivative at ``x`` (in place on one temporary)."""
    if kind == "approxsign":
        return x.abs().mul_(-2.0).add_(2.0).clamp_(min=0.0).mul_(g)
    if kind == "approxsign_scaled":
        s = channel_magnitude(x, dim)
        return x.abs().div_(s).mul_(-2.0).add_(2.0).clamp_(min=0.0).div_(s).mul_(g)
    if kind == "ste":
        return g * (x.abs() <= 1.0).to(g.dtype)
    return g


class _SignAct(torch.autograd.Function):
    """Forward ``sign(x)``; backward ``g * surrogate'(x)`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, kind: str, dim: int) -> Tensor:  # type: ignore[override]
        ctx.kind, ctx.dim = kind, dim
        if kind != "identity":
            ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if ctx.kind == "identity":
            return g, None, None
        (x,) = ctx.saved_tensors
        return _act_grad_input(x, g, ctx.kind, ctx.dim), None, None


def binarize_input(x: Tensor, act_grad: str = "approxsign", dim: int = 1) -> Tensor:
    """Binarize activations to exactly +-1.

    Forward: ``sign(x)`` (+1 at 0). Gradient: ``approxsign`` -> ``g * (2 - 2|x|)`` on
    ``|x| < 1`` else 0; ``approxsign_scaled`` -> ``g * (2 - 2|x|/s) / s`` on ``|x| < s`` else
    0, ``s`` the mean ``|x|`` of the channel (dimension ``dim``) over the batch; ``ste`` ->
    ``g`` on ``|x| <= 1`` else 0; ``identity`` -> ``g``. Without autograd (inference, export)
    this is the plain ``sign`` with no saved tensors.
    """
    check_choice("act_grad", act_grad, ACT_GRADS)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return sign(x)
    return _SignAct.apply(x, act_grad, dim)


class _SignWeight(torch.autograd.Function):
    """Forward ``sign(w)``; backward ``g`` where ``|w| <= clip`` else 0 (``clip=None``: ``g``)."""

    @staticmethod
    def forward(ctx, w: Tensor, clip: Optional[float]) -> Tensor:  # type: ignore[override]
        ctx.clip = clip
        if clip is not None:
            ctx.save_for_backward(w)
        return sign(w)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if ctx.clip is None:
            return g, None
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= ctx.clip).to(g.dtype), None


def weight_scale(weight: Tensor, scale: str, learned: Optional[Tensor]) -> Optional[Tensor]:
    """The per-output-channel scale ``alpha``, shaped to broadcast over ``weight``.

    ``learned``: the given parameter (gradient flows). ``mean_abs``: mean ``|w|`` per output
    channel, detached. ``none``: ``None`` (alpha = 1).
    """
    view = (-1,) + (1,) * (weight.dim() - 1)
    if scale == "learned":
        if learned is None:
            raise ConfigError("scale='learned' needs the learned scale parameter")
        return learned.view(view)
    if scale == "mean_abs":
        return weight.detach().abs().flatten(1).mean(1).view(view)
    if scale == "none":
        return None
    raise ConfigError(f"binarize.scale: {scale!r} is not one of {SCALES}")


def binarize_kernel(
    weight: Tensor, scale: str = "learned", learned: Optional[Tensor] = None, clip: Optional[float] = None
) -> Tensor:
    """Binarize a weight to ``+-alpha`` per output channel.

    Forward: ``alpha * sign(w)``. Gradient to ``w``: ``alpha * g`` where ``|w| <= clip``, 0
    elsewhere (``clip=None``: everywhere). Gradient to a learned ``alpha``: ``sum(g * sign(w))``.
    """
    if torch.is_grad_enabled() and weight.requires_grad:
        b = _SignWeight.apply(weight, clip)
    else:
        b = sign(weight)
    alpha = weight_scale(weight, scale, learned)
    return b if alpha is None else b * alpha
