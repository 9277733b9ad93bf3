"""What basicsr 1.4.2 needs to run on current torch/torchvision, applied without editing its
files (see docs: environment.md of the project)."""

from __future__ import annotations

import importlib
import sys
import types


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
    state = torch.load(path, map_location=device)
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
