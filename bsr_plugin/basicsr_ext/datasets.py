"""A BasicSR dataset for HR-only image folders (T91, BSD200, DIV2K HR, photos): the LR input
is made on the fly with MATLAB-style bicubic downsampling (``basicsr.utils.matlab_functions.
imresize``, antialiased, as the benchmark LR files were made)."""

from __future__ import annotations

import os
import random
from typing import Any

import cv2
import numpy as np
from torch.utils import data

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str) -> list[str]:
    """Image files directly in ``folder``, sorted; a clear error if there are none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"dataset folder {folder!r} does not exist")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMG_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"dataset folder {folder!r} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return paths


class BicubicPairDataset(data.Dataset):
    """HR images from one or more folders; LR = bicubic downsampling by ``scale``.

    Train phase: a random ``gt_size`` crop (cut with a margin, downsampled, then trimmed, so
    the LR patch equals the same region of the whole downsampled image away from its border),
    flips and rotations. Val phase: the whole image, cropped to a multiple of ``scale``.

    Options (BasicSR dataset dict): ``dataroot_gt`` (a folder or a list of folders), ``scale``
    (set by BasicSR), ``phase``, ``gt_size``, ``use_hflip``, ``use_rot``, ``cache`` (keep
    decoded images in memory, default true), ``io_backend`` (``disk`` only).
    """

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        backend = (opt.get("io_backend") or {"type": "disk"}).get("type", "disk")
        if backend != "disk":
            raise ValueError(f"BicubicPairDataset reads image folders from disk; io_backend {backend!r} "
                             "is not supported")
        roots = opt["dataroot_gt"]
        self.paths = [p for root in ([roots] if isinstance(roots, str) else roots) for p in list_images(root)]
        self.scale = int(opt["scale"])
        self.train = opt.get("phase", "train") == "train"
        if self.train and int(opt.get("gt_size", 0)) % self.scale:
            raise ValueError(f"gt_size {opt.get('gt_size')} is not a multiple of scale {self.scale}")
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> np.ndarray:
        img = self._cache.get(index)
        if img is None:
            img = cv2.imread(self.paths[index], cv2.IMREAD_COLOR)
            if img is None:
                raise OSError(f"cannot read image {self.paths[index]!r}")
            img = img.astype(np.float32) / 255.0
            if self.opt.get("cache", True):
                self._cache[index] = img
        return img

    def __getitem__(self, index: int) -> dict[str, Any]:
        from basicsr.data.transforms import augment
        from basicsr.utils import img2tensor
        from basicsr.utils.matlab_functions import imresize

        s = self.scale
        hr = self._read(index)
        if self.train:
            gt = int(self.opt["gt_size"])
            margin = 2 * s  # the antialiased bicubic kernel reaches 2 LR pixels
            h, w = hr.shape[:2]
            if h < gt or w < gt:
                raise ValueError(f"image {self.paths[index]!r} ({w}x{h}) is smaller than gt_size {gt}")
            # LR-aligned crop: origin and margin are multiples of the scale
            top, left = s * random.randint(0, (h - gt) // s), s * random.randint(0, (w - gt) // s)
            t0, l0 = max(top - margin, 0), max(left - margin, 0)
            b0 = t0 + (min(top + gt + margin, h) - t0) // s * s
            r0 = l0 + (min(left + gt + margin, w) - l0) // s * s
            big = np.ascontiguousarray(hr[t0:b0, l0:r0])
            lr_big = imresize(big, 1 / s)
            lt, ll = (top - t0) // s, (left - l0) // s
            img_lq = lr_big[lt:lt + gt // s, ll:ll + gt // s]
            img_gt = hr[top:top + gt, left:left + gt]
            img_gt, img_lq = augment([np.ascontiguousarray(img_gt), np.ascontiguousarray(img_lq)],
                                     self.opt.get("use_hflip", True), self.opt.get("use_rot", True))
        else:
            h, w = hr.shape[:2]
            img_gt = np.ascontiguousarray(hr[: h - h % s, : w - w % s])
            img_lq = imresize(img_gt, 1 / s)
        img_lq = np.clip(img_lq, 0.0, 1.0).astype(np.float32)
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        path = self.paths[index]
        return {"lq": img_lq, "gt": img_gt, "lq_path": path, "gt_path": path}
