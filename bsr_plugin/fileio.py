"""Crash-safe file writes, shared by every writer of the package (packed files, output images,
BasicSR checkpoints and training states).

:func:`atomic_write` writes into a temporary file in the target's folder, flushes and fsyncs
it, then renames it over the target (``os.replace``, atomic on POSIX and Windows). A reader, a
resumed run or a user never sees a half-written file: after a kill, a full disk or any error
the target is either the complete new file or the old one, untouched, and the temporary file
is removed (a ``kill -9`` can leave a ``.NAME.*.tmp`` file, which no reader picks up).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator, Union

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
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` only when the ``with`` block ends without an
    error (flush, fsync, rename). On any exception, ``KeyboardInterrupt`` included, the
    temporary file is removed, ``path`` is left as it was and the exception propagates (an
    ``OSError`` names ``path``, with its errno: a full disk is ``ENOSPC``)."""
    target = Path(path)
    tmp = temporary_name(target)
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as err:  # reported against the file the user named, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(target)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """``Path(path).write_bytes(data)``, atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(data)
