"""A bit-packed model file: ``export_packed(model, path)`` and ``load_packed(path)``.

The file really is small: the sign of every binarized weight is stored as one bit (eight to a
byte, the layout of :mod:`bsr_plugin.core.bits`), next to the per-channel scales and the
full-precision layers (fp32, or fp16 on request). An EDSR-baseline x4 with full-precision
head, tail and upsampler packs about 4x smaller than its fp32 state dict. The byte layout and
the checks that run before anything is built are in :mod:`bsr_plugin.deploy.file_format`.

What is stored, and what comes back:

* each binarized layer as its entry (:func:`~bsr_plugin.deploy.file_format.layer_entry`):
  the signs of its latent weight and alpha. On load the latent weight is ``sign * prior_a``,
  which binarizes to the same ``alpha * sign``; a ``mean_abs`` scale comes back as a ``learned``
  one holding the same alpha.
* every other ``state_dict`` entry (biases, RSign thresholds, RPReLU parameters,
  full-precision layers, buffers): in its own dtype, or fp16 for floating tensors with
  ``fp16=True``; the training records ``sign_ref`` and ``calibrated`` are not stored.
* how to build the network again: the binarize config and ``model.bsr_build`` (``{"builder":
  name, "spec": {...}}``, set by the BasicSR architectures and ``integrations.timm``), resolved through
  :mod:`bsr_plugin.deploy.builders` when the file is loaded.

Exactness: binarized convs pad their *binarized* input with +1 (``sign(0) = +1``), so every
binarized layer computes ``conv(sign(pad(x)), alpha * sign(w))`` with a strictly +-1 input, the
same thing an XNOR-popcount kernel computes from these bits. With fp32 full-precision tensors,
the loaded network's outputs equal the exported network's bit for bit in eval mode (float
simulation engine). With ``fp16=True`` they do not (the full-precision weights are rounded).
"""

from __future__ import annotations

