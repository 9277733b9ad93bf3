"""Only the optional C++ extension of the packed engine; the metadata lives in pyproject.toml.

``pip install --no-build-isolation -e ".[all,test]"`` compiles ``bsr_plugin.deploy.engine._C``
in place. Without torch at build time or without a working compiler the install still
succeeds (with one warning) and the package uses the float simulation.
"""

import importlib.util
import os

from setuptools import setup

_here = os.path.dirname(os.path.abspath(__file__))
# loaded by path: importing the package here would need its dependencies at build time
_spec = importlib.util.spec_from_file_location(
    "_bsr_engine_build", os.path.join(_here, "bsr_plugin", "deploy", "engine", "build.py"))
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

setup(**_build.setup_kwargs())
