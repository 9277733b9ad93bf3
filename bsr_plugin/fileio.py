"""Crash-safe file writes, shared by every writer of the package (packed files, ONNX graphs,
output images, BasicSR checkpoints and training states, the demo's files).

:func:`atomic_write` writes into a temporary file in the target's folder, flushes and fsyncs
it, then renames it over the target (``os.replace``, atomic on POSIX and Windows). A reader, a
resumed run or a user never sees a half-written file: after a kill, a full disk or any error
the target is either the complete new file or the old one, untouched, and the temporary file
is removed (a ``kill -9`` can leave a ``.NAME.*.tmp`` file, which no reader picks up).
:func:`atomic_path` does the same for writers that take a file name instead of a file object.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

TMP_SUFFIX = ".tmp"


def temporary_name(path: PathLike) -> Path:
    """A fresh hidden name next to ``path`` (``.NAME.PID.RANDOM.tmp``): same folder, so the
    rename stays on one file system, and a suffix no reader of ``NAME``'s kind matches."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it (POSIX folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(target: Path, tmp: Path) -> Iterator[None]:
    """Run the block that fills ``tmp``, then rename it over ``target``; on any exception remove
    ``tmp`` and leave ``target`` as it was (an ``OSError`` is reported against ``target``)."""
    try:
        yield
        os.replace(tmp, target)
    except OSError as err:  # reported against the file the user named, not the temporary one
        tmp.unlink(missing_ok=True)
        if err.filename not in (None, str(tmp), tmp):
            raise  # about another file (one written inside the block): reported as it is
        raise OSError(err.errno, err.strerror or str(err), str(target)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` only when the ``with`` block ends without an
    error (flush, fsync, rename). On any exception, ``KeyboardInterrupt`` included, the
    temporary file is removed, ``path`` is left as it was and the exception propagates (an
    ``OSError`` names ``path``, with its errno: a full disk is ``ENOSPC``)."""
    target = Path(path)
    tmp = temporary_name(target)
    with _replacing(target, tmp):
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that takes a file name (the ONNX exporter,
    an image encoder): when the ``with`` block ends without an error, the file written there is
    fsynced and renamed over ``path``; otherwise it is removed and ``path`` is left as it was
    (as :func:`atomic_write`). A block that writes nothing there is an error (ENOENT)."""
    target = Path(path)
    tmp = temporary_name(target)
    with _replacing(target, tmp):
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """``Path(path).write_bytes(data)``, atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(data)


def not_regular(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be read as an input file ("does not exist", "is a folder", "is not a
    regular file ..."), or None when it is a regular file. Never blocks: a FIFO is only
    looked at, not opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device, whose reading would block or never end)"
    return None


def open_regular(path: PathLike) -> BinaryIO:
    """Open an input file for reading without ever blocking: a FIFO, socket or device is
    refused (``OSError`` ``EINVAL``, naming ``path``) after a non-blocking open, so it cannot be
    swapped in between a check and the open."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
            raise OSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL, f"it is {what}", os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """While the block runs (the ``bsr`` and ``basicsr`` commands), SIGTERM ends the process as
    ``SystemExit(143)`` raised in the main thread, so every :func:`atomic_write` in progress
    removes its temporary file and leaves the previous file whole (a SIGKILL cannot be caught:
    it leaves a ``.NAME.*.tmp`` file, never a truncated ``NAME``). The previous handler is
    restored afterwards; outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
