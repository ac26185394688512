"""Writing one large file from chunks produced by worker threads: preallocated, direct I/O, read back, checked.

The safetensors writer turns a shard into a list of :class:`Chunk` objects (byte ranges of the file, each with
a function that produces its bytes) and calls :func:`write_chunks`. Worker threads take the chunks in file
order; for each one a worker

1. produces the bytes into its page-aligned staging buffer (cast, transpose, NaN/inf check: the producer's work),
2. computes their CRC-32 while they are still in the CPU cache,
3. writes them, reads them back from the file and compares them byte for byte with the staging buffer,

then takes the next chunk. Production releases the GIL (torch), and so do ``zlib.crc32`` and the system
calls, so the workers run in parallel; a worker waiting for the disk leaves the CPU to the others.

How the bytes reach the disk, and why:

* The file is preallocated (``fallocate``) to its final size. A full disk fails before anything is written, and
  on ext4 the page-cache writes are several times faster than with delayed allocation (measured: 0.4-2 GiB/s
  without, 4-5 GiB/s with, on the development VM).
* The chunks first go through the page cache (the kernel is asked to start writing them to disk early,
  ``sync_file_range``, so the final ``fsync`` has little left to do), and the writers time those writes. As soon
  as ``PROBE_BYTES`` of them went slower than ``SLOW_BYTES_PER_S``, and if the file system accepts ``O_DIRECT``,
  the rest goes with direct I/O: straight from the staging buffer to the disk (DMA), without copying into fresh
  page-cache pages. Page-cache writes are that slow where fresh memory is expensive, e.g. on virtual machines
  that give free memory back to the host (virtio-balloon free page reporting): there the host must back every
  new page again, and writing 1.5 GB into the page cache takes 3-4 s instead of 0.4 s. Direct I/O also keeps a
  large export from evicting the training data's cache. ``HFEXPORT_DIRECT_IO`` decides: ``auto`` (default, as
  above), ``1`` (always direct where possible) or ``0`` (never).
* Direct I/O needs 4096-byte aligned offsets, lengths and memory. A chunk may start anywhere in the file, so it
  is always produced at ``offset % 4096`` in its staging buffer: its whole blocks are then aligned both in memory
  and in the file and go out directly, and the partial blocks at its two edges (< 4 KiB each) go through the
  page cache. The two never overlap, so the kernel keeps them coherent.
* The read-back uses the same path as the write: a direct read (what the device holds) for direct writes, the
  page cache otherwise.

The caller fsyncs the file. The file's CRC-32 is combined from the chunks' (see :mod:`hfexport.checksum`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import queue
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .checksum import crc32_concat
from .fsutil import libc_function

logger = logging.getLogger(__name__)

__all__ = ["Chunk", "ChunkedFile", "direct_io_mode", "write_chunks"]

ALIGN = 4096  # direct I/O alignment of offsets, lengths and memory (covers 512- and 4096-byte sectors)
PROBE_BYTES = 64 << 20  # page-cache writes timed before deciding on direct I/O ("auto")
SLOW_BYTES_PER_S = 2e9  # page-cache writes slower than this switch "auto" to direct I/O
_WRITEBACK_BYTES = 64 << 20  # page-cache writes: start the disk writing every this many bytes
_MAP_READBACK_BYTES = 256 << 10  # page-cache read-backs at least this long compare through a mapping, not a copy
_ENV_DIRECT = "HFEXPORT_DIRECT_IO"
# Binary mode matters on Windows (os.open defaults to text mode there); close-on-exec where it exists.
_OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass
class Chunk:
    """One byte range of the file and how to produce it.

    Attributes:
        offset: Where the range starts in the file.
        dtype: The dtype of the tensor the range holds (``torch.uint8`` for raw bytes).
        shape: The shape of that tensor (its byte size is the range's length).
        produce: Fills a contiguous tensor of ``dtype`` and ``shape`` with the range's contents. Called from a
            worker thread, at most once, and never concurrently for the same chunk.
        data: The range's bytes when they are known up front (e.g. the header); ``produce`` is then unused.
    """

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[torch.Tensor], None] | None = None
    data: bytes | None = None

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for dim in self.shape:
            n *= dim
        return n


@dataclass
class ChunkedFile:
    """What :func:`write_chunks` wrote.

    Attributes:
        size: The file's size in bytes.
        crc32: The CRC-32 of the whole file.
        chunk_crc32: The CRC-32 of each chunk, in the order given.
        direct_bytes: How many bytes went out with direct I/O (the rest went through the page cache).
    """

    size: int
    crc32: int
    chunk_crc32: list[int]
    direct_bytes: int


def direct_io_mode() -> str:
    """``HFEXPORT_DIRECT_IO`` as ``"auto"`` (default), ``"always"`` (``1``/``true``/``on``) or ``"never"``.

    ``"never"`` also where direct I/O does not exist (not Linux).
    """
    if not hasattr(os, "O_DIRECT") or not sys.platform.startswith("linux"):
        return "never"
    value = os.environ.get(_ENV_DIRECT, "auto").strip().lower()
    if value in ("0", "false", "no", "off", "never"):
        return "never"
    if value in ("1", "true", "yes", "on", "always"):
        return "always"
    return "auto"


def write_chunks(
    path: str | os.PathLike[str],
    chunks: Sequence[Chunk],
    *,
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> ChunkedFile:
    """Create ``path`` and write ``chunks`` into it (they must tile the file: each starts where the last ended).

    Args:
        path: A file that must not exist yet.
        chunks: The file's byte ranges, in file order, starting at offset 0.
        workers: Producer threads, and as many writer threads; ``1`` runs everything in the calling thread.
        on_progress: Called with the byte count of each produced chunk (not of ``data`` chunks such as a header)
            once it is written and checked, from whichever worker wrote it.

    Returns:
        The size and CRC-32 of the file and of every chunk.

    Raises:
        OSError: the file exists, the disk is full (before anything is written when the file system supports
            preallocation), or any other I/O error.
        VerificationError: bytes read back differ from the bytes written.
        Exception: whatever a chunk's ``produce`` raised (the first one in file order when several failed).
    """
    position = 0
    for ch in chunks:
        if ch.offset != position:
            raise ValueError(f"chunks must tile the file: one starts at {ch.offset}, expected {position}")
        if ch.data is not None and len(ch.data) != ch.nbytes:
            raise ValueError(f"a chunk at {ch.offset} has {len(ch.data)} bytes, its shape says {ch.nbytes}")
        position += ch.nbytes
    total = position
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
    try:
        _preallocate(fd, total)
        with _Session(path, fd, chunks, mode=direct_io_mode()) as session:
            session.run(max(1, workers), on_progress)
    finally:
        os.close(fd)
    crcs = [c if c is not None else 0 for c in session.crcs]
    return ChunkedFile(
        size=total,
        crc32=crc32_concat(zip(crcs, (ch.nbytes for ch in chunks), strict=True)),
        chunk_crc32=crcs,
        direct_bytes=session.direct_bytes,
    )


class _Session:
    """The shared state of one file's workers."""

    def __init__(self, path: str | os.PathLike[str], fd: int, chunks: Sequence[Chunk], *, mode: str) -> None:
        self.path = path
        self.fd = fd  # page-cache writes
        self.chunks = chunks
        self.mode = mode
        self.crcs: list[int | None] = [None] * len(chunks)
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.next = 0
        self.failed: list[tuple[int, BaseException]] = []
        self.stop = threading.Event()
        self.unflushed = 0
        self.read_fd = -1
        self.direct_fd = -1
        self.direct = False  # whether chunks now go out with direct I/O
        self.direct_bytes = 0
        self.probe_bytes = 0
        self.probe_seconds = 0.0
        largest = max((ch.nbytes for ch in chunks), default=0)
        self.buffer_size = _round_up(largest + ALIGN, ALIGN)

    def __enter__(self) -> _Session:
        self.read_fd = os.open(self.path, os.O_RDONLY | _OPEN_FLAGS)
        if self.mode != "never":
            try:
                self.direct_fd = os.open(self.path, os.O_RDWR | os.O_DIRECT | _OPEN_FLAGS)
            except OSError as exc:  # EINVAL: this file system does not do direct I/O
                logger.debug("direct I/O unavailable for %s (%s); writing through the page cache", self.path, exc)
        self.direct = self.mode == "always" and self.direct_fd != -1
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self.direct_fd, self.read_fd):
            if fd != -1:
                os.close(fd)

    # --- scheduling ---------------------------------------------------------------------------------------------

    def run(self, workers: int, on_progress: Callable[[int], None] | None) -> None:
        workers = min(workers, max(1, len(self.chunks)))
        if workers == 1:
            self._inline(on_progress)
        else:
            self._pipeline(workers, on_progress)
        if self.failed:
            raise min(self.failed, key=lambda item: item[0])[1]

    def _inline(self, on_progress: Callable[[int], None] | None) -> None:
        """Produce, write and check every chunk in the calling thread."""
        staging = _AlignedBuffer(self.buffer_size)
        readback = _AlignedBuffer(self.buffer_size)
        index = None
        try:
            while (index := self._take()) is not None:
                start = self._produce(index, staging)
                self._store(index, staging, start, readback, on_progress)
        except BaseException as exc:
            self._fail(index, exc)
        finally:
            staging.close()
            readback.close()

    def _pipeline(self, workers: int, on_progress: Callable[[int], None] | None) -> None:
        """``workers`` producer threads (CPU) feed ``workers`` writer threads (I/O) through a pool of buffers.

        A producer never waits for the disk: it hands its staging buffer over and takes a free one for the next
        chunk, so production, writes and read-backs overlap.
        """
        free: queue.Queue[_AlignedBuffer] = queue.Queue()
        buffers = [_AlignedBuffer(self.buffer_size) for _ in range(2 * workers)]
        for buffer in buffers:
            free.put(buffer)
        ready: queue.Queue[tuple[int, _AlignedBuffer, int] | None] = queue.Queue()
        torch_threads = torch.get_num_threads()

        def produce() -> None:
            index = None
            # One intra-op thread per producer: the producers are the parallelism, and OpenMP teams of their own
            # would spin on the cores the writers and the other producers need (measured: 20% more CPU time).
            # The setting is the calling thread's; it also becomes the default of threads created meanwhile, so
            # it is put back when the producer ends.
            torch.set_num_threads(1)
            try:
                while (staging := self._free_buffer(free)) is not None:
                    if (index := self._take()) is None:
                        free.put(staging)
                        return
                    ready.put((index, staging, self._produce(index, staging)))
            except BaseException as exc:
                self._fail(index, exc)
            finally:
                torch.set_num_threads(torch_threads)

        def store() -> None:
            readback = _AlignedBuffer(self.buffer_size)
            try:
                while (item := ready.get()) is not None:
                    index, staging, start = item
                    try:
                        if not self.stop.is_set():
                            self._store(index, staging, start, readback, on_progress)
                    except BaseException as exc:
                        self._fail(index, exc)
                    finally:
                        free.put(staging)
            finally:
                readback.close()

        producers = [
            threading.Thread(target=produce, name=f"hfexport-produce-{i}", daemon=True) for i in range(workers)
        ]
        writers = [threading.Thread(target=store, name=f"hfexport-write-{i}", daemon=True) for i in range(workers)]
        for t in producers + writers:
            t.start()
        try:
            for t in producers:
                t.join()
        except BaseException:  # e.g. KeyboardInterrupt in the caller: stop the workers before leaving
            self.stop.set()
            for t in producers:
                t.join()
            raise
        finally:
            for _ in writers:
                ready.put(None)
            for t in writers:
                t.join()
            for buffer in buffers:
                buffer.close()

    def _free_buffer(self, free: queue.Queue[_AlignedBuffer]) -> _AlignedBuffer | None:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Empty):
                return free.get(timeout=0.1)
        return None

    def _take(self) -> int | None:
        with self.lock:
            if self.stop.is_set() or self.next >= len(self.chunks):
                return None
            index = self.next
            self.next += 1
            return index

    def _fail(self, index: int | None, exc: BaseException) -> None:
        with self.lock:
            self.failed.append((index if index is not None else -1, exc))
        self.stop.set()

    # --- one chunk ----------------------------------------------------------------------------------------------

    def _produce(self, index: int, staging: _AlignedBuffer) -> int:
        """Put chunk ``index``'s bytes into ``staging`` and take their CRC-32; returns where they start in it.

        They start at the chunk's file offset modulo 4096, so that the chunk can go out with direct I/O.
        """
        ch = self.chunks[index]
        n = ch.nbytes
        start = ch.offset % ALIGN
        view = staging.view[start : start + n]
        if ch.data is not None:
            view[:] = ch.data
        elif n:
            _produce_into(ch, staging.tensor[start : start + n])
        self.crcs[index] = zlib.crc32(view)
        return start

    def _store(
        self,
        index: int,
        staging: _AlignedBuffer,
        start: int,
        readback: _AlignedBuffer,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        """Write chunk ``index`` from ``staging`` and check it; report its size to ``on_progress``."""
        ch = self.chunks[index]
        end = ch.offset + ch.nbytes
        lo, hi = _round_up(ch.offset, ALIGN), end - end % ALIGN  # the chunk's whole blocks: [lo, hi)
        first = ch.offset - start  # the file offset of staging's byte 0 (a multiple of 4096)
        if self.direct and lo < hi:
            try:
                _pwrite_all(self.direct_fd, staging.view[lo - first : hi - first], lo)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                logger.debug("direct write refused (%s); writing through the page cache", exc)
                self.direct = False  # and this chunk goes out through the page cache below
            else:
                self._check(self.direct_fd, lo, staging, lo - first, hi - lo, readback, direct=True)
                with self.lock:
                    self.direct_bytes += hi - lo
                for a, b in ((ch.offset, lo), (hi, end)):  # the partial blocks at the edges
                    if a < b:
                        self._write_buffered(a, staging, a - first, b - a, readback, probe=False)
                self._progress(ch, on_progress)
                return
        self._write_buffered(ch.offset, staging, start, ch.nbytes, readback, probe=True)
        self._progress(ch, on_progress)

    @staticmethod
    def _progress(ch: Chunk, on_progress: Callable[[int], None] | None) -> None:
        if on_progress is not None and ch.data is None:
            on_progress(ch.nbytes)

    def _write_buffered(
        self, offset: int, staging: _AlignedBuffer, start: int, n: int, readback: _AlignedBuffer, *, probe: bool
    ) -> None:
        if not n:
            return
        with self.write_lock:  # one page-cache writer at a time: ext4 & co. lock the inode, and contenders spin
            began = time.perf_counter()
            _pwrite_all(self.fd, staging.view[start : start + n], offset)
            seconds = time.perf_counter() - began
        with self.lock:
            self.unflushed += n
            flush = self.unflushed >= _WRITEBACK_BYTES
            if flush:
                self.unflushed = 0
            if probe and self.mode == "auto" and self.direct_fd != -1 and not self.direct:
                # Judged over every PROBE_BYTES written: fresh pages can be cheap at first (memory freed moments
                # ago) and turn expensive once those are used up.
                self.probe_bytes += n
                self.probe_seconds += seconds
                if self.probe_bytes >= PROBE_BYTES:
                    rate = self.probe_bytes / max(self.probe_seconds, 1e-9)
                    self.direct = rate < SLOW_BYTES_PER_S
                    self.probe_bytes, self.probe_seconds = 0, 0.0
                    if self.direct:
                        logger.debug("page-cache writes at %.2f GB/s: direct I/O from here on", rate / 1e9)
        if flush:
            _start_writeback(self.fd)
        self._check(self.read_fd, offset, staging, start, n, readback, direct=False)

    def _check(
        self,
        fd: int,
        offset: int,
        source: _AlignedBuffer,
        start: int,
        n: int,
        readback: _AlignedBuffer,
        *,
        direct: bool,
    ) -> None:
        """Read ``n`` bytes at ``offset`` back from the file; they must equal ``source``'s bytes at ``start``."""
        from .errors import VerificationError

        if not direct and n >= _MAP_READBACK_BYTES:
            problem = None if self._same_as_mapped(fd, offset, source, start, n) else "different"
        else:
            length = _round_up(n, ALIGN) if direct else n
            got = 0
            while got < n:
                k = _pread_into(fd, readback.view[got:length], offset + got)
                if k <= 0:
                    break
                got += k
            problem = "short" if got < n else None if _same(source, start, readback, 0, n) else "different"
        if problem:
            raise VerificationError(
                f"{os.fspath(self.path)}: the {n} bytes written at offset {offset} read back {problem}: the file "
                "system or the disk does not hold what was written"
            )

    def _same_as_mapped(self, fd: int, offset: int, source: _AlignedBuffer, start: int, n: int) -> bool:
        """Compare ``n`` bytes of the file at ``offset`` with ``source`` through a mapping of the page cache.

        Cheaper than reading them into a buffer (no copy) for page-cache writes; short files read as different.
        """
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(fd, offset + n - base, offset=base, access=mmap.ACCESS_COPY)
        except ValueError:  # the file is shorter than what was written
            return False
        try:
            window = ctypes.c_char.from_buffer(mapped)
            address = ctypes.addressof(window)
            del window
            return _memcmp(address + offset - base, source.address + start, n)
        finally:
            mapped.close()


def _produce_into(ch: Chunk, raw: torch.Tensor) -> None:
    """Run ``ch.produce`` on a typed view of ``raw`` (or on a temporary when ``raw`` is not aligned for the dtype)."""
    assert ch.produce is not None
    itemsize = ch.dtype.itemsize
    if raw.storage_offset() % itemsize == 0:
        ch.produce(raw.view(ch.dtype).view(ch.shape))
    else:  # a dtype whose size does not divide the offset (mixed dtypes in one file): produce, then copy the bytes
        out = torch.empty(ch.shape, dtype=ch.dtype)
        ch.produce(out)
        raw.copy_(out.reshape(-1).view(torch.uint8))


class _AlignedBuffer:
    """Page-aligned anonymous memory, seen as a ``memoryview`` and as a ``torch.uint8`` tensor."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, max(size, ALIGN))
        self.view = memoryview(self.map)
        self.tensor = torch.frombuffer(self.map, dtype=torch.uint8)
        self.address = self.tensor.data_ptr()

    def close(self) -> None:
        del self.tensor
        with contextlib.suppress(BufferError):  # a view still exported somewhere: the GC unmaps it later
            self.view.release()
            self.map.close()


def _same(a: _AlignedBuffer, a_start: int, b: _AlignedBuffer, b_start: int, n: int) -> bool:
    """Whether ``n`` bytes of two buffers are equal."""
    return _memcmp(a.address + a_start, b.address + b_start, n)


def _memcmp(a: int, b: int, n: int) -> bool:
    """Whether ``n`` bytes at two addresses are equal: libc ``memcmp`` (runs without the GIL) where available."""
    memcmp = libc_function("memcmp", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t])
    if memcmp is not None:
        return memcmp(a, b, n) == 0
    return ctypes.string_at(a, n) == ctypes.string_at(b, n)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


_HAVE_POSITIONAL_IO = hasattr(os, "pwrite") and hasattr(os, "preadv")
_seek_lock = threading.Lock()  # serializes seek-then-read/write where positional I/O is missing (Windows)


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    if _HAVE_POSITIONAL_IO:
        return os.pwrite(fd, data, offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    if _HAVE_POSITIONAL_IO:
        return os.preadv(fd, [buffer], offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(buffer))
    buffer[: len(data)] = data
    return len(data)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = _pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, f"pwrite wrote {n} bytes")
        data = data[n:]
        offset += n


def _preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes for the file (Linux ``fallocate``); raises ``OSError(ENOSPC)`` when they don't fit.

    Where the file system cannot preallocate, nothing happens (the writes allocate as they go).
    """
    if size <= 0:
        return
    fallocate = libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
    if fallocate is None:
        return
    if fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(err, f"{os.strerror(err)}: cannot reserve {size} bytes for the file")
        logger.debug("fallocate unavailable (%s); writing without preallocation", os.strerror(err))


_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    """Start (not wait for) the disk write of a file's dirty pages: Linux ``sync_file_range``, best effort."""
    func = libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
    if func is not None:
        func(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
