"""Building a network from data without running code, reading files, connecting or blocking.

A packed file's builder spec and an options file's ``network_g`` are *data*: whoever wrote them,
building the network they describe must not do more than construct modules. Toolkits do more
on their own (BasicSR's ``SpyNet(load_path=...)``, ``BasicVSR(spynet_path=...)`` and
``DFDNet(dict_path=...)`` call ``torch.load``; ``VGGFeatureExtractor`` downloads VGG19), and
``torch.load`` unpickles code under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. This module holds the
one guard every path that builds a network from a spec runs under (``load_packed``, every
``bsr`` subcommand, the ``basicsr`` command's preflight, ``bsr demo``); it imports no toolkit.

* :func:`weights_only_loads`: while the block runs, every ``torch.load`` in the process loads
  with ``weights_only=True``, whatever the call or the environment say (so nothing it reads can
  run code). The ``basicsr`` command runs its whole pipeline inside it.
* :func:`building_from_data`: :func:`weights_only_loads`, plus an audit hook
  (:func:`sys.addaudithook`) that refuses, in the calling thread, what building may not do:

  - ``strict`` (a packed file's spec): opening any file (only Python code being imported is
    read), any socket, URL request or download, starting a program, changing the file system,
    unpickling a global, and constructing more than ``max_modules`` modules;
  - not strict (an options file's network, which may name an auxiliary weights file it loads
    weights-only): the same, except that regular files may be read (never a FIFO or a
    device, whose opening blocks).

  A refused action raises :class:`~bsr_plugin.UnsafeInputError` where it happens and again
  when the block ends, so a builder that catches exceptions cannot hide it (the builder's
  warnings are shown only for a build that was not refused).
* :func:`check_spec_values`: the allow-list of what a packed spec may contain, checked before
  anything is built: argument names are identifiers; values are finite numbers, booleans,
  null, short strings that are names (not paths, URLs or file names), and lists and mappings of
  these, bounded in depth and size. A string under a path-like argument name (``*_path``,
  ``*_file``, ``*_url``, ``*_dir``, ``checkpoint``, ...) is refused too. Each refusal is one
  line naming the argument.

A network that genuinely needs an auxiliary file is built by the user's own code, which is
trusted: ``load_packed(path, model=net)`` or ``bsr ... --model my_pkg.nets:make_net``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
import stat
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from .errors import UnsafeInputError

CODE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")
"""Files a strict build may open: Python code being imported (and source lines for warnings)."""

MAX_DEPTH = 8
MAX_ITEMS = 4096
MAX_STRING = 200
MAX_INT = 2**31

FILE_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle", ".bin", ".ckpt", ".safetensors", ".npy", ".npz", ".h5", ".onnx",
                 ".tar", ".zip", ".gz", ".json", ".yaml", ".yml", ".txt", ".mat", ".png", ".jpg", ".jpeg", ".state",
                 ".bsrpack", ".py", ".so")
PATH_NAME = re.compile(r"(^|_)(path|paths|file|files|filename|url|urls|uri|dir|root|checkpoint|ckpt|pretrained)$",
                       re.IGNORECASE)
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://|^www\.", re.IGNORECASE)

NETWORK_EVENTS = ("socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
                  "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "urllib.Request", "http.client.connect",
                  "ftplib.connect", "smtplib.connect", "webbrowser.open")
PROGRAM_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                  "pty.spawn", "os.startfile", "os.kill", "os.killpg")
CHANGE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.chmod", "os.chown",
                 "os.truncate", "os.utime", "os.chdir", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                 "shutil.copytree", "shutil.move", "shutil.rmtree", "shutil.make_archive", "shutil.unpack_archive",
                 "tempfile.mkstemp", "tempfile.mkdtemp")
REFUSED = dict.fromkeys(NETWORK_EVENTS, "connect to the network") | dict.fromkeys(
    PROGRAM_EVENTS, "start a program") | dict.fromkeys(CHANGE_EVENTS, "change the file system") | {
    "pickle.find_class": "unpickle a Python object"}

PACKED_RULE = ("a packed file's network may not read files, connect, download or run anything; build a network "
               "that needs an auxiliary file yourself and pass it: load_packed(path, model=net) or "
               "bsr ... --model module:function")
OPTIONS_RULE = ("building a network from an options file may read weights files (weights only), but not connect, "
                "download, run programs, change files or read a FIFO or device; put the weights on disk first")


# -- weights-only torch.load --------------------------------------------------------------------
_LOCK = threading.RLock()
_DEPTH = [0]
_ORIGINAL_LOAD: list[Any] = []


def _weights_only_load(f: Any, map_location: Any = None, pickle_module: Any = None, **kwargs: Any) -> Any:
    """``torch.load`` while :func:`weights_only_loads` is active: weights only, whatever the call
    (``weights_only=False``, a ``pickle_module``) or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` say."""
    kwargs["weights_only"] = True
    return _ORIGINAL_LOAD[0](f, map_location=map_location, **kwargs)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` (``torch.load`` and ``torch.serialization.load``) loads weights only
    while the block runs, in every thread; re-entrant; restored afterwards."""
    import torch
    import torch.serialization

    with _LOCK:
        if _DEPTH[0] == 0:
            _ORIGINAL_LOAD[:] = [torch.serialization.load]
            torch.load = torch.serialization.load = _weights_only_load
        _DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                torch.load = torch.serialization.load = _ORIGINAL_LOAD.pop()


# -- the audit hook ---------------------------------------------------------------------------
@dataclass
class _Guard:
    source: str
    strict: bool
    max_modules: Optional[int]
    modules: int = 0
    refused: list[str] = field(default_factory=list)

    @property
    def rule(self) -> str:
        return PACKED_RULE if self.strict else OPTIONS_RULE

    def refuse(self, what: str, rule: bool = True) -> UnsafeInputError:
        message = f"{self.source}: building its network would {what}" + (f"; {self.rule}" if rule else "")
        if not self.refused:
            self.refused.append(message)
        return UnsafeInputError(message)


_ACTIVE: contextvars.ContextVar[Optional[_Guard]] = contextvars.ContextVar("bsr_plugin_build_guard", default=None)
_HOOKED: list[bool] = []


def _reads_only(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str):
        return not any(c in mode for c in "wax+")
    if isinstance(flags, int):
        return flags & os.O_ACCMODE == os.O_RDONLY and not flags & (os.O_CREAT | os.O_TRUNC)
    return False


def _open_refusal(guard: _Guard, path: Any, mode: Any, flags: Any) -> Optional[str]:
    """Why opening ``path`` is refused under ``guard`` (None: allowed)."""
    if isinstance(path, int) or path is None:
        return None  # an open file descriptor: nothing new is opened
    name = os.fsdecode(path)
    if not _reads_only(mode, flags):
        return f"write the file {name!r}"
    try:
        info = os.stat(name)
    except OSError:
        return None if not guard.strict else f"read the file {name!r}"
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return f"open {name!r}, which is not a regular file (a FIFO or device blocks)"
    if guard.strict and not (name.endswith(CODE_SUFFIXES) and stat.S_ISREG(info.st_mode)):
        return f"read the file {name!r}"
    return None


def _audit(event: str, args: tuple) -> None:
    guard = _ACTIVE.get()
    if guard is None:
        return
    if event == "open":
        why = _open_refusal(guard, *(tuple(args) + (None, None, None))[:3])
    else:
        what = REFUSED.get(event)
        why = f"{what} ({event} {', '.join(str(a)[:120] for a in args[:2])})" if what else None
    if why:
        raise guard.refuse(why)


def _count_module(module: Any, name: str, submodule: Any) -> None:
    guard = _ACTIVE.get()
    if guard is None or guard.max_modules is None:
        return
    guard.modules += 1
    if guard.modules > guard.max_modules:
        raise guard.refuse(f"construct more than {guard.max_modules:,} modules, far more than the file holds tensors "
                           "for: its spec does not describe the network it stores", rule=False)


def _install() -> None:
    with _LOCK:
        if _HOOKED:
            return
        from torch.nn.modules.module import register_module_module_registration_hook

        sys.addaudithook(_audit)
        register_module_module_registration_hook(_count_module)
        _HOOKED.append(True)


@contextlib.contextmanager
def building_from_data(source: str, *, strict: bool = True, max_modules: Optional[int] = None) -> Iterator[None]:
    """Build a network from a spec that is data (see the module docstring). ``source`` names
    it in messages (the packed file, the options file). Raises :class:`UnsafeInputError` when
    the build tried anything refused, even if the builder caught the first error."""
    _install()
    guard = _Guard(source, strict, max_modules)
    token = _ACTIVE.set(guard)
    try:
        with weights_only_loads(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    except BaseException:
        if guard.refused:
            raise UnsafeInputError(guard.refused[0]) from None
        raise
    finally:
        _ACTIVE.reset(token)
    if guard.refused:
        raise UnsafeInputError(guard.refused[0])
    for w in caught:  # the builder's warnings, shown only for a build that was not refused
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def unpickling_reason(err: BaseException) -> str:
    """The line of a weights-only loader's refusal that names what it refused (``Trying to load
    unsupported GLOBAL posix.system ...``), without torch's advice to load the file unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return ((named or lines or [type(err).__name__])[0])[:200]


