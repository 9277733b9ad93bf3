"""The bytes of a packed model file, and the checks that run before anything is built.

Layout (all integers little-endian)::

    magic        8 bytes   b"BSRPACK\\0"
    version      uint32    FORMAT_VERSION (2; version 1 files are read too)
    manifest_n   uint64    bytes of the compressed manifest
    blobs_n      uint64    bytes of the tensor data
    manifest     zlib-compressed UTF-8 JSON
    blobs        raw tensor bytes, at the offsets the manifest gives (relative to the blobs)
    sha256       32 bytes  SHA-256 of everything before it

The manifest (version 2)::

    format, format_version, bsr_plugin_version, torch_version, byteorder, model_class, fp_dtype,
    config:  the BinarizeConfig dict (or null)
    build:   {"builder": <registered builder name>, "spec": {...}} (or null)
    binary_layers: [{name, class, weight_shape, options (LayerOptions, resolved shortcut),
                     stored_scale ("learned" | "none"), bias}]
    tensors: [{name, kind ("signs" | "scale" | "fp"), dtype ("bits" or a torch dtype name),
               shape, offset, nbytes}]

:func:`read_packed` refuses (:class:`~bsr_plugin.PackedFormatError`, with the file's name and
the fix) a file that is not a packed model, has another format version, is truncated, longer
than it says or corrupt, or whose manifest has a field of the wrong type or range, a tensor
that does not fit its bytes, overlapping tensors or an unknown layer class. The SHA-256 only
detects accidents (anyone can recompute it): the checks do not trust it. Nothing is built and
no tensor larger than the file is allocated before all of them pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import zlib
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ..conversion import BinarizeConfig
from ..core.bits import pack_signs, packed_size, unpack_signs
from ..core.layers import TRAINING_BUFFERS, BinaryLayerMixin
from ..core.options import LayerOptions
from ..core.registry import binary_types
from ..errors import ConfigError, PackedFormatError
from ..fileio import atomic_write, open_regular

MAGIC = b"BSRPACK\x00"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct("<8sIQQ")
_DIGEST = 32
SUFFIX = ".bsrpack"
MAX_DIM = 2**31
MAX_NUMEL = 2**40

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
KINDS = ("signs", "scale", "fp")

PathLike = Union[str, "os.PathLike[str]"]


def refuse(path: Any, message: str) -> PackedFormatError:
    return PackedFormatError(f"{path}: {message}")


def raw_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# -- a binarized layer's entry ------------------------------------------------------------
# A packed file keeps, of a binarized layer, the signs of its latent weight (1 bit each) and
# alpha; every other state entry (bias, RSign, RPReLU) is an ordinary tensor, and the training
# records (LAYER_KEYS minus weight and scale) are not kept.
LAYER_KEYS = ("weight", "scale") + TRAINING_BUFFERS
LAYER_ENTRY_KEYS = ("name", "class", "weight_shape", "options", "stored_scale", "bias")


def layer_entry(layer: BinaryLayerMixin) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(entry, tensors)``: a binarized layer's manifest entry (without its name) and its
    binary tensors: ``weight``, the sign bits (:func:`~bsr_plugin.core.bits.pack_signs`), and
    ``scale``, alpha per output channel (absent for ``scale: none``)."""
    w = layer.weight.detach()
    tensors = {"weight": pack_signs(w)}
    alpha = layer.alpha()
    if alpha is not None:
        tensors["scale"] = alpha.detach().clone()
    entry = {"class": type(layer).__name__, "weight_shape": list(w.shape), "options": layer.options.to_dict(),
             "stored_scale": "none" if alpha is None else "learned", "bias": layer.bias is not None}
    return entry, tensors


def entry_mismatch(layer: BinaryLayerMixin, entry: dict[str, Any]) -> list[str]:
    """How ``layer`` differs from a packed ``entry`` in what its output depends on (class,
    weight shape, bias, shortcut, RSign, RPReLU, whether it has a scale)."""
    options = entry["options"]
    got = dict(cls=type(layer).__name__, shape=list(layer.weight.shape), bias=layer.bias is not None,
               shortcut=layer.shortcut, rsign=layer.rsign, rprelu=layer.rprelu, scaled=layer.options.scale != "none")
    want = dict(cls=entry["class"], shape=list(entry["weight_shape"]), bias=entry["bias"],
                shortcut=options["shortcut"], rsign=options.get("rsign", False),
                rprelu=options.get("rprelu", False), scaled=entry["stored_scale"] != "none")
    return [f"{k} {got[k]} (file: {want[k]})" for k in got if got[k] != want[k]]


