"""Several training processes, with or without GPUs: BasicSR's ``init_dist`` with gloo where
there is no CUDA (:func:`init_dist`), the distributed fields of the options
(:func:`set_distributed`), and DistributedDataParallel on CPU (:func:`model_to_device`, what
the plugin's models use instead of ``BaseModel.model_to_device``, which passes a CUDA device)."""

from __future__ import annotations

import os
from typing import Any

from ...errors import OptionsError


def init_dist(launcher: str, backend: str | None = None, **kwargs) -> None:
    """BasicSR's ``init_dist`` that also works without GPUs: NCCL when CUDA is available, gloo
    otherwise. Needs the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    import torch
    import torch.distributed as dist
    from basicsr.utils import dist_util

    if launcher != "pytorch":
        return dist_util.init_dist(launcher, backend or "nccl", **kwargs)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise OptionsError(f"--launcher pytorch needs the variables torchrun sets ({', '.join(missing)} missing): "
                           "start it as torchrun --nproc_per_node=N -m bsr_plugin.integrations.basicsr.cli train "
                           "-opt X.yml --launcher pytorch")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])) % torch.cuda.device_count())
        backend = backend or "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, **kwargs)


def set_distributed(opt: dict, launcher: str, launch: bool) -> None:
    """``dist``, ``rank``, ``world_size``; with ``launch`` the process group is started (the
    preflight does not start it: it reads the world size torchrun / slurm announce)."""
    from basicsr.utils.dist_util import get_dist_info

    opt["dist"] = launcher != "none"
    if opt["dist"] and launch:
        params = opt.get("dist_params") if launcher == "slurm" and isinstance(opt.get("dist_params"), dict) else {}
        init_dist(launcher, **params)
    if opt["dist"] and not launch:
        size = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or "1"
        opt["rank"], opt["world_size"] = int(os.environ.get("RANK", "0")), int(size)
    else:
        opt["rank"], opt["world_size"] = get_dist_info()


def model_to_device(model: Any, net: Any, default: Any) -> Any:
    """``BaseModel.model_to_device`` for ``model``: CPU processes get DistributedDataParallel
    without ``device_ids`` (BasicSR's passes a CUDA device); anything else is ``default(net)``."""
    from torch.nn.parallel import DistributedDataParallel

    if model.opt["dist"] and model.device.type == "cpu":
        return DistributedDataParallel(net.to(model.device),
                                       find_unused_parameters=model.opt.get("find_unused_parameters", False))
    return default(net)