import copy
import logging
import pickle
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ..conversion import convert
from ..core.bits import unpack_signs
from ..core.layers import BinaryLayerMixin
from ..core.registry import binary_layers, form_of, is_binary, require_fully_binary
from ..errors import BuilderError, ConfigError, PackedFormatError, UnsafeInputError
from ..safety import building_from_data, check_spec_values, unpickling_reason
from .builders import Builder, get_builder
from .file_format import (
    DTYPE_NAMES,
    FORMAT_VERSION,
    FP_PARTS_CHOICES,
    LAYER_KEYS,
    Blobs,
    PathLike,
    entry_mismatch,
    fp_parts_problems,
    layer_entry,
    load_layer_entry_,
    read_packed,
    refuse,
    write_file,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 2**30
"""Largest network (bytes of its state on the CPU) that :func:`load_packed` builds by default."""

MODULES_PER_TENSOR = 64
"""A file's spec may construct at most this many modules per tensor the file stores (a spec
asking for millions of blocks is refused while it builds, before it can hang the loader)."""


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


def _key(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


# -- writing --------------------------------------------------------------------------------
def _packable_layers(model: nn.Module) -> list[tuple[str, BinaryLayerMixin]]:
    layers = list(binary_layers(model, every_name=True))
    if not layers:
        raise ConfigError(f"{type(model).__name__} holds no binarized layer: nothing to pack. Binarize it first "
                          "(bsr_plugin.convert(model)) or save a float network with torch.save")
    require_fully_binary(model, "the packed file stores 1-bit weights for layers that compute with 1-bit inputs "
                                "and weights")
    return layers


def _manifest(model: nn.Module, layer_entries: list[dict], blobs: Blobs, fp16: bool,
              fp_parts: Optional[dict[str, Any]]) -> dict[str, Any]:
    from ..version import __version__

    config = getattr(model, "bsr_config", None)
    return {
        "format": "bsr_plugin.packed", "format_version": FORMAT_VERSION, "bsr_plugin_version": __version__,
        "torch_version": torch.__version__, "byteorder": sys.byteorder, "model_class": type(model).__name__,
        "config": config.to_dict() if config is not None else None, "build": getattr(model, "bsr_build", None),
        "fp_dtype": "float16" if fp16 else "native", "binary_layers": layer_entries, "tensors": blobs.entries,
        "fp_parts": fp_parts,
    }


def _fp_parts_entry(fp_parts: str, calibration: Optional[dict[str, dict]], images: int) -> Optional[dict[str, Any]]:
    """The manifest's ``fp_parts`` entry (``None`` for plain fp32 without calibration, as files
    of earlier versions have it)."""
    if fp_parts == "fp32" and not calibration:
        return None
    entry = {"precision": fp_parts, "calibration": calibration or None, "images": images if calibration else 0}
    problem = fp_parts_problems(entry)
    if problem:
        raise ConfigError(f"export_packed: fp_parts {fp_parts!r}: {problem} (calibrate with "
                          "bsr_plugin.deploy.engine.lowp.calibrate_fp_parts(model, images), or `bsr export --calibrate "
                          "DIR`)")
    return entry


def export_packed(model: nn.Module, path: PathLike, *, fp16: bool = False, fp_parts: str = "fp32",
                  calibration: Optional[dict[str, dict]] = None, calibration_images: int = 0) -> PackedInfo:
    """Write ``model`` as a bit-packed file (module docstring; layout in ``file_format``).

    Args:
        model: a binarized network (from :func:`bsr_plugin.convert`, a BasicSR ``*Bin``
            architecture or ``integrations.timm``). Every binarized layer must have weight and
            activation binarization switched on.
        path: the file to write (conventionally ``*.bsrpack``); written atomically.
        fp16: store floating full-precision tensors in fp16 (smaller; the loaded network is
            then close to, not bit-equal with, this one). Scales are always kept exactly.
        fp_parts: the precision the full-precision parts run in on the engine when the file is
            loaded (``fp32`` exact, the default here; ``bf16``; ``int8``, which needs
            ``calibration``; ``auto``: the fastest the loading machine can run, chosen by the
            benchmark: int8 with a calibration, else bf16, else fp32). Loading can override it.
        calibration: per-conv activation ranges from
            :func:`~bsr_plugin.deploy.engine.lowp.calibrate_fp_parts` on a few images (for int8);
            ``calibration_images``: how many (recorded in the file).

    Returns:
        A :class:`PackedInfo` with the file size, the theoretical packed size and the fp32
        size of the float network.
    """
    fp_entry = _fp_parts_entry(fp_parts, calibration, calibration_images)  # checked before anything is written
    layers = _packable_layers(model)
    blobs = Blobs()
    entries: list[dict[str, Any]] = []
    handled: set[str] = set()
    extras = {_key(n, k) for n, m in layers for k, _ in m.named_parameters(recurse=False)
              if k not in ("weight", "bias")}
    theoretical = float32 = 0
    for name, layer in layers:
        entry, tensors = layer_entry(layer)
        entries.append(dict(entry, name=name))
        theoretical += blobs.add(_key(name, "weight"), "signs", tensors["weight"], entry["weight_shape"])
        float32 += 4 * layer.weight.numel()
        if "scale" in tensors:
            theoretical += blobs.add(_key(name, "scale"), "scale", tensors["scale"])
        handled.update(_key(name, k) for k in LAYER_KEYS)
    for key, t in model.state_dict().items():
        if key in handled:
            continue
        if t.dtype not in DTYPE_NAMES:
            raise ConfigError(f"state entry {key!r} has dtype {t.dtype}, which the packed format does not store")
        theoretical += blobs.add(key, "fp", t.detach().to(torch.float16) if fp16 and t.is_floating_point() else t)
        float32 += 0 if key in extras else 4 * t.numel()  # RSign / RPReLU are not in the float network
    write_file(path, _manifest(model, entries, blobs, fp16, fp_entry), blobs)
    info = PackedInfo(str(path), Path(path).stat().st_size, theoretical, float32, len(layers),
                      "float16" if fp16 else "float32")
    logger.info("export_packed: %s", info)
    return info


# -- reading --------------------------------------------------------------------------------
@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """While building: every parameter a module registers goes to the meta device (allocated
    for a moment on the CPU, one layer at a time); buffers stay real, and plain tensor
    attributes (EDSR's ``mean``) keep the value they were first given, even where a probe
    forward pass (``convert``'s) replaced them with meta tensors (EDSR's forward stores
    ``self.mean.type_as(x)``). The network comes out ready to fill from a file, not to rebuild."""
    register, set_attribute = nn.Module.register_parameter, nn.Module.__setattr__
    first: dict[tuple[int, str], tuple[nn.Module, Tensor]] = {}

    def to_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    def remember(module: nn.Module, name: str, value: Any) -> None:
        if type(value) is Tensor and not value.is_meta and name not in module.__dict__.get("_buffers", {}):
            first.setdefault((id(module), name), (module, value))
        set_attribute(module, name, value)

    nn.Module.register_parameter = to_meta  # type: ignore[method-assign]
    nn.Module.__setattr__ = remember  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
        nn.Module.__setattr__ = set_attribute  # type: ignore[method-assign]
        for (_, name), (module, value) in first.items():
            current = module.__dict__.get(name)
            if isinstance(current, Tensor) and current.is_meta:
                module.__dict__[name] = value


def _building(meta: str) -> Any:
    """The context a network is built in: ``all`` on the meta device (nothing allocated: for
    the size bound, before anything is trusted), ``params`` with its parameters there (buffers
    and plain tensors real: to fill from the file), ``none`` for real."""
    return torch.device("meta") if meta == "all" else _parameters_on_meta() if meta == "params" else nullcontext()


def _build(path: Any, manifest: dict[str, Any], model: Optional[nn.Module], builder: Optional[Builder],
           meta: str) -> nn.Module:
    """A fresh binarized network of the file's structure, built as :func:`_building` says
    (``model`` itself is not modified).

    The file's own spec is data: it is checked against the allow-list and built under the
    strict guard of :mod:`bsr_plugin.safety` (no file, socket, download or program; a bounded
    number of modules). A user's skeleton or ``--model`` function is trusted code
    (``torch.load`` stays weights-only)."""
    config = manifest["config"]
    with _building(meta):
        if model is not None:
            net = copy.deepcopy(model)
            if meta == "all":
                net = net.to("meta")
            elif meta == "params":
                for module in net.modules():
                    for name, p in module._parameters.items():
                        if p is not None:
                            module._parameters[name] = nn.Parameter(p.detach().to("meta"), p.requires_grad)
        elif builder is not None:
            net = builder.build(manifest["build"]["spec"] if manifest["build"] else {})
        else:
            net = _build_from_file_spec(path, manifest)
        if not any(is_binary(m) for m in net.modules()):
            if config is None:
                raise refuse(path, "the file holds no binarize config, so a float network cannot be converted to "
                                   "its structure; pass the binarized network (same structure) as model=")
            net = convert(net, config, inplace=True)
    return net


def _build_from_file_spec(path: Any, manifest: dict[str, Any]) -> nn.Module:
    """The network the file's builder spec describes, built under the strict guard."""
    build = manifest["build"]
    if build is None:
        raise refuse(path, f"the file does not say how to build its network (it was exported from a "
                           f"{manifest.get('model_class')} without bsr_build); pass the network: "
                           "load_packed(path, model=FloatNet(...)) or bsr ... --model module:function")
    builder = get_builder(build["builder"])
    check_spec_values(build["spec"], str(path))
    if builder.check_spec is not None:
        builder.check_spec(build["spec"], str(path))
    with building_from_data(str(path), strict=True, max_modules=MODULES_PER_TENSOR * (len(manifest["tensors"]) + 8)):
        return builder.build(build["spec"])


def _verify(path: Any, manifest: dict[str, Any], net: nn.Module) -> dict[str, BinaryLayerMixin]:
    """The rebuilt network must be exactly the file's: its binarized layers (names, classes,
    shapes, shortcuts, options that change the output) and every other state entry (names,
    shapes)."""
    have = dict(binary_layers(net, every_name=True))
    want = {e["name"]: e for e in manifest["binary_layers"]}
    problems = []
    missing, extra = [n for n in want if n not in have], [n for n in have if n not in want]
    if missing:
        problems.append(f"binarized in the file but not in the network: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"binarized in the network but not in the file: {', '.join(extra[:5])}")
    for name, e in want.items():
        if name in have:
            diff = entry_mismatch(have[name], e)
            if diff:
                problems.append(f"{name}: {', '.join(diff)}")
    if not problems:
        handled = {_key(n, k) for n in have for k in LAYER_KEYS}
        target = {k: tuple(v.shape) for k, v in net.state_dict().items() if k not in handled}
        stored = {t["name"]: tuple(t["shape"]) for t in manifest["tensors"] if t["kind"] == "fp"}
        lacking, unknown = [k for k in target if k not in stored], [k for k in stored if k not in target]
        if lacking or unknown:
            problems.append(f"the file's tensors do not fit the rebuilt network: missing {lacking[:5]}, "
                            f"unexpected {unknown[:5]}")
        problems += [f"tensor {k!r} has shape {stored[k]} in the file, {target[k]} in the network"
                     for k in target if k in stored and stored[k] != target[k]][:5]
    if problems:
        raise refuse(path, "the network rebuilt for this file does not match it: " + "; ".join(problems))
    return have


def _state_bytes(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def _real_network(path: Any, manifest: dict[str, Any], model: Optional[nn.Module],
                  builder: Optional[Builder], meta: str) -> nn.Module:
    """:func:`_build` after the size check; a spec or config the network rejects is the file's fault."""
    try:
        return _build(path, manifest, model, builder, meta)
    except (BuilderError, PackedFormatError, UnsafeInputError):
        raise
    except pickle.UnpicklingError as err:
        raise refuse(path, f"its network's builder loads a file that is not plain weights ({unpickling_reason(err)}); "
                           "bsr_plugin never unpickles code") from None
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise refuse(path, f"its network cannot be built from the stored spec and config "
                           f"({type(err).__name__}: {first})") from None


def _check_size(path: Any, manifest: dict[str, Any], model: Optional[nn.Module], builder: Optional[Builder],
                max_bytes: int) -> Optional[nn.Module]:
    """Build the network on the meta device (no memory), verify it against the file and bound
    its size, before anything real is allocated; returns that meta network. A network that
    cannot run on the meta device (data-dependent Python) is bounded by the file's own bytes
    instead (``None``: it is then built for real, not straight from the bits)."""
    try:
        meta = _build(path, manifest, model, builder, meta="all")
    except (BuilderError, PackedFormatError, UnsafeInputError):
        raise
    except Exception as err:
        declared = sum(t["nbytes"] for t in manifest["tensors"])
        logger.info("load_packed: no meta-device build (%s: %s); the file's size bounds the network",
                    type(err).__name__, err)
        if 32 * declared > max_bytes:
            raise refuse(path, f"its tensors ({declared:,} bytes) imply a network above the memory bound "
                               f"({max_bytes:,} bytes); raise max_bytes if that is expected") from None
        return None
    _verify(path, manifest, meta)
    size = _state_bytes(meta)
    if size > max_bytes:
        raise refuse(path, f"the network it describes needs {size:,} bytes, above the memory bound ({max_bytes:,} "
                           "bytes); raise max_bytes if that is expected")
    return meta


def _binary_tensors(path: Any, e: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """A binarized layer's stored sign bytes and scale (``None``: stored without one)."""
    name = e["name"]
    signs = tensors.get(_key(name, "weight"))
    scale = tensors.get(_key(name, "scale")) if e["stored_scale"] == "learned" else None
    if signs is None or (e["stored_scale"] == "learned" and scale is None):
        raise refuse(path, f"binarized layer {name!r}: its sign bits or its scale are not stored")
    return signs, scale


def _load_layer(path: Any, e: dict[str, Any], tensors: dict[str, Tensor], layer: BinaryLayerMixin) -> None:
    signs, scale = _binary_tensors(path, e, tensors)
    try:
        load_layer_entry_(layer, e, signs, scale)
    except ConfigError as err:
        raise refuse(path, f"binarized layer {e['name']!r}: {err}") from None


@torch.no_grad()
def _load_fp(manifest: dict[str, Any], tensors: dict[str, Tensor], net: nn.Module) -> None:
    """Every stored full-precision tensor into the network entry of its name."""
    target = net.state_dict()
    for t in manifest["tensors"]:
        if t["kind"] == "fp" and t["name"] in target:
            target[t["name"]].copy_(tensors[t["name"]].to(target[t["name"]].dtype))


def _load_state(path: Any, manifest: dict[str, Any], tensors: dict[str, Tensor], net: nn.Module,
                layers: dict[str, BinaryLayerMixin]) -> None:
    for e in manifest["binary_layers"]:
        _load_layer(path, e, tensors, layers[e["name"]])
    _load_fp(manifest, tensors, net)


def _layer_state(path: Any, e: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Optional[Tensor]]:
    """What a packed engine module computes with, straight from the file: the signs (+-1,
    one layer at a time), alpha and the layer's extra tensors (bias, RSign, RPReLU)."""
    from .engine.modules import EXTRAS

    signs, scale = _binary_tensors(path, e, tensors)
    state = {"signs": unpack_signs(signs, tuple(e["weight_shape"])), "alpha": scale}
    state.update({k: tensors.get(_key(e["name"], k)) for k in EXTRAS})
    return state


@torch.no_grad()
def _materialize(net: nn.Module, skip: set[int]) -> None:
    """Allocate (uninitialised, on the CPU) every parameter still on the meta device, except
    in the modules of ``skip``."""
    for module in net.modules():
        if id(module) in skip:
            continue
        for name, p in module._parameters.items():
            if p is not None and p.is_meta:
                module._parameters[name] = nn.Parameter(torch.empty_like(p, device="cpu"), p.requires_grad)


def _fill_engine(path: Any, manifest: dict[str, Any], tensors: dict[str, Tensor], net: nn.Module,
                 layers: dict[str, BinaryLayerMixin], plan: Any) -> list[str]:
    """Put a network built with its parameters on the meta device onto the engine, straight
    from the file's bits (no fp32 latent weight is ever made), then fill the rest from the
    file; returns the layers that keep their float simulation (each warned about)."""
    from .engine.bands import band_chains
    from .engine.modules import engine_support, install_engine

    packed: dict[str, nn.Module] = {}
    kept: list[tuple[dict[str, Any], BinaryLayerMixin]] = []
    done: set[int] = set()
    for e in manifest["binary_layers"]:
        layer = layers[e["name"]]
        if id(layer) in done:  # a layer shared under several names: packed once
            continue
        done.add(id(layer))
        problem = engine_support(layer, from_state=True)
        if problem is not None:
            logger.warning("engine: %s keeps its float simulation: %s", e["name"], problem)
            kept.append((e, layer))
        else:
            packed[e["name"]] = form_of(layer, "packed")(layer, _layer_state(path, e, tensors))
    install_engine(net, plan, packed)
    _materialize(net, {id(m) for m in packed.values()})
    for e, layer in kept:
        _load_layer(path, e, tensors, layer)
    _load_fp(manifest, tensors, net)
    band_chains(net, plan.chains)
    return [e["name"] for e, _ in kept]


ENGINES = ("auto", "packed", "float")


def load_packed(path: PathLike, model: Optional[nn.Module] = None, *, engine: str = "auto",
                builder: Optional[Builder] = None, max_bytes: int = DEFAULT_MAX_BYTES,
                fp_parts: Optional[str] = None) -> nn.Module:
    """Rebuild a network from a packed file, in eval mode, on the CPU.

    Args:
        path: a file written by :func:`export_packed` (format version 1 or 2).
        model: optional skeleton: a float network is converted with the file's stored config; a
            binarized network of the same structure is copied. ``model`` itself is never
            modified. Without it the network is built by the builder the file names
            (:mod:`bsr_plugin.deploy.builders`).
        engine: ``packed``: binarized layers become packed engine modules
            (:mod:`bsr_plugin.deploy.engine.modules`: sign bits as 64-bit words and scales, no
            fp32 latent weight, XNOR-popcount kernels; their float simulation where the C++
            extension is not built), and the network in channels_last memory format (its
            outputs come back channels_last; measured faster and lighter,
            benchmarks/results/engine_network); ``float``: the float simulation network (``BinaryConv2d``
            layers, trainable); ``auto`` (default): ``packed`` where the extension is built,
            else ``float``, said in one logged line. The choice is in ``net.bsr_engine``.
        builder: a builder to use instead of the file's (e.g. a user-named ``--model``).
        max_bytes: refuse a file whose network would need more memory than this.
        fp_parts: on the packed engine, the precision of the full-precision parts
            (:mod:`bsr_plugin.deploy.engine.lowp`): ``None`` (default) the file's choice (fp32
            where it records none), ``auto`` the fastest this machine runs (int8 where the file
            holds a calibration, else bf16 where the CPU has it, else fp32), or ``fp32`` /
            ``bf16`` / ``int8`` (refused, naming the fp32 fallback, where this machine cannot run
            it). The float simulation runs fp32 only. The choice is in ``net.bsr_fp_parts``.

    Returns:
        The network, with the file's weights; see the module docstring for what is exact.

    Raises:
        PackedFormatError: the file is not a packed model, has another format version, is
            truncated, corrupt or hand-made, or does not match the rebuilt network. Nothing is
            returned half-loaded.
        UnsafeInputError: the file's spec names a path, a URL or an architecture that reads,
            downloads or runs anything, or its build tried to (:mod:`bsr_plugin.safety`).
        BuilderError: the builder the file names is not installed.
    """
    _check_load_arguments(engine, fp_parts)
    manifest, tensors = read_packed(path)
    meta = _check_size(path, manifest, model, builder, max_bytes)
    on_engine = _on_engine(engine)
    if on_engine and meta is not None:
        net = _engine_network(path, manifest, tensors, model, builder, meta)
    else:
        net = _real_network(path, manifest, model, builder, meta="none")
        layers = _verify(path, manifest, net)
        _load_state(path, manifest, tensors, net, layers)
        net.eval()
        net.bsr_engine = _use_engine(net, on_engine)
    _lower(path, net, manifest["fp_parts"], fp_parts, on_engine)
    logger.info("load_packed: %s (%d binarized layers, %s)", path, len(manifest["binary_layers"]), net.bsr_engine)
    return net


def _check_load_arguments(engine: str, fp_parts: Optional[str]) -> None:
    """``engine`` and ``fp_parts`` of :func:`load_packed`, before anything is read or built."""
    if engine not in ENGINES:
        raise ConfigError(f"load_packed: engine {engine!r} is not one of {ENGINES}")
    if fp_parts is not None and fp_parts not in FP_PARTS_CHOICES:
        raise ConfigError(f"load_packed: fp_parts {fp_parts!r} is not one of {FP_PARTS_CHOICES} (or None: the file's)")
    if fp_parts in ("bf16", "int8") and engine != "float":
        from .engine.lowp import require_fp_parts

        require_fp_parts(fp_parts)


def _engine_network(path: Any, manifest: dict[str, Any], tensors: dict[str, Tensor], model: Optional[nn.Module],
                    builder: Optional[Builder], meta: nn.Module) -> nn.Module:
    """The file's network straight onto the engine (:func:`_fill_engine`), eval, channels_last."""
    from .engine.modules import plan_engine

    plan = plan_engine(meta)  # probed on the meta network: nothing allocated, nothing of net's touched
    net = _real_network(path, manifest, model, builder, meta="params")
    kept = _fill_engine(path, manifest, tensors, net, _verify(path, manifest, net), plan)
    net.eval().to(memory_format=torch.channels_last)  # the engine and oneDNN's float convs are both faster so
    net.bsr_engine = _engine_line(kept)
    return net


def _lower(path: Any, net: nn.Module, stored: Optional[dict[str, Any]], asked: Optional[str],
           on_engine: bool) -> None:
    """Run the full-precision parts of an engine network in the precision asked for (or the
    file's), fusing its residual blocks first; the float simulation stays fp32."""
    from .engine.blocks import fuse_residual_blocks
    from .engine.lowp import default_fp_parts, lower_fp_parts

    choice = asked or (stored or {}).get("precision", "fp32")
    calibration = (stored or {}).get("calibration")
    if not on_engine:
        if asked not in (None, "auto", "fp32"):
            raise ConfigError(f"fp_parts {asked!r} runs on the packed engine only; the float simulation "
                              "(engine='float') runs fp32: drop fp_parts or load with engine='packed'")
        net.bsr_fp_parts = "fp32"
        return
    precision = default_fp_parts(calibration) if choice == "auto" else choice
    if precision == "int8" and not calibration:
        raise ConfigError(f"{path}: int8 full-precision parts need the activation ranges calibrated at export, "
                          "and this file holds none: export it again with a calibration (bsr export --calibrate "
                          "DIR), or load it with fp_parts 'bf16' / 'fp32' (--fp-parts)")
    fuse_residual_blocks(net)
    lower_fp_parts(net, precision, calibration)
    net.bsr_engine += f"; full-precision parts in {precision}"


def _on_engine(engine: str) -> bool:
    """Whether ``engine`` puts the network on the packed engine (``auto``: where the C++
    extension is built, else the float simulation, said in one logged line)."""
    from .engine import kernels

    if engine == "auto" and not kernels.available():
        logger.warning("%s", kernels.status_line())
    return engine == "packed" or (engine == "auto" and kernels.available())


def _engine_line(kept: list[str]) -> str:
    from .engine import kernels

    where = kernels.isa() if kernels.available() else "its float simulation (extension not built)"
    return f"packed engine ({where}, {torch.get_num_threads()} threads)" + (
        f"; {len(kept)} layers on the float simulation: {', '.join(kept[:3])}" if kept else "")


def _use_engine(net: nn.Module, on_engine: bool) -> str:
    """Put ``net`` (real, loaded) on the engine if asked; returns a one-line description."""
    from .engine.modules import to_engine

    if not on_engine:
        return "float simulation"
    kept = to_engine(net)
    net.to(memory_format=torch.channels_last)
    return _engine_line(kept)