@torch.no_grad()
def load_layer_entry_(layer: BinaryLayerMixin, entry: dict[str, Any], signs: Tensor,
                      scale: Optional[Tensor]) -> None:
    """Give ``layer`` the binary state of a packed ``entry`` (its packed sign bytes and scale;
    see :meth:`~bsr_plugin.core.layers.BinaryLayerMixin.set_signs_`); a layer that does not
    match the entry is a :class:`ConfigError` naming each difference."""
    problems = entry_mismatch(layer, entry)
    if problems:
        raise ConfigError("; ".join(problems))
    layer.set_signs_(unpack_signs(signs, tuple(layer.weight.shape), dtype=layer.weight.dtype), scale)


# -- writing --------------------------------------------------------------------------------
class Blobs:
    """Tensor bytes in file order, with their manifest entries."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, name: str, kind: str, t: Tensor, bits_shape: Optional[list[int]] = None) -> int:
        """Store ``t`` (for ``signs``: the packed bytes of a weight of ``bits_shape``); returns its bytes."""
        data = raw_bytes(t)
        dtype, shape = ("bits", bits_shape) if kind == "signs" else (DTYPE_NAMES[t.dtype], list(t.shape))
        self.entries.append(dict(name=name, kind=kind, dtype=dtype, shape=shape, offset=self.size, nbytes=len(data)))
        self.chunks.append(data)
        self.size += len(data)
        return len(data)


def write_file(path: PathLike, manifest: dict[str, Any], blobs: Blobs) -> None:
    """Write header, manifest, blobs and checksum atomically (temporary file, fsync, rename)."""
    try:
        text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the model's bsr_config/bsr_build cannot be written as JSON ({err}); keep them to plain "
                          "numbers, strings, lists and dicts") from err
    packed_manifest = zlib.compress(text.encode("utf-8"), 9)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(packed_manifest), blobs.size)
    digest = hashlib.sha256(header)
    digest.update(packed_manifest)
    for chunk in blobs.chunks:
        digest.update(chunk)
    with atomic_write(path) as fh:  # a reader never sees a half-written file; an old file survives a failed write
        fh.write(header)
        fh.write(packed_manifest)
        for chunk in blobs.chunks:
            fh.write(chunk)
        fh.write(digest.digest())


# -- reading --------------------------------------------------------------------------------
def _is_int(v: Any, low: int = 0, high: int = MAX_NUMEL) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _shape_ok(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) <= 8 and all(_is_int(s, 0, MAX_DIM) for s in shape) \
        and math.prod(shape) <= MAX_NUMEL


def _tensor_problems(t: Any, blobs_n: int) -> Optional[str]:
    if not isinstance(t, dict) or set(t) != {"name", "kind", "dtype", "shape", "offset", "nbytes"}:
        return f"malformed tensor entry {str(t)[:200]}"
    if not isinstance(t["name"], str) or t["kind"] not in KINDS:
        return f"tensor entry {str(t)[:200]}: bad name or kind"
    if not (t["dtype"] == "bits" if t["kind"] == "signs" else t["dtype"] in DTYPES):
        return f"tensor {t['name']!r}: dtype {t['dtype']!r} does not fit kind {t['kind']!r}"
    if not _shape_ok(t["shape"]) or not _is_int(t["offset"]) or not _is_int(t["nbytes"]):
        return f"tensor {t['name']!r}: shape, offset or size is not a list of ints / an int in range"
    numel = math.prod(t["shape"])
    size = packed_size(numel) if t["dtype"] == "bits" else numel * DTYPES[t["dtype"]].itemsize
    if t["nbytes"] != size or t["offset"] + t["nbytes"] > blobs_n:
        return (f"tensor {t['name']!r}: {t['nbytes']} bytes at offset {t['offset']} do not hold shape {t['shape']} "
                f"in {t['dtype']} within the {blobs_n} data bytes")
    return None


def _layer_problems(e: Any) -> Optional[str]:
    if not isinstance(e, dict) or set(e) != set(LAYER_ENTRY_KEYS):
        return f"malformed binarized-layer entry {str(e)[:200]}"
    if not isinstance(e["name"], str) or e["class"] not in {t.__name__ for t in binary_types()}:
        return f"binarized layer {str(e['name'])[:80]!r}: unknown class {str(e['class'])[:80]!r}"
    if not _shape_ok(e["weight_shape"]) or not 2 <= len(e["weight_shape"]) <= 5 or 0 in e["weight_shape"]:
        return f"binarized layer {e['name']!r}: bad weight shape {str(e['weight_shape'])[:80]}"
    if e["stored_scale"] not in ("learned", "none") or not isinstance(e["bias"], bool):
        return f"binarized layer {e['name']!r}: bad stored_scale or bias"
    try:
        LayerOptions.from_dict(e["options"])
    except ConfigError as err:
        return f"binarized layer {e['name']!r}: {err}"
    return None


def _from_v1(manifest: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest in version-2 form (v1 knew BasicSR specs and fewer layer options)."""
    out = dict(manifest)
    arch, config = manifest.get("arch"), manifest.get("config")
    out["build"] = ({"builder": "basicsr", "spec": {"type": "BinarizedArch", "arch": arch, "binarize": config}}
                    if isinstance(arch, dict) and isinstance(config, dict) else None)
    layers = []
    for e in manifest.get("binary_layers") or []:
        if not isinstance(e, dict):
            layers.append(e)
            continue
        options = {"prior_a": e.get("prior_a"), "act_grad": e.get("act_grad"), "scale": e.get("scale_mode"),
                   "shortcut": e.get("shortcut")}
        layers.append({k: e.get(k) for k in ("name", "class", "weight_shape", "stored_scale", "bias")}
                      | {"options": options})
    out["binary_layers"] = layers
    out.pop("arch", None)
    return out


