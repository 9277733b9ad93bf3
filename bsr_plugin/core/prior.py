"""The compact uniform prior on latent weights, over a whole model.

Maximum a posteriori training under the prior ``U(-a, a)`` is a box constraint. Two ways to
impose it:

* projection, after every optimizer step: :func:`project_to_prior_` (``w <- clamp(w, -a, a)``);
* a loss, where a training loop cannot project: :class:`UniformPriorLoss`,
  ``lambda * mean(relu(|w| - a)^2)``, plus optionally the 1-D Wasserstein distance between the
  sorted weights and the quantiles of ``U(-a, a)``.

:func:`flip_ratios` reads, per layer, the fraction of weight signs that flipped since the
last reading: the quantity the prior exists to keep alive.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import BinaryLayerMixin
from .registry import binary_layers


def prior_layers(model: nn.Module) -> Iterator[tuple[str, BinaryLayerMixin]]:
    """Binarized layers whose latent weight carries a prior (``prior_a`` is set)."""
    for name, layer in binary_layers(model):
        if layer.prior_a is not None:
            yield name, layer


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Learned weight scales (to keep out of weight decay)."""
    return [layer.scale for _, layer in binary_layers(model) if layer.scale is not None]


@torch.no_grad()
def project_to_prior_(model: nn.Module) -> int:
    """Clamp every prior-constrained latent weight into ``[-a, a]``; returns how many layers."""
    n = 0
    for _, layer in prior_layers(model):
        a = layer.prior_a
        layer.weight.clamp_(-a, a)
        n += 1
    return n


def _uniform_quantiles(n: int, a: float, like: Tensor) -> Tensor:
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) * (2 * a / n) - a


def prior_penalty(model: nn.Module, wasserstein: float = 0.0) -> Tensor:
    """``mean(relu(|w| - a)^2)`` over all prior-constrained weights (0 inside the support),
    plus ``wasserstein`` times the mean squared 1-D Wasserstein distance of each layer's
    weights to ``U(-a, a)``."""
    excess_sum: Optional[Tensor] = None
    count = 0
    w2: list[Tensor] = []
    for _, layer in prior_layers(model):
        w = layer.weight
        a = layer.prior_a
        term = torch.relu(w.abs() - a).pow(2).sum()
        excess_sum = term if excess_sum is None else excess_sum + term
        count += w.numel()
        if wasserstein:
            sorted_w = w.flatten().sort().values
            w2.append((sorted_w - _uniform_quantiles(sorted_w.numel(), a, sorted_w)).pow(2).mean())
    if excess_sum is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    loss = excess_sum / count
    if wasserstein and w2:
        loss = loss + wasserstein * torch.stack(w2).mean()
    return loss


class UniformPriorLoss(nn.Module):
    """The uniform prior as a loss: ``loss_weight * reduce(relu(|w| - a)^2)`` over the
    prior-constrained weights of the model given to ``forward`` (0 inside ``[-a, a]``), plus
    ``wasserstein`` times the 1-D Wasserstein term. It follows BasicSR's loss contract
    (``loss_weight``, ``reduction``), so the BasicSR integration registers this class as it is.

    Args:
        loss_weight: lambda.
        reduction: ``mean`` (over all prior-constrained weights) | ``sum``.
        wasserstein: weight of the optional distribution term (0 = off).
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", wasserstein: float = 0.0) -> None:
        super().__init__()
        if loss_weight < 0 or wasserstein < 0:
            raise ConfigError("UniformPriorLoss: loss_weight and wasserstein must be >= 0")
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"UniformPriorLoss: unsupported reduction {reduction!r}; supported: ('mean', 'sum')")
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.wasserstein = wasserstein

    def forward(self, model: nn.Module) -> Tensor:
        loss = self.loss_weight * prior_penalty(model, self.wasserstein)
        if self.reduction == "sum":
            loss = loss * sum(layer.weight.numel() for _, layer in prior_layers(model))
        return loss


@torch.no_grad()
def edge_fraction(model: nn.Module, tol: float = 1e-3) -> Optional[float]:
    """Fraction of prior-constrained latent weights at the box edge (``|w| >= a (1 - tol)``),
    over all such layers; ``None`` if there are none. Weights held at the edge by the
    projection are the ones whose signs the prior keeps from settling."""
    at_edge, total = 0, 0
    for _, layer in prior_layers(model):
        at_edge += int((layer.weight.abs() >= layer.prior_a * (1 - tol)).sum())
        total += layer.weight.numel()
    return at_edge / total if total else None


def flip_ratios(model: nn.Module, update: bool = True) -> dict[str, float]:
    """Per binarized layer, the fraction of weight signs changed since the last reading."""
    return {name: layer.flip_ratio(update=update) for name, layer in binary_layers(model)}


def set_binarization(model: nn.Module, act: Optional[bool] = None, weight: Optional[bool] = None) -> None:
    """Switch activation and/or weight binarization of every binarized layer."""
    for _, layer in binary_layers(model):
        if act is not None:
            layer.binarize_act = bool(act)
        if weight is not None:
            layer.binarize_weight = bool(weight)
