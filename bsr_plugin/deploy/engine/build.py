"""Build definition of the packed engine's C++ extension ``bsr_plugin.deploy.engine._C``.

The single source of truth for its name, sources and flags: ``setup.py`` (repo root) takes
:func:`setup_kwargs` from here, and ``python -m bsr_plugin.deploy.engine.build`` builds the
``.so`` in place (next to this file) for development.

The kernels are compiled for generic x86-64 (no ``-march=native``): the AVX2 and AVX-512
code sits in functions with ``target`` attributes and is chosen at run time, so one build
runs on any x86-64 CPU. ``-fopenmp`` makes ``at::parallel_for`` multithreaded (the same
libgomp as torch's); ``-ffp-contract=off`` keeps ``scale * dot + bias`` two roundings, as in
the float simulation; ``-g0`` overrides the ``-g`` setuptools takes from Python's flags (debug
information would double the compile time and the size of the ``.so``).

The kernels are x86-64 only (SSE/AVX intrinsics, ``target`` attributes): on any other machine
the extension is not built, with one warning, and the package uses the float simulation.

This module imports nothing from ``bsr_plugin`` (``setup.py`` loads it by path) and imports
torch only inside functions, so that an install without torch still works.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

EXT_NAME = "bsr_plugin.deploy.engine._C"
ROOT = Path(__file__).resolve().parents[3]  # the repository root (where setup.py is)
_CSRC = "bsr_plugin/deploy/engine/csrc"
SOURCES = [f"{_CSRC}/engine.cpp"]  # relative to ROOT, as setuptools wants
# the headers engine.cpp includes (a change to one rebuilds the extension)
DEPENDS = [f"{_CSRC}/{name}" for name in (
    "common.h", "isa_kernels.h", "pack.h", "popcount_scalar.h", "popcount_avx2.h", "popcount_avx512.h",
    "vectors_avx2.h", "vectors_avx512.h", "weights.h", "epilogue.h", "pixel_shuffle.h", "tiles.h")]
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off", "-Wno-psabi"]
LINK_FLAGS = ["-fopenmp"]
REBUILD_HINT = "rebuild with: pip install --no-build-isolation -e ."


def _warn(message: str) -> None:
    # setup.py context: no logging configured, and pip shows the build's stderr with -v
    print(f"WARNING: bsr_plugin packed engine: {message}", file=sys.stderr, flush=True)


def is_x86_64() -> bool:
    """True on an x86-64 machine, the only one the C++ engine builds for."""
    return platform.machine().lower() in ("x86_64", "amd64")


def _not_x86_64() -> str:
    return (f"the C++ engine is x86-64 only and this machine is {platform.machine() or 'unknown'}: the package "
            f"uses the float simulation")


def extension() -> Any:
    """The ``CppExtension`` of the engine (needs torch)."""
    from torch.utils.cpp_extension import CppExtension

    return CppExtension(EXT_NAME, SOURCES, depends=DEPENDS, extra_compile_args={"cxx": CXX_FLAGS},
                        extra_link_args=LINK_FLAGS)


def safe_build_ext() -> type:
    """torch's ``BuildExtension``, but a failed compile (no compiler, compiler error: torch's
    ninja path raises ``RuntimeError``, distutils ``CompileError``) only warns: the package
    installs without the extension and falls back to the float simulation."""
    from torch.utils.cpp_extension import BuildExtension

    class SafeBuildExtension(BuildExtension):
        def build_extensions(self) -> None:
            try:
                super().build_extensions()
            except Exception as err:  # noqa: BLE001 - any failure leaves the float simulation
                _warn(f"could not compile the C++ extension ({type(err).__name__}: {err}); the package is "
                      f"installed without it and uses the float simulation. Fix the compiler, then {REBUILD_HINT}")
                # nothing was built: later steps (copy to the source tree, editable outputs) skip it
                self.extensions = []

    return SafeBuildExtension


def setup_kwargs() -> dict[str, Any]:
    """``ext_modules`` and ``cmdclass`` for ``setuptools.setup``; empty, with a warning, on a
    machine that is not x86-64 or when torch is not importable at build time (install with
    ``--no-build-isolation``)."""
    if not is_x86_64():
        _warn(f"installing without the C++ extension: {_not_x86_64()}")
        return {}
    try:
        import torch.utils.cpp_extension  # noqa: F401
    except Exception as err:  # noqa: BLE001
        _warn(f"torch is not importable at build time ({err}): installing without the C++ extension (float "
              f"simulation only). With torch installed, {REBUILD_HINT} (--no-build-isolation makes torch visible)")
        return {}
    return {"ext_modules": [extension()], "cmdclass": {"build_ext": safe_build_ext()}}


def build_inplace(verbose: bool = False) -> float:
    """Compile the extension next to this file (errors raise); returns the seconds it took."""
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension

    cwd = os.getcwd()
    os.chdir(ROOT)  # setuptools resolves sources and the in-place target from here
    start = time.perf_counter()
    try:
        setup(name="bsr_plugin_engine", ext_modules=[extension()], cmdclass={"build_ext": BuildExtension},
              script_args=["build_ext", "--inplace"] + ([] if verbose else ["--quiet"]))
    finally:
        os.chdir(cwd)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the packed engine's C++ extension in place.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    if not is_x86_64():
        _warn(f"nothing to build: {_not_x86_64()}")
        return 1
    seconds = build_inplace(args.verbose)
    built = sorted(p.name for p in (ROOT / "bsr_plugin" / "deploy" / "engine").glob("_C*.so"))
    print(f"built {', '.join(built) or '(nothing?)'} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
