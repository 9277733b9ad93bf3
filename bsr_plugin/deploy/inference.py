"""Running a super-resolution network on image files: reading and writing images (8 and
16 bits), tiled inference for images that do not fit in memory, and a progress line.

Images are read and written with OpenCV (``opencv-python``, installed with the ``basicsr``
extra); a missing OpenCV is a :class:`~bsr_plugin.CLIError` naming the package. Outputs are
written atomically (a temporary file in the same folder, fsync, then a rename).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CLIError
from ..fileio import not_regular, open_regular, write_bytes_atomic

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff", ".ppm", ".pgm")
_PIL_LOCK = threading.Lock()


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise CLIError("reading and writing images needs OpenCV: pip install opencv-python-headless "
                       "(or the basicsr extra)") from None
    return cv2


DEFAULT_MAX_PIXELS = 2**28
"""Largest input image (width x height, 268 megapixels: 16384 x 16384) read by default: its
size is read from the header and checked before any pixel is decoded (``--max-pixels``)."""


def header_size(path: str) -> Optional[tuple[int, int]]:
    """``(width, height)`` from the image file's header, without decoding a pixel (Pillow's lazy
    open, its decompression-bomb limit lifted for this look only); None when Pillow is not
    installed or cannot read the header (OpenCV then decides)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    with _PIL_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return tuple(im.size)  # type: ignore[return-value]
        except (OSError, SyntaxError, ValueError):
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_image(path: str, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Tensor, int]:
    """An image file as a ``1 x C x H x W`` float tensor in [0, 1] (RGB order, as BasicSR) and
    its bit depth (8 or 16; 16-bit images keep their precision). Gray images are repeated to
    RGB for 3-channel networks; an alpha channel is refused. The size in the header is checked
    against ``max_pixels`` before decoding; a FIFO or device is refused, never waited on; a file
    OpenCV cannot decode is one :class:`~bsr_plugin.CLIError`."""
    cv2 = _cv2()
    why = not_regular(path)
    if why is not None:
        raise CLIError(f"input image {path} {why}")
    size = header_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise CLIError(f"{path}: its header declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, above the "
                       f"limit of {max_pixels:,} (--max-pixels); crop or downscale it, or raise --max-pixels")
    with open_regular(path) as fh:
        data = np.frombuffer(fh.read(), np.uint8)
    img = _decode(path, data, cv2)
    if img.dtype not in (np.uint8, np.uint16):
        raise CLIError(f"{path}: {img.dtype} pixels are not supported; give an 8- or 16-bit image")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise CLIError(f"{path}: {img.shape[1]}x{img.shape[0]} pixels, above the limit of {max_pixels:,} "
                       "(--max-pixels); crop or downscale it, or raise --max-pixels")
    depth = 16 if img.dtype == np.uint16 else 8
    return _to_tensor(path, img, channels, depth, cv2), depth


def _decode(path: str, data: np.ndarray, cv2: Any) -> np.ndarray:
    """OpenCV's decoding of the file's bytes, its own log silenced; any failure is one line."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as err:
        reason = next((line for line in str(err).splitlines() if "error:" in line), str(err)).split("error:")[-1]
        raise CLIError(f"cannot decode {path} as an image ({reason.strip()[:160]})") from None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None:
        raise CLIError(f"cannot read {path} as an image (not an image file, or a format OpenCV cannot decode)")
    return img


def _to_tensor(path: str, img: np.ndarray, channels: int, depth: int, cv2: Any) -> Tensor:
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 4:
        raise CLIError(f"{path} has an alpha channel; the network takes RGB: remove the alpha first")
    if img.shape[2] == 3 and channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 1 and channels == 3:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 3 and channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif img.shape[2] != channels:
        raise CLIError(f"{path} has {img.shape[2]} channels; the network takes {channels}")
    scale = 65535.0 if depth == 16 else 255.0
    return torch.from_numpy(img.astype(np.float32) / scale).permute(2, 0, 1).unsqueeze(0).contiguous()


def check_output_path(path: str, depth: int = 8, channels: int = 3) -> None:
    """Refuse, before any work, an output OpenCV cannot write (an unknown suffix, or one whose
    encoder does not take ``channels`` x ``depth``-bit images), that would lose 16-bit precision,
    or whose folder is not writable."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise CLIError(f"cannot write {path}: use an image file name ({', '.join(IMAGE_SUFFIXES)})")
    if depth == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        raise CLIError(f"the input is a 16-bit image; {suffix} would lose its precision: write a .png or .tif")
    if _encode(suffix, np.zeros((8, 8, channels), np.uint16 if depth == 16 else np.uint8)) is None:
        raise CLIError(f"cannot write {path}: OpenCV cannot write a {channels}-channel {depth}-bit image as {suffix}; "
                       "use .png")
    parent = Path(path).resolve().parent
    if parent.exists() and not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write {path}: the folder {parent} is not writable; choose another output folder")


