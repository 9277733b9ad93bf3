"""The package's one error family.

Every mistake a user can make (a bad option, an unreadable or hand-made packed file, a bad
command line) raises a :class:`BsrError` subclass whose message names the problem and the fix.
Anything else that escapes is a bug and keeps its traceback (the ``bsr`` and ``basicsr``
commands print only ``BsrError`` in one line).

The value errors also derive from :class:`ValueError`, so code written against earlier
versions (``except ValueError``) keeps working.
"""

from __future__ import annotations


class BsrError(Exception):
    """Base class of every user-facing error of bsr_plugin."""


class ConfigError(BsrError, ValueError):
    """A binarize configuration or layer option that cannot be used as given."""


class OptionsError(ConfigError):
    """A BasicSR options file (or its command line) that cannot run as written."""


class PackedFormatError(BsrError, ValueError):
    """A packed model file that cannot be loaded as it is: not a packed file, another format
    version, truncated, corrupt, hand-made or not matching the network it is loaded into."""


class BuilderError(BsrError, LookupError):
    """A network that cannot be rebuilt: its builder is not registered (the extra that
    provides it is not installed) or the user-named builder cannot be imported."""


class CheckpointError(BsrError, ValueError):
    """A checkpoint or training state that cannot be loaded safely: missing, truncated, not a
    PyTorch checkpoint, or holding Python objects whose loading would run code."""


class EngineError(BsrError, ValueError):
    """An argument the packed CPU engine (:mod:`bsr_plugin.deploy.engine`) cannot take: wrong
    type, dtype, device or shape, channels or sizes that do not fit, an unknown or unsupported
    instruction set. The message names the argument, what it got and what is accepted."""


class CLIError(BsrError):
    """A command-line problem to report in one line (exit status 2)."""


class UnsafeInputError(BsrError, ValueError):
    """A packed file, options file or checkpoint whose use would run code, read or write files
    it may not, connect to the network, download, start a program or block (see
    :mod:`bsr_plugin.safety`)."""


__all__ = ["BsrError", "BuilderError", "CLIError", "CheckpointError", "ConfigError", "EngineError", "OptionsError",
           "PackedFormatError", "UnsafeInputError"]
