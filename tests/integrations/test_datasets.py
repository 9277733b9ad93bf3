"""BicubicPairDataset: LR made on the fly matches the benchmark's LR files."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from bsr_plugin.integrations.basicsr.datasets import BicubicPairDataset


def _lr_file(hr_path: str, scale: int) -> np.ndarray:
    path = hr_path.replace("/HR/", f"/LR_bicubic/X{scale}/").replace(".png", f"x{scale}.png")
    return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


@pytest.mark.parametrize("scale", [2, 4])
def test_crops_are_aligned_with_the_whole_image_lr(datasets_dir, scale):
    ds = BicubicPairDataset({"dataroot_gt": str(datasets_dir / "Set5" / "HR"), "scale": scale, "phase": "train",
                             "gt_size": 12 * scale, "use_hflip": False, "use_rot": False})
    random.seed(0)
    for i in range(len(ds)):
        item = ds[i]
        lq, gt = item["lq"].permute(1, 2, 0).numpy(), item["gt"]
        assert lq.shape == (12, 12, 3) and tuple(gt.shape) == (3, 12 * scale, 12 * scale)
        ref = _lr_file(ds.paths[i], scale)
        # find the crop in the reference LR file: it must match within the files' rounding
        best = min(np.abs(ref[t:t + 12, left:left + 12] - lq).max()
                   for t in range(ref.shape[0] - 11) for left in range(ref.shape[1] - 11))
        assert best * 255 <= 2.0


def test_val_pair_is_the_whole_image(datasets_dir):
    ds = BicubicPairDataset({"dataroot_gt": str(datasets_dir / "Set5" / "HR"), "scale": 4, "phase": "val"})
    item = ds[0]
    ref = _lr_file(ds.paths[0], 4)
    assert tuple(item["lq"].shape[1:]) == ref.shape[:2]
    assert np.abs(item["lq"].permute(1, 2, 0).numpy() - ref).max() * 255 <= 3.0


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BicubicPairDataset({"dataroot_gt": str(tmp_path / "nope"), "scale": 2})
    with pytest.raises(FileNotFoundError, match="holds no images"):
        BicubicPairDataset({"dataroot_gt": str(tmp_path), "scale": 2})
