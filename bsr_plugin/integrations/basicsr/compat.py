"""What basicsr 1.4.2 needs to run on current torch/torchvision, safely and crash-safely,
applied without editing its files (see docs: environment.md of the project): a safe options
reader (:func:`read_options`, :func:`parse_options`), weights-only checkpoint loading
(:func:`safe_torch_load`, :func:`checkpoint_state`), atomic checkpoint writes, a resume loader
that skips a broken newest state, and the CPU fixes; :func:`patch_runtime` installs them."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pickle
import random
import sys
import types
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

from ...errors import CheckpointError, OptionsError
from ...fileio import atomic_write

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


# -- options ---------------------------------------------------------------------------------
class _OptionsArgumentParser(argparse.ArgumentParser):
    """BasicSR's command line; a mistake in it is an :class:`OptionsError` (one line)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise OptionsError(f"{message}; usage: basicsr train|test -opt X.yml [--auto_resume] [--debug] "
                           "[--force_yml key:key=value ...] [--launcher none|pytorch|slurm]")


def _arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """BasicSR's flags, parsed from ``argv`` (default ``sys.argv[1:]``, as BasicSR does)."""
    parser = _OptionsArgumentParser(prog="basicsr")
    parser.add_argument("-opt", type=str, required=True, help="Path to option YAML file.")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none", help="job launcher")
    parser.add_argument("--auto_resume", action="store_true")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--force_yml", nargs="+", default=None, help="Force to update yml files. Examples: "
                        "train:ema_decay=0.999")
    return parser.parse_args(argv)


def _force_yml_value(entry: str, text: str) -> Any:
    """A ``--force_yml`` value, parsed with YAML's safe loader (BasicSR ``eval``s lists):
    ``~``/``none`` -> None, ``true``, numbers, ``!!float 1e-4``, ``[1, 2]``, else a string."""
    import yaml

    if not text:
        raise OptionsError(f"--force_yml {entry!r}: the value is empty; give one (~ for None)")
    if text.lower() == "none":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise OptionsError(f"--force_yml {entry!r}: the value is not plain YAML ({problem}); tags such as "
                           "!!python/... are refused: quote a string value (key='...')") from None


def apply_force_yml(opt: dict, entries: Sequence[str]) -> None:
    """BasicSR's ``--force_yml key:key=value ...`` without ``exec``: each key path must exist in
    the options (BasicSR does not create keys), the value is parsed by :func:`_force_yml_value`."""
    for entry in entries:
        keys, sep, text = entry.partition("=")
        path = [k.strip() for k in keys.split(":")]
        if not sep or not all(path):
            raise OptionsError(f"--force_yml {entry!r}: write it as key:key=value, e.g. train:total_iter=1000")
        node: Any = opt
        for depth, key in enumerate(path):
            if not isinstance(node, dict) or key not in node:
                where = ":".join(path[:depth]) or "the options file"
                raise OptionsError(f"--force_yml {entry!r}: {where} has no key {key!r}; --force_yml only changes "
                                   "keys the options file has: add it to the file first")
            if depth < len(path) - 1:
                node = node[key]
        node[path[-1]] = _force_yml_value(entry, text.strip())


def _set_distributed(opt: dict, launcher: str, launch: bool) -> None:
    """``dist``, ``rank``, ``world_size``; with ``launch`` the process group is started (the
    preflight does not start it: it reads the world size torchrun / slurm announce)."""
    from basicsr.utils.dist_util import get_dist_info

    opt["dist"] = launcher != "none"
    if opt["dist"] and launch:
        params = opt.get("dist_params") if launcher == "slurm" and isinstance(opt.get("dist_params"), dict) else {}
        _init_dist(launcher, **params)
    if opt["dist"] and not launch:
        size = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or "1"
        opt["rank"], opt["world_size"] = int(os.environ.get("RANK", "0")), int(size)
    else:
        opt["rank"], opt["world_size"] = get_dist_info()


def _set_seed(opt: dict) -> None:
    """BasicSR's seeding: ``manual_seed`` (a random one when absent) plus the rank."""
    from basicsr.utils import set_random_seed

    if opt.get("manual_seed") is None:
        opt["manual_seed"] = random.randint(1, 10000)
    seed = opt["manual_seed"]
    if isinstance(seed, int) and not isinstance(seed, bool):  # another type is reported by the preflight
        set_random_seed(seed + opt["rank"])


