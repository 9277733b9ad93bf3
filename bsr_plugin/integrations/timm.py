"""timm integration: binarized timm models by name.

:func:`create_binarized_model` is ``timm.create_model`` (``pretrained=False`` unless asked)
followed by :func:`bsr_plugin.convert`; the result is still the timm class, so timm's own
methods (``forward_features``, ``reset_classifier``, ...) keep working::

    from bsr_plugin.integrations.timm import create_binarized_model
    net = create_binarized_model("resnet18", num_classes=10, binarize={"prior_a": 1e-3})
    print(net.bsr_report)

Nothing is registered in timm's registry on import: it is one global, listed namespace
(``timm.list_models``), and a binarized variant is a float architecture plus a binarize config
that a name cannot carry. Tools that can only name a timm model (timm's ``train.py --model``,
a ``TIMMBackbone(model_name=...)``) opt in per model with :func:`register_binarized_model`,
after which ``timm.create_model("bsr_resnet18", ...)`` builds the binarized network.

Needs the ``timm`` extra: ``pip install 'bsr_plugin[timm]'``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from ..conversion import BinarizeConfig, convert
from ..conversion.dataflow import default_probe
from ..errors import BuilderError, ConfigError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'bsr_plugin[timm]'"
PROBE_SIZE = 32  # spatial size of the default probe input

# Names registered by register_binarized_model: {name: (timm model name, config)}.
_REGISTERED: dict[str, tuple[str, BinarizeConfig]] = {}

__all__ = ["INSTALL_HINT", "create_binarized_model", "import_timm", "probe_input", "register_binarized_model"]


def import_timm() -> Any:
    """Import timm, or raise an ImportError naming the extra to install."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"bsr_plugin.integrations.timm needs timm ({err}); install it with {INSTALL_HINT}") from err
    return timm


def probe_input(model: nn.Module) -> torch.Tensor:
    """A random input for ``convert``'s probe pass of a timm model: ``2 x C x 32 x 32`` for the
    first conv's ``C`` (every timm CNN, stride <= 32, runs on it), or the fixed image size of a
    patch-embedding model.

    Args:
        model: a timm model.
    """
    probe = default_probe(model, PROBE_SIZE)
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size and not getattr(embed, "dynamic_img_size", False) and probe.dim() == 4:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        probe = torch.randn(probe.shape[0], probe.shape[1], h, w, device=probe.device, dtype=probe.dtype)
    return probe


def create_binarized_model(model_name: str, binarize: BinarizeConfig | Mapping[str, Any] | None = None, *,
                           pretrained: bool = False, example_input: Any = None, **timm_kwargs: Any) -> nn.Module:
    """Create a timm model by name and binarize it.

    Args:
        model_name: a timm model name (``timm.list_models()``), e.g. ``"resnet18"``.
        binarize: a :class:`~bsr_plugin.BinarizeConfig`, its dict form, or ``None`` for the defaults
            (every Conv2d but the first binarized; the classifier stays full precision).
        pretrained: load timm's float pretrained weights before binarizing (they carry over into the
            latent weights and scales); this downloads them unless they are cached.
        example_input: input for ``convert``'s probe pass; default :func:`probe_input`.
        **timm_kwargs: passed to ``timm.create_model`` (``num_classes``, ``in_chans``, ``drop_path_rate``, ...).

    Returns:
        The binarized timm model, with ``bsr_report`` and ``bsr_config``.

    Raises:
        ImportError: timm is missing.
    """
    timm = import_timm()
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **timm_kwargs)
    except TypeError as err:
        misplaced = [k for k in timm_kwargs if k in BinarizeConfig.field_names() and repr(k) in str(err)]
        if misplaced:
            raise ConfigError(f"{misplaced[0]!r} is a binarize option, not one of {model_name}'s: pass it as "
                            f"binarize={{{misplaced[0]!r}: ...}} ({err})") from err
        raise
    probe = probe_input(model) if example_input is None else example_input
    net = convert(model, binarize, inplace=True, example_input=probe)
    net.bsr_build = {"builder": "timm", "spec": {"model_name": model_name, "kwargs": _json_kwargs(timm_kwargs)}}
    logger.info("%s: binarized %d, kept %d conv/linear layers", model_name, len(net.bsr_report.binarized),
                len(net.bsr_report.kept))
    return net


