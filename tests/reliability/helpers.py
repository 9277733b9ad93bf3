"""Helpers of the reliability suite (``tests/reliability/``): what every bad-input or
fault case asserts (exit status 2, one line naming the problem, nothing written or lost), files
whose loading would run code, and the real commands run in a subprocess."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

BIN = Path(sys.executable).parent
BSR, BASICSR = str(BIN / "bsr"), str(BIN / "basicsr")
UNSAFE_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
"""Makes ``torch.load`` unpickle code wherever a call does not say ``weights_only=True``."""


def snapshot(root: Path) -> dict[str, str]:
    """Every file (its SHA-256), folder and FIFO under ``root``: compare two to prove nothing was
    written, removed or changed (a FIFO is recorded, never opened)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_fifo():
            out[rel] = "fifo"
        else:
            out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_one_line(stderr: str, pattern: str, prefix: str = "") -> str:
    """stderr is exactly one line, starting with ``prefix``, matching ``pattern`` (a regex), no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr[-3000:]}"
    assert lines[0].startswith(prefix), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def assert_refused(rc: int, stderr: str, pattern: str, before: dict[str, str], root: Path, prefix: str = "") -> str:
    """A user error: exit status 2, one line naming it, and ``root`` exactly as ``before``."""
    assert rc == 2, f"exit status {rc}:\n{stderr[-3000:]}"
    line = assert_one_line(stderr, pattern, prefix)
    assert snapshot(root) == before, "files were written, removed or changed"
    return line


class RunsCode:
    """Unpickling this runs ``touch MARKER`` (what a crafted checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return os.system, (f"touch {self.marker}",)


def code_running_checkpoint(path: Path, marker: Path, **entries: Any) -> Path:
    """A PyTorch file (``torch.save``) whose unpickling creates ``marker``: a BasicSR checkpoint
    (``{'params': {...}}``) or, with ``entries``, e.g. a training state."""
    import torch

    payload = entries or {"params": {"conv.weight": torch.zeros(1)}}
    torch.save(dict(payload, evil=RunsCode(marker)), path)
    return path


def run(cmd: Sequence[str], cwd: Path, env: Optional[dict[str, str]] = None, timeout: int = 300,
        preexec_fn: Optional[Callable[[], None]] = None) -> subprocess.CompletedProcess:
    """A real command, with ``env`` added to the environment."""
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)


def run_measured(cmd: Sequence[str], cwd: Path,
                 preexec_fn: Optional[Callable[[], None]] = None) -> tuple[int, str, int]:
    """``(exit status, stderr, peak resident memory in bytes)`` of a real command (``wait4``:
    this child's own peak, not that of earlier children)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=preexec_fn)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        return proc.returncode, err.read(), usage.ru_maxrss * 1024


def limit(kind: int, soft: int) -> Callable[[], None]:
    """A ``preexec_fn`` lowering one resource limit (``resource.RLIMIT_*``) in the child."""
    def apply() -> None:
        resource.setrlimit(kind, (soft, resource.getrlimit(kind)[1]))
    return apply


def write_png(path: Path, height: int, width: int, channels: int = 3, dtype: Any = np.uint8, seed: int = 0) -> Path:
    """A smooth random image (small PNG even when large)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), channels)).astype(np.float32)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, channels)
    peak = 257.0 if dtype == np.uint16 else 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), (img * peak).astype(dtype))
    return path


def rewrite_pack(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None], blobs: Optional[bytes] = None) -> Path:
    """A hand-made packed file: ``src``'s manifest changed by ``edit`` (and its tensor bytes
    replaced by ``blobs``), with a correct header and SHA-256, as anyone can write one."""
    import json
    import zlib

    from bsr_plugin.deploy.file_format import _HEADER, MAGIC

    data = src.read_bytes()
    _, version, manifest_n, blobs_n = _HEADER.unpack_from(data)
    start = _HEADER.size
    manifest = json.loads(zlib.decompress(data[start:start + manifest_n]))
    edit(manifest)
    blob = data[start + manifest_n:start + manifest_n + blobs_n] if blobs is None else blobs
    packed = zlib.compress(json.dumps(manifest).encode("utf-8"))
    body = _HEADER.pack(MAGIC, version, len(packed), len(blob)) + packed + blob
    dst.write_bytes(body + hashlib.sha256(body).digest())
    return dst


FULL_DISK = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class InterruptedWrite:
    """A file whose writing is interrupted (``fault`` raised) after the first ``keep`` bytes went
    through: a full disk (``OSError(ENOSPC)``) or a kill (``KeyboardInterrupt``)."""

    def __init__(self, fh: Any, fault: BaseException, keep: int = 100) -> None:
        self.fh, self.fault, self.keep = fh, fault, keep

    def write(self, data: Any) -> int:
        self.fh.write(bytes(data)[:self.keep])
        raise self.fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)

    def __enter__(self) -> InterruptedWrite:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()


def fifo(path: Path) -> Path:
    """A named pipe nobody writes to: opening it for reading blocks forever."""
    os.mkfifo(path)
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (its data is a few bytes): a decoder
    that trusts the header allocates the whole image."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path