def _derive_datasets(opt: dict) -> None:
    """Each dataset's ``phase`` (``val_2`` -> ``val``) and ``scale``, ``~`` expanded in its roots."""
    for phase, dataset in (opt.get("datasets") if isinstance(opt.get("datasets"), dict) else {}).items():
        if not isinstance(dataset, dict):
            continue
        dataset["phase"] = str(phase).split("_")[0]
        if "scale" in opt:
            dataset["scale"] = opt["scale"]
        for key in ("dataroot_gt", "dataroot_lq"):
            if isinstance(dataset.get(key), str):
                dataset[key] = os.path.expanduser(dataset[key])


def _derive_paths(opt: dict, root_path: str, is_train: bool) -> None:
    """``~`` in resume/pretrain paths; ``experiments/<name>`` (train) or ``results/<name>`` (test)."""
    path, name = opt.get("path"), opt.get("name")
    if not isinstance(path, dict) or not isinstance(name, str):
        return  # reported by the preflight
    for key, val in path.items():
        if isinstance(val, str) and ("resume_state" in key or "pretrain_network" in key):
            path[key] = os.path.expanduser(val)
    if not is_train:
        root = path["results_root"] = path["log"] = os.path.join(root_path, "results", name)
        path["visualization"] = os.path.join(root, "visualization")
        return
    root = path["experiments_root"] = path["log"] = os.path.join(root_path, "experiments", name)
    path.update(models=os.path.join(root, "models"), training_states=os.path.join(root, "training_states"),
                visualization=os.path.join(root, "visualization"))
    if "debug" in name:
        if isinstance(opt.get("val"), dict):
            opt["val"]["val_freq"] = 8
        if isinstance(opt.get("logger"), dict):
            opt["logger"].update(print_freq=1, save_checkpoint_freq=8)


def parse_options(root_path: str, is_train: bool = True, argv: Optional[Sequence[str]] = None, *,
                  launch: bool = True) -> tuple[dict, argparse.Namespace]:
    """BasicSR's ``basicsr.utils.options.parse_options``, safe: the file is read by
    :func:`read_options` (YAML's safe loader) and ``--force_yml`` by :func:`apply_force_yml` (no
    ``exec``/``eval``). Same semantics otherwise, in BasicSR's order: distributed settings, seed,
    ``--force_yml`` (before the derived fields), ``--debug``, ``num_gpu: auto``, dataset phase /
    scale / ``~``, paths, the experiments or results root under ``root_path``. Sections of the
    wrong type are left for the preflight to report. ``argv``: default ``sys.argv[1:]``;
    ``launch=False`` (the preflight) does not start a process group."""
    args = _arguments(argv)
    opt = read_options(args.opt)
    _set_distributed(opt, args.launcher, launch)
    _set_seed(opt)
    apply_force_yml(opt, args.force_yml or ())
    opt["auto_resume"] = args.auto_resume
    opt["is_train"] = is_train
    if args.debug and isinstance(opt.get("name"), str) and not opt["name"].startswith("debug"):
        opt["name"] = "debug_" + opt["name"]
    if opt.get("num_gpu") == "auto":
        import torch

        opt["num_gpu"] = torch.cuda.device_count()
    _derive_datasets(opt)
    _derive_paths(opt, root_path, is_train)
    return opt, args


def _load_network(self, net, load_path, strict=True, param_key="params"):
    """BasicSR's ``BaseModel.load_network``, loading with :func:`checkpoint_state` (weights only)."""
    from basicsr.utils import get_root_logger

    net = self.get_bare_model(net)
    state = checkpoint_state(load_path, param_key)
    get_root_logger().info(f"Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].")
    self._print_different_keys_loading(net, state, strict)
    net.load_state_dict(state, strict=strict)


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


def _load_resume_state(opt: dict) -> Optional[dict]:
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


# -- crash-safe checkpoints -------------------------------------------------------------------
def _save_atomically(obj: Any, path: str, what: str, retries: int = 3) -> None:
    """``torch.save(obj, path)`` written atomically (:func:`bsr_plugin.fileio.atomic_write`).
    As in BasicSR, a failed write is retried (1 s apart) and then only logged, so a full disk
    does not stop the training; the previous file at ``path`` stays intact either way."""
    import time

    import torch
    from basicsr.utils import get_root_logger

    for remaining in range(retries - 1, -1, -1):
        try:
            with atomic_write(path) as fh:
                torch.save(obj, fh)
            return
        except (OSError, RuntimeError) as err:
            get_root_logger().warning(f"Save {what} error: {err}, remaining retry times: {remaining}")
            if remaining:
                time.sleep(1)
    get_root_logger().warning(f"Still cannot save {path}. Just ignore it.")


