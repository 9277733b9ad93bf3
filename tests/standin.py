"""A small stand-in for the shared benchmark datasets, for machines without them (a fresh
clone): the same layout (``Set5/HR``, ``Set5/LR_bicubic/X2|X3|X4/<name>x<s>.png``, ``Set14``,
``B100`` likewise, ``T91/HR``, ``BSD200/HR``) made from the photos that ship inside
scikit-image (as ``bsr demo`` does), with LR files made as the real ones were: MATLAB-style
bicubic (BasicSR's ``imresize``, antialiased) of the HR cropped at the top left to a multiple
of the scale. Images are small (about 100 pixels a side) so the end-to-end tests stay fast;
sizes are not all multiples of 3 or 4, and one Set14 image is grayscale, as in the real sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
          "ihc.png", "retina.jpg", "brick.png", "grass.png", "gravel.png", "camera.png", "moon.png", "coins.png",
          "page.png", "cell.png", "motorcycle_right.png", "color.png")
SETS = {"Set5": 5, "Set14": 8, "B100": 6, "T91": 12, "BSD200": 8}
WITH_LR = ("Set5", "Set14", "B100")
SCALES = (2, 3, 4)
GRAY = ("Set14", 2)
"""(set, index) of the one grayscale image, like Set14's ``bridge``."""


def _photo(src: Path, name: str, width: int, height: int) -> np.ndarray:
    """A scikit-image photo, resized (area) to cover ``width`` x ``height`` and centre-cropped."""
    import cv2

    img = cv2.imread(str(src / name), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"scikit-image sample {name} is missing from {src}")
    f = max(width / img.shape[1], height / img.shape[0])
    img = cv2.resize(img, (max(width, round(img.shape[1] * f)), max(height, round(img.shape[0] * f))),
                     interpolation=cv2.INTER_AREA)
    top, left = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
    return np.ascontiguousarray(img[top:top + height, left:left + width])


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(modcrop(hr, scale), 1/scale, 'bicubic')`` as uint8 (how benchmark LR files are made)."""
    from basicsr.utils.matlab_functions import imresize

    h, w = hr.shape[:2]
    crop = hr[: h - h % scale, : w - w % scale].astype(np.float32) / 255.0
    lr = imresize(crop if crop.ndim == 3 else crop[:, :, None], 1 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8).reshape(lr.shape[:2] + hr.shape[2:])


def build_standin(root: Path) -> Path:
    """Write the stand-in under ``root`` (``root/Set5/HR/...``); returns ``root``."""
    import cv2
    import skimage.data

    from bsr_plugin.integrations.basicsr.shims import import_basicsr

    import_basicsr()
    src = Path(skimage.data.__file__).parent
    offset = 0
    for set_name, count in SETS.items():
        for i in range(count):
            name = PHOTOS[(offset + i) % len(PHOTOS)]
            hr = _photo(src, name, 96 + 7 * i, 88 + 5 * i)
            if (set_name, i) == GRAY:
                hr = cv2.cvtColor(hr, cv2.COLOR_BGR2GRAY)
            stem = f"{Path(name).stem}_{i}"
            (root / set_name / "HR").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / set_name / "HR" / f"{stem}.png"), hr)
            for s in SCALES if set_name in WITH_LR else ():
                folder = root / set_name / "LR_bicubic" / f"X{s}"
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"{stem}x{s}.png"), bicubic_lr(hr, s))
        offset += count
    return root
