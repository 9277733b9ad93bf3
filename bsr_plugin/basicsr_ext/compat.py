"""What basicsr 1.4.2 needs to run on current torch/torchvision, applied without editing its
files (see docs: environment.md of the project)."""

from __future__ import annotations

import importlib
import logging
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Optional

from ..errors import CheckpointError, OptionsError

logger = logging.getLogger(__name__)


def patch_torchvision() -> None:
    """basicsr imports ``torchvision.transforms.functional_tensor``, removed in torchvision
    0.17; provide it (holding ``rgb_to_grayscale``) before basicsr is imported."""
    name = "torchvision.transforms.functional_tensor"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        from torchvision.transforms import functional

        shim = types.ModuleType(name)
        shim.rgb_to_grayscale = functional.rgb_to_grayscale  # type: ignore[attr-defined]
        sys.modules[name] = shim


def import_basicsr() -> types.ModuleType:
    """Import basicsr with the compatibility shims in place."""
    try:
        patch_torchvision()
        return importlib.import_module("basicsr")
    except ImportError as err:
        raise ImportError(
            f"the BasicSR integration needs basicsr ({err}); install it with "
            "pip install --no-build-isolation 'bsr_plugin[basicsr]'") from err


def read_options(path: Any) -> dict:
    """A BasicSR options file parsed with YAML's safe loader (no tag can construct an object
    or run code): a mapping, or an :class:`OptionsError` naming the problem."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise OptionsError(f"options file {path} does not exist")
    try:
        text = p.read_text()
        opt = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise OptionsError(f"{path} is not valid YAML{where}: {problem}. (Tags such as !!python/... are refused: "
                           "options files are read with the safe loader)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise OptionsError(f"cannot read options file {path}: {err}") from None
    if opt is None:
        raise OptionsError(f"{path} is empty; a BasicSR options file is a mapping (name:, model_type:, ...)")
    if not isinstance(opt, dict):
        raise OptionsError(f"{path} holds a YAML {type(opt).__name__}, not a mapping of options")
    return opt


def safe_torch_load(path: Any, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only,
    so a crafted checkpoint cannot run code (also under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``,
    which only changes the default). Every failure is a :class:`CheckpointError` naming the file."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with p.open("rb") as fh:
        head = fh.read(8)
    if head == b"BSRPACK\x00":
        raise CheckpointError(f"{path} is a packed model file, not a PyTorch checkpoint: load it with "
                              "bsr_plugin.load_packed (or --packed)")
    try:
        return torch.load(str(p), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be loaded safely: it is not a plain PyTorch checkpoint of tensors "
                              f"({first[:200]}). bsr_plugin never unpickles code; re-save the state dict with "
                              "torch.save(net.state_dict(), path)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None


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


def _load_network(self, net, load_path, strict=True, param_key="params"):
    """BasicSR's ``BaseModel.load_network``, loading with :func:`checkpoint_state` (weights only)."""
    from basicsr.utils import get_root_logger

    net = self.get_bare_model(net)
    state = checkpoint_state(load_path, param_key)
    get_root_logger().info(f"Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].")
    self._print_different_keys_loading(net, state, strict)
    net.load_state_dict(state, strict=strict)


def _load_resume_state(opt: dict) -> dict | None:
    """BasicSR's ``load_resume_state`` with ``map_location`` from the device in use (the
    original always maps to CUDA and fails on a CPU machine)."""
    import os.path as osp

    import torch
    from basicsr.utils import scandir
    from basicsr.utils.misc import check_resume

    path = None
    if opt["auto_resume"]:
        state_dir = osp.join("experiments", opt["name"], "training_states")
        if osp.isdir(state_dir):
            states = [float(v.split(".state")[0]) for v in scandir(state_dir, suffix="state", recursive=False)]
            if states:
                path = osp.join(state_dir, f"{max(states):.0f}.state")
                opt["path"]["resume_state"] = path
    elif opt["path"].get("resume_state"):
        path = opt["path"]["resume_state"]
    if path is None:
        return None
    if opt["num_gpu"] != 0 and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    state = safe_torch_load(path, map_location=device)
    check_resume(opt, state["iter"])
    return state


def _init_dist(launcher: str, backend: str | None = None, **kwargs) -> None:
    """BasicSR's ``init_dist`` that also works without GPUs: NCCL when CUDA is available, gloo
    otherwise. Needs the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    import os

    import torch
    import torch.distributed as dist
    from basicsr.utils import dist_util

    if launcher != "pytorch":
        return dist_util.init_dist(launcher, backend or "nccl", **kwargs)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"--launcher pytorch needs the variables torchrun sets ({', '.join(missing)} missing): "
                           "start it as torchrun --nproc_per_node=N -m bsr_plugin.basicsr_ext.cli train -opt X.yml "
                           "--launcher pytorch")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])) % torch.cuda.device_count())
        backend = backend or "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, **kwargs)


def _model_to_device(self, net):
    """BasicSR's ``BaseModel.model_to_device``; CPU processes get DistributedDataParallel
    without ``device_ids`` (the original passes a CUDA device)."""
    from torch.nn.parallel import DistributedDataParallel

    if self.opt["dist"] and self.device.type == "cpu":
        return DistributedDataParallel(net.to(self.device),
                                       find_unused_parameters=self.opt.get("find_unused_parameters", False))
    return _ORIGINAL["model_to_device"](self, net)


_ORIGINAL: dict = {}


def patch_runtime() -> None:
    """Make BasicSR's train/test pipelines run on CPU (resume, gloo launcher). Idempotent."""
    import_basicsr()
    import basicsr.train
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel

    basicsr.train.load_resume_state = _load_resume_state
    basicsr.utils.options.init_dist = _init_dist
    if "model_to_device" not in _ORIGINAL:
        _ORIGINAL["model_to_device"] = BaseModel.model_to_device
        BaseModel.model_to_device = _model_to_device
    BaseModel.load_network = _load_network