def _save_network(self, net, net_label, current_iter, param_key="params"):
    """BasicSR's ``BaseModel.save_network``, written atomically (a kill or a full disk leaves
    the previous file, never a truncated one)."""
    if current_iter == -1:
        current_iter = "latest"
    save_path = os.path.join(self.opt["path"]["models"], f"{net_label}_{current_iter}.pth")
    nets = net if isinstance(net, list) else [net]
    keys = param_key if isinstance(param_key, list) else [param_key]
    assert len(nets) == len(keys), "The lengths of net and param_key should be the same."
    save_dict = {}
    for net_, key in zip(nets, keys):
        state = self.get_bare_model(net_).state_dict()
        save_dict[key] = {(k[7:] if k.startswith("module.") else k): v.cpu() for k, v in state.items()}
    _save_atomically(save_dict, save_path, "model")


def _save_training_state(self, epoch, current_iter):
    """BasicSR's ``BaseModel.save_training_state``, written atomically."""
    if current_iter == -1:
        return
    state = {"epoch": epoch, "iter": current_iter, "optimizers": [o.state_dict() for o in self.optimizers],
             "schedulers": [s.state_dict() for s in self.schedulers]}
    _save_atomically(state, os.path.join(self.opt["path"]["training_states"], f"{current_iter}.state"),
                     "training state")


def _init_dist(launcher: str, backend: str | None = None, **kwargs) -> None:
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


def _model_to_device(self, net):
    """BasicSR's ``BaseModel.model_to_device``; CPU processes get DistributedDataParallel
    without ``device_ids`` (the original passes a CUDA device)."""
    from torch.nn.parallel import DistributedDataParallel

    if self.opt["dist"] and self.device.type == "cpu":
        return DistributedDataParallel(net.to(self.device),
                                       find_unused_parameters=self.opt.get("find_unused_parameters", False))
    return _ORIGINAL["model_to_device"](self, net)


_ORIGINAL: dict = {}


def _weights_only_load(f: Any, map_location: Any = None, **kwargs: Any) -> Any:
    """``torch.load`` as BasicSR's own modules see it after :func:`patch_runtime`: weights only,
    whatever the call or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` say (an explicit argument wins
    over that variable)."""
    import torch

    kwargs["weights_only"] = True
    return torch.load(f, map_location=map_location, **kwargs)


def _guard_basicsr_torch_load() -> None:
    """Every ``torch.load`` inside BasicSR's modules (network loaders of SpyNet, BasicVSR, TOF,
    DFDNet, VGG, Inception, ...) loads with weights only: those modules see a copy of the
    ``torch`` module whose ``load`` is :func:`_weights_only_load`. Nothing else changes."""
    import torch

    proxy = _ORIGINAL.get("torch_proxy")
    if proxy is None:
        proxy = types.ModuleType("torch")
        proxy.__dict__.update(torch.__dict__)
        proxy.__dict__["__getattr__"] = lambda name: getattr(torch, name)  # torch's lazy attributes
        proxy.load = _weights_only_load  # type: ignore[attr-defined]
        _ORIGINAL["torch_proxy"] = proxy
    for name, module in list(sys.modules.items()):
        if (name == "basicsr" or name.startswith("basicsr.")) and getattr(module, "torch", None) is torch:
            module.torch = proxy  # type: ignore[attr-defined]


def patch_runtime() -> None:
    """Make BasicSR's train/test pipelines safe, crash-safe and runnable on CPU. Idempotent.

    * options: :func:`parse_options` (safe YAML, ``--force_yml`` without ``exec``) replaces
      BasicSR's in ``basicsr.utils.options``, ``basicsr.train`` and ``basicsr.test``;
    * loading: ``BaseModel.load_network`` and the resume loader load weights only (and skip a
      broken newest state on ``--auto_resume``); BasicSR's other ``torch.load`` calls too;
    * saving: ``BaseModel.save_network`` / ``save_training_state`` write atomically;
    * CPU: the resume state maps to the device in use, gloo when there is no GPU, DDP on CPU.
    """
    import_basicsr()
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel

    for module in (basicsr.utils.options, basicsr.train, basicsr.test):
        module.parse_options = parse_options
    basicsr.train.load_resume_state = _load_resume_state
    basicsr.utils.options.init_dist = _init_dist
    if "model_to_device" not in _ORIGINAL:
        _ORIGINAL["model_to_device"] = BaseModel.model_to_device
        BaseModel.model_to_device = _model_to_device
    BaseModel.load_network = _load_network
    BaseModel.save_network = _save_network
    BaseModel.save_training_state = _save_training_state
    _guard_basicsr_torch_load()
