"""BasicSR losses: the uniform prior on latent weights and the pixel-wise curriculum L1, with
BasicSR's ``loss_weight`` / ``reduction`` contract."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..curriculum import PixelCurriculumL1
from ..prior import UniformPriorLoss as CoreUniformPriorLoss
from ..prior import prior_layers


class UniformPriorLoss(CoreUniformPriorLoss):
    """The compact uniform prior U(-a, a) as a BasicSR loss (see
    :class:`bsr_plugin.UniformPriorLoss`): ``loss_weight * reduce(relu(|w| - a)^2)`` over the
    prior-constrained weights of the network given to ``forward`` (+ ``wasserstein`` times the
    1-D Wasserstein distance to U(-a, a)). Zero inside the support.

    Args:
        loss_weight: lambda.
        reduction: ``mean`` (over all prior-constrained weights) | ``sum``.
        wasserstein: weight of the distribution term (0 = off).
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", wasserstein: float = 0.0) -> None:
        super().__init__(loss_weight=loss_weight, wasserstein=wasserstein)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"UniformPriorLoss: unsupported reduction {reduction!r}; supported: ('mean', 'sum')")
        self.reduction = reduction

    def forward(self, net: nn.Module) -> Tensor:
        loss = super().forward(net)
        if self.reduction == "sum":
            loss = loss * sum(layer.weight.numel() for _, layer in prior_layers(net))
        return loss


class CurriculumL1Loss(PixelCurriculumL1):
    """L1 with pixel-wise curriculum (easy pixels first): see :mod:`bsr_plugin.curriculum`.
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
            raise ValueError(f"CurriculumL1Loss: unsupported reduction {reduction!r}; it supports 'mean' only "
                             "(choose the normalisation with 'normalize: weights | pixels')")
        self.loss_weight, self.reduction = loss_weight, reduction

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if weight is not None:
            raise ValueError("CurriculumL1Loss computes its own pixel weights; it takes no 'weight' argument")
        return self.loss_weight * super().forward(pred, target)


LOSSES = (UniformPriorLoss, CurriculumL1Loss)
