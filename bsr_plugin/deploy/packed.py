"""A bit-packed model file: ``export_packed(model, path)`` and ``load_packed(path)``.

The file really is small: the sign of every binarized weight is stored as one bit (eight to a
byte, the layout of :mod:`bsr_plugin.packing`), next to the per-channel scales and the
full-precision layers (fp32, or fp16 on request). An EDSR-baseline x4 with full-precision
head, tail and upsampler packs about 4x smaller than its fp32 state dict.

Layout (all integers little-endian)::

    magic        8 bytes   b"BSRPACK\\0"
    version      uint32    FORMAT_VERSION
    manifest_n   uint64    bytes of the compressed manifest
    blobs_n      uint64    bytes of the tensor data
    manifest     zlib-compressed UTF-8 JSON (below)
    blobs        raw tensor bytes, at the offsets the manifest gives (relative to the blobs)
    sha256       32 bytes  SHA-256 of everything before it

The manifest holds the :class:`~bsr_plugin.BinarizeConfig` dict, the float architecture spec
(``model.bsr_arch``, set by the BasicSR architectures), one entry per binarized layer (name,
class, weight shape, scale mode, shortcut, act_grad, prior_a, bias) and one entry per tensor
(name, kind, dtype, shape, offset, length). :func:`load_packed` checks the magic, the
version, the length and the checksum before it reads anything else, so a corrupt, truncated
or version-mismatched file is refused with a :class:`PackedFormatError` and never loaded
half-way.

What is stored, and what comes back:

* binarized weight: its signs only (the latent magnitudes are training state). On load the
  latent weight is ``sign * prior_a`` (``sign`` without a prior), which binarizes to the same
  ``alpha * sign``; ``sign_ref`` is re-armed from it.
* scale ``learned``: stored exactly. Scale ``mean_abs`` is computed from the latent weight at
  run time, which the file no longer has: the file stores the computed alpha and the loaded
  layer becomes a ``learned``-scale layer holding it (same output, bit for bit). Scale
  ``none``: nothing stored.
* every other ``state_dict`` entry (biases of binarized layers, full-precision layers,
  buffers): in its own dtype, or fp16 for floating tensors with ``fp16=True``.

Exactness: binarized convs pad their *binarized* input with +1 (``sign(0) = +1``, see
:mod:`bsr_plugin.layers`), so every binarized layer computes ``conv(sign(pad(x)), alpha *
sign(w))`` with a strictly +-1 input, the same thing an XNOR-popcount kernel computes from
these bits. With fp32 full-precision tensors, the loaded network's outputs equal the exported
network's bit for bit in eval mode. With ``fp16=True`` they do not (the full-precision
weights are rounded); only the binary part stays exact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import struct
import sys
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..core.binarizers import weight_scale
from ..core.bits import pack_signs, packed_size, unpack_signs
from ..core.layers import TRAINING_BUFFERS
from ..core.registry import is_binary
from ..errors import PackedFormatError

logger = logging.getLogger(__name__)

MAGIC = b"BSRPACK\x00"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQQ")
_DIGEST = 32
SUFFIX = ".bsrpack"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_LAYER_KEYS = ("name", "class", "weight_shape", "scale_mode", "stored_scale", "shortcut", "act_grad", "prior_a",
               "bias")
_TENSOR_KEYS = ("name", "kind", "dtype", "shape", "offset", "nbytes")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class PackedInfo:
    """What :func:`export_packed` wrote: sizes in bytes.

    ``theoretical_bytes``: sum of ``ceil(numel / 8)`` over binarized weights plus the bytes of
    every stored scale and full-precision tensor (4 per element in fp32); ``float32_bytes``:
    the float network's fp32 state (every binarized layer back to an fp32 weight and bias).
    """

    path: str
    file_bytes: int
    theoretical_bytes: int
    float32_bytes: int
    binary_layers: int
    fp_dtype: str

    @property
    def overhead(self) -> float:
        """File size over the theoretical packed size, minus 1 (0.01 = 1% larger)."""
        return self.file_bytes / self.theoretical_bytes - 1

    @property
    def ratio(self) -> float:
        """How many times smaller than the float network in fp32."""
        return self.float32_bytes / self.file_bytes

    def __str__(self) -> str:
        return (f"{self.path}: {self.file_bytes:,} bytes ({self.binary_layers} binarized layers, full precision "
                f"in {self.fp_dtype}); theoretical packed size {self.theoretical_bytes:,} bytes "
                f"({100 * self.overhead:+.2f}%); float network in fp32 {self.float32_bytes:,} bytes, "
                f"{self.ratio:.2f}x smaller")


# -- writing --------------------------------------------------------------------------------
def _layer_names(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every binarized layer under every name it has (shared layers appear under each)."""
    return [(n, m) for n, m in model.named_modules(remove_duplicate=False) if is_binary(m)]


