"""Small file-system helpers shared by the writer, the version pointer, the journal, the cache and verification.

One of each: an atomic file replacement (:func:`replace_atomically`, :func:`write_atomically`), a durable write
(:func:`write_durably`), a bounded read (:func:`read_bounded`), "does this path resolve inside that directory"
(:func:`resolve_inside`), directory fsyncs, file hashes and libc functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "FileTooLargeError",
    "fsync_dir",
    "fsync_tree",
    "hash_file",
    "libc_function",
    "pwrite_all",
    "read_bounded",
    "replace_atomically",
    "resolve_inside",
    "sha256_file",
    "temporary_beside",
    "write_atomically",
    "write_durably",
]

_libc: Any = None
_functions: dict[str, Any] = {}


def libc_function(name: str, argtypes: list[Any], restype: Any = ctypes.c_int) -> Any:
    """A libc function through ctypes (Linux only; ``errno`` kept for ``ctypes.get_errno``), or ``None``."""
    global _libc
    if name in _functions:
        return _functions[name]
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    if not _libc:
        return None
    func = getattr(_libc, name, None)
    if func is not None:
        func.argtypes = argtypes
        func.restype = restype
    _functions[name] = func
    return func


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked).

    Raises:
        OSError: a write failed, or wrote nothing.
    """
    while len(data):
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, f"pwrite wrote {n} bytes at offset {offset}")
        data, offset = data[n:], offset + n


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable. A no-op where directories can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """:func:`fsync_dir` on ``path`` and every directory below it."""
    for sub in [p for p in path.rglob("*") if p.is_dir()] + [path]:
        fsync_dir(sub)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    return hash_file(hashlib.sha256(), path)


def hash_file(digest: Any, path: Path) -> str:
    """The hex digest of ``digest`` (a ``hashlib`` object, possibly fed a prefix already) fed the file, read in
    4 MiB chunks."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_inside(path: str | os.PathLike[str], root: Path) -> tuple[Path, bool]:
    """``path``'s real path (every symlink followed) and whether it is ``root`` or lies below it.

    ``root`` must be a real path already (``os.path.realpath``): the comparison is of the two paths' parts.
    """
    real = Path(os.path.realpath(path))
    return real, real.is_relative_to(root)


class FileTooLargeError(ValueError):
    """A file larger than the most :func:`read_bounded` reads of it. ``str()``: ``larger than LIMIT bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.size = size
        self.limit = limit


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """A file's bytes when it holds at most ``limit`` of them; a larger one is not read (never more than
    ``limit + 1`` bytes, even when it grows while read).

    Raises:
        FileTooLargeError: the file is larger (``size``: its size, or what was read when it grew).
        OSError: it cannot be opened or read.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise FileTooLargeError(max(size, len(data)), limit)
    return data


def write_durably(path: Path, content: bytes) -> None:
    """Write ``content`` into a new (or truncated) file and fsync it (its directory entry is not fsynced)."""
    with open(path, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


def temporary_beside(path: Path) -> Path:
    """A hidden unique name beside ``path`` for its replacement: ``.NAME.tmp-PID-XXXXXXXX``."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def replace_atomically(
    path: Path, fill: Callable[[Path], None], *, temporary: Path | None = None, durable: bool = True
) -> None:
    """Replace ``path`` atomically: ``fill(temporary)`` makes the new entry, which is then renamed onto ``path``,
    so a reader sees the old entry or the new one, never part of one. On any error (Ctrl-C included) the
    temporary is removed and the error raised.

    Args:
        path: The file (or symlink) to replace.
        fill: Creates the temporary (write and fsync a file, or make a symlink).
        temporary: The temporary's name (default :func:`temporary_beside`); it must be on ``path``'s file system.
        durable: fsync ``path``'s directory after the rename, so the replacement survives a power cut.
    """
    tmp = temporary if temporary is not None else temporary_beside(path)
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomically(path: Path, content: bytes) -> None:
    """:func:`replace_atomically` with a file holding ``content``, durably (the file and its directory fsynced)."""
    replace_atomically(path, lambda tmp: write_durably(tmp, content))
