"""The ``basicsr`` network builder: BasicSR networks for packed files and the ``bsr`` command.

``build_from_spec`` builds a ``network_g`` spec with BasicSR's own ``build_network`` (the
plugin's binarized architectures registered); ``network_from_options`` builds an options
file's ``network_g`` with its weights (``--checkpoint``, else ``path.pretrain_network_g``),
loading checkpoints with weights only, under :func:`bsr_plugin.safety.building_from_data`.
``check_packed_spec`` refuses a packed file's spec naming an architecture that reads or
downloads a file in its constructor (:data:`FILE_LOADING_ARCHS`), before anything is built.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from ...errors import CheckpointError, OptionsError, UnsafeInputError
from ...safety import PACKED_RULE, building_from_data, unpickling_reason
from .options_io import read_options
from .safe_load import checkpoint_state

logger = logging.getLogger(__name__)


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """BasicSR's ``build_network`` of a ``network_g`` spec (``{type: EDSRBin, ...}``)."""
    from basicsr.archs import build_network

    from . import register

    register()
    from basicsr.utils.registry import ARCH_REGISTRY

    if not isinstance(spec, Mapping) or "type" not in spec:
        raise OptionsError(f"a BasicSR network spec is a mapping with a 'type', got {str(spec)[:200]}")
    if not isinstance(spec["type"], str) or spec["type"] not in ARCH_REGISTRY:
        raise OptionsError(f"network type {str(spec['type'])[:80]!r} is not in BasicSR's architecture registry "
                           "(import the module that registers a custom architecture first)")
    return build_network(dict(spec))


FILE_LOADING_ARCHS = {
    "SpyNet": "loads load_path with torch.load", "BasicVSR": "builds a SpyNet that loads spynet_path",
    "IconVSR": "loads spynet_path and edvr_path", "BasicVSRPlusPlus": "builds a SpyNet that loads spynet_path",
    "TOFlow": "builds a SpyNet that loads its weights", "DFDNet": "loads dict_path with torch.load",
    "VGGFeatureExtractor": "loads or downloads VGG weights (548 MB)",
}
"""BasicSR architectures whose constructor reads or downloads a file: never built from a packed file."""


def check_packed_spec(spec: Mapping[str, Any], source: str) -> None:
    """Refuse a packed file's BasicSR spec (or its ``BinarizedArch``'s ``arch``) whose type is
    one of :data:`FILE_LOADING_ARCHS` (``Builder.check_spec`` of the ``basicsr`` builder)."""
    for where, node in (("type", spec), ("arch.type", spec.get("arch") if isinstance(spec, Mapping) else None)):
        kind = node.get("type") if isinstance(node, Mapping) else None
        if isinstance(kind, str) and kind in FILE_LOADING_ARCHS:
            raise UnsafeInputError(f"{source}: the network spec's {where} {kind!r} {FILE_LOADING_ARCHS[kind]} when "
                                   f"built; {PACKED_RULE}")


def build_options_network(spec: Mapping[str, Any], source: str) -> nn.Module:
    """A network spec from an options file (``network_g``, a teacher), built under the options
    guard (:func:`bsr_plugin.safety.building_from_data`, not strict: auxiliary weights load
    weights only, nothing is downloaded, run or waited on); what its constructor refuses (an
    argument, an auxiliary file that is not plain weights) is one line. ``source`` names the
    options file in messages. Scripts that build an options file's network use this too."""
    try:
        with building_from_data(source, strict=False):
            return build_from_spec(spec)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{source}: network_g loads a file that is not plain weights while it is built "
                              f"({unpickling_reason(err)}); bsr_plugin never unpickles code") from None
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as err:
        if isinstance(err, (OptionsError, UnsafeInputError)):
            raise
        raise OptionsError(f"{source}: network_g cannot be built from its options ({type(err).__name__}: "
                           f"{str(err).strip()[:200]})") from None


def load_weights(net: nn.Module, path: str, param_key: Optional[str] = None, fallback: bool = True) -> None:
    """Load a BasicSR checkpoint or a plain state dict into ``net`` (strict, weights only)."""
    state = checkpoint_state(path, param_key, fallback)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit network_g: {str(err).splitlines()[0]}") from None


def network_from_options(options_file: str, checkpoint: Optional[str] = None, param_key: Optional[str] = None,
                         need_weights: bool = True) -> nn.Module:
    """``network_g`` of a BasicSR options file, with weights, in eval mode.

    Without ``checkpoint`` the options file's ``path.pretrain_network_g`` is loaded; when that
    file does not exist it is an error, unless ``need_weights`` is false (complexity counts do
    not depend on the weights)."""
    opt = read_options(options_file)
    if not isinstance(opt.get("network_g"), dict):
        raise OptionsError(f"{options_file}: no network_g section (a BasicSR options file describes its network "
                           "under network_g: {type: ..., ...})")
    net = build_options_network(opt["network_g"], str(options_file))
    explicit = param_key is not None  # a key given on the command line must exist
    if checkpoint is None:
        path_opt = opt.get("path") or {}
        checkpoint = path_opt.get("pretrain_network_g")
        param_key = param_key or path_opt.get("param_key_g")
        if checkpoint and not Path(checkpoint).is_file():
            if need_weights:
                raise OptionsError(f"{options_file}: path.pretrain_network_g {checkpoint} does not exist; train "
                                   "first or pass --checkpoint")
            logger.warning("path.pretrain_network_g %s does not exist: counting the untrained network", checkpoint)
            checkpoint = None
    if checkpoint:
        load_weights(net, checkpoint, param_key, fallback=not explicit)
    elif need_weights:
        logger.warning("no checkpoint given (--checkpoint or path.pretrain_network_g): the network has its "
                       "initial weights")
    return net.eval()
