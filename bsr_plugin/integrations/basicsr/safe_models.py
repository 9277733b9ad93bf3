"""What the plugin's models change in BasicSR's ``BaseModel``, as methods of their own class
(:class:`SafeModelMixin`) instead of patches of ``BaseModel`` for every model in the process:

* ``save_network`` / ``save_training_state`` write atomically (a temporary file, fsync, rename:
  a kill or a full disk leaves the previous file, never a truncated one; as in BasicSR a failed
  write is retried, then logged, so the training goes on);
* ``load_network`` loads with weights only (:func:`.safe_load.checkpoint_state`);
* ``model_to_device``: DistributedDataParallel on CPU too (:func:`.distributed.model_to_device`).

``BinarySRModel`` inherits it. BasicSR's own models (the float ``SRModel`` of ``edsr.yml``, the
GAN models, ...) get it through :func:`use_safe_models`, the one patch: it points each entry of
BasicSR's ``MODEL_REGISTRY`` at a thin subclass of the registered class with the mixin (same
name, same behaviour otherwise). Only models built through the registry -- BasicSR's
``build_model``, i.e. the ``basicsr`` command's pipelines -- are affected; a model a script
constructs itself from ``basicsr.models`` is BasicSR's, untouched. The ``basicsr`` command calls
it; every ``torch.load`` of its run is weights-only anyway (:func:`bsr_plugin.safety.weights_only_loads`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ...fileio import atomic_write
from .distributed import model_to_device
from .safe_load import checkpoint_state


def save_atomically(obj: Any, path: str, what: str, retries: int = 3) -> None:
    """``torch.save(obj, path)`` written atomically (:func:`bsr_plugin.fileio.atomic_write`).
    As in BasicSR, a failed write is retried (1 s apart) and then only logged, so a full disk
    does not stop the training; the previous file at ``path`` stays intact either way."""
    import torch
    from basicsr.utils import get_root_logger

    for remaining in range(retries - 1, -1, -1):
        try:
            with atomic_write(path) as fh:
                torch.save(obj, fh)
            return
        except (OSError, RuntimeError) as err:
            get_root_logger().warning(f"Save {what} error: {err}, remaining retry times: {remaining}")
            if remaining:
                time.sleep(1)
    get_root_logger().warning(f"Still cannot save {path}. Just ignore it.")


class SafeModelMixin:
    """Atomic saves, weights-only loads and DDP on CPU for a BasicSR model (module docstring);
    put it before the BasicSR class: ``class MyModel(SafeModelMixin, SRModel)``."""

    opt: dict

    def save_network(self, net, net_label, current_iter, param_key="params"):
        """BasicSR's ``save_network``, written atomically."""
        if current_iter == -1:
            current_iter = "latest"
        save_path = os.path.join(self.opt["path"]["models"], f"{net_label}_{current_iter}.pth")
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        assert len(nets) == len(keys), "The lengths of net and param_key should be the same."
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = {(k[7:] if k.startswith("module.") else k): v.cpu() for k, v in state.items()}
        save_atomically(save_dict, save_path, "model")

    def save_training_state(self, epoch, current_iter):
        """BasicSR's ``save_training_state``, written atomically."""
        if current_iter == -1:
            return
        state = {"epoch": epoch, "iter": current_iter, "optimizers": [o.state_dict() for o in self.optimizers],
                 "schedulers": [s.state_dict() for s in self.schedulers]}
        save_atomically(state, os.path.join(self.opt["path"]["training_states"], f"{current_iter}.state"),
                        "training state")

    def load_network(self, net, load_path, strict=True, param_key="params"):
        """BasicSR's ``load_network``, loading with :func:`checkpoint_state` (weights only)."""
        from basicsr.utils import get_root_logger

        net = self.get_bare_model(net)
        state = checkpoint_state(load_path, param_key)
        get_root_logger().info(f"Loading {net.__class__.__name__} model from {load_path}, with param key: "
                               f"[{param_key}].")
        self._print_different_keys_loading(net, state, strict)
        net.load_state_dict(state, strict=strict)

    def model_to_device(self, net):
        """BasicSR's ``model_to_device``, with DistributedDataParallel on CPU too."""
        return model_to_device(self, net, super().model_to_device)  # type: ignore[misc]

    # BaseModel's helpers the methods above use (declared for type checkers only)
    get_bare_model: Any
    _print_different_keys_loading: Any
    optimizers: list
    schedulers: list


_SAFE: dict[type, type] = {}


def safe_model_class(cls: type) -> type:
    """``cls`` with :class:`SafeModelMixin` first in its bases (one subclass per class, same name)."""
    if issubclass(cls, SafeModelMixin):
        return cls
    if cls not in _SAFE:
        doc = f"{cls.__name__} with atomic saves and weights-only loads (bsr_plugin's SafeModelMixin)."
        _SAFE[cls] = type(cls.__name__, (SafeModelMixin, cls), {"__module__": __name__, "__doc__": doc})
    return _SAFE[cls]


def use_safe_models() -> None:
    """The one patch (module docstring): every model in BasicSR's ``MODEL_REGISTRY`` is built as
    its :func:`safe_model_class`. Idempotent."""
    from basicsr.utils.registry import MODEL_REGISTRY

    for name, cls in list(MODEL_REGISTRY):
        MODEL_REGISTRY._obj_map[name] = safe_model_class(cls)
