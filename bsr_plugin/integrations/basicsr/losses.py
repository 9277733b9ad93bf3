"""BasicSR losses: the uniform prior on latent weights (the core class, which already follows
BasicSR's ``loss_weight`` / ``reduction`` contract) and the pixel-wise curriculum L1."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ...core.curriculum import PixelCurriculumL1
from ...core.prior import UniformPriorLoss
from ...errors import ConfigError


class CurriculumL1Loss(PixelCurriculumL1):
    """L1 with pixel-wise curriculum (easy pixels first): see :mod:`bsr_plugin.core.curriculum`.
    The model sets its progress (iteration / total) every step; from progress ``until`` on
    this is exactly BasicSR's ``L1Loss``.

    Args:
        loss_weight: loss weight.
        reduction: ``mean`` only (the curriculum defines its own normalisation, ``normalize``).
        q0, until, mode, normalize: the curriculum (see PixelCurriculumL1).
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", q0: float = 0.5, until: float = 0.5,
                 mode: str = "hard", normalize: str = "weights") -> None:
        super().__init__(q0=q0, until=until, mode=mode, normalize=normalize)
        if reduction != "mean":
            raise ConfigError(f"CurriculumL1Loss: unsupported reduction {reduction!r}; it supports 'mean' only "
                              "(choose the normalisation with 'normalize: weights | pixels')")
        self.loss_weight, self.reduction = loss_weight, reduction

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if weight is not None:
            raise ConfigError("CurriculumL1Loss computes its own pixel weights; it takes no 'weight' argument")
        return self.loss_weight * super().forward(pred, target)


LOSSES = (UniformPriorLoss, CurriculumL1Loss)
