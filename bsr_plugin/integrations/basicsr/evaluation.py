"""Scoring as the benchmark tables do: mean Y-channel PSNR/SSIM with BasicSR's metrics, the
border of ``scale`` pixels cropped, for any upscaler (a network, or bicubic)."""

from __future__ import annotations

import statistics
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

Upscaler = Callable[[Tensor], Tensor]  # LR tensor 3xHxW in [0, 1] -> SR tensor (1x)3xsHxsW


def network_upscaler(net: nn.Module) -> Upscaler:
    """``net`` in eval mode, without gradients, on one image."""
    net.eval()

    def upscale(lq: Tensor) -> Tensor:
        with torch.no_grad():
            return net(lq[None])

    return upscale


def bicubic_upscaler(scale: int) -> Upscaler:
    """MATLAB-style bicubic upsampling (``basicsr.utils.matlab_functions.imresize``)."""
    from basicsr.utils.matlab_functions import imresize

    def upscale(lq: Tensor) -> Tensor:
        return torch.from_numpy(np.clip(imresize(lq.permute(1, 2, 0).numpy(), scale), 0, 1)).permute(2, 0, 1)

    return upscale


def score(upscale: Upscaler, dataset: Any, scale: int) -> dict[str, float]:
    """Mean Y-channel ``psnr`` and ``ssim`` of ``upscale`` over a BasicSR paired dataset."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils import tensor2img

    psnr, ssim = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        sr, gt = tensor2img(upscale(item["lq"])), tensor2img(item["gt"])
        psnr.append(calculate_psnr(sr, gt, crop_border=scale, test_y_channel=True))
        ssim.append(calculate_ssim(sr, gt, crop_border=scale, test_y_channel=True))
    return {"psnr": float(statistics.mean(psnr)), "ssim": float(statistics.mean(ssim))}