def _encode(suffix: str, arr: np.ndarray) -> Optional[bytes]:
    """``arr`` (OpenCV channel order) encoded as a ``suffix`` file, or None where OpenCV cannot
    (its own error log silenced: the caller reports the problem in one line)."""
    cv2 = _cv2()
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        ok, buf = cv2.imencode(suffix, arr)
    except cv2.error:
        ok, buf = False, None
    finally:
        cv2.utils.logging.setLogLevel(level)
    return buf.tobytes() if ok else None


def to_array(img: Tensor, depth: int) -> np.ndarray:
    """A ``1 x C x H x W`` tensor in [0, 1] as an H x W x C uint8/uint16 array (clamped, rounded)."""
    peak = 65535.0 if depth == 16 else 255.0
    arr = (img[0].detach().clamp(0, 1) * peak).round().permute(1, 2, 0).cpu().numpy()
    return arr.astype(np.uint16 if depth == 16 else np.uint8)


def write_image(path: str, arr: np.ndarray) -> None:
    """Write an RGB (or gray) H x W x C array atomically: encoded in memory first, then written
    to a temporary file that replaces ``path`` (a full disk leaves no partial image behind)."""
    cv2 = _cv2()
    if arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    data = _encode(Path(path).suffix.lower(), arr)
    if data is None:
        raise CLIError(f"cannot write image {path}: OpenCV cannot encode a {arr.shape[2]}-channel {arr.dtype} image "
                       "in that format; use .png")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


class Progress:
    """A one-line progress bar on stderr when it is a terminal (log lines otherwise)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.tty = sys.stderr.isatty()

    def step(self) -> None:
        self.done += 1
        if self.tty:
            filled = int(30 * self.done / max(self.total, 1))
            end = "\n" if self.done >= self.total else ""
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {self.label}{end}")
            sys.stderr.flush()
        else:
            logger.info("%d/%d %s", self.done, self.total, self.label)


def _scale_of(x: Tensor, y: Tensor) -> int:
    sh, sw = y.shape[2] / x.shape[2], y.shape[3] / x.shape[3]
    if sh != sw or sh != int(sh):
        raise CLIError(f"the network maps {x.shape[3]}x{x.shape[2]} to {y.shape[3]}x{y.shape[2]}: not an integer "
                       "scale, so it cannot be tiled")
    return int(sh)


@torch.no_grad()
def upscale(net: nn.Module, x: Tensor, depth: int, tile: int = 0, tile_pad: Optional[int] = None,
            progress: Optional[Progress] = None) -> np.ndarray:
    """Run ``net`` on ``x`` (``1 x C x H x W``) and return the output as an image array.

    ``tile > 0`` splits the input into ``tile x tile`` pieces, each run with ``tile_pad``
    pixels of context on every side and cropped back (Real-ESRGAN's ``--tile``): the output
    equals the whole-image output wherever the network's receptive field fits in the context.
    ``tile_pad=None`` (default) is the network's receptive radius
    (:func:`bsr_plugin.deploy.tiling.probe`; ``UNKNOWN_RADIUS_PAD`` where it cannot be
    computed), so tiles give exactly the whole-image output. Only one tile's activations and the output array are in
    memory at a time."""
    if tile > 0 and tile_pad is None:
        from .tiling import UNKNOWN_RADIUS_PAD, probe

        radius = probe(net, x.shape[1]).radius
        tile_pad = UNKNOWN_RADIUS_PAD if radius is None else radius
    if tile <= 0:
        y = net(x)
        if progress:
            progress.step()
        return to_array(y, depth)
    _, _, h, w = x.shape
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    out: Optional[np.ndarray] = None
    scale = 1
    for r in range(rows):
        for c in range(cols):
            y0, x0 = r * tile, c * tile
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - tile_pad, 0), max(x0 - tile_pad, 0)
            py1, px1 = min(y1 + tile_pad, h), min(x1 + tile_pad, w)
            piece = x[:, :, py0:py1, px0:px1]
            y = net(piece)
            if out is None:
                scale = _scale_of(piece, y)
                out = np.empty((h * scale, w * scale, y.shape[1]), dtype=np.uint16 if depth == 16 else np.uint8)
            crop = y[:, :, (y0 - py0) * scale:(y1 - py0) * scale, (x0 - px0) * scale:(x1 - px0) * scale]
            out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = to_array(crop, depth)
            if progress:
                progress.step()
    assert out is not None
    return out


def tiles_of(x: Tensor, tile: int) -> int:
    """How many tiles :func:`upscale` runs for ``x`` (1 without tiling)."""
    return 1 if tile <= 0 else math.ceil(x.shape[2] / tile) * math.ceil(x.shape[3] / tile)
