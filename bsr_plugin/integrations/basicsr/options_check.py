"""The preflight: check a BasicSR options file before anything is written or runs. Every
type resolves in the registries, no key is unknown (a key that does nothing is an error),
every value has its type and range, the network's upscale is the options' scale, the dataset
folders exist and every image pairs up with the scale (:mod:`.dataset_check`), the checkpoints
named load safely and fit the network, the binarize schedule and the distillation teacher are
usable, and BasicSR's epoch arithmetic reaches ``total_iter``. One :class:`OptionsError` lists
every problem found, each with its fix; a problem in one section does not stop the others.
The numbers (ranges, the optimizer, scheduler and losses built once) are checked in
:mod:`.options_limits`, the files the options name in :mod:`.options_paths`; networks and
losses are built under :func:`bsr_plugin.safety.building_from_data`."""

from __future__ import annotations

import difflib
import math
import os
import pickle
import re
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from ...conversion import BinarizeConfig
from ...errors import CheckpointError, ConfigError, OptionsError, UnsafeInputError
from ...safety import building_from_data, unpickling_reason
from .options_limits import MAX_ITER, loss_problems, non_finite_problems, optimizer_problems, range_problems
from .options_paths import check_archived, check_checkpoints
from .safe_load import checkpoint_state
from .shims import import_basicsr

TOP_KEYS = {"name", "model_type", "scale", "num_gpu", "manual_seed", "datasets", "network_g", "network_d", "path",
            "train", "val", "logger", "dist_params", "find_unused_parameters"}
DATASET_KEYS = {"name", "type", "dataroot_gt", "dataroot_lq", "meta_info_file", "io_backend", "filename_tmpl",
                "gt_size", "use_hflip", "use_rot", "use_shuffle", "num_worker_per_gpu", "batch_size_per_gpu",
                "dataset_enlarge_ratio", "prefetch_mode", "pin_memory", "persistent_workers", "mean", "std", "color",
                "cache", "phase", "scale"}
PATH_KEYS = {"pretrain_network_g", "param_key_g", "strict_load_g", "resume_state", "pretrain_network_d",
             "param_key_d", "strict_load_d", "ignore_resume_networks", "experiments_root", "models",
             "training_states", "log", "visualization", "results_root"}
SR_TRAIN_KEYS = {"ema_decay", "optim_g", "scheduler", "total_iter", "warmup_iter", "pixel_opt", "perceptual_opt"}
BINARY_TRAIN_KEYS = {"prior_opt", "project_prior", "binarize_schedule", "calibrate_scales", "distill", "prior_anneal",
                     "latent_lr"}
VAL_KEYS = {"val_freq", "save_img", "suffix", "pbar", "metrics"}
LOGGER_KEYS = {"print_freq", "save_checkpoint_freq", "use_tb_logger", "wandb"}
SCHEDULERS = ("MultiStepLR", "MultiStepRestartLR", "CosineAnnealingRestartLR")
MAX_SCALE, MAX_SEED, MAX_GT_SIZE = 16, 2**32 - 2, 8192
LOADER_RANGES = {"batch_size_per_gpu": (1, 4096), "dataset_enlarge_ratio": (1, 10**4), "num_worker_per_gpu": (0, 64)}


def _unknown(where: str, keys: Iterable[str], known: set[str], problems: list[str]) -> None:
    for key in keys:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            tip = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{where}: unknown key {key!r}{tip}: it would do nothing; remove or rename it")


def _registry(kind: str):
    import_basicsr()
    from . import register

    register()
    from basicsr.utils import registry

    return getattr(registry, f"{kind}_REGISTRY")


def _check_type(where: str, spec: Any, kind: str, problems: list[str]) -> bool:
    if not isinstance(spec, Mapping) or "type" not in spec:
        problems.append(f"{where}: needs a mapping with a 'type'")
        return False
    reg = _registry(kind)
    if spec["type"] not in reg:
        hint = difflib.get_close_matches(str(spec["type"]), list(reg.keys()), n=3)
        tip = f" (did you mean {', '.join(hint)}?)" if hint else ""
        problems.append(f"{where}.type: {spec['type']!r} is not in BasicSR's {kind} registry{tip}")
        return False
    return True


