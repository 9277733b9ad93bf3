"""Weights-only loading of BasicSR checkpoints: :func:`safe_torch_load` and
:func:`checkpoint_state` never unpickle code (also under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``,
which only changes torch's default) and report every failure as one
:class:`~bsr_plugin.CheckpointError` naming the file. The guard that makes *BasicSR's own*
``torch.load`` calls weights-only is :mod:`bsr_plugin.safety` (shared with the ``bsr`` command)."""

from __future__ import annotations

import pickle
from typing import Any, Optional

from ...errors import CheckpointError
from ...fileio import not_regular, open_regular
from ...safety import unpickling_reason


def safe_torch_load(path: Any, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only,
    so a crafted checkpoint cannot run code; a FIFO or device is refused, never waited on.
    Every failure is a :class:`CheckpointError` naming the file."""
    import torch

    why = not_regular(path)
    if why is not None:
        raise CheckpointError(f"checkpoint {path} {why}")
    try:
        with open_regular(path) as fh:
            if fh.read(8) != b"BSRPACK\x00":
                fh.seek(0)
                return torch.load(fh, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} cannot be loaded safely: it is not a plain PyTorch checkpoint of tensors "
                              f"({unpickling_reason(err)}). bsr_plugin never unpickles code; re-save the state dict "
                              "with torch.save(net.state_dict(), path)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None
    raise CheckpointError(f"{path} is a packed model file, not a PyTorch checkpoint: load it with "
                          "bsr_plugin.load_packed (or --packed)")


def checkpoint_state(path: Any, param_key: Optional[str] = None, fallback: bool = True) -> dict:
    """The state dict in a BasicSR checkpoint (``{'params': ..., 'params_ema': ...}``) or a
    plain state dict, loaded safely, ``module.`` prefixes removed. ``param_key``: that key
    (with ``fallback``, ``params`` where it is missing, as BasicSR does); ``None``:
    ``params_ema`` if present, else ``params``, else the dict itself."""
    import torch

    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a state dict")
    if fallback and param_key is not None and param_key not in ckpt and "params" in ckpt:
        param_key = "params"
    if param_key is not None:
        if param_key not in ckpt:
            raise CheckpointError(f"{path} has no key {param_key!r}; it has {sorted(map(str, ckpt))[:6]}")
        state = ckpt[param_key]
    else:
        state = ckpt.get("params_ema", ckpt.get("params", ckpt))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found (give the key that holds it)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}

