"""Resuming a training run safely: BasicSR's ``load_resume_state`` where every file loads with
weights only, the resume state maps to the device in use (BasicSR's always maps to CUDA), and
``--auto_resume`` skips a newest state (or its network file) that does not load, saying so in
one line, for the previous good one (:func:`load_resume_state`)."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from ...errors import CheckpointError
from .safe_load import checkpoint_state, safe_torch_load

logger = logging.getLogger(__name__)


def _network_files(opt: dict, resume_iter: int) -> list[str]:
    """The network files BasicSR's ``check_resume`` points ``pretrain_network_*`` at when
    resuming iteration ``resume_iter`` (``models/net_<label>_<iter>.pth`` for every
    ``network_*`` not in ``path.ignore_resume_networks``)."""
    ignore = opt["path"].get("ignore_resume_networks") or ()
    return [os.path.join(opt["path"]["models"], f"net_{key.replace('network_', '')}_{resume_iter}.pth")
            for key in opt if key.startswith("network_") and key not in ignore]


def _why_not_resumable(opt: dict, path: str, device: Any) -> tuple[Optional[dict], str]:
    """``(state, "")`` when the training state ``path`` and the network files of its iteration
    load (weights only), else ``(None, why)``."""
    try:
        state = safe_torch_load(path, map_location=device)
    except CheckpointError:
        return None, "truncated or corrupt"
    if not isinstance(state, dict) or not isinstance(state.get("iter"), int) or "epoch" not in state:
        return None, "not a BasicSR training state"
    for net_path in _network_files(opt, state["iter"]):
        if not os.path.isfile(net_path):
            return None, f"its network file {os.path.basename(net_path)} is missing"
        try:
            checkpoint_state(net_path, "params")
        except CheckpointError:
            return None, f"its network file {os.path.basename(net_path)} is truncated or corrupt"
    return state, ""


def _auto_resume_state(opt: dict, device: Any) -> tuple[Optional[str], Optional[dict]]:
    """The newest training state that can be resumed (it and its network files load), newest
    first; what was skipped is logged in one line. ``(None, None)``: none (start from 0)."""
    state_dir = opt["path"].get("training_states") or os.path.join("experiments", opt["name"], "training_states")
    if not os.path.isdir(state_dir):
        return None, None
    iters = sorted((int(n[:-len(".state")]) for n in os.listdir(state_dir)
                    if n.endswith(".state") and n[:-len(".state")].isdigit()), reverse=True)
    skipped = []
    for it in iters:
        path = os.path.join(state_dir, f"{it}.state")
        state, why = _why_not_resumable(opt, path, device)
        if state is not None:
            if skipped:
                logger.warning("--auto_resume: skipped %s; resuming from %s", "; ".join(skipped), path)
            return path, state
        skipped.append(f"{it}.state ({why})")
    if skipped:
        logger.warning("--auto_resume: no training state in %s can be resumed (%s); starting from iteration 0 (the "
                       "old experiment folder is archived, not deleted)", state_dir, "; ".join(skipped))
    return None, None


def load_resume_state(opt: dict) -> Optional[dict]:
    """BasicSR's ``load_resume_state``, safe and crash-tolerant: every file loads with weights
    only; ``map_location`` is the device in use (the original always maps to CUDA); with
    ``--auto_resume`` a newest state that does not load, or whose network file is missing or
    does not load (a kill during a write), is skipped (one logged line) for the previous good
    one. An explicit ``path.resume_state`` that does not load is a :class:`CheckpointError`."""
    import torch
    from basicsr.utils.misc import check_resume

    if opt["num_gpu"] != 0 and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if opt["auto_resume"]:
        path, state = _auto_resume_state(opt, device)
        if path is None:
            return None
        opt["path"]["resume_state"] = path
    elif opt["path"].get("resume_state"):
        path = opt["path"]["resume_state"]
        state, why = _why_not_resumable(opt, path, device)
        if state is None:
            raise CheckpointError(f"path.resume_state {path} cannot be resumed: {why}; point it at another "
                                  "training state, or use --auto_resume to take the newest one that loads")
    else:
        return None
    check_resume(opt, state["iter"])
    return state
