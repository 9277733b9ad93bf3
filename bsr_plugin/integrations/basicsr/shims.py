"""basicsr 1.4.2 on current torchvision: the one import shim it needs, and :func:`import_basicsr`,
the import every module of this integration goes through."""

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
    """Import basicsr with the compatibility shim in place."""
    try:
        patch_torchvision()
        return importlib.import_module("basicsr")
    except ImportError as err:
        raise ImportError(
            f"the BasicSR integration needs basicsr ({err}); install it with "
            "pip install --no-build-isolation 'bsr_plugin[basicsr]'") from err
