"""Former home of the BasicSR compatibility layer, split by concern (kept so that older imports,
e.g. ``benchmarks/sr_benchmark.py``'s ``checkpoint_state``, keep working): :mod:`.shims`
(torchvision shim, :func:`import_basicsr`), :mod:`.options_io` (safe options reading),
:mod:`.safe_load` (weights-only checkpoints), :mod:`.resume`, :mod:`.distributed`,
:mod:`.safe_models` (atomic saves, the models' overrides) and :mod:`.runtime`
(:func:`patch_runtime`); the guard for BasicSR's own ``torch.load`` calls is
:mod:`bsr_plugin.safety`. New code imports from those modules."""

from __future__ import annotations

from .options_io import apply_force_yml, parse_options, read_options
from .runtime import patch_runtime
from .safe_load import checkpoint_state, safe_torch_load
from .shims import import_basicsr, patch_torchvision

__all__ = ["apply_force_yml", "checkpoint_state", "import_basicsr", "parse_options", "patch_runtime",
           "patch_torchvision", "read_options", "safe_torch_load"]