def _scale_in_names(text: str) -> set[int]:
    """Scale factors named in a path or template: ``X4``, ``x4``, ``_x4``."""
    return {int(m) for m in re.findall(r"(?:^|[^a-z0-9])[xX]([1-8])(?![0-9])", text)} | {
        int(m) for m in re.findall(r"\{\}x([1-8])", text)}


def _check_named_scale(where: str, text: str, scale: int, problems: list[str]) -> None:
    named = _scale_in_names(text) - {scale}
    if named:
        problems.append(f"{where}: {text!r} names scale x{min(named)} but scale is {scale}")


def _is_int(value: Any, low: int = 0, high: Optional[int] = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def _section(opt: Mapping[str, Any], key: str, problems: list[str]) -> Mapping[str, Any]:
    """``opt[key]`` when it is a mapping (an empty one when absent); another type is a problem."""
    value = opt.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{key}: must be a mapping of options, got {str(value)[:80]!r}")
        return {}
    return value


def _check_top(opt: Mapping[str, Any], is_train: bool, problems: list[str]) -> None:
    """Top-level keys: none unknown, the required ones present, and their types."""
    _unknown("options", opt.keys(), TOP_KEYS, problems)
    required = ("name", "model_type", "num_gpu", "datasets", "network_g", "path") + (("train", "logger") if is_train
                                                                                    else ())
    problems += [f"options: required key {key!r} is missing" for key in required if key not in opt]
    name = opt.get("name")
    if "name" in opt and (not isinstance(name, str) or not name or name in (".", "..") or re.search(r"[/\\]", name)):
        problems.append(f"name: {str(name)[:80]!r} must be a plain folder name (experiments/<name>, results/<name>), "
                        "without a path separator")
    model_type = opt.get("model_type")
    if "model_type" in opt and (not isinstance(model_type, str) or model_type not in _registry("MODEL")):
        problems.append(f"model_type: {model_type!r} is not in BasicSR's model registry")
    num_gpu = opt.get("num_gpu", "auto")
    if num_gpu != "auto" and not _is_int(num_gpu):
        problems.append(f"num_gpu: {num_gpu!r} must be auto or a number of GPUs")
    elif _is_int(num_gpu, 1) and not torch.cuda.is_available():
        problems.append(f"num_gpu: {num_gpu!r} but this machine has no CUDA device; use num_gpu: auto (or 0)")
    if "scale" in opt and not _is_int(opt["scale"], 1, MAX_SCALE):
        problems.append(f"scale: {opt['scale']!r} must be a whole upscaling factor (2, 3, 4, ..., at most {MAX_SCALE})")
    if opt.get("manual_seed") is not None and not _is_int(opt["manual_seed"], 0, MAX_SEED):
        problems.append(f"manual_seed: {opt['manual_seed']!r} must be a whole number in [0, {MAX_SEED}] (numpy's "
                        "range)")


def _check_roots(where: str, ds: Mapping[str, Any], check_data: bool, problems: list[str]) -> bool:
    """The folders exist; True when they all do."""
    ok = True
    for key in ("dataroot_gt", "dataroot_lq"):
        roots = ds.get(key)
        for root in [roots] if isinstance(roots, str) else (roots or []):
            if check_data and not os.path.isdir(os.path.expanduser(str(root))):
                ok = False
                problems.append(f"{where}.{key}: folder {root!r} does not exist (relative to {os.getcwd()!r}); "
                                "prepare the data as README.md says, or point the option at it")
    return ok


def _check_names(where: str, ds: Mapping[str, Any], scale: int, problems: list[str]) -> None:
    """Without the data to look at: the LR folder and the template must not name another scale."""
    roots = ds.get("dataroot_lq")
    for root in [roots] if isinstance(roots, str) else (roots or []):
        _check_named_scale(f"{where}.dataroot_lq", str(root), scale, problems)
    if isinstance(ds.get("filename_tmpl"), str):
        _check_named_scale(f"{where}.filename_tmpl", ds["filename_tmpl"], scale, problems)


def _check_dataset(phase: str, ds: Mapping[str, Any], scale: Optional[int], check_data: bool,
                   problems: list[str]) -> Optional[int]:
    """One dataset; returns its number of samples where the preflight can count them."""
    where = f"datasets.{phase}"
    _unknown(where, ds.keys(), DATASET_KEYS, problems)
    if not _check_type(where, ds, "DATASET", problems):
        return None
    roots_exist = _check_roots(where, ds, check_data, problems)
    tmpl = ds.get("filename_tmpl")
    if tmpl is not None and (not isinstance(tmpl, str) or "{}" not in tmpl):
        problems.append(f"{where}.filename_tmpl: {tmpl!r} must hold '{{}}' where the HR name goes, e.g. '{{}}x4'")
        return None
    if scale and not (check_data and roots_exist):  # the images themselves are checked otherwise
        _check_names(where, ds, scale, problems)
    train = phase == "train"
    gt_size = ds.get("gt_size")
    if train and ds["type"] in ("PairedImageDataset", "BicubicPairDataset") and not _is_int(gt_size, 1, MAX_GT_SIZE):
        problems.append(f"{where}.gt_size: {gt_size!r}; training crops need a positive gt_size (a multiple of scale, "
                        f"at most {MAX_GT_SIZE})")
    elif scale and _is_int(gt_size, 1, MAX_GT_SIZE) and gt_size % scale:
        problems.append(f"{where}.gt_size: {gt_size} is not a multiple of scale {scale}")
    if train:
        for key, default in (("batch_size_per_gpu", None), ("dataset_enlarge_ratio", 1), ("num_worker_per_gpu", 0)):
            low, high = LOADER_RANGES[key]
            if not _is_int(ds.get(key, default), low, high):
                problems.append(f"{where}.{key}: {ds.get(key, default)!r} must be a whole number >= {low} (at most "
                                f"{high})")
    if not (check_data and roots_exist and scale) or (gt_size is not None and not _is_int(gt_size, 1, MAX_GT_SIZE)):
        return None
    return _check_data(where, ds, scale, problems)


def _check_data(where: str, ds: Mapping[str, Any], scale: int, problems: list[str]) -> Optional[int]:
    """The images themselves (:mod:`.dataset_check`) for the dataset types the plugin knows."""
    from .dataset_check import check_bicubic, check_paired

    if ds["type"] == "BicubicPairDataset" and isinstance(ds.get("dataroot_gt"), str):
        return check_bicubic(where, ds, scale, problems)
    if ds["type"] != "PairedImageDataset":
        return None
    backend = ds.get("io_backend")
    if not isinstance(backend, Mapping) or "type" not in backend:
        problems.append(f"{where}.io_backend is missing: PairedImageDataset needs it (io_backend: {{type: disk}})")
        return None
    if backend["type"] == "disk" and not ds.get("meta_info_file") and isinstance(ds.get("dataroot_gt"), str) \
            and isinstance(ds.get("dataroot_lq"), str):
        return check_paired(where, ds, scale, problems)
    return None


def _check_datasets(opt: Mapping[str, Any], check_data: bool, problems: list[str]) -> dict[str, Optional[int]]:
    """Every dataset; returns the samples counted per phase."""
    scale = opt.get("scale") if _is_int(opt.get("scale"), 1, MAX_SCALE) else None
    counts: dict[str, Optional[int]] = {}
    for phase, ds in _section(opt, "datasets", problems).items():
        if str(phase).split("_")[0] not in ("train", "val", "test"):
            problems.append(f"datasets.{phase}: phase must be train, val_* or test_*")
        elif not isinstance(ds, Mapping):
            problems.append(f"datasets.{phase}: must be a mapping with a 'type', got {str(ds)[:80]!r}")
        else:
            counts[str(phase)] = _check_dataset(str(phase), ds, scale, check_data, problems)
    return counts


def _check_network(opt: Mapping[str, Any], problems: list[str], source: str) -> Optional[nn.Module]:
    """``network_g``: its type, binarize config, upscale = scale; returns it built (None if it cannot be)."""
    net = opt.get("network_g")
    found: list[str] = []
    if "network_g" not in opt:  # reported with the required keys
        return None
    if not _check_type("network_g", net, "ARCH", found):
        problems += found
        return None
    from .archs import BINARIZED_ARCHS, check_arch_spec

    if net["type"] in BINARIZED_ARCHS:
        try:
            BinarizeConfig.from_dict(net.get("binarize"))
            if net["type"] == "BinarizedArch":
                check_arch_spec(net.get("arch"))
        except (ConfigError, KeyError, ValueError) as err:
            found.append(f"network_g: {err.args[0] if err.args else err}")
    scale = opt.get("scale")
    for where, spec in (("network_g", net), ("network_g.arch", net.get("arch"))):
        if isinstance(spec, Mapping) and "upscale" in spec and _is_int(scale, 1, MAX_SCALE) \
                and spec["upscale"] != scale:
            found.append(f"{where}.upscale is {spec['upscale']!r} but scale is {scale}: the network would output "
                         f"x{spec['upscale']} images for x{scale} data; set both to the same factor")
    problems += found
    if found:
        return None
    from basicsr.archs import build_network

    from ...core.registry import is_binary

    try:
        with building_from_data(source, strict=False):
            built = build_network(dict(net))
    except UnsafeInputError as err:
        problems.append(f"network_g: {err}")
        return None
    except pickle.UnpicklingError as err:
        problems.append(f"network_g: building it loads a file that is not plain weights ({unpickling_reason(err)}); "
                        "bsr_plugin never unpickles code")
        return None
    except (ConfigError, KeyError, TypeError, ValueError, RuntimeError, AssertionError) as err:
        problems.append(f"network_g: cannot build it: {str(err).strip().splitlines()[0] if str(err).strip() else err}")
        return None
    if opt.get("model_type") == "BinarySRModel" and not any(is_binary(m) for m in built.modules()):
        problems.append(f"network_g: BinarySRModel needs a binarized network, but {net['type']!r} has no binarized "
                        "layer; use type BinarizedArch (with arch: {type: ...}), EDSRBin or MSRResNetBin, or "
                        "model_type SRModel for a float network")
    return built


def _check_path(opt: Mapping[str, Any], is_train: bool, net: Optional[nn.Module], check_files: bool,
                problems: list[str]) -> None:
    """``path``: no unknown key, and the checkpoints it names (:mod:`.options_paths`)."""
    path = _section(opt, "path", problems)
    _unknown("path", path.keys(), PATH_KEYS, problems)
    check_checkpoints(path, is_train, net, check_files, "path" in opt, problems)


def check_options(opt: Mapping[str, Any], is_train: bool, check_data: bool = True, *, world_size: int = 1,
                  dist: bool = False, auto_resume: bool = False, source: str = "the options") -> None:
    """Raise :class:`OptionsError` listing every problem of a parsed BasicSR options dict.

    ``check_data``: also look at the dataset folders, images and checkpoint files (off for
    shipped examples whose data and weights are not there); ``world_size`` / ``dist``: how the
    training will be launched (for BasicSR's epoch arithmetic); ``auto_resume``: the run
    resumes if it finds a training state (so it archives nothing); ``source``: the options file,
    named when building a network or loss is refused (:mod:`bsr_plugin.safety`)."""
    problems: list[str] = []
    _check_top(opt, is_train, problems)
    counts = _check_datasets(opt, check_data, problems)
    net = _check_network(opt, problems, source)
    _check_path(opt, is_train, net, check_data, problems)
    check_archived(opt, is_train, auto_resume, problems)
    problems += range_problems(opt, is_train)
    if is_train and "train" in opt:
        _check_train(opt, problems, counts.get("train"), world_size, dist, check_data, source)
    _check_val_logger(opt, is_train, problems)
    problems += non_finite_problems(opt, problems)
    if problems:
        raise OptionsError(_message(problems))


def _check_val_logger(opt: Mapping[str, Any], is_train: bool, problems: list[str]) -> None:
    """``val`` (metrics, crop borders, the suffix test needs) and ``logger``."""
    val = _section(opt, "val", problems)
    _unknown("val", val.keys(), VAL_KEYS, problems)
    for name, metric in (val.get("metrics") or {}).items():
        if _check_type(f"val.metrics.{name}", metric, "METRIC", problems) and "crop_border" in metric \
                and not _is_int(metric["crop_border"], 0, 1024):
            problems.append(f"val.metrics.{name}.crop_border: {metric['crop_border']!r} must be a whole number of "
                            "pixels in [0, 1024] (the scale, as a rule)")
    if not is_train and val.get("save_img") and "suffix" not in val:
        problems.append("val.suffix is missing: BasicSR's test pipeline needs it with save_img: true (use ~)")
    logger = _section(opt, "logger", problems)
    _unknown("logger", logger.keys(), LOGGER_KEYS, problems)
    if (logger.get("wandb") or {}).get("project"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            problems.append("logger.wandb.project is set but wandb is not installed; set it to ~")


def _check_train(opt: Mapping[str, Any], problems: list[str], n_train: Optional[int], world_size: int,
                 dist: bool, check_files: bool, source: str) -> None:
    train = _section(opt, "train", problems)
    binary = opt.get("model_type") == "BinarySRModel"
    if opt.get("model_type") in ("SRModel", "BinarySRModel"):
        _unknown("train", train.keys(), SR_TRAIN_KEYS | (BINARY_TRAIN_KEYS if binary else set()), problems)
    for key in ("pixel_opt", "perceptual_opt", "prior_opt"):
        if train.get(key):
            _check_type(f"train.{key}", train[key], "LOSS", problems)
    optim, sched = train.get("optim_g"), train.get("scheduler")
    optim_type = optim.get("type") if isinstance(optim, Mapping) else optim
    if optim_type != "Adam":
        problems.append(f"train.optim_g.type: {optim_type!r}; basicsr 1.4.2 supports only Adam")
    sched = sched.get("type") if isinstance(sched, Mapping) else sched
    if sched not in SCHEDULERS:
        problems.append(f"train.scheduler.type: {sched!r} is not one of {SCHEDULERS}")
    problems += optimizer_problems(train, problems) + loss_problems(train, source)
    total = train.get("total_iter")
    if not _is_int(total, 1, MAX_ITER):
        problems.append(f"train.total_iter: {total!r}; give the number of iterations to train (1 to {MAX_ITER:,})")
    datasets = opt.get("datasets") if isinstance(opt.get("datasets"), Mapping) else {}
    if "train" not in datasets and isinstance(opt.get("datasets"), Mapping):
        problems.append("datasets.train is missing")
    if binary:
        from .models import anneal_problems, latent_lr_problems, schedule_problems

        problems += schedule_problems(train.get("binarize_schedule"), total)
        problems += anneal_problems(train.get("prior_anneal")) + latent_lr_problems(train.get("latent_lr"))
        if train.get("distill"):
            _check_distill(opt, train["distill"], check_files, problems, source)
    if n_train and _is_int(total, 1, MAX_ITER) and isinstance(datasets.get("train"), Mapping):
        _check_iterations(opt, datasets["train"], n_train, world_size, dist, problems)


def iterations_run(samples: int, ratio: int, batch_per_gpu: int, batch: int, world_size: int, total: int) -> int:
    """Iterations BasicSR's ``train_pipeline`` runs from 0 (at most ``total``): it plans
    ``ceil(total / ceil(samples * ratio / (batch_per_gpu * world_size)))`` epochs and loops over
    that many plus one, each of ``floor(ceil(samples * ratio / world_size) / batch)`` batches (the
    data loader drops the last incomplete batch)."""
    per_epoch = math.ceil(samples * ratio / world_size) // batch
    planned = math.ceil(total / math.ceil(samples * ratio / (batch_per_gpu * world_size)))
    return min(total, (planned + 1) * per_epoch)


def _check_iterations(opt: Mapping[str, Any], ds: Mapping[str, Any], samples: int, world_size: int, dist: bool,
                      problems: list[str]) -> None:
    """``train.total_iter`` must be reached with BasicSR's epoch arithmetic on this dataset."""
    bs, ratio, total = ds.get("batch_size_per_gpu"), ds.get("dataset_enlarge_ratio", 1), opt["train"]["total_iter"]
    if not (_is_int(bs, 1, LOADER_RANGES["batch_size_per_gpu"][1]) and
            _is_int(ratio, 1, LOADER_RANGES["dataset_enlarge_ratio"][1])):
        return
    num_gpu = opt.get("num_gpu") if _is_int(opt.get("num_gpu")) else 0
    batch = bs if dist else bs * max(num_gpu, 1)
    reached = iterations_run(samples, ratio, bs, batch, world_size, total)
    if reached >= total:
        return
    fix = next(r for r in range(ratio + 1, ratio + batch * world_size + 1)
               if iterations_run(samples, r, bs, batch, world_size, total) >= total)
    per_epoch = math.ceil(samples * ratio / world_size) // batch
    problems.append(f"train.total_iter {total} is never reached: {samples} training samples x dataset_enlarge_ratio "
                    f"{ratio} make {per_epoch} full batches of {batch} per epoch and BasicSR's epoch count stops after "
                    f"{reached} iterations; set datasets.train.dataset_enlarge_ratio to {fix}"
                    + (f" (or total_iter to {reached})" if reached else ""))


def _check_distill(opt: Mapping[str, Any], distill: Any, check_files: bool, problems: list[str], source: str) -> None:
    """The teacher: its options, its checkpoint, and an output of the student's shape."""
    from .distill import check_distill_options, matched_features

    found = check_distill_options(distill)
    if not found and _check_type("train.distill.network", distill["network"], "ARCH", found) and check_files:
        pretrain = os.path.expanduser(distill["pretrain"])
        if not os.path.isfile(pretrain):
            found.append(f"train.distill.pretrain: the teacher checkpoint {distill['pretrain']!r} does not exist "
                         "(train the float network first, or point the option at its net_g_*.pth)")
        else:
            try:
                checkpoint_state(pretrain, distill.get("param_key", "params_ema"))
            except CheckpointError as err:
                found.append(f"train.distill.pretrain: {err}")
    problems += found
    if found or not isinstance(opt.get("network_g"), Mapping):
        return
    from basicsr.archs import build_network

    try:
        with building_from_data(source, strict=False):
            teacher, student = build_network(dict(distill["network"])), build_network(dict(opt["network_g"]))
        channels = next(m.in_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d))
        probe = torch.rand(1, channels, 16, 16)
        with torch.no_grad():
            shapes = tuple(teacher.eval()(probe).shape), tuple(student.eval()(probe).shape)
    except UnsafeInputError as err:
        problems.append(f"train.distill.network: {err}")
        return
    except pickle.UnpicklingError as err:
        problems.append(f"train.distill.network: building it loads a file that is not plain weights "
                        f"({unpickling_reason(err)}); bsr_plugin never unpickles code")
        return
    except (ConfigError, KeyError, TypeError, ValueError, RuntimeError, StopIteration, AssertionError) as err:
        problems.append(f"train.distill.network: cannot build and run it next to network_g: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else err}")
        return
    if shapes[0] != shapes[1]:
        problems.append(f"train.distill.network: the teacher's output {shapes[0]} differs from network_g's "
                        f"{shapes[1]} on a 16x16 input; the teacher needs the same scale and channels")
    if distill.get("feature_weight", 0.0):
        try:
            matched_features(student, teacher, list(distill.get("features") or []))
        except OptionsError as err:
            problems.append(str(err))


def _message(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in the options:\n" + "\n".join(f"  - {p}" for p in problems)
