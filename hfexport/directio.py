"""The Linux direct-I/O path of :func:`hfexport.chunkio.write_shard` (``io="direct"`` or ``"auto"``).

Writing into the page cache means copying every byte into freshly allocated page-cache pages. Where fresh memory
is expensive, e.g. on a virtual machine that gives free memory back to its host (virtio-balloon free page
reporting), that copy is the slowest part of an export; with ``O_DIRECT`` the bytes go from the staging buffer
to the device instead (DMA), and a large export does not evict the training data's cache either
(``benchmarks/README.md`` has the figures).

In both modes the file is first preallocated to its final size (``fallocate``): a full disk fails before anything
is written, and page-cache writes into allocated blocks are faster (ext4 allocates no blocks as it goes).

* ``"direct"``: every chunk's whole 4096-byte blocks go out with ``O_DIRECT``.
* ``"auto"``: chunks go through the page cache with the same writes as ``"buffered"``, timed, and the kernel is
  asked to start writing each ``WRITEBACK_BYTES`` of them to the disk at once (``sync_file_range``), so that the
  final ``fsync`` has little left to do: a file smaller than the kernel's dirty-memory threshold would otherwise
  reach the disk only at the ``fsync``, after everything else. Once ``PROBE_BYTES`` of page-cache writes went
  slower than ``SLOW_BYTES_PER_S``, the rest of the file goes out with ``O_DIRECT``.

A chunk is produced at its file offset modulo 4096 in its page-aligned staging buffer, so its whole blocks are
aligned both in memory and in the file; the partial blocks at its two edges (< 4 KiB each) go through the page
cache (``pwrite``). The two never overlap, so the kernel keeps them coherent.

Every range written with ``O_DIRECT`` is read back with ``O_DIRECT`` (from the device, not from a cache of this
process's own bytes) and compared with the staging buffer, by a thread of its own while the next chunk is
written; a difference is a :class:`VerificationError`. Bytes that went through the page cache are not read back:
such a read would only return the page cache's copy.

If the file system refuses ``O_DIRECT`` (``EINVAL``, e.g. tmpfs), everything goes through the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from .chunkio import ALIGN, ChunkWriter, StagingBuffer
from .errors import VerificationError
from .fsutil import libc_function

logger = logging.getLogger(__name__)

__all__ = ["DirectWriter"]

PROBE_BYTES = 64 << 20  # "auto": page-cache writes timed per decision
WRITEBACK_BYTES = 64 << 20  # "auto": page-cache writes handed to the disk (sync_file_range) every this many bytes
SLOW_BYTES_PER_S = 2e9  # "auto": page-cache writes slower than this switch to direct I/O


class DirectWriter:
    """A :class:`~hfexport.chunkio.ChunkWriter` that writes whole blocks with ``O_DIRECT`` (now or once slow).

    Args:
        fh: The file, opened for writing by :func:`~hfexport.chunkio.write_shard`.
        path: Its path (to open it again with ``O_DIRECT``).
        total: Its final size.
        plain: The plain writer, used until direct I/O starts (``"auto"``).
        always: Direct I/O from the first byte (``"direct"``) instead of once the page cache is slow (``"auto"``).
    """

    def __init__(
        self, fh: BinaryIO, path: str | os.PathLike[str], total: int, *, plain: ChunkWriter, always: bool
    ) -> None:
        self.fd = fh.fileno()
        self.path = os.fspath(path)
        self.total = total
        self.plain = plain
        self.direct_fd = -1
        self.direct = False  # whether whole blocks now go out with O_DIRECT
        self.refused = False  # the file system does not do direct I/O (open or write said EINVAL)
        self.readback: StagingBuffer | None = None  # used by the read-back thread only
        self.checker: ThreadPoolExecutor | None = None
        self.checks: dict[int, Future[None]] = {}  # id(staging) → the read-back of what was written from it
        self.direct_bytes = 0
        self.probe_bytes = 0
        self.probe_seconds = 0.0
        self.unflushed = 0  # page-cache bytes written since the last writeback request
        self.flushed = 0  # where the last writeback request ended
        _preallocate(self.fd, 0, total)
        if always:
            self._start()

    def write(self, staging: StagingBuffer, start: int, offset: int, n: int) -> None:
        if self.direct_fd == -1:  # direct I/O not started (or refused on open): the plain, sequential writes
            began = time.perf_counter()
            self.plain.write(staging, start, offset, n)
            if not self.refused:
                self._probe(n, time.perf_counter() - began, offset + n)
            self._writeback(offset + n, n)
            return
        end = offset + n
        lo, hi = -(-offset // ALIGN) * ALIGN, end - end % ALIGN  # the chunk's whole blocks: [lo, hi)
        first = offset - start  # the file offset of staging's byte 0 (a multiple of ALIGN)
        if not self.direct or lo >= hi:  # positional page-cache writes once direct writes began
            _pwrite_all(self.fd, staging.view[start : start + n], offset)
            return
        try:
            _pwrite_all(self.direct_fd, staging.view[lo - first : hi - first], lo)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            logger.debug("direct write refused for %s (%s): the page cache from here on", self.path, exc)
            self.direct, self.refused = False, True
            _pwrite_all(self.fd, staging.view[start : start + n], offset)
            return
        if self.checker is None:
            self.checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfexport-readback")
        self.checks[id(staging)] = self.checker.submit(self._check, staging, lo - first, lo, hi - lo)
        self.direct_bytes += hi - lo
        for a, b in ((offset, lo), (hi, end)):  # the partial blocks at the edges
            if a < b:
                _pwrite_all(self.fd, staging.view[a - first : b - first], a)

    def settle(self, staging: StagingBuffer) -> None:
        check = self.checks.pop(id(staging), None)
        if check is not None:
            check.result()

    def close(self, *, check: bool) -> int:
        try:
            if self.checker is not None:
                self.checker.shutdown(wait=True)  # every read-back done: the staging buffers may go
            if check:
                for future in self.checks.values():
                    future.result()
        finally:
            self.checks.clear()
            if self.direct_fd != -1:
                os.close(self.direct_fd)
                self.direct_fd = -1
            if self.readback is not None:
                self.readback.close()
                self.readback = None
        return self.direct_bytes

    def _probe(self, n: int, seconds: float, position: int) -> None:
        """Judge the page cache over every ``PROBE_BYTES`` written; go direct from ``position`` when it is slow.

        Judged again and again: fresh pages can be cheap at first (memory freed moments ago) and turn expensive
        once those are used up.
        """
        self.probe_bytes += n
        self.probe_seconds += seconds
        if self.probe_bytes < PROBE_BYTES:
            return
        rate = self.probe_bytes / max(self.probe_seconds, 1e-9)
        self.probe_bytes, self.probe_seconds = 0, 0.0
        if rate < SLOW_BYTES_PER_S and position < self.total:
            logger.debug("page-cache writes at %.2f GB/s: direct I/O from byte %d on", rate / 1e9, position)
            self._start()

    def _writeback(self, end: int, n: int) -> None:
        """Count ``n`` page-cache bytes written up to ``end``; every ``WRITEBACK_BYTES``, start their disk write."""
        self.unflushed += n
        if self.unflushed >= WRITEBACK_BYTES:
            _start_writeback(self.fd, self.flushed, end - self.flushed)
            self.unflushed, self.flushed = 0, end

    def _start(self) -> None:
        """Open the file again with ``O_DIRECT``: whole blocks from the next chunk on go out directly."""
        try:
            self.direct_fd = os.open(self.path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
            self.direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            logger.debug("no direct I/O for %s (%s): writing through the page cache", self.path, exc)
            self.refused = True

    def _check(self, staging: StagingBuffer, start: int, offset: int, n: int) -> None:
        """Read ``n`` bytes at ``offset`` back from the device; they must equal ``staging``'s bytes at ``start``."""
        if self.readback is None or len(self.readback.view) < n:
            if self.readback is not None:
                self.readback.close()
            self.readback = StagingBuffer(n)
        got = 0
        while got < n:
            k = os.preadv(self.direct_fd, [self.readback.view[got:n]], offset + got)
            if k <= 0:
                break
            got += k
        if got < n or not _equal(self.readback.tensor.data_ptr(), staging.tensor.data_ptr() + start, n):
            problem = f"only {got} bytes" if got < n else "different bytes"
            raise VerificationError(
                f"{self.path}: the {n} bytes written with direct I/O at offset {offset} read back from the device "
                f"as {problem}: the disk does not hold what was written"
            )


def _equal(a: int, b: int, n: int) -> bool:
    """Whether ``n`` bytes at two addresses are equal: libc ``memcmp`` (~10 GB/s, without the GIL; ``torch.equal``
    on bytes is an order of magnitude slower), else a comparison of copies."""
    memcmp = libc_function("memcmp", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t])
    if memcmp is not None:
        return memcmp(a, b, n) == 0
    return ctypes.string_at(a, n) == ctypes.string_at(b, n)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, f"pwrite wrote {n} bytes at offset {offset}")
        data = data[n:]
        offset += n


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the range's dirty pages, don't wait


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start (not wait for) the disk write of a range's dirty pages: Linux ``sync_file_range``, best effort."""
    func = libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
    if func is not None and length > 0:
        func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


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
