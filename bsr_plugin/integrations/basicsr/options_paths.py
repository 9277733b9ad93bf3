"""The files an options file names, checked by the preflight: the network checkpoint loads
with weights only and fits ``network_g``, the resume state is a regular file (never a FIFO
waited on), and none of the files the run loads (``pretrain_network_g``/``_d``, the
distillation teacher, the resume state) lies in a folder BasicSR renames to
``<folder>_archived_<time>`` when the run starts -- it would be gone when it is loaded."""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from torch import nn

from ...errors import CheckpointError
from ...fileio import not_regular
from .safe_load import checkpoint_state


def check_checkpoints(path: Mapping[str, Any], is_train: bool, net: Optional[nn.Module], check_files: bool,
                      has_path: bool, problems: list[str]) -> None:
    """``pretrain_network_g`` (required by ``basicsr test``: ``has_path`` says the section is
    there) loads safely and fits ``network_g``; ``resume_state`` is a regular file."""
    resume = path.get("resume_state")
    if check_files and is_train and resume is not None and (not isinstance(resume, str) or not_regular(resume)):
        why = not_regular(resume) if isinstance(resume, str) else "does not exist"
        problems.append(f"path.resume_state: {resume!r} {why}; point it at a training_states/<iter>.state "
                        "file, or use --auto_resume")
    ckpt = path.get("pretrain_network_g")
    if ckpt is not None and not check_files:
        return
    if ckpt is None:
        if not is_train and has_path:
            problems.append("path.pretrain_network_g is missing: basicsr test would test an untrained network_g; "
                            "point it at the trained weights (experiments/<name>/models/net_g_latest.pth)")
        return
    if not isinstance(ckpt, str) or not_regular(ckpt):
        why = not_regular(ckpt) if isinstance(ckpt, str) else "does not exist"
        problems.append(f"path.pretrain_network_g: {ckpt!r} {why} (relative to {os.getcwd()!r}); point it at "
                        "a net_g_*.pth file" + ("" if is_train else ", or train first"))
        return
    try:
        state = checkpoint_state(ckpt, path.get("param_key_g", "params"))
    except CheckpointError as err:
        problems.append(f"path.pretrain_network_g: {err}")
        return
    if net is not None:
        try:
            net.load_state_dict(state, strict=bool(path.get("strict_load_g", True)))
        except RuntimeError as err:
            problems.append(f"path.pretrain_network_g: {ckpt} does not fit network_g ({str(err).splitlines()[0]} "
                            f"...); give the checkpoint of this network, or set network_g as it was trained")


def archived_folders(opt: Mapping[str, Any], is_train: bool, auto_resume: bool) -> list[str]:
    """The folders BasicSR renames to ``<folder>_archived_<time>`` when the run starts: the
    experiment folder and ``tb_logger/<name>`` of a training that does not resume, the results
    folder of a test."""
    path = opt.get("path") if isinstance(opt.get("path"), Mapping) else {}
    name = opt.get("name")
    if not isinstance(name, str) or not name:
        return []
    if not is_train:
        return [path.get("results_root") or os.path.join("results", name)]
    root = path.get("experiments_root") or os.path.join("experiments", name)
    states = path.get("training_states") or os.path.join(root, "training_states")
    if path.get("resume_state") or (auto_resume and os.path.isdir(states) and any(
            n.endswith(".state") and n[:-6].isdigit() for n in os.listdir(states))):
        return []  # a resumed run archives nothing
    logger = opt.get("logger") if isinstance(opt.get("logger"), Mapping) else {}
    tb = [os.path.join("tb_logger", name)] if logger.get("use_tb_logger") and "debug" not in name else []
    return [root] + tb


def check_archived(opt: Mapping[str, Any], is_train: bool, auto_resume: bool, problems: list[str]) -> None:
    """No file the run loads lies in a folder it archives first (it would be gone when loaded)."""
    folders = [os.path.realpath(f) for f in archived_folders(opt, is_train, auto_resume)]
    path = opt.get("path") if isinstance(opt.get("path"), Mapping) else {}
    train = opt.get("train") if isinstance(opt.get("train"), Mapping) else {}
    distill = train.get("distill") if isinstance(train.get("distill"), Mapping) else {}
    named = {f"path.{k}": path.get(k) for k in ("pretrain_network_g", "pretrain_network_d", "resume_state")}
    named["train.distill.pretrain"] = distill.get("pretrain")
    for where, value in named.items():
        if not isinstance(value, str) or not value:
            continue
        real = os.path.realpath(os.path.expanduser(value))
        for folder in folders:
            if real == folder or real.startswith(folder + os.sep):
                problems.append(f"{where}: {value!r} lies inside {os.path.relpath(folder)}, which basicsr "
                                f"{'train' if is_train else 'test'} archives (renames to "
                                f"{os.path.basename(folder)}_archived_<time>) before loading it; copy the file "
                                "elsewhere first (e.g. experiments/pretrained_models/)"
                                + (", or resume the run with --auto_resume" if is_train else ""))
