"""Binarized layers: ``BinaryConv2d`` and ``BinaryLinear``.

Each is a subclass of its float layer that keeps the names ``weight`` and ``bias`` (so float
checkpoints load) and passes every float argument on (stride, padding, dilation, groups,
padding mode). It computes, with the binarizers of :mod:`bsr_plugin.core.binarizers`::

    y = act(op(sign(pad(x - beta)), alpha * sign(w)) + bias) + shortcut(x)

* ``sign(pad(x - beta))``: 1-bit activations. ``beta`` is a learnable per-input-channel
  threshold (``rsign``, ReActNet's RSign), else 0. Padding happens before the sign, so zero
  padding becomes +1 padding (``sign(0) = +1``): the binarized layer never sees a ternary
  input, and a packed XNOR kernel computes exactly what was trained.
* ``alpha * sign(w)``: 1-bit weights with one scale per output channel (``scale``).
* ``w`` is the latent weight. Under the compact uniform prior ``U(-a, a)`` (``prior_a = a``)
  it lives in ``[-a, a]``: :func:`bsr_plugin.project_to_prior_` clamps it after each
  optimizer step.
* ``act``: optional RPReLU on the binary branch (``rprelu``; per output channel
  ``t = y - gamma``, ``t`` or ``slope * t`` by sign, ``+ zeta``), else the identity.
* ``shortcut(x)``: the real (full-precision) identity shortcut: ``identity`` (same shape),
  ``repeat`` (out = k * in: each input channel repeated k times, so a following
  PixelShuffle(k**0.5) gives the nearest upsampling of ``x``), ``mean`` (in = k * out: the mean
  of each group of k consecutive input channels) or ``none``.

Activation and weight binarization switch independently (``binarize_act``,
``binarize_weight``) so a training schedule can stage them. With weight binarization off the
layer uses the real weight the latent weight stands for: ``alpha * w / mean|w|`` with a
learned scale (at conversion this is exactly the float weight), else ``w``.

State lives in ``state_dict``: ``weight``, ``bias``, ``scale`` (learned scales only),
``threshold`` (rsign), ``act_shift_in`` / ``act_slope`` / ``act_shift_out`` (rprelu),
``sign_ref``, the packed signs at the last flip-ratio reading, and ``calibrated``, the factor
by which the learned scale was calibrated to the layer's input magnitude (0: not calibrated;
:func:`bsr_plugin.calibrate_scales_`). A state dict without ``sign_ref`` is a float layer's:
loading it initialises the layer from those float weights (see
:meth:`BinaryLayerMixin.init_from_float_`).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .binarizers import binarize_input, binarize_kernel, weight_scale
from .bits import pack_signs, packed_size, popcount
from .options import LayerOptions
from .registry import register_binary_layer, register_form

logger = logging.getLogger(__name__)

# Buffers of a binarized layer that record training state, not the computation: a deployed
# (packed) network does not store them.
TRAINING_BUFFERS = ("sign_ref", "calibrated")
RPRELU_PARAMS = ("act_shift_in", "act_slope", "act_shift_out")
RPRELU_SLOPE_INIT = 0.25


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
    """Resolve a shortcut policy (:data:`~bsr_plugin.core.options.SHORTCUTS`) to the mode a
    layer of these channel counts uses.

    ``auto``: identity, else repeat / mean where the channel counts divide, else none;
    ``identity``: identity for equal shapes, else none; ``none``; ``repeat`` / ``mean``:
    that mode, which must fit (a :class:`ConfigError` otherwise). Layers that change the
    spatial size get none.
    """
    if policy == "none" or not same_size:
        return "none"
    if policy in ("auto", "identity") and in_features == out_features:
        return "identity"
    if policy == "identity":
        return "none"
    fits = {"repeat": out_features % in_features == 0, "mean": in_features % out_features == 0}
    if policy == "auto":
        return next((mode for mode, ok in fits.items() if ok), "none")
    if policy not in fits:
        raise ConfigError(f"unknown shortcut {policy!r}")
    if not fits[policy]:
        raise ConfigError(f"shortcut {policy!r} does not fit {in_features} -> {out_features} channels")
    return policy


def conv_keeps_size(conv: nn.Conv2d) -> bool:
    """True if ``conv``'s output has its input's spatial size (needed for any shortcut)."""
    if any(s != 1 for s in conv.stride):
        return False
    pads = conv._reversed_padding_repeated_twice  # (left, right, top, bottom)
    spans = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]  # (h, w)
    return pads[2] + pads[3] == spans[0] and pads[0] + pads[1] == spans[1]


def rprelu(y: Tensor, shift_in: Tensor, slope: Tensor, shift_out: Tensor, dim: int = 1) -> Tensor:
    """RPReLU along channel dimension ``dim``: ``t = y - shift_in``; ``t`` where ``t >= 0``
    else ``slope * t``; plus ``shift_out``. Gradient: the ordinary one of these ops."""
    view = [1] * y.dim()
    view[dim] = -1
    t = y - shift_in.view(view)
    return torch.where(t >= 0, t, t * slope.view(view)) + shift_out.view(view)


def _option(name: str, settable: bool = False) -> property:
    """A layer attribute that reads ``self.options.<name>`` (and, if ``settable``, replaces
    the options with that field changed, validated by :class:`LayerOptions`)."""

    def get(self: Any) -> Any:
        return getattr(self.options, name)

    def set_(self: Any, value: Any) -> None:
        self.options = self.options.replace(**{name: value})

    return property(get, set_ if settable else None, doc=f"``options.{name}``")


class BinaryLayerMixin:
    """What binarized conv and linear layers share: options, scale, prior, flip ratio,
    RSign / RPReLU, and packing their binary state in and out."""

    weight: nn.Parameter
    bias: Optional[nn.Parameter]
    scale: Optional[nn.Parameter]
    threshold: Optional[nn.Parameter]
    sign_ref: Tensor
    calibrated: Tensor
    channel_dim: int = 1

    def _init_binary(self, options: dict[str, Any], in_features: int, out_features: int, same_size: bool) -> None:
        opts = LayerOptions.from_kwargs(type(self).__name__, **options)
        self.options = opts.replace(shortcut=shortcut_for(in_features, out_features, same_size, opts.shortcut))
        w = self.weight
        self.register_parameter("scale", nn.Parameter(w.new_empty(w.shape[0])) if opts.scale == "learned" else None)
        self.register_parameter("threshold", nn.Parameter(w.new_zeros(in_features)) if opts.rsign else None)
        for name in RPRELU_PARAMS:
            self.register_parameter(name, nn.Parameter(w.new_zeros(out_features)) if opts.rprelu else None)
        self.register_buffer("sign_ref", torch.zeros(packed_size(w.numel()), dtype=torch.uint8, device=w.device))
        self.register_buffer("calibrated", torch.zeros((), dtype=w.dtype, device=w.device))
        self._reset_binary_state()

    # The layer's options live in one frozen LayerOptions (``self.options``, shortcut resolved
    # to the mode in use); these read it, and the three that training schedules switch replace it.
    prior_a = _option("prior_a", settable=True)
    binarize_act = _option("binarize_act", settable=True)
    binarize_weight = _option("binarize_weight", settable=True)
    act_grad = _option("act_grad")
    shortcut = _option("shortcut")
    rsign = _option("rsign")
    rprelu = _option("rprelu")

    @property
    def fully_binary(self) -> bool:
        """True when both the input and the weight are binarized (what a packed file, the
        engine, ONNX export and the counts require)."""
        return self.options.binarize_act and self.options.binarize_weight

    # -- weights ------------------------------------------------------------------------
    @torch.no_grad()
    def _reset_binary_state(self) -> None:
        """Re-derive every binary state from the current weight (see :meth:`reset_parameters`)."""
        self.init_from_float_(self.weight.detach().clone())
        if self.threshold is not None:
            self.threshold.zero_()
        if self.options.rprelu:
            self.act_shift_in.zero_()
            self.act_slope.fill_(RPRELU_SLOPE_INIT)
            self.act_shift_out.zero_()

    def reset_parameters(self) -> None:
        """The float layer's initialisation, then the binary state derived from it: latent
        weight rescaled into the prior, scale = mean |w|, fresh flip record, RSign and RPReLU
        at their start values (toolkit init code calls this; timm's ``std_conv`` pattern)."""
        super().reset_parameters()  # type: ignore[misc]
        if hasattr(self, "calibrated"):  # the float __init__ calls this before the binary state exists
            self._reset_binary_state()

    @torch.no_grad()
    def init_from_float_(self, float_weight: Tensor) -> None:
        """Take over float weights: a learned scale starts at each output channel's mean
        ``|w|``; under a prior each channel is rescaled into ``[-a, a]`` (signs and the order
        of magnitudes kept: ``w * a / max|w|``); ``sign_ref`` records the signs."""
        if float_weight.shape != self.weight.shape:
            raise ConfigError(f"float weight of shape {tuple(float_weight.shape)} does not fit "
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

    @torch.no_grad()
    def _take_float(self, layer: nn.Module) -> Any:
        """Take over a float layer's weight (:meth:`init_from_float_`), bias and mode; returns self."""
        self.init_from_float_(layer.weight.detach())
        if layer.bias is not None:
            self.bias.copy_(layer.bias)
        self.train(layer.training)
        return self

    def init_weights(self) -> None:
        """Keep the initialisation made at construction (or taken over from float weights).

        MMCV's ``ConvModule`` and mmengine's ``BaseModule.init_weights`` call a layer's own
        ``init_weights`` instead of overwriting its weight with ``kaiming_init``, which would put
        the latent weight outside the prior and leave ``scale`` and ``sign_ref`` stale.
        """

    def binary_weight(self) -> Tensor:
        """``alpha * sign(w)``, the weight the layer computes with (gradient: see binarizers)."""
        return binarize_kernel(self.weight, self.options.scale, self.scale, self.prior_a)

    def alpha(self) -> Optional[Tensor]:
        """The per-output-channel scale the layer multiplies ``sign(w)`` by (``None``: 1)."""
        a = weight_scale(self.weight, self.options.scale, self.scale)
        return None if a is None else a.reshape(-1)

    def real_weight(self) -> Tensor:
        """The real weight the latent weight stands for (used when weight binarization is off)."""
        if self.options.scale != "learned":
            return self.weight
        w = self.weight
        mean = w.abs().flatten(1).mean(1).clamp_min(torch.finfo(w.dtype).tiny)
        return w * (self.scale / mean).view((-1,) + (1,) * (w.dim() - 1))

    def effective_weight(self) -> Tensor:
        return self.binary_weight() if self.binarize_weight else self.real_weight()

    def _binary_input(self, x: Tensor) -> Tensor:
        """``sign(x - beta)`` with the layer's gradient estimator (``beta`` = 0 without rsign)."""
        if self.threshold is not None:
            view = [1] * x.dim()
            view[self.channel_dim] = -1
            x = x - self.threshold.view(view)
        return binarize_input(x, self.act_grad, self.channel_dim)

    def _branch_bias(self) -> Optional[Tensor]:
        """The bias the conv/linear op adds: with RPReLU its input shift is folded in
        (``y - gamma`` costs no pass of its own)."""
        if not self.rprelu or self.channel_dim != 1:
            return self.bias
        return -self.act_shift_in if self.bias is None else self.bias - self.act_shift_in

    def _finish(self, y: Tensor, x: Tensor, in_features: int, out_features: int) -> Tensor:
        """RPReLU on the binary branch (its input shift already in the bias where
        :meth:`_branch_bias` folded it), then the real shortcut of the float input ``x``."""
        if self.rprelu and self.channel_dim == 1:
            view = (1, -1) + (1,) * (y.dim() - 2)
            y = F.prelu(y, self.act_slope).add_(self.act_shift_out.view(view))  # prelu's backward needs its input
        elif self.rprelu:
            y = rprelu(y, self.act_shift_in, self.act_slope, self.act_shift_out, self.channel_dim)
        if self.shortcut != "none":  # in place: the branch output is not needed for its backward
            y = y.add_(channel_shortcut(x, self.shortcut, in_features, out_features, dim=self.channel_dim))
        return y

    # -- prior and flips ----------------------------------------------------------------
    @torch.no_grad()
    def flip_ratio(self, update: bool = True) -> float:
        """Fraction of weight signs that changed since the last reading (then re-arm)."""
        current = pack_signs(self.weight)
        flips = popcount(torch.bitwise_xor(current, self.sign_ref))
        if update:
            self.sign_ref.copy_(current)
        return flips / self.weight.numel()

    @torch.no_grad()
    def freeze_scale_(self) -> None:
        """Turn a ``mean_abs`` scale into a ``learned`` one holding its current value (the
        output is unchanged); a packed file stores alpha, not the latent magnitudes."""
        if self.options.scale == "mean_abs":
            alpha = self.alpha()
            self.scale = nn.Parameter(alpha.clone())
            self.options = self.options.replace(scale="learned")

    @torch.no_grad()
    def set_signs_(self, signs: Tensor, alpha: Optional[Tensor]) -> None:
        """Take a deployed binary state: the latent weight becomes ``signs * prior_a`` (``signs``:
        +-1 of the weight's shape; without a prior, ``signs``), which binarizes to the same
        ``alpha * sign``; a ``mean_abs`` scale becomes a ``learned`` one holding ``alpha``
        (same output). The scale is final: ``calibrated`` is NaN (calibrated, factor unknown)."""
        self.weight.copy_(signs.to(self.weight.dtype) * (self.prior_a if self.prior_a is not None else 1.0))
        if alpha is not None:
            self.freeze_scale_()
            self.scale.copy_(alpha.reshape(self.scale.shape))
        self.sign_ref.copy_(pack_signs(self.weight))
        self.calibrated.fill_(float("nan"))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        wkey = prefix + "weight"
        legacy = state_dict.get(prefix + "calibrated")
        if legacy is not None and legacy.dtype == torch.uint8:  # bsr_plugin 0.1: a flag, the factor unknown
            state_dict[prefix + "calibrated"] = torch.full((), float("nan") if bool(legacy) else 0.0)
        if prefix + "sign_ref" not in state_dict and wkey in state_dict:
            fw = state_dict[wkey]
            if tuple(fw.shape) == tuple(self.weight.shape):
                self.init_from_float_(fw)
                state_dict[wkey] = self.weight.detach().clone()
                state_dict[prefix + "sign_ref"] = self.sign_ref.clone()
                state_dict[prefix + "calibrated"] = self.calibrated.clone()
                for name in ("scale", "threshold") + RPRELU_PARAMS:
                    value = getattr(self, name, None)
                    if value is not None and prefix + name not in state_dict:
                        state_dict[prefix + name] = value.detach().clone()
                logger.debug("%s: initialised from float weights", prefix.rstrip("."))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[misc]
                                      unexpected_keys, error_msgs)

    def binary_extra_repr(self) -> str:
        defaults = LayerOptions()
        return ", ".join(f"{k}={v}" for k, v in self.options.to_dict().items()
                         if k in ("act_grad", "scale", "prior_a", "shortcut") or v != getattr(defaults, k))


class BinaryConv2d(BinaryLayerMixin, nn.Conv2d):
    """Conv2d with 1-bit weights and activations and a real identity shortcut.

    Paper: L. Zhang, Z. Lang, W. Wei, Y. Zhang, "Embarrassingly Simple Binarization for Deep
    Single Imagery Super-Resolution Networks", IEEE TIP 30, 2021.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype: as ``nn.Conv2d``.
        **options: the :class:`~bsr_plugin.LayerOptions` fields (``prior_a``, ``act_grad``,
            ``scale``, ``binarize_act``, ``binarize_weight``, ``shortcut``, ``rsign``,
            ``rprelu``), validated there.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 **options: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        self._init_binary(options, in_channels, out_channels, conv_keeps_size(self))

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **options: Any) -> BinaryConv2d:
        """A binary conv with ``conv``'s arguments, taking over its weight and bias."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype, **options)
        return new._take_float(conv)

    @torch.no_grad()
    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` of this geometry computing with :meth:`effective_weight` and
        the bias (no binarization, no shortcut): the float network this layer stands for."""
        plain = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, self.groups, self.bias is not None, self.padding_mode,
                          device=self.weight.device, dtype=self.weight.dtype)
        plain.weight.copy_(self.effective_weight())
        if self.bias is not None:
            plain.bias.copy_(self.bias)
        return plain

    def branch(self, x: Tensor, bias: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tensor:
        """The binary branch: ``conv(sign(pad(x - beta)), alpha * sign(w)) + bias``, without
        RPReLU and shortcut (with binarization switched off, the float conv of ``x``);
        ``weight`` replaces :meth:`effective_weight` (export computes with a stored one)."""
        w = self.effective_weight() if weight is None else weight
        if not self.binarize_act:
            return self._conv_forward(x, w, bias)
        xb = self._binary_input(x)
        pads = self._reversed_padding_repeated_twice
        if any(pads):
            if self.padding_mode == "zeros":
                xb = F.pad(xb, pads, mode="constant", value=1.0)  # sign(0) = +1
            else:
                xb = F.pad(xb, pads, mode=self.padding_mode)
        return F.conv2d(xb, w, bias, self.stride, 0, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._finish(self.branch(x, self._branch_bias()), x, self.in_channels, self.out_channels)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.binary_extra_repr()


class BinaryLinear(BinaryLayerMixin, nn.Linear):
    """Linear layer with 1-bit weights and activations and a real identity shortcut, for
    transformer SR networks (e.g. SwinIR). Same rules and options as :class:`BinaryConv2d`
    (the channel dimension, for the shortcut, RSign and RPReLU, is the last one).

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        **options: the :class:`~bsr_plugin.LayerOptions` fields.
    """

    channel_dim = -1

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 **options: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_binary(options, in_features, out_features, True)

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> BinaryLinear:
        """A binary linear layer with ``linear``'s shape, taking over its weight and bias."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, **options)
        return new._take_float(linear)

    @torch.no_grad()
    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing with :meth:`effective_weight` and the bias."""
        plain = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=self.weight.device,
                          dtype=self.weight.dtype)
        plain.weight.copy_(self.effective_weight())
        if self.bias is not None:
            plain.bias.copy_(self.bias)
        return plain

    def branch(self, x: Tensor, bias: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tensor:
        """The binary branch ``linear(sign(x - beta), alpha * sign(w)) + bias`` (no RPReLU, no
        shortcut); ``weight`` replaces :meth:`effective_weight`."""
        xb = self._binary_input(x) if self.binarize_act else x
        return F.linear(xb, self.effective_weight() if weight is None else weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self._finish(self.branch(x, self.bias), x, self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.binary_extra_repr()


for _float, _binary in ((nn.Conv2d, BinaryConv2d), (nn.Linear, BinaryLinear)):
    register_binary_layer(_float, _binary)
    register_form(_binary, "float", _binary.to_float)
