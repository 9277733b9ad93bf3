"""Check a BasicSR options file before anything runs: every type resolves in the registries,
no key is unknown (a key that does nothing is an error), the dataset folders exist and the
scale agrees with the data. One :class:`OptionsError` lists every problem with its fix."""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable, Mapping

import torch

from ..conversion import BinarizeConfig
from ..errors import ConfigError, OptionsError
from .compat import import_basicsr

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
BINARY_TRAIN_KEYS = {"prior_opt", "project_prior", "binarize_schedule", "calibrate_scales", "distill"}
VAL_KEYS = {"val_freq", "save_img", "suffix", "pbar", "metrics"}
LOGGER_KEYS = {"print_freq", "save_checkpoint_freq", "use_tb_logger", "wandb"}
SCHEDULERS = ("MultiStepLR", "MultiStepRestartLR", "CosineAnnealingRestartLR")


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


def _first_image(folder: str) -> str | None:
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")):
            return os.path.join(folder, name)
    return None


def _check_dataset(phase: str, ds: Mapping[str, Any], scale: int | None, check_data: bool, problems: list[str]) -> None:
    where = f"datasets.{phase}"
    _unknown(where, ds.keys(), DATASET_KEYS, problems)
    if not _check_type(where, ds, "DATASET", problems):
        return
    for key in ("dataroot_gt", "dataroot_lq"):
        roots = ds.get(key)
        for root in [roots] if isinstance(roots, str) else (roots or []):
            if check_data and not os.path.isdir(os.path.expanduser(root)):
                problems.append(f"{where}.{key}: folder {root!r} does not exist (relative to {os.getcwd()!r}); "
                                "prepare the data as README.md says, or point the option at it")
            if scale and key == "dataroot_lq":
                _check_named_scale(f"{where}.{key}", root, scale, problems)
    tmpl = ds.get("filename_tmpl")
    if scale and tmpl:
        _check_named_scale(f"{where}.filename_tmpl", tmpl, scale, problems)
    if scale and ds.get("gt_size") and int(ds["gt_size"]) % scale:
        problems.append(f"{where}.gt_size: {ds['gt_size']} is not a multiple of scale {scale}")
    gt, lq = ds.get("dataroot_gt"), ds.get("dataroot_lq")
    if check_data and scale and isinstance(gt, str) and isinstance(lq, str) and os.path.isdir(gt) and os.path.isdir(lq):
        _check_pair_sizes(where, gt, lq, tmpl or "{}", scale, problems)


