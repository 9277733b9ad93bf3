"""What the ``basicsr`` command changes in BasicSR before running its own pipelines
(:func:`patch_runtime`), each a replacement of one module attribute, listed here:

* ``parse_options`` in ``basicsr.utils.options``, ``basicsr.train`` and ``basicsr.test``:
  :func:`.options_io.parse_options` (safe YAML, ``--force_yml`` without ``exec``);
* ``basicsr.train.load_resume_state``: :func:`.resume.load_resume_state` (weights only, skips a
  broken newest state on ``--auto_resume``, maps to the device in use);
* ``basicsr.utils.options.init_dist``: :func:`.distributed.init_dist` (gloo without GPUs);
* the models of ``MODEL_REGISTRY``: :func:`.safe_models.use_safe_models` (atomic saves,
  weights-only loads, DDP on CPU).

``BaseModel`` itself is not changed, and every ``torch.load`` the command's run makes is
weights-only through :func:`bsr_plugin.safety.weights_only_loads`, which the command wraps
around the preflight and the pipeline.
"""

from __future__ import annotations

from .distributed import init_dist
from .options_io import parse_options
from .resume import load_resume_state
from .safe_models import use_safe_models
from .shims import import_basicsr


def patch_runtime() -> None:
    """Make BasicSR's train/test pipelines safe, crash-safe and runnable on CPU (module
    docstring). Idempotent."""
    import_basicsr()
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options

    from . import register

    register()
    for module in (basicsr.utils.options, basicsr.train, basicsr.test):
        module.parse_options = parse_options
    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.options.init_dist = init_dist
    use_safe_models()
