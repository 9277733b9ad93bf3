"""A BasicSR dataset for HR-only image folders (T91, BSD200, photos): the LR input is made on
the fly with MATLAB-style bicubic downsampling (``basicsr.utils.matlab_functions.imresize``,
antialiased, as the benchmark LR files were made). Listing, reading, cropping and augmenting
are BasicSR's own helpers (``scandir``, ``imfrombytes``, ``paired_random_crop``, ``augment``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from torch.utils import data

from ...errors import OptionsError

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str) -> list[str]:
    """Image files directly in ``folder``, sorted; a clear error if there are none."""
    from basicsr.utils import scandir

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"dataset folder {folder!r} does not exist")
    suffixes = IMG_EXTENSIONS + tuple(e.upper() for e in IMG_EXTENSIONS)
    paths = sorted(scandir(folder, suffix=suffixes, full_path=True))
    if not paths:
        raise FileNotFoundError(f"dataset folder {folder!r} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return paths


class BicubicPairDataset(data.Dataset):
    """HR images from a folder; LR = bicubic downsampling of the whole HR image (cropped to a
    multiple of ``scale``), exactly as benchmark LR files are made.

    Train phase: a random ``gt_size`` HR crop at a position that is a multiple of ``scale`` and
    the matching LR crop, then flips and rotations; images smaller than the crop are left out
    (with a warning). Val phase: the whole pair.

    Options (BasicSR dataset dict): ``dataroot_gt`` (a folder of HR images), ``scale`` (set by
    BasicSR), ``phase``, ``gt_size``, ``use_hflip``, ``use_rot``, ``cache`` (default true: keep
    every decoded HR image (uint8) and its LR in memory, so the bicubic runs once per image;
    false recomputes it for every sample, which is slow for large images), ``io_backend``
    (``disk`` only).
    """

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        backend = (opt.get("io_backend") or {"type": "disk"}).get("type", "disk")
        if backend != "disk":
            raise OptionsError(f"BicubicPairDataset reads image folders from disk; io_backend {backend!r} "
                             "is not supported")
        self.paths = list_images(opt["dataroot_gt"])
        self.scale = int(opt["scale"])
        self.train = opt.get("phase", "train") == "train"
        if self.train:
            gt = int(opt.get("gt_size", 0))
            if gt <= 0 or gt % self.scale:
                raise OptionsError(f"gt_size {opt.get('gt_size')} must be a positive multiple of scale {self.scale}")
            self.paths = self._large_enough(self.paths, gt)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _large_enough(paths: list[str], gt: int) -> list[str]:
        """Drop (and say so) training images smaller than a ``gt`` x ``gt`` crop."""
        from PIL import Image

        keep = []
        for p in paths:
            with Image.open(p) as im:
                if min(im.size) >= gt:
                    keep.append(p)
        if not keep:
            raise OptionsError(f"every image in {os.path.dirname(paths[0])!r} is smaller than gt_size {gt}")
        if len(keep) < len(paths):
            logger.warning("BicubicPairDataset: %d of %d images are smaller than gt_size %d and are not used",
                           len(paths) - len(keep), len(paths), gt)
        return keep

    def __len__(self) -> int:
        return len(self.paths)

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(HR uint8 cropped to a multiple of scale, LR float32 in [0, 1]), BGR."""
        pair = self._cache.get(index)
        if pair is None:
            from basicsr.utils import imfrombytes
            from basicsr.utils.matlab_functions import imresize

            with open(self.paths[index], "rb") as fh:
                try:
                    img = imfrombytes(fh.read(), float32=False)
                except Exception as err:  # cv2 returns None for undecodable bytes: imfrombytes fails on it
                    raise OSError(f"cannot read image {self.paths[index]!r}") from err
            if img is None:
                raise OSError(f"cannot read image {self.paths[index]!r}")
            s = self.scale
            h, w = img.shape[:2]
            hr = np.ascontiguousarray(img[: h - h % s, : w - w % s])
            lr = np.clip(imresize(hr.astype(np.float32) / 255.0, 1 / s), 0.0, 1.0).astype(np.float32)
            pair = (hr, lr)
            if self.opt.get("cache", True):
                self._cache[index] = pair
        return pair

    def __getitem__(self, index: int) -> dict[str, Any]:
        from basicsr.data.transforms import augment, paired_random_crop
        from basicsr.utils import img2tensor

        hr, lr = self._pair(index)
        if self.train:
            hr_crop, lr_crop = paired_random_crop(hr, lr, int(self.opt["gt_size"]), self.scale, self.paths[index])
            img_gt, img_lq = hr_crop.astype(np.float32) / 255.0, np.ascontiguousarray(lr_crop)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt.get("use_hflip", True), self.opt.get("use_rot", True))
        else:
            img_gt, img_lq = hr.astype(np.float32) / 255.0, lr
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        path = self.paths[index]
        return {"lq": img_lq, "gt": img_gt, "lq_path": path, "gt_path": path}
