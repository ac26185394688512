"""Small file-system helpers shared by the writer, the version pointer and verification."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["fsync_dir", "fsync_tree", "hash_file", "libc_function", "sha256_file"]

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
