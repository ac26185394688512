"""Small file-system helpers shared by the writer, the version pointer and verification."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["fsync_dir", "fsync_tree", "sha256_file"]


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
    """The hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
