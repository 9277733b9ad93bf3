"""Reading a BasicSR options file and its command line without running anything: the file with
YAML's safe loader (:func:`read_options`), ``--force_yml`` without ``exec``/``eval``
(:func:`apply_force_yml`), and :func:`parse_options`, BasicSR's ``parse_options`` with those two
in place (the ``basicsr`` command installs it into BasicSR's modules)."""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

from ...errors import OptionsError
from ...fileio import not_regular
from .distributed import set_distributed

SEED_RANGE = (0, 2**32 - 2)
"""What numpy's seeding takes (BasicSR seeds numpy with ``manual_seed + rank``)."""


def read_options(path: Any) -> dict:
    """A BasicSR options file parsed with YAML's safe loader (no tag can construct an object
    or run code): a mapping, or an :class:`OptionsError` naming the problem."""
    import yaml

    p = Path(path)
    why = not_regular(p)
    if why is not None:
        raise OptionsError(f"options file {path} {why}")
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


def _set_seed(opt: dict) -> None:
    """BasicSR's seeding: ``manual_seed`` (a random one when absent) plus the rank."""
    from basicsr.utils import set_random_seed

    if opt.get("manual_seed") is None:
        opt["manual_seed"] = random.randint(1, 10000)
    seed = opt["manual_seed"]
    if isinstance(seed, int) and not isinstance(seed, bool) and SEED_RANGE[0] <= seed + opt["rank"] <= SEED_RANGE[1]:
        set_random_seed(seed + opt["rank"])  # another type or range is reported by the preflight


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
    set_distributed(opt, args.launcher, launch)
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
