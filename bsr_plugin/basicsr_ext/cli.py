"""The ``basicsr`` command (BasicSR ships none): ``basicsr train -opt X.yml`` and
``basicsr test -opt X.yml`` run BasicSR's own ``train_pipeline`` / ``test_pipeline`` with the
plugin registered, CPU fixes applied and the options checked before anything starts.

BasicSR's flags pass through: ``--auto_resume``, ``--debug``, ``--force_yml k:k=v ...``,
``--launcher none|pytorch|slurm``, ``--local_rank``. ``--plugin MODULE`` (repeatable, ours)
imports a module first, so custom architectures, losses or models it registers can be named
in the YAML (what BasicSR-based projects do in their own ``train.py``). The current directory is the root:
``experiments/<name>`` (training) and ``results/<name>`` (testing) are written under it.
Multi-process: ``torchrun --nproc_per_node=N -m bsr_plugin.basicsr_ext.cli train -opt X.yml
--launcher pytorch`` (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, Optional, Sequence

USAGE = """usage: basicsr {train,test} -opt OPTIONS.yml [--plugin MODULE ...] [BasicSR flags]

  train   run BasicSR's train_pipeline (flags: --auto_resume --debug --force_yml ... --launcher ...)
  test    run BasicSR's test_pipeline
  --plugin MODULE   import MODULE first (it may register its own architectures, losses, models)

Runs in the current directory (experiments/ and results/ are written there)."""


def _pop_plugins(args: list[str]) -> list[str]:
    """Remove ``--plugin MODULE`` pairs from ``args``; return the modules."""
    plugins = []
    while "--plugin" in args:
        i = args.index("--plugin")
        if i + 1 >= len(args):
            raise ValueError("--plugin needs a module name")
        plugins.append(args[i + 1])
        del args[i:i + 2]
    return plugins


def parse_options(argv: Sequence[str], is_train: bool) -> dict[str, Any]:
    """BasicSR's own option parsing of ``-opt X.yml [flags]`` (force_yml, scale, paths, num_gpu
    auto), without starting a distributed process group."""
    from basicsr.utils import options

    args = list(argv)
    if "--launcher" in args:
        i = args.index("--launcher")
        del args[i:i + 2]
    saved = sys.argv
    sys.argv = ["basicsr"] + args
    try:
        opt, _ = options.parse_options(os.getcwd(), is_train=is_train)
    finally:
        sys.argv = saved
    return opt


def preflight(argv: Sequence[str], is_train: bool) -> None:
    """Check the options named by ``argv``; raise OptionsError with every problem found."""
    from .options_check import check_options

    opt = parse_options(argv, is_train)
    for key in ("dist", "rank", "world_size", "auto_resume", "is_train"):
        opt.pop(key, None)
    try:
        check_options(opt, is_train=is_train)
    finally:
        _reset_basicsr_logger()


def _reset_basicsr_logger() -> None:
    """Building the network for the check initialises BasicSR's root logger without its log
    file; undo that so the pipeline sets it up as usual."""
    from basicsr.utils import logger as basicsr_logger

    basicsr_logger.initialized_logger.pop("basicsr", None)
    log = logging.getLogger("basicsr")
    for handler in list(log.handlers):
        log.removeHandler(handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("train", "test"):
        print(f"basicsr: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if "-opt" not in rest:
        print(f"basicsr {command}: -opt OPTIONS.yml is required\n{USAGE}", file=sys.stderr)
        return 2

    from . import register
    from .compat import patch_runtime
    from .options_check import OptionsError

    register()
    patch_runtime()
    try:
        for module in _pop_plugins(rest):
            importlib.import_module(module)
    except (ImportError, ValueError) as err:
        print(f"basicsr {command}: --plugin: {err}", file=sys.stderr)
        return 2
    is_train = command == "train"
    try:
        preflight(rest, is_train)
    except (OptionsError, FileNotFoundError) as err:
        print(f"basicsr {command}: error in {rest[rest.index('-opt') + 1]}: {err}", file=sys.stderr)
        return 2

    logging.getLogger("bsr_plugin").setLevel(logging.INFO)
    saved = sys.argv
    sys.argv = [f"basicsr {command}"] + rest
    try:
        if is_train:
            from basicsr.train import train_pipeline

            train_pipeline(os.getcwd())
        else:
            from basicsr.test import test_pipeline

            test_pipeline(os.getcwd())
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
