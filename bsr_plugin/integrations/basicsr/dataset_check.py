"""The dataset part of the preflight (:mod:`.options_check`): every file of the dataset folders
is looked at before training starts, by its header only (PIL's lazy ``Image.open(...).size``:
no pixel is decoded, so a DIV2K-sized folder takes seconds), and the number of training
samples is returned for BasicSR's epoch arithmetic.

* ``PairedImageDataset`` (folder mode): BasicSR takes every file of both folders as an image,
  so a file that is not a readable image is a problem; the folders must pair up one to one
  through ``filename_tmpl``; training pairs need ``HR == LR x scale`` exactly (BasicSR's
  ``paired_random_crop`` raises at a random batch otherwise) and ``LR >= gt_size / scale``;
  validation pairs need ``LR == floor(HR / scale)`` (BasicSR crops the HR to ``LR x scale``).
* ``BicubicPairDataset``: every image file must be readable; training needs at least one image
  as large as ``gt_size`` (smaller ones are left out, with a warning, by the dataset).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .datasets import IMG_EXTENSIONS

SHOWN = 3
"""Files named per problem; the rest are counted."""


@dataclass
class Folder:
    """What a dataset folder holds: every file BasicSR would list, the sizes ``(w, h)`` of the
    readable images and the files that are not readable images."""

    path: str
    files: list[str] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def image_size(path: str) -> Optional[tuple[int, int]]:
    """``(width, height)`` from the image's header, or None if it is not a readable image."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError:  # readable, only very large: OpenCV reads it
        return (2**31, 2**31)
    except (OSError, SyntaxError, ValueError):
        return None


def scan(folder: str, images_only: bool) -> Folder:
    """The files directly in ``folder`` as BasicSR lists them (no hidden files, no subfolders);
    ``images_only``: only names with an image extension (what ``BicubicPairDataset`` reads)."""
    out = Folder(folder)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if images_only and not entry.name.lower().endswith(IMG_EXTENSIONS):
            continue
        out.files.append(entry.name)
        size = image_size(entry.path)
        if size is None:
            out.unreadable.append(entry.name)
        else:
            out.sizes[entry.name] = size
    return out


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _unreadable(where: str, folders: tuple[Folder, ...], problems: list[str]) -> None:
    """One problem naming every file of ``folders`` that is not a readable image."""
    bad = [os.path.join(f.path, name) for f in folders for name in f.unreadable]
    if bad:
        problems.append(f"{where}: {len(bad)} file(s) are not readable images ({_listed(bad)}); BasicSR would fail "
                        "on them during training: remove them from the dataset folder or replace them")


def _pair_fits(hr: tuple[int, int], lr: tuple[int, int], scale: int, train: bool) -> bool:
    """Training: ``HR == LR x scale``; validation: ``LR == floor(HR / scale)``."""
    if train:
        return hr == (lr[0] * scale, lr[1] * scale)
    return (hr[0] // scale, hr[1] // scale) == lr


def check_paired(where: str, ds: Mapping[str, Any], scale: int, problems: list[str]) -> Optional[int]:
    """``PairedImageDataset`` in folder mode; returns the number of pairs (None: not counted)."""
    gt, lq = scan(ds["dataroot_gt"], False), scan(ds["dataroot_lq"], False)
    _unreadable(where, (gt, lq), problems)
    tmpl = ds.get("filename_tmpl") or "{}"
    partner = {name: tmpl.format(os.path.splitext(name)[0]) + os.path.splitext(name)[1] for name in gt.files}
    lq_names = set(lq.files)
    lonely_hr = [n for n in gt.files if partner[n] not in lq_names]
    lonely_lr = sorted(set(lq.files) - set(partner.values()))
    if len(gt.files) != len(lq.files) or lonely_hr:
        problems.append(f"{where}: dataroot_gt has {len(gt.files)} files and dataroot_lq {len(lq.files)}; they must "
                        f"pair up through filename_tmpl {tmpl!r}" + (f" (no LR file for {_listed(lonely_hr)})"
                                                                      if lonely_hr else "")
                        + (f" (no HR file for {_listed(lonely_lr)})" if lonely_lr else ""))
    train = ds.get("phase") == "train"
    gt_size = ds.get("gt_size") if isinstance(ds.get("gt_size"), int) else 0
    bad, small = [], []
    for name in gt.files:
        if name not in gt.sizes or partner[name] not in lq.sizes:
            continue
        (hw, hh), (lw, lh) = gt.sizes[name], lq.sizes[partner[name]]
        if not _pair_fits(gt.sizes[name], lq.sizes[partner[name]], scale, train):
            bad.append(f"{name} {hw}x{hh} with LR {lw}x{lh}")
        elif train and min(lw, lh) * scale < gt_size:
            small.append(f"{name} (LR {lw}x{lh})")
    if bad:
        rule = f"HR = LR x {scale} exactly in training" if train else f"LR = HR / {scale} (rounded down)"
        problems.append(f"scale {scale} disagrees with the data in {where}: {len(bad)} of {len(gt.files)} pairs "
                        f"break {rule}: {_listed(bad)}; fix 'scale', the dataset paths or the images"
                        + (" (crop each HR to a multiple of the scale)" if train else ""))
    if small:
        problems.append(f"{where}: {len(small)} training pairs are smaller than gt_size {gt_size}: {_listed(small)}; "
                        "lower gt_size or remove them")
    return len(gt.files)


def check_bicubic(where: str, ds: Mapping[str, Any], scale: int, problems: list[str]) -> Optional[int]:
    """``BicubicPairDataset``; returns the number of images it will use (None: not counted)."""
    folder = scan(ds["dataroot_gt"], True)
    _unreadable(where, (folder,), problems)
    if not folder.files:
        problems.append(f"{where}.dataroot_gt: {folder.path!r} holds no images ({', '.join(IMG_EXTENSIONS)})")
        return None
    if ds.get("phase") != "train" or not isinstance(ds.get("gt_size"), int):
        return len(folder.sizes)
    gt_size = ds["gt_size"]
    used = [n for n, (w, h) in folder.sizes.items() if min(w, h) >= gt_size]
    if folder.sizes and not used:
        largest = max(min(w, h) for w, h in folder.sizes.values())
        problems.append(f"{where}: every image in {folder.path!r} is smaller than gt_size {gt_size} (the largest "
                        f"crop they allow is {largest}); set gt_size to at most {largest // scale * scale}")
    return len(used)
