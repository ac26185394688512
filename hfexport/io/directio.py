"""The Linux direct-I/O path of :func:`hfexport.io.chunkio.write_shard` (``io="direct"``, and ``"auto"`` for large
files).

Writing into the page cache means copying every byte into page-cache pages, which the final ``fsync`` then writes
to the disk. With ``O_DIRECT`` the bytes go from the staging buffer to the device instead (DMA): no copy, no
dirty pages left for the ``fsync``, and a large export does not evict the training data from the cache. Where
fresh memory is expensive, e.g. on a virtual machine that gives free memory back to its host, the page-cache copy
is the slowest part of an export (``benchmarks/README.md`` has the figures).

The file is first preallocated to its final size (``fallocate``): a full disk fails before anything is written, and
the direct writes land in allocated blocks.

A chunk is produced at its file offset modulo 4096 in its page-aligned staging buffer, so its whole blocks are
aligned both in memory and in the file: they go out with ``O_DIRECT``. The partial blocks at its two edges
(< 4 KiB each) go through the page cache (``pwrite``); the two never overlap, so the kernel keeps them coherent.

If the file system refuses ``O_DIRECT`` (``EINVAL`` on open or on a write, e.g. tmpfs before Linux 6.6), the rest
of the file goes through the page cache. Nothing is read back here: bytes the device was given are checked by
``hfexport verify`` (which reads every file back and compares its CRC-32 with the manifest; after direct writes,
from the device, since the page cache never held them).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from typing import BinaryIO

from hfexport._util.fs import libc_function
from hfexport._util.fs import pwrite_all as _pwrite_all  # a module attribute: tests patch it
from hfexport.io.staging import ALIGN, StagingBuffer

logger = logging.getLogger(__name__)

__all__ = ["DirectWriter"]


class DirectWriter:
    """A :class:`~hfexport.io.chunkio.ChunkWriter` that writes each chunk's whole blocks with ``O_DIRECT``.

    Args:
        fh: The file, opened for writing by :func:`~hfexport.io.chunkio.write_shard`.
        path: Its path (to open it again with ``O_DIRECT``).
        total: Its final size.

    Raises:
        OSError: the file cannot be preallocated (the disk is full) or opened again.
    """

    def __init__(self, fh: BinaryIO, path: str | os.PathLike[str], total: int) -> None:
        self.fd = fh.fileno()
        self.path = os.fspath(path)
        self.direct_bytes = 0
        _preallocate(self.fd, 0, total)
        try:
            self.direct_fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            logger.debug("no direct I/O for %s (%s): writing through the page cache", self.path, exc)
            self.direct_fd = -1

    def write(self, staging: StagingBuffer, start: int, offset: int, n: int) -> None:
        end = offset + n
        lo, hi = -(-offset // ALIGN) * ALIGN, end - end % ALIGN  # the chunk's whole blocks: [lo, hi)
        first = offset - start  # the file offset of staging's byte 0 (a multiple of ALIGN)
        if self.direct_fd == -1 or lo >= hi:
            _pwrite_all(self.fd, staging.view[start : start + n], offset)
            return
        try:
            _pwrite_all(self.direct_fd, staging.view[lo - first : hi - first], lo)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            logger.debug("direct write refused for %s (%s): the page cache from here on", self.path, exc)
            self._close_direct()
            _pwrite_all(self.fd, staging.view[start : start + n], offset)
            return
        self.direct_bytes += hi - lo
        for a, b in ((offset, lo), (hi, end)):  # the partial blocks at the edges
            if a < b:
                _pwrite_all(self.fd, staging.view[a - first : b - first], a)

    def close(self) -> int:
        self._close_direct()
        return self.direct_bytes

    def _close_direct(self) -> None:
        if self.direct_fd != -1:
            os.close(self.direct_fd)
            self.direct_fd = -1


def _preallocate(fd: int, offset: int, length: int) -> None:
    """Reserve ``length`` bytes from ``offset`` (``fallocate``); raises ``OSError(ENOSPC)`` when they don't fit.

    Where the file system cannot preallocate, nothing happens (the writes allocate as they go). ``libc``'s
    ``fallocate`` rather than ``os.posix_fallocate``: the latter emulates it by writing every block where the file
    system lacks it.
    """
    fallocate = libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
    if length <= 0 or fallocate is None:
        return
    if fallocate(fd, 0, offset, length) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(err, f"{os.strerror(err)}: cannot reserve {length} bytes for {offset + length}-byte file")
        logger.debug("fallocate unavailable (%s); writing without preallocation", os.strerror(err))
