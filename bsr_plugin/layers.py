"""Binarized layers: ``BinaryConv2d`` and ``BinaryLinear``.

Each is a subclass of its float layer that keeps the names ``weight`` and ``bias`` (so float
checkpoints load) and passes every float argument on (stride, padding, dilation, groups,
padding mode). It computes, with ``B`` the binarizers of :mod:`bsr_plugin.binarizers`::

    y = op(sign(pad(x)), alpha * sign(w)) + bias + shortcut(x)

* ``sign(pad(x))``: 1-bit activations. Padding happens before the sign, so zero padding
  becomes +1 padding (``sign(0) = +1``): the binarized layer never sees a ternary input, and a
  packed XNOR kernel computes exactly what was trained.
* ``alpha * sign(w)``: 1-bit weights with one scale per output channel (``scale``).
* ``w`` is the latent weight. Under the compact uniform prior ``U(-a, a)`` (``prior_a = a``)
  it lives in ``[-a, a]``: :func:`bsr_plugin.prior.project_to_prior_` clamps it after each
  optimizer step.
* ``shortcut(x)``: the real (full-precision) identity shortcut: ``identity`` (same shape),
  ``repeat`` (out = k * in: each input channel repeated k times, so a following
  PixelShuffle(k**0.5) gives the nearest upsampling of ``x``), ``mean`` (in = k * out: the mean
  of each group of k consecutive input channels) or ``none``.

Activation and weight binarization switch independently (``binarize_act``,
``binarize_weight``) so a training schedule can stage them. With weight binarization off the
layer uses the real weight the latent weight stands for: ``alpha * w / mean|w|`` with a
learned scale (at conversion this is exactly the float weight), else ``w``.

State lives in ``state_dict``: ``weight``, ``bias``, ``scale`` (learned scales only),
``sign_ref``, the packed signs at the last flip-ratio reading, and ``calibrated``, whether the
learned scale has been calibrated to the layer's input magnitude
(:func:`bsr_plugin.calibrate_scales_`). A state dict without
``sign_ref`` is a float layer's: loading it initialises the layer from those float weights
(see :meth:`BinaryLayerMixin.init_from_float_`).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binarizers import ACT_GRADS, SCALES, binarize_activation, binarize_weight
from .packing import pack_signs, packed_size

logger = logging.getLogger(__name__)

SHORTCUTS = ("identity", "repeat", "mean", "none")
# Buffers of a binarized layer that record training state, not the computation: a deployed
# (packed) network does not store them.
TRAINING_BUFFERS = ("sign_ref", "calibrated")
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def channel_shortcut(x: Tensor, mode: str, in_features: int, out_features: int, dim: int = 1) -> Tensor:
    """The real shortcut along channel dimension ``dim`` (see the module docstring)."""
    if mode == "identity":
        return x
    if mode == "repeat":
        return x.repeat_interleave(out_features // in_features, dim=dim)
    if mode == "mean":
        d = dim % x.dim()
        return x.unflatten(d, (out_features, in_features // out_features)).mean(d + 1)
    raise ValueError(f"no shortcut computation for mode {mode!r}")


def shortcut_for(in_features: int, out_features: int, same_size: bool, policy: str = "auto") -> str:
    """Resolve a shortcut policy to a mode for a layer of these channel counts.

    ``policy``: ``auto`` (identity, else repeat / mean where the channel counts divide),
    ``identity`` (only equal shapes), ``none``, or a concrete mode to validate.
    """
    if policy == "none" or not same_size:
        return "none"
    if policy in ("auto", "identity") and in_features == out_features:
        return "identity"
    if policy == "auto":
        if out_features % in_features == 0:
            return "repeat"
        if in_features % out_features == 0:
            return "mean"
        return "none"
    if policy == "identity":
        return "none"
    ok = {"identity": in_features == out_features, "repeat": out_features % in_features == 0,
          "mean": in_features % out_features == 0}
    if policy not in ok:
        raise ValueError(f"unknown shortcut {policy!r}; choose one of {('auto',) + SHORTCUTS}")
    if not ok[policy]:
        raise ValueError(f"shortcut {policy!r} does not fit {in_features} -> {out_features} channels")
    return policy


def conv_keeps_size(conv: nn.Conv2d) -> bool:
    """True if ``conv``'s output has its input's spatial size (needed for any shortcut)."""
    if any(s != 1 for s in conv.stride):
        return False
    pads = conv._reversed_padding_repeated_twice  # (left, right, top, bottom)
    spans = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]  # (h, w)
    return pads[2] + pads[3] == spans[0] and pads[0] + pads[1] == spans[1]


class BinaryLayerMixin:
    """What binarized conv and linear layers share: options, scale, prior, flip ratio."""

    weight: nn.Parameter
    scale: Optional[nn.Parameter]
    sign_ref: Tensor

    def _init_binary(
        self,
        act_grad: str,
        scale: str,
        prior_a: Optional[float],
        shortcut: str,
        binarize_act: bool,
        binarize_weight: bool,
        in_features: int,
        out_features: int,
        same_size: bool,
    ) -> None:
        if act_grad not in ACT_GRADS:
            raise ValueError(f"unknown act_grad {act_grad!r}; choose one of {ACT_GRADS}")
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
        if prior_a is not None and not prior_a > 0:
            raise ValueError(f"the prior's half-width a must be > 0 (or None for no prior), got {prior_a!r}")
        self.act_grad = act_grad
        self.scale_mode = scale
        self.prior_a = None if prior_a is None else float(prior_a)
        self.shortcut = shortcut_for(in_features, out_features, same_size, shortcut)
        self.binarize_act = bool(binarize_act)
        self.binarize_weight = bool(binarize_weight)
        w = self.weight
        if scale == "learned":
            self.scale = nn.Parameter(w.new_empty(w.shape[0]))
        else:
            self.register_parameter("scale", None)
        self.register_buffer("sign_ref", torch.zeros(packed_size(w.numel()), dtype=torch.uint8, device=w.device))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.uint8, device=w.device))
        self.init_from_float_(w.detach().clone())

    # -- weights ------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_float_(self, float_weight: Tensor) -> None:
        """Take over float weights: a learned scale starts at each output channel's mean
        ``|w|``; under a prior each channel is rescaled into ``[-a, a]`` (signs and the order
        of magnitudes kept: ``w * a / max|w|``); ``sign_ref`` records the signs."""
        if float_weight.shape != self.weight.shape:
            raise ValueError(f"float weight of shape {tuple(float_weight.shape)} does not fit "
                             f"{type(self).__name__} weight {tuple(self.weight.shape)}")
        fw = float_weight.to(self.weight.dtype).to(self.weight.device)
        flat = fw.abs().flatten(1)
        if self.scale is not None:
            self.scale.copy_(flat.mean(1))
        if self.prior_a is not None:
            peak = flat.amax(1).clamp_min(torch.finfo(fw.dtype).tiny)
            fw = (fw * (self.prior_a / peak).view((-1,) + (1,) * (fw.dim() - 1))).clamp_(-self.prior_a, self.prior_a)
        self.weight.copy_(fw)
        self.sign_ref.copy_(pack_signs(self.weight))
        self.calibrated.zero_()

    def init_weights(self) -> None:
        """Keep the initialisation made at construction (or taken over from float weights).

        MMCV's ``ConvModule`` and mmengine's ``BaseModule.init_weights`` call a layer's own
        ``init_weights`` instead of overwriting its weight with ``kaiming_init``, which would put
        the latent weight outside the prior and leave ``scale`` and ``sign_ref`` stale.
        """

    def binary_weight(self) -> Tensor:
        """``alpha * sign(w)``, the weight the layer computes with (gradient: see binarizers)."""
        return binarize_weight(self.weight, self.scale_mode, self.scale, self.prior_a)

    def real_weight(self) -> Tensor:
        """The real weight the latent weight stands for (used when weight binarization is off)."""
        if self.scale_mode != "learned":
            return self.weight
        w = self.weight
        mean = w.abs().flatten(1).mean(1).clamp_min(torch.finfo(w.dtype).tiny)
        return w * (self.scale / mean).view((-1,) + (1,) * (w.dim() - 1))

    def effective_weight(self) -> Tensor:
        return self.binary_weight() if self.binarize_weight else self.real_weight()

    # -- prior and flips ----------------------------------------------------------------
    @torch.no_grad()
    def flip_ratio(self, update: bool = True) -> float:
        """Fraction of weight signs that changed since the last reading (then re-arm)."""
        current = pack_signs(self.weight)
        diff = torch.bitwise_xor(current, self.sign_ref)
        flips = int(_POPCOUNT.to(diff.device)[diff.long()].sum())
        if update:
            self.sign_ref.copy_(current)
        return flips / self.weight.numel()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        wkey = prefix + "weight"
        if prefix + "sign_ref" not in state_dict and wkey in state_dict:
            fw = state_dict[wkey]
            if tuple(fw.shape) == tuple(self.weight.shape):
                self.init_from_float_(fw)
                state_dict[wkey] = self.weight.detach().clone()
                state_dict[prefix + "sign_ref"] = self.sign_ref.clone()
                state_dict[prefix + "calibrated"] = self.calibrated.clone()
                if self.scale is not None:
                    state_dict[prefix + "scale"] = self.scale.detach().clone()
                logger.debug("%s: initialised from float weights", prefix.rstrip("."))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[misc]
                                      unexpected_keys, error_msgs)

    def binary_extra_repr(self) -> str:
        return (f"act_grad={self.act_grad}, scale={self.scale_mode}, prior_a={self.prior_a}, "
                f"shortcut={self.shortcut}, binarize_act={self.binarize_act}, "
                f"binarize_weight={self.binarize_weight}")


class BinaryConv2d(BinaryLayerMixin, nn.Conv2d):
    """Conv2d with 1-bit weights and activations and a real identity shortcut.

    Paper: L. Zhang, Z. Lang, W. Wei, Y. Zhang, "Embarrassingly Simple Binarization for Deep
    Single Imagery Super-Resolution Networks", IEEE TIP 30, 2021.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype: as ``nn.Conv2d``.
        act_grad: activation gradient estimator, ``approxsign`` | ``ste`` | ``identity``.
        scale: weight scale per output channel, ``learned`` | ``mean_abs`` | ``none``.
        prior_a: half-width ``a`` of the uniform prior on the latent weight, or ``None``.
        shortcut: ``auto`` | ``identity`` | ``repeat`` | ``mean`` | ``none``; ``auto`` picks
            identity for equal shapes, repeat / mean for channel counts that divide.
        binarize_act: binarize the input (else full-precision input).
        binarize_weight: binarize the weight (else the real weight, see module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 act_grad: str = "approxsign", scale: str = "learned", prior_a: Optional[float] = 1e-2,
                 shortcut: str = "auto", binarize_act: bool = True, binarize_weight: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        self._init_binary(act_grad, scale, prior_a, shortcut, binarize_act, binarize_weight,
                          in_channels, out_channels, conv_keeps_size(self))

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **options) -> BinaryConv2d:
        """A binary conv with ``conv``'s arguments, taking over its weight and bias."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype, **options)
        new.init_from_float_(conv.weight.detach())
        if conv.bias is not None:
            with torch.no_grad():
                new.bias.copy_(conv.bias)
        new.train(conv.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight()
        if self.binarize_act:
            xb = binarize_activation(x, self.act_grad)
            pads = self._reversed_padding_repeated_twice
            if any(pads):
                if self.padding_mode == "zeros":
                    xb = F.pad(xb, pads, mode="constant", value=1.0)  # sign(0) = +1
                else:
                    xb = F.pad(xb, pads, mode=self.padding_mode)
            y = F.conv2d(xb, w, self.bias, self.stride, 0, self.dilation, self.groups)
        else:
            y = self._conv_forward(x, w, self.bias)
        if self.shortcut != "none":  # in place: the conv's output is not needed for its backward
            y = y.add_(channel_shortcut(x, self.shortcut, self.in_channels, self.out_channels, dim=1))
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.binary_extra_repr()


class BinaryLinear(BinaryLayerMixin, nn.Linear):
    """Linear layer with 1-bit weights and activations and a real identity shortcut, for
    transformer SR networks (e.g. SwinIR). Same rules and arguments as :class:`BinaryConv2d`
    (the shortcut acts on the last dimension)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 act_grad: str = "approxsign", scale: str = "learned", prior_a: Optional[float] = 1e-2,
                 shortcut: str = "auto", binarize_act: bool = True, binarize_weight: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_binary(act_grad, scale, prior_a, shortcut, binarize_act, binarize_weight,
                          in_features, out_features, True)

    @classmethod
    def from_float(cls, linear: nn.Linear, **options) -> BinaryLinear:
        """A binary linear layer with ``linear``'s shape, taking over its weight and bias."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, **options)
        new.init_from_float_(linear.weight.detach())
        if linear.bias is not None:
            with torch.no_grad():
                new.bias.copy_(linear.bias)
        new.train(linear.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight()
        xb = binarize_activation(x, self.act_grad) if self.binarize_act else x
        y = F.linear(xb, w, self.bias)
        if self.shortcut != "none":
            y = y.add_(channel_shortcut(x, self.shortcut, self.in_features, self.out_features, dim=-1))
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.binary_extra_repr()


BINARY_LAYERS = (BinaryConv2d, BinaryLinear)


def is_binary(module: nn.Module) -> bool:
    """True for the plugin's binarized layers."""
    return isinstance(module, BINARY_LAYERS)