def _json_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments a packed file can record (numbers, strings, lists, dicts)."""
    import json

    out = {}
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            logger.warning("timm keyword %s=%r cannot be recorded in a packed file; pass the network to load it "
                           "(load_packed(path, model=...))", key, value)
            continue
        out[key] = value
    return out


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """The ``timm`` builder: ``timm.create_model(spec["model_name"], pretrained=False,
    **spec["kwargs"])``, the float network a packed file's config binarizes again."""
    try:
        timm = import_timm()
    except ImportError as err:
        raise BuilderError(str(err)) from None
    if not isinstance(spec.get("model_name"), str) or not isinstance(spec.get("kwargs", {}), dict):
        raise BuilderError(f"a timm spec is {{model_name: str, kwargs: {{...}}}}, got {str(spec)[:200]}")
    return timm.create_model(spec["model_name"], pretrained=False, **spec.get("kwargs", {}))


def register_builder() -> None:
    """Register the ``timm`` network builder (the entry point ``bsr_plugin.builders``)."""
    from ..deploy.builders import register_builder as register

    register("timm", build_from_spec, description="a timm model name and its keyword arguments")


def _entrypoint(name: str, model_name: str, config: BinarizeConfig) -> Callable[..., nn.Module]:
    """A timm model entrypoint named ``name`` that builds ``model_name`` and binarizes it."""

    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Optional[dict] = None,
                   cache_dir: Any = None, **kwargs: Any) -> nn.Module:
        return create_binarized_model(model_name, config, pretrained=pretrained, pretrained_cfg=pretrained_cfg,
                                      pretrained_cfg_overlay=pretrained_cfg_overlay, cache_dir=cache_dir, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm's {model_name}, binarized by bsr_plugin (registered by register_binarized_model)."
    return entrypoint


def register_binarized_model(model_name: str, binarize: BinarizeConfig | Mapping[str, Any] | None = None, *,
                             prefix: str = "bsr_") -> str:
    """Register ``prefix + model_name`` in timm's registry: ``timm.create_model`` of that name
    builds ``model_name`` (same keyword arguments; ``pretrained=True`` loads the float weights,
    a ``.tag`` picks which) and binarizes it with ``binarize``.

    Registering the same name with the same config again does nothing.

    Args:
        model_name: a timm model name without a pretrained tag, e.g. ``"resnet18"``.
        binarize: the binarize config for every model built under the new name.
        prefix: prepended to ``model_name`` to form the new name.

    Returns:
        The registered name, e.g. ``"bsr_resnet18"``.

    Raises:
        ImportError: timm is missing.
        ValueError: ``model_name`` is not a timm model, or the new name is taken (by timm, or by an
            earlier registration with another config).
    """
    import_timm()
    from timm.models import is_model, register_model

    config = BinarizeConfig.coerce(binarize)
    if "." in model_name or not is_model(model_name):
        raise ConfigError(f"{model_name!r} is not a timm model name (see timm.list_models()); give the "
                         "architecture without a pretrained tag")
    if not prefix:
        raise ConfigError("prefix must be non-empty: the binarized model needs a name of its own")
    name = prefix + model_name
    if name in _REGISTERED:
        if _REGISTERED[name] == (model_name, config):
            return name
        raise ConfigError(f"{name!r} is already registered with another binarize config; pick another prefix")
    if is_model(name):
        raise ConfigError(f"timm already has a model named {name!r}; pick another prefix")
    fn = _entrypoint(name, model_name, config)
    setattr(sys.modules[__name__], name, fn)  # timm adds the name to this module's __all__
    register_model(fn)
    _REGISTERED[name] = (model_name, config)
    logger.info("registered %r in timm's registry (%s, binarized)", name, model_name)
    return name