# -- the allow-list of a packed spec -------------------------------------------------------------
def _value_refusal(name: str, value: Any) -> Optional[str]:
    """Why the leaf ``value`` of the argument ``name`` is not allowed (None: allowed)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_INT else f"is {value}, beyond +-{MAX_INT:,}"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"is {value}, not a finite number"
    if not isinstance(value, str):
        return f"is a {type(value).__name__}; a spec holds numbers, booleans, null, names, lists and mappings"
    if len(value) > MAX_STRING:
        return f"is a string of {len(value)} characters (at most {MAX_STRING})"
    if URL.search(value):
        return f"= {value!r} is a URL"
    if "/" in value or value.startswith("~") or "\x00" in value or value.lower().endswith(FILE_SUFFIXES):
        return f"= {value!r} is a path"
    if PATH_NAME.search(name.rsplit(".", 1)[-1].rsplit("[", 1)[0]):
        return f"= {value!r} names a file (a path-like argument)"
    return None


def check_spec_values(spec: Any, source: str, where: str = "") -> None:
    """Refuse (:class:`UnsafeInputError`, one line naming the argument) a packed spec that holds
    anything but the allowed values (module docstring)."""
    items = [0]

    def walk(value: Any, name: str, depth: int) -> None:
        items[0] += 1
        if depth > MAX_DEPTH or items[0] > MAX_ITEMS:
            raise UnsafeInputError(f"{source}: the network spec is deeper than {MAX_DEPTH} levels or holds more than "
                                   f"{MAX_ITEMS} values at {name or 'its top'}; {PACKED_RULE}")
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str) or not IDENTIFIER.match(key):
                    raise UnsafeInputError(f"{source}: the network spec's argument name {str(key)[:80]!r} at "
                                           f"{name or 'its top'} is not an identifier; {PACKED_RULE}")
                walk(item, f"{name}.{key}" if name else key, depth + 1)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}[{i}]", depth + 1)
        else:
            why = _value_refusal(name, value)
            if why:
                raise UnsafeInputError(f"{source}: the network spec's argument {name or '(top)'} {why}; {PACKED_RULE}")

    walk(spec, where, 0)
