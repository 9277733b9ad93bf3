"""Pixel-wise curriculum learning: learn easy pixels first, then all of them.

Per pixel ``p`` the loss is ``l_p = mean over colour channels |SR_p - HR_p|``. A weight
``v_p`` is computed without gradient from a threshold ``lambda_t``, the ``q_t``-quantile of
the batch's ``l_p``:

* ``hard``: ``v_p = [l_p <= lambda_t]``
* ``soft``: ``v_p = clip(1 - l_p / lambda_t, 0, 1)``

``q_t`` rises linearly from ``q0`` at progress 0 to 1 at progress ``until`` (progress is the
current iteration over the total); from there on the loss is plain L1. The loss is
``sum v_p l_p / sum v_p`` (``normalize='weights'``) or ``sum v_p l_p / N`` (``'pixels'``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

MODES = ("hard", "soft", "off")
NORMALIZE = ("weights", "pixels")


class PixelCurriculumL1(nn.Module):
    """L1 loss that weights pixels easy-to-hard (see the module docstring).

    Args:
        q0: share of the easiest pixels that count at progress 0, in (0, 1].
        until: progress at which every pixel counts (q_t = 1), in [0, 1].
        mode: ``hard`` | ``soft`` | ``off`` (plain L1).
        normalize: ``weights`` | ``pixels``.
    """

    def __init__(self, q0: float = 0.5, until: float = 0.5, mode: str = "hard", normalize: str = "weights") -> None:
        super().__init__()
        if not 0 < q0 <= 1:
            raise ConfigError(f"curriculum q0 must lie in (0, 1], got {q0}")
        if not 0 <= until <= 1:
            raise ConfigError(f"curriculum 'until' must lie in [0, 1], got {until}")
        if mode not in MODES:
            raise ConfigError(f"curriculum mode {mode!r} is not one of {MODES}")
        if normalize not in NORMALIZE:
            raise ConfigError(f"curriculum normalize {normalize!r} is not one of {NORMALIZE}")
        self.q0, self.until, self.mode, self.normalize = q0, until, mode, normalize
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        """Current iteration over the total, in [0, 1]."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    def quantile(self) -> float:
        """The share ``q_t`` of pixels that count now."""
        if self.mode == "off" or self.until == 0 or self.progress >= self.until:
            return 1.0
        return self.q0 + (1.0 - self.q0) * self.progress / self.until

    @torch.no_grad()
    def pixel_weights(self, pixel_loss: Tensor, q: float) -> Tensor:
        """``v_p`` for per-pixel losses (any shape), at quantile ``q``."""
        flat = pixel_loss.flatten()
        k = min(max(math.ceil(q * flat.numel()), 1), flat.numel())
        lam = flat.kthvalue(k).values
        if self.mode == "hard":
            return (pixel_loss <= lam).to(pixel_loss.dtype)
        if lam <= 0:
            return (pixel_loss <= 0).to(pixel_loss.dtype)
        return (1.0 - pixel_loss / lam).clamp(0.0, 1.0)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        q = self.quantile()
        if q >= 1.0:
            return F.l1_loss(pred, target)
        pixel_loss = (pred - target).abs().mean(dim=1)  # N x H x W
        v = self.pixel_weights(pixel_loss.detach(), q)
        denom = v.sum() if self.normalize == "weights" else torch.tensor(float(v.numel()), device=v.device)
        return (v * pixel_loss).sum() / denom.clamp_min(1e-12)

    def extra_repr(self) -> str:
        return f"q0={self.q0}, until={self.until}, mode={self.mode}, normalize={self.normalize}"
