"""Network builders: how a packed file's network is built again.

A packed file names a builder and gives it a spec (``{"builder": "basicsr", "spec":
{"type": "EDSRBin", ...}}``); :func:`load_packed` looks the name up here and calls it. A file
can only *select* among registered builders: it never makes the loader import or call anything
it names itself. Builders come from three places:

* the toolkit integrations, registered when installed: entry points of the group
  ``bsr_plugin.builders`` (this package declares ``basicsr`` and ``timm``); a builder's
  integration is imported only when a file asks for it, and a missing extra is a
  :class:`~bsr_plugin.BuilderError` naming the package to install;
* :func:`register_builder`, for a user's own networks::

      bsr_plugin.register_builder("my_nets", lambda spec: MyNet(**spec))
      net.bsr_build = {"builder": "my_nets", "spec": {"width": 32}}   # recorded by export_packed

* a skeleton the caller passes (``load_packed(path, model=...)``, or ``bsr ... --model
  my_pkg.nets:make_net``, a callable the *user* names on the command line).

A builder returns the float network (which ``load_packed`` converts with the file's binarize
config) or the binarized one.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping, Optional

from torch import nn

from ..errors import BuilderError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bsr_plugin.builders"

BuildFn = Callable[[Mapping[str, Any]], nn.Module]


@dataclass(frozen=True)
class Builder:
    """A registered way to build a network from a JSON spec.

    Attributes:
        name: the name packed files refer to.
        build: ``spec -> network`` (float, or already binarized).
        from_options: optional ``(options_file, checkpoint, param_key, need_weights) -> network``
            for the ``bsr`` command's ``-opt`` source (the BasicSR builder has it).
        description: one line for error messages and ``--help``.
        check_spec: optional ``(spec, source) -> None`` that refuses (``UnsafeInputError``) a
            spec from a packed file naming what this builder knows reads, downloads or runs
            anything (e.g. BasicSR architectures that load a file in their constructor); it runs
            after :func:`bsr_plugin.safety.check_spec_values`, before anything is built.
    """

    name: str
    build: BuildFn
    from_options: Optional[Callable[..., nn.Module]] = None
    description: str = ""
    check_spec: Optional[Callable[[Mapping[str, Any], str], None]] = None


_BUILDERS: dict[str, Builder] = {}
_FAILED: dict[str, str] = {}


def register_builder(name: str, build: BuildFn, *, from_options: Optional[Callable[..., nn.Module]] = None,
                     description: str = "", check_spec: Optional[Callable[[Mapping[str, Any], str], None]] = None
                     ) -> Builder:
    """Register (or replace) the builder ``name``; returns it."""
    if not isinstance(name, str) or not name:
        raise BuilderError(f"a builder needs a non-empty name, got {name!r}")
    builder = Builder(name, build, from_options, description, check_spec)
    _BUILDERS[name] = builder
    return builder


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_builders() -> dict[str, str]:
    """Every builder name known now or installable by entry point, with its description."""
    names = {name: b.description for name, b in _BUILDERS.items()}
    for name, ep in _entry_points().items():
        names.setdefault(name, f"from {ep.value} (loaded on first use)")
    return names


def get_builder(name: str) -> Builder:
    """The builder ``name``, loading the integration that provides it if needed.

    Raises:
        BuilderError: nothing provides ``name``, or its integration cannot be imported (the
            message names the extra to install).
    """
    if name in _BUILDERS:
        return _BUILDERS[name]
    ep = _entry_points().get(name)
    if ep is not None and name not in _FAILED:
        try:
            ep.load()()
        except ImportError as err:
            _FAILED[name] = str(err)
    if name in _BUILDERS:
        return _BUILDERS[name]
    if name in _FAILED:
        raise BuilderError(f"the network is built by the {name!r} integration, which cannot be loaded: {_FAILED[name]}")
    known = ", ".join(sorted(available_builders())) or "none"
    raise BuilderError(f"no network builder named {name!r} is installed (known: {known}); register it with "
                       "bsr_plugin.register_builder, or pass the network: load_packed(path, model=...) / --model")


def builder_from_reference(reference: str) -> Builder:
    """A builder from a callable the user names as ``module:function`` (``bsr --model``): the
    function is called with no arguments and returns the float or binarized network. It is the
    user's own code, so it may read the auxiliary files its network needs (``torch.load`` is
    still weights-only while it builds)."""
    module_name, _, attr = str(reference).partition(":")
    if not module_name or not attr or module_name.startswith(".") or not all(
            part.isidentifier() for part in module_name.split(".") + attr.split(".")):
        raise BuilderError(f"--model {reference!r}: write it as module:function, e.g. my_pkg.nets:make_net")
    try:
        fn: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as err:
        raise BuilderError(f"--model {reference!r}: cannot import it ({err})") from None
    except Exception as err:  # the user's module failed while importing: their code, named in one line
        raise BuilderError(f"--model {reference!r}: importing {module_name} failed ({type(err).__name__}: "
                           f"{str(err)[:200]})") from None
    if not callable(fn):
        raise BuilderError(f"--model {reference!r} is not callable")
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise BuilderError(f"--model {reference!r} needs arguments; name a function that takes none and returns the "
                           "network") from None
    except ValueError:  # a builtin without a signature: called as it is
        pass

    def build(spec: Mapping[str, Any]) -> nn.Module:
        from ..safety import weights_only_loads

        with weights_only_loads():
            net = fn()
        if not isinstance(net, nn.Module):
            raise BuilderError(f"--model {reference!r} returned a {type(net).__name__}, not a torch.nn.Module")
        return net

    return Builder(reference, build, description=f"user network {reference}")