def check_manifest(path: Any, manifest: Any, blobs_n: int, version: int) -> dict[str, Any]:
    """Every field's type and range (see the module docstring); returns the version-2 form."""
    if not isinstance(manifest, dict) or manifest.get("format") != "bsr_plugin.packed":
        raise refuse(path, "the manifest is not a bsr_plugin packed-model manifest")
    if version == 1:
        manifest = _from_v1(manifest)
    for key in ("config", "build", "binary_layers", "tensors", "byteorder"):
        if key not in manifest:
            raise refuse(path, f"the manifest lacks {key!r}")
    if manifest["byteorder"] != sys.byteorder:
        raise refuse(path, f"written on a {manifest['byteorder']}-endian machine; this one is {sys.byteorder}-endian")
    if not isinstance(manifest["tensors"], list) or not isinstance(manifest["binary_layers"], list):
        raise refuse(path, "the manifest's tensors and binary_layers must be lists")
    for t in manifest["tensors"]:
        problem = _tensor_problems(t, blobs_n)
        if problem:
            raise refuse(path, problem)
    _check_layout(path, manifest["tensors"])
    for e in manifest["binary_layers"]:
        problem = _layer_problems(e)
        if problem:
            raise refuse(path, problem)
    if manifest["config"] is not None:
        try:
            BinarizeConfig.from_dict(manifest["config"])
        except ConfigError as err:
            raise refuse(path, f"the stored binarize config is not valid: {err}") from None
    build = manifest["build"]
    if build is not None and (not isinstance(build, dict) or set(build) != {"builder", "spec"}
                              or not isinstance(build["builder"], str) or not isinstance(build["spec"], dict)):
        raise refuse(path, "the manifest's build entry must be {builder: <name>, spec: {...}}")
    problem = fp_parts_problems(manifest.setdefault("fp_parts", None))
    if problem:
        raise refuse(path, f"the manifest's fp_parts entry: {problem}")
    return manifest


FP_PARTS_CHOICES = ("auto", "fp32", "bf16", "int8")
_CALIBRATION_KEYS = {"index", "in_channels", "out_channels", "kernel_size", "min", "max", "scale", "zero_point"}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _calibration_problem(name: Any, e: Any) -> Optional[str]:
    if not isinstance(name, str) or not isinstance(e, dict) or set(e) != _CALIBRATION_KEYS:
        return f"calibration entry {str(name)[:80]!r} is malformed"
    ints = [e["index"], e["in_channels"], e["out_channels"], *(e["kernel_size"] if isinstance(e["kernel_size"], list)
                                                                else [None])]
    if not all(_is_int(v, 0, MAX_DIM) for v in ints) or len(e["kernel_size"]) != 2:
        return f"calibration entry {name!r}: index, channels and kernel size must be whole numbers"
    if not (_finite(e["min"]) and _finite(e["max"]) and _finite(e["scale"]) and e["scale"] > 0
            and _is_int(e["zero_point"], 0, 255)):
        return f"calibration entry {name!r}: min, max and scale must be finite (scale > 0), zero_point in 0..255"
    return None