def _key(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def _raw(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def export_packed(model: nn.Module, path: PathLike, *, fp16: bool = False) -> PackedInfo:
    """Write ``model`` as a bit-packed file (see the module docstring for the format).

    Args:
        model: a binarized network (from :func:`bsr_plugin.convert` or a BasicSR ``*Bin``
            architecture). Every binarized layer must have weight and activation
            binarization switched on.
        path: the file to write (conventionally ``*.bsrpack``); written atomically.
        fp16: store floating full-precision tensors in fp16 (smaller; the loaded network is
            then close to, not bit-equal with, this one). Scales are always kept exactly.

    Returns:
        A :class:`PackedInfo` with the file size, the theoretical packed size and the fp32
        size of the float network.
    """
    layers = _layer_names(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no binarized layer: nothing to pack. Binarize it first "
                         "(bsr_plugin.convert(model)) or save a float network with torch.save")
    off = sorted({n for n, m in layers if not (m.binarize_act and m.binarize_weight)})
    if off:
        raise ValueError(f"binarization is switched off in {len(off)} layers ({', '.join(off[:4])}"
                         f"{' ...' if len(off) > 4 else ''}): the packed file stores 1-bit weights for layers that "
                         "compute with 1-bit inputs and weights. Switch it on first: "
                         "bsr_plugin.set_binarization(model, act=True, weight=True)")
    state = model.state_dict()
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    theoretical = 0
    float32 = 0

    def add(name: str, kind: str, dtype: str, shape: tuple[int, ...], data: bytes) -> None:
        nonlocal offset
        entries.append(dict(name=name, kind=kind, dtype=dtype, shape=list(shape), offset=offset, nbytes=len(data)))
        blobs.append(data)
        offset += len(data)

    layer_entries = []
    binary_keys: set[str] = set()
    for name, layer in layers:
        w = layer.weight.detach()
        wkey = _key(name, "weight")
        add(wkey, "signs", "bits", tuple(w.shape), _raw(pack_signs(w)))
        theoretical += packed_size(w.numel())
        float32 += 4 * w.numel()
        stored_scale = "none"
        if layer.scale_mode in ("learned", "mean_abs"):
            alpha = weight_scale(w, layer.scale_mode, layer.scale).detach().reshape(-1)
            add(_key(name, "scale"), "scale", _NAMES[alpha.dtype], tuple(alpha.shape), _raw(alpha))
            theoretical += alpha.numel() * alpha.element_size()
            stored_scale = "learned"
        binary_keys.update({wkey, _key(name, "scale")} | {_key(name, b) for b in TRAINING_BUFFERS})
        layer_entries.append(dict(name=name, weight_shape=list(w.shape), scale_mode=layer.scale_mode,
                                  stored_scale=stored_scale, shortcut=layer.shortcut, act_grad=layer.act_grad,
                                  prior_a=layer.prior_a, bias=layer.bias is not None,
                                  **{"class": type(layer).__name__}))
    for key, t in state.items():
        if key in binary_keys:
            continue
        t = t.detach()
        if t.dtype not in _NAMES:
            raise ValueError(f"state entry {key!r} has dtype {t.dtype}, which the packed format does not store")
        if fp16 and t.is_floating_point():
            t = t.to(torch.float16)
        add(key, "fp", _NAMES[t.dtype], tuple(t.shape), _raw(t))
        theoretical += t.numel() * t.element_size()
        float32 += 4 * t.numel()

    from .. import __version__

    config = getattr(model, "bsr_config", None)
    arch = getattr(model, "bsr_arch", None)
    manifest = {
        "format": "bsr_plugin.packed", "format_version": FORMAT_VERSION, "bsr_plugin_version": __version__,
        "torch_version": torch.__version__, "byteorder": sys.byteorder, "model_class": type(model).__name__,
        "config": config.to_dict() if config is not None else None,
        "arch": dict(arch) if arch is not None else None,
        "fp_dtype": "float16" if fp16 else "native",
        "binary_layers": layer_entries, "tensors": entries,
    }
    try:
        text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the model's bsr_config/bsr_arch cannot be written as JSON ({err}); keep them to plain "
                         "numbers, strings, lists and dicts") from err
    packed_manifest = zlib.compress(text.encode("utf-8"), 9)
    body = b"".join([_HEADER.pack(MAGIC, FORMAT_VERSION, len(packed_manifest), offset), packed_manifest] + blobs)
    digest = hashlib.sha256(body).digest()

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:  # write then rename: a reader never sees a half-written file
        with open(tmp, "xb") as fh:
            fh.write(body)
            fh.write(digest)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    info = PackedInfo(str(path), path.stat().st_size, theoretical, float32, len(layers),
                      "float16" if fp16 else "float32")
    logger.info("export_packed: %s", info)
    return info


# -- reading --------------------------------------------------------------------------------
def _refuse(path: Any, message: str) -> PackedFormatError:
    return PackedFormatError(f"{path}: {message}")


def _check_manifest(path: Any, manifest: Any, blobs_n: int) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != "bsr_plugin.packed":
        raise _refuse(path, "the manifest is not a bsr_plugin packed-model manifest")
    for key in ("config", "arch", "binary_layers", "tensors", "byteorder"):
        if key not in manifest:
            raise _refuse(path, f"the manifest lacks {key!r}")
    if manifest["byteorder"] != sys.byteorder:
        raise _refuse(path, f"written on a {manifest['byteorder']}-endian machine; this one is {sys.byteorder}-endian")
    names = set()
    for t in manifest["tensors"]:
        if not isinstance(t, dict) or any(k not in t for k in _TENSOR_KEYS):
            raise _refuse(path, f"malformed tensor entry {t!r}")
        if t["dtype"] != "bits" and t["dtype"] not in _DTYPES:
            raise _refuse(path, f"tensor {t['name']!r} has unknown dtype {t['dtype']!r}")
        numel = 1
        for s in t["shape"]:
            numel *= int(s)
        size = packed_size(numel) if t["dtype"] == "bits" else numel * _DTYPES[t["dtype"]].itemsize
        if t["nbytes"] != size or t["offset"] < 0 or t["offset"] + t["nbytes"] > blobs_n:
            raise _refuse(path, f"tensor {t['name']!r}: {t['nbytes']} bytes at offset {t['offset']} do not hold "
                                f"shape {t['shape']} in {t['dtype']} within the {blobs_n} data bytes")
        if t["name"] in names:
            raise _refuse(path, f"tensor {t['name']!r} is stored twice")
        names.add(t["name"])
    for entry in manifest["binary_layers"]:
        if not isinstance(entry, dict) or any(k not in entry for k in _LAYER_KEYS):
            raise _refuse(path, f"malformed binarized-layer entry {entry!r}")
    return manifest


def read_packed(path: PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and verify a packed file: ``(manifest, {name: tensor})``.

    Binarized weights come back as their packed ``uint8`` sign bytes (``kind == "signs"``).
    Raises :class:`PackedFormatError` for a file that is not a packed model, has another
    format version, is truncated or longer than it says, or fails its checksum.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"cannot read packed model {path}: {err}") from err
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise _refuse(path, f"not a bsr_plugin packed model (it does not start with {MAGIC!r}); write one with "
                            "bsr_plugin.export_packed(model, path) or `bsr export`")
    if len(data) < _HEADER.size:
        raise _refuse(path, f"truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    _, version, manifest_n, blobs_n = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        from .. import __version__

        raise _refuse(path, f"packed format version {version}, but this bsr_plugin ({__version__}) reads format "
                            f"version {FORMAT_VERSION}; load it with the bsr_plugin version that wrote it, or export "
                            "the model again with this one")
    expected = _HEADER.size + manifest_n + blobs_n + _DIGEST
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise _refuse(path, f"{what}: the header announces {expected:,} bytes, the file has {len(data):,}")
    if hashlib.sha256(memoryview(data)[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise _refuse(path, "corrupt: the SHA-256 checksum does not match the contents (the file was changed or "
                            "damaged after it was written); export it again")
    start = _HEADER.size
    try:
        manifest = json.loads(zlib.decompress(data[start:start + manifest_n]).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(path, f"unreadable manifest ({err})") from err
    manifest = _check_manifest(path, manifest, blobs_n)
    base = start + manifest_n
    tensors = {}
    for t in manifest["tensors"]:
        raw = bytearray(data[base + t["offset"]:base + t["offset"] + t["nbytes"]])
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        if t["dtype"] == "bits":
            tensors[t["name"]] = flat
        else:
            tensors[t["name"]] = flat.view(_DTYPES[t["dtype"]]).reshape(t["shape"])
    return manifest, tensors


def _rebuild(path: Any, manifest: dict[str, Any], model: Optional[nn.Module]) -> nn.Module:
    """A fresh binarized network of the file's structure (``model`` itself is not modified)."""
    from ..conversion import convert

    if model is not None:
        if any(is_binary(m) for m in model.modules()):
            return copy.deepcopy(model)
        if manifest["config"] is None:
            raise _refuse(path, "the file holds no binarize config, so a float network cannot be converted to its "
                                "structure; pass the binarized network (same structure) as model=")
        return convert(model, manifest["config"])
    if manifest["arch"] is not None and manifest["config"] is not None:
        from ..basicsr_ext.archs import BinarizedArch

        return BinarizedArch(manifest["arch"], manifest["config"])
    raise _refuse(path, f"the file does not say how to build its network (it was exported from a "
                        f"{manifest.get('model_class')} without a BasicSR architecture spec); build the float network "
                        "and pass it: load_packed(path, model=FloatNet(...))")


def _verify_structure(path: Any, manifest: dict[str, Any], net: nn.Module) -> dict[str, nn.Module]:
    """The rebuilt binarized layers must be exactly the file's: names, classes, shapes, shortcuts."""
    have = dict(_layer_names(net))
    want = {e["name"]: e for e in manifest["binary_layers"]}
    problems = []
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing:
        problems.append(f"binarized in the file but not in the network: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"binarized in the network but not in the file: {', '.join(extra[:5])}")
    for name, e in want.items():
        layer = have.get(name)
        if layer is None:
            continue
        got = dict(cls=type(layer).__name__, shape=list(layer.weight.shape), shortcut=layer.shortcut,
                   bias=layer.bias is not None)
        exp = dict(cls=e["class"], shape=list(e["weight_shape"]), shortcut=e["shortcut"], bias=e["bias"])
        diff = [f"{k} {got[k]} (file: {exp[k]})" for k in got if got[k] != exp[k]]
        if diff:
            problems.append(f"{name}: {', '.join(diff)}")
    if problems:
        raise _refuse(path, "the network rebuilt for this file does not match it: " + "; ".join(problems))
    return have


def load_packed(path: PathLike, model: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild a network from a packed file, in eval mode, on the CPU.

    Args:
        path: a file written by :func:`export_packed`.
        model: optional skeleton. A float network is converted with the file's stored config
            (needed when the file holds no BasicSR architecture spec); a binarized network of
            the same structure is copied. ``model`` itself is never modified. Without it the
            network is rebuilt from the file's architecture spec with
            :func:`bsr_plugin.basicsr_ext.archs.BinarizedArch` (needs basicsr).

    Returns:
        The network, with the file's weights; see the module docstring for what is exact.

    Raises:
        PackedFormatError: the file is not a packed model, has another format version, is
            truncated or corrupt, or does not match the rebuilt network. Nothing is returned
            half-loaded.
    """
    manifest, tensors = read_packed(path)
    net = _rebuild(path, manifest, model)
    layers = _verify_structure(path, manifest, net)
    kinds = {t["name"]: t["kind"] for t in manifest["tensors"]}
    state: dict[str, Tensor] = {}
    for e in manifest["binary_layers"]:
        name, layer = e["name"], layers[e["name"]]
        wkey = _key(name, "weight")
        if kinds.get(wkey) != "signs":
            raise _refuse(path, f"no sign bits stored for binarized layer {name!r}")
        signs = unpack_signs(tensors[wkey], tuple(e["weight_shape"]), dtype=layer.weight.dtype)
        latent = signs * (e["prior_a"] if e["prior_a"] is not None else 1.0)
        state[wkey] = latent
        state[_key(name, "sign_ref")] = pack_signs(latent)
        state[_key(name, "calibrated")] = torch.ones((), dtype=torch.uint8)  # its scale is final
        layer.act_grad = e["act_grad"]
        layer.prior_a = e["prior_a"]
        skey = _key(name, "scale")
        if e["stored_scale"] == "learned":
            if kinds.get(skey) != "scale":
                raise _refuse(path, f"no scale stored for binarized layer {name!r}")
            if layer.scale is None or layer.scale.shape != (e["weight_shape"][0],):
                layer.scale = nn.Parameter(layer.weight.new_empty(e["weight_shape"][0]))
            layer.scale_mode = "learned"
            state[skey] = tensors[skey]
        else:
            layer.scale_mode = "none"
            layer.scale = None
    for t in manifest["tensors"]:
        if t["kind"] == "fp":
            state[t["name"]] = tensors[t["name"]]
    target = net.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise _refuse(path, f"the file's tensors do not fit the rebuilt network: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    for key, value in state.items():
        want = target[key]
        if tuple(value.shape) != tuple(want.shape):
            raise _refuse(path, f"tensor {key!r} has shape {tuple(value.shape)} in the file, "
                                f"{tuple(want.shape)} in the network")
        state[key] = value.to(want.dtype)
    net.load_state_dict(state, strict=True)
    net.eval()
    logger.info("load_packed: %s (%d binarized layers)", path, len(layers))
    return net
