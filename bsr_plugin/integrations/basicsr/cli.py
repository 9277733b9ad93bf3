"""The ``basicsr`` command (BasicSR ships none): ``basicsr train -opt X.yml`` and
``basicsr test -opt X.yml`` run BasicSR's own ``train_pipeline`` / ``test_pipeline`` with the
plugin registered, CPU fixes applied and the options checked before anything starts.

BasicSR's flags pass through: ``--auto_resume``, ``--debug``, ``--force_yml k:k=v ...``,
``--launcher none|pytorch|slurm``, ``--local_rank``. ``--plugin MODULE`` (repeatable, ours)
imports a module first, so custom architectures, losses or models it registers can be named
in the YAML (what BasicSR-based projects do in their own ``train.py``). The current directory is the root:
``experiments/<name>`` (training) and ``results/<name>`` (testing) are written under it.
Multi-process: ``torchrun --nproc_per_node=N -m bsr_plugin.integrations.basicsr.cli train -opt X.yml
--launcher pytorch`` (NCCL on GPUs, gloo on CPU).

The whole run (preflight and pipeline) is inside :func:`bsr_plugin.safety.weights_only_loads`:
every ``torch.load`` BasicSR or a plugin makes loads weights only, whatever the environment
says; the preflight builds the options' networks and losses under
:func:`bsr_plugin.safety.building_from_data` (no download, no FIFO, nothing run).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ...errors import BsrError, CLIError
from ...fileio import terminate_as_exit
from ...safety import weights_only_loads

USAGE = """usage: basicsr {train,test} -opt OPTIONS.yml [--plugin MODULE ...] [BasicSR flags]

  train   run BasicSR's train_pipeline (flags: --auto_resume --debug --force_yml ... --launcher ...)
  test    run BasicSR's test_pipeline
  --plugin MODULE   import MODULE first (it may register its own architectures, losses, models)

Runs in the current directory (experiments/ and results/ are written there)."""


def _pop_plugins(args: list[str]) -> list[str]:
    """Remove ``--plugin MODULE`` (and ``--plugin=MODULE``) from ``args``; return the modules,
    each a dotted module name (a file path, a relative or empty name is refused)."""
    plugins = []
    i = 0
    while i < len(args):
        if args[i].startswith("--plugin="):
            plugins.append(args.pop(i).partition("=")[2])
        elif args[i] == "--plugin":
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                raise CLIError("--plugin needs a module name (e.g. --plugin my_project.archs)")
            plugins.append(args[i + 1])
            del args[i:i + 2]
        else:
            i += 1
    for module in plugins:
        if not module or module.endswith(".py") or not all(part.isidentifier() for part in module.split(".")):
            hint = f"; for a file, put its folder on PYTHONPATH and give --plugin {Path(module).stem}" \
                if module.endswith(".py") else ""
            raise CLIError(f"--plugin {module!r} is not a module name: give a dotted name such as "
                           f"my_project.archs{hint}")
    return plugins


def _import_plugins(modules: Sequence[str]) -> None:
    """Import the ``--plugin`` modules; a module that cannot be imported is one line."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise CLIError(f"--plugin: cannot import it: {err}") from None
        except Exception as err:  # the plugin's own code failed while importing (a SyntaxError, ...)
            raise CLIError(f"--plugin {module}: importing it failed ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None


def parse_options(argv: Sequence[str], is_train: bool) -> dict[str, Any]:
    """The options of ``-opt X.yml [flags]`` exactly as the pipeline will see them (the plugin's
    safe equivalent of BasicSR's parser, :func:`~bsr_plugin.integrations.basicsr.options_io.parse_options`:
    force_yml, scale, paths, num_gpu auto), without starting a distributed process group."""
    from .options_io import parse_options as parse

    opt, _ = parse(os.getcwd(), is_train, list(argv), launch=False)
    return opt


@contextlib.contextmanager
def _quiet_basicsr_logger() -> Iterator[None]:
    """Building networks for the check would initialise BasicSR's root logger (INFO lines on
    stderr, without its log file): keep it quiet, then undo it so the pipeline sets it up as usual."""
    from basicsr.utils import logger as basicsr_logger

    log = logging.getLogger("basicsr")
    basicsr_logger.initialized_logger["basicsr"] = True
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        basicsr_logger.initialized_logger.pop("basicsr", None)
        for handler in list(log.handlers):
            log.removeHandler(handler)
        log.setLevel(logging.NOTSET)


def preflight(argv: Sequence[str], is_train: bool) -> None:
    """Check the options named by ``argv`` before anything is written; raise OptionsError with
    every problem found."""
    from .options_check import check_options

    with _quiet_basicsr_logger():
        opt = parse_options(argv, is_train)
        world_size, dist = opt.pop("world_size", 1), opt.pop("dist", False)
        auto_resume = bool(opt.pop("auto_resume", False))
        for key in ("rank", "is_train"):
            opt.pop(key, None)
        check_options(opt, is_train=is_train, world_size=world_size, dist=dist, auto_resume=auto_resume,
                      source=_options_file(argv))


def _options_file(args: Sequence[str]) -> str:
    args = list(args)
    i = args.index("-opt") if "-opt" in args else len(args)
    return args[i + 1] if i + 1 < len(args) else "the options"


def _run_pipeline(command: str, rest: list[str]) -> None:
    """BasicSR's own train or test pipeline on ``rest`` (its command line), in the current folder.
    The plugin's warnings (e.g. a training state ``--auto_resume`` skips) go to stderr."""
    log = logging.getLogger("bsr_plugin")
    log.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"basicsr {command}: warning: %(message)s"))
    log.addHandler(handler)
    saved = sys.argv
    sys.argv = [f"basicsr {command}"] + rest
    try:
        if command == "train":
            from basicsr.train import train_pipeline

            train_pipeline(os.getcwd())
        else:
            from basicsr.test import test_pipeline

            test_pipeline(os.getcwd())
    finally:
        sys.argv = saved
        log.removeHandler(handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``basicsr`` console command; returns the exit status (2: a user error,
    reported in one line before anything is written)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("train", "test"):
        print(f"basicsr: error: unknown command {command!r}: use basicsr train|test -opt OPTIONS.yml (see basicsr "
              "--help)", file=sys.stderr)
        return 2
    if "-opt" not in rest:
        print(f"basicsr {command}: error: -opt OPTIONS.yml is required (see basicsr --help)", file=sys.stderr)
        return 2
    with weights_only_loads(), terminate_as_exit():
        return _checked_run(command, rest)


def _checked_run(command: str, rest: list[str]) -> int:
    """Plugins, preflight, then the pipeline; each user error in one line (exit status 2)."""
    from . import register
    from .runtime import patch_runtime
    from .safe_models import use_safe_models

    register()
    patch_runtime()
    try:
        _import_plugins(_pop_plugins(rest))
    except BsrError as err:
        print(f"basicsr {command}: error: {err}", file=sys.stderr)
        return 2
    use_safe_models()  # the models the plugins registered too
    try:
        preflight(rest, command == "train")
    except BsrError as err:
        print(f"basicsr {command}: error in {_options_file(rest)}: {err}", file=sys.stderr)
        return 2
    try:
        _run_pipeline(command, rest)
    except BsrError as err:  # a checkpoint or resume state that cannot be used: found before writing
        print(f"basicsr {command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