def fp_parts_problems(entry: Any) -> Optional[str]:
    """What is wrong with a manifest's ``fp_parts`` entry (``None``: nothing; the entry itself
    may be ``None``: full-precision parts in fp32): ``{precision, calibration, images}`` with
    ``precision`` one of :data:`FP_PARTS_CHOICES` and ``calibration`` ``None`` or the per-conv
    activation ranges of :func:`~bsr_plugin.deploy.engine.lowp.calibrate_fp_parts`."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) != {"precision", "calibration", "images"}:
        return "must be {precision, calibration, images}"
    if entry["precision"] not in FP_PARTS_CHOICES or not _is_int(entry["images"], 0, 1 << 20):
        return f"precision must be one of {FP_PARTS_CHOICES} and images a count"
    calibration = entry["calibration"]
    if calibration is None:
        return "precision int8 needs a calibration" if entry["precision"] == "int8" else None
    if not isinstance(calibration, dict) or len(calibration) > 100_000:
        return "calibration must be a mapping of conv names to activation ranges"
    return next((p for p in (_calibration_problem(n, e) for n, e in calibration.items()) if p), None)


def _check_layout(path: Any, tensors: list[dict[str, Any]]) -> None:
    """Names unique; tensors do not overlap."""
    names: set[str] = set()
    end = 0
    for t in sorted(tensors, key=lambda t: t["offset"]):
        if t["name"] in names:
            raise refuse(path, f"tensor {t['name']!r} is stored twice")
        names.add(t["name"])
        if t["offset"] < end:
            raise refuse(path, f"tensor {t['name']!r} overlaps the tensor before it")
        end = t["offset"] + t["nbytes"]


def _header(path: Any, data: bytes) -> tuple[int, int, int]:
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise refuse(path, f"not a bsr_plugin packed model (it does not start with {MAGIC!r}); write one with "
                           "bsr_plugin.export_packed(model, path) or `bsr export`")
    if len(data) < _HEADER.size:
        raise refuse(path, f"truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    _, version, manifest_n, blobs_n = _HEADER.unpack_from(data)
    if version not in READABLE_VERSIONS:
        from ..version import __version__

        raise refuse(path, f"packed format version {version}, but this bsr_plugin ({__version__}) reads format "
                           f"versions {', '.join(map(str, READABLE_VERSIONS))}; load it with the bsr_plugin version "
                           "that wrote it, or export the model again with this one")
    expected = _HEADER.size + manifest_n + blobs_n + _DIGEST
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise refuse(path, f"{what}: the header announces {expected:,} bytes, the file has {len(data):,}")
    if hashlib.sha256(memoryview(data)[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise refuse(path, "corrupt: the SHA-256 checksum does not match the contents (the file was changed or "
                           "damaged after it was written); export it again")
    return version, manifest_n, blobs_n


def read_packed(path: PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and verify a packed file: ``(manifest, {name: tensor})`` (manifest in version-2
    form). Binarized weights come back as their packed ``uint8`` sign bytes (``kind ==
    "signs"``). Raises :class:`~bsr_plugin.PackedFormatError` for any file that fails a check
    of the module docstring."""
    try:
        with open_regular(path) as fh:  # a FIFO or device is refused, never waited on
            data = fh.read()
    except OSError as err:
        raise refuse(path, f"cannot read it ({err.strerror or err})") from None
    version, manifest_n, blobs_n = _header(path, data)
    start = _HEADER.size
    try:
        manifest = json.loads(zlib.decompress(data[start:start + manifest_n]).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise refuse(path, f"unreadable manifest ({err})") from None
    manifest = check_manifest(path, manifest, blobs_n, version)
    base = start + manifest_n
    tensors = {}
    for t in manifest["tensors"]:
        raw = bytearray(data[base + t["offset"]:base + t["offset"] + t["nbytes"]])
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        tensors[t["name"]] = flat if t["dtype"] == "bits" else flat.view(DTYPES[t["dtype"]]).reshape(t["shape"])
    return manifest, tensors