def _check_pair_sizes(where: str, gt: str, lq: str, tmpl: str, scale: int, problems: list[str]) -> None:
    import cv2

    hr_path = _first_image(gt)
    if hr_path is None:
        problems.append(f"{where}.dataroot_gt: {gt!r} holds no images")
        return
    stem, ext = os.path.splitext(os.path.basename(hr_path))
    lr_path = os.path.join(lq, tmpl.format(stem) + ext)
    if not os.path.isfile(lr_path):
        problems.append(f"{where}: no LR file {lr_path!r} for {hr_path!r} (check dataroot_lq and filename_tmpl)")
        return
    hr, lr = cv2.imread(hr_path, cv2.IMREAD_UNCHANGED), cv2.imread(lr_path, cv2.IMREAD_UNCHANGED)
    if hr is None or lr is None:
        problems.append(f"{where}: cannot read {hr_path!r} or {lr_path!r}")
        return
    (hh, hw), (lh, lw) = hr.shape[:2], lr.shape[:2]
    if (hh // scale, hw // scale) != (lh, lw):
        ratio = round(hh / max(lh, 1))
        problems.append(f"scale {scale} disagrees with the data: {os.path.basename(hr_path)} is {hw}x{hh} but its LR "
                        f"{os.path.basename(lr_path)} is {lw}x{lh} (scale {ratio}); fix 'scale' or the dataset paths")


def _check_network(opt: Mapping[str, Any], problems: list[str]) -> None:
    net = opt.get("network_g")
    if not _check_type("network_g", net, "ARCH", problems):
        return
    from .archs import BINARIZED_ARCHS, check_arch_spec

    if net["type"] in BINARIZED_ARCHS:
        try:
            BinarizeConfig.from_dict(net.get("binarize"))
            if net["type"] == "BinarizedArch":
                check_arch_spec(net.get("arch"))
        except (ConfigError, KeyError, ValueError) as err:
            problems.append(f"network_g: {err.args[0] if err.args else err}")
            return
    if not problems:
        from basicsr.archs import build_network

        try:
            build_network(dict(net))
        except (ConfigError, KeyError, TypeError, ValueError, RuntimeError) as err:
            problems.append(f"network_g: cannot build it: {err.args[0] if err.args else err}")


def check_options(opt: Mapping[str, Any], is_train: bool, check_data: bool = True) -> None:
    """Raise :class:`OptionsError` listing every problem of a parsed BasicSR options dict."""
    problems: list[str] = []
    _unknown("options", opt.keys(), TOP_KEYS, problems)
    for key in ("name", "model_type", "num_gpu", "datasets", "network_g", "path") + (("train", "logger") if is_train
                                                                                    else ()):
        if key not in opt:
            problems.append(f"options: required key {key!r} is missing")
    if problems:
        raise OptionsError(_message(problems))
    model_type = opt["model_type"]
    if model_type not in _registry("MODEL"):
        problems.append(f"model_type: {model_type!r} is not in BasicSR's model registry")
    num_gpu = opt["num_gpu"]
    if num_gpu not in ("auto", 0) and not torch.cuda.is_available():
        problems.append(f"num_gpu: {num_gpu!r} but this machine has no CUDA device; use num_gpu: auto (or 0)")
    scale = opt.get("scale")
    for phase, ds in (opt.get("datasets") or {}).items():
        if phase.split("_")[0] not in ("train", "val", "test"):
            problems.append(f"datasets.{phase}: phase must be train, val_* or test_*")
            continue
        _check_dataset(phase, ds, scale, check_data, problems)
    _unknown("path", (opt.get("path") or {}).keys(), PATH_KEYS, problems)
    _check_network(opt, problems)
    if is_train:
        _check_train(opt, problems)
    val = opt.get("val")
    if val:
        _unknown("val", val.keys(), VAL_KEYS, problems)
        for name, metric in (val.get("metrics") or {}).items():
            _check_type(f"val.metrics.{name}", metric, "METRIC", problems)
        if not is_train and val.get("save_img") and "suffix" not in val:
            problems.append("val.suffix is missing: BasicSR's test pipeline needs it with save_img: true (use ~)")
    if opt.get("logger"):
        _unknown("logger", opt["logger"].keys(), LOGGER_KEYS, problems)
        if (opt["logger"].get("wandb") or {}).get("project"):
            try:
                import wandb  # noqa: F401
            except ImportError:
                problems.append("logger.wandb.project is set but wandb is not installed; set it to ~")
    if problems:
        raise OptionsError(_message(problems))


def _check_train(opt: Mapping[str, Any], problems: list[str]) -> None:
    train = opt["train"]
    binary = opt["model_type"] == "BinarySRModel"
    if opt["model_type"] in ("SRModel", "BinarySRModel"):
        _unknown("train", train.keys(), SR_TRAIN_KEYS | (BINARY_TRAIN_KEYS if binary else set()), problems)
    for key in ("pixel_opt", "perceptual_opt", "prior_opt"):
        if train.get(key):
            _check_type(f"train.{key}", train[key], "LOSS", problems)
    optim = train.get("optim_g") or {}
    if optim.get("type") != "Adam":
        problems.append(f"train.optim_g.type: {optim.get('type')!r}; basicsr 1.4.2 supports only Adam")
    sched = (train.get("scheduler") or {}).get("type")
    if sched not in SCHEDULERS:
        problems.append(f"train.scheduler.type: {sched!r} is not one of {SCHEDULERS}")
    if "total_iter" not in train:
        problems.append("train.total_iter is missing")
    if "train" not in (opt.get("datasets") or {}):
        problems.append("datasets.train is missing")
    if binary and train.get("distill"):
        _check_distill(opt, train["distill"], problems)


def _check_distill(opt: Mapping[str, Any], distill: Any, problems: list[str]) -> None:
    """The teacher: its options, its checkpoint, and an output of the student's shape."""
    from .distill import check_distill_options

    found = check_distill_options(distill)
    problems.extend(found)
    if found or not _check_type("train.distill.network", distill["network"], "ARCH", problems):
        return
    if not os.path.isfile(os.path.expanduser(distill["pretrain"])):
        problems.append(f"train.distill.pretrain: the teacher checkpoint {distill['pretrain']!r} does not exist "
                        "(train the float network first, or point the option at its net_g_*.pth)")
    if problems:
        return
    from basicsr.archs import build_network

    try:
        teacher, student = build_network(dict(distill["network"])), build_network(dict(opt["network_g"]))
        channels = next(m.in_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d))
        probe = torch.rand(1, channels, 16, 16)
        with torch.no_grad():
            shapes = tuple(teacher.eval()(probe).shape), tuple(student.eval()(probe).shape)
    except (ConfigError, KeyError, TypeError, ValueError, RuntimeError, StopIteration) as err:
        problems.append(f"train.distill.network: cannot build and run it next to network_g: {err}")
        return
    if shapes[0] != shapes[1]:
        problems.append(f"train.distill.network: the teacher's output {shapes[0]} differs from network_g's "
                        f"{shapes[1]} on a 16x16 input; the teacher needs the same scale and channels")


def _message(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in the options:\n" + "\n".join(f"  - {p}" for p in problems)
