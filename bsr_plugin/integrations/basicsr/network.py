"""The ``basicsr`` network builder: BasicSR networks for packed files and the ``bsr`` command.

``build_from_spec`` builds a ``network_g`` spec with BasicSR's own ``build_network`` (the
plugin's binarized architectures registered); ``network_from_options`` builds an options
file's ``network_g`` with its weights (``--checkpoint``, else ``path.pretrain_network_g``),
loading checkpoints with weights only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from ...errors import CheckpointError, OptionsError
from .compat import checkpoint_state, read_options

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
    net = build_from_spec(opt["network_g"])
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
