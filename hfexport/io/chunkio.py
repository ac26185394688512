"""Writing one file from chunks that worker threads produce: the one place where hfexport writes tensor bytes.

The safetensors writer turns a shard into a list of :class:`Chunk` objects (byte ranges of the file, each with a
function that produces its bytes) and calls :func:`write_shard`. Producer threads fill the chunks into staging
buffers, ahead of the writer but never more than ``BUFFERS_PER_WORKER * workers`` chunks ahead, and take each
chunk's CRC-32 right after filling it (while its bytes are in the CPU cache); the calling thread takes the chunks
in file order, writes them, and combines their CRC-32s into the file's (:func:`hfexport._util.checksum.crc32_combine`);
at the end the file is fsynced. Production (torch), the CRC-32 (:func:`hfexport._util.checksum.crc32`) and the writes
release the GIL, so the producers and the writer run in parallel.

How the bytes reach the disk is the ``io`` option (:func:`resolve_io`):

* ``"buffered"`` (the default): plain sequential writes through the page cache, then ``fsync``. Runs everywhere.
* ``"direct"``: the Linux direct-I/O path of :mod:`hfexport.io.directio`.
* ``"auto"``: ``"direct"`` for a file of at least :data:`DIRECT_MIN_BYTES`, ``"buffered"`` for a smaller one (whose
  page-cache write and ``fsync`` take next to nothing).

Where direct I/O does not exist, every mode is ``"buffered"``.

The environment variable ``HFEXPORT_DIRECT_IO`` overrides the option: ``0`` (buffered), ``1`` (direct), ``auto``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import torch

from hfexport._util import checksum
from hfexport._util.checksum import crc32_combine
from hfexport.errors import ConversionError
from hfexport.io import directio
from hfexport.io.staging import ALIGN, StagingBuffer

__all__ = ["IO_MODES", "Chunk", "StagingBuffer", "WrittenFile", "resolve_io", "write_shard"]

IO_MODES = ("auto", "buffered", "direct")
ENV_IO = "HFEXPORT_DIRECT_IO"
DIRECT_MIN_BYTES = 64 << 20  # "auto": files of at least this size are written with direct I/O
# Staging buffers per producer thread (workers > 1): a buffer is busy from its production to the end of its write,
# and the producers may run this many chunks each ahead of the writing thread, which writes at the device's pace.
BUFFERS_PER_WORKER = 4
_ENV_VALUES = {
    **dict.fromkeys(("0", "false", "no", "off", "never", "buffered"), "buffered"),
    **dict.fromkeys(("1", "true", "yes", "on", "always", "direct"), "direct"),
    "auto": "auto",
}


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
class WrittenFile:
    """What :func:`write_shard` wrote.

    Attributes:
        size: The file's size in bytes.
        crc32: The CRC-32 of the whole file, combined from each chunk's, taken from the staging buffer that the
            chunk was then written from.
        io: How it was written: ``"buffered"``, or ``"direct"`` when any of it went out with direct I/O.
        direct_bytes: How many bytes went out with direct I/O; the rest went through the page cache.
    """

    size: int
    crc32: int
    io: str
    direct_bytes: int = 0


class ChunkWriter(Protocol):
    """Where :func:`write_shard` sends the produced chunks, in file order (the plain one or a direct-I/O one)."""

    def write(self, staging: StagingBuffer, start: int, offset: int, n: int) -> None:
        """Write ``n`` bytes of ``staging`` from ``start`` at file offset ``offset`` (where the last write ended)."""

    def close(self) -> int:
        """Release what the writer holds. Returns the bytes written with direct I/O."""


def resolve_io(io: str = "buffered", size: int | None = None) -> str:
    """The I/O mode to use: ``HFEXPORT_DIRECT_IO`` when set, else ``io``; ``"buffered"`` where direct I/O is absent.

    Args:
        io: ``"buffered"``, ``"auto"`` or ``"direct"``.
        size: The size of the file to write: ``"auto"`` then resolves to ``"direct"`` or ``"buffered"``.

    Raises:
        ConversionError: ``io`` or the environment variable is not a known mode.
    """
    if io not in IO_MODES:
        raise ConversionError(f"Invalid io {io!r}: choose one of {', '.join(IO_MODES)}.")
    env = os.environ.get(ENV_IO)
    if env is not None and env.strip():
        mode = _ENV_VALUES.get(env.strip().lower())
        if mode is None:
            raise ConversionError(f"Invalid {ENV_IO}={env!r}: set it to 0 (buffered), 1 (direct) or auto, or unset it.")
        io = mode
    if io != "buffered" and not (sys.platform.startswith("linux") and hasattr(os, "O_DIRECT")):
        return "buffered"
    if io == "auto" and size is not None:
        return "direct" if size >= DIRECT_MIN_BYTES else "buffered"
    return io


def write_shard(
    path: str | os.PathLike[str],
    chunks: Sequence[Chunk],
    *,
    io: str = "buffered",
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> WrittenFile:
    """Create ``path``, write ``chunks`` into it (they must tile the file), fsync it; return its size and CRC-32.

    Args:
        path: A file that must not exist yet.
        chunks: The file's byte ranges, in file order, starting at offset 0.
        io: ``"buffered"`` (default), ``"auto"`` or ``"direct"``; see the module's docstring.
        workers: Producer threads; ``1`` produces everything in the calling thread.
        on_progress: Called with the byte count of each produced chunk (not of ``data`` chunks such as a header)
            once it is written.

    Returns:
        The file's size and CRC-32, and how it was written.

    Raises:
        OSError: the file exists, the disk is full, or any other I/O error.
        Exception: whatever a chunk's ``produce`` raised (the first one in file order when several failed).
    """
    total = 0
    for ch in chunks:
        if ch.offset != total:
            raise ValueError(f"chunks must tile the file: one starts at {ch.offset}, expected {total}")
        if ch.data is not None and len(ch.data) != ch.nbytes:
            raise ValueError(f"a chunk at {ch.offset} has {len(ch.data)} bytes, its shape says {ch.nbytes}")
        total += ch.nbytes
    mode = resolve_io(io, total)
    workers = max(1, min(workers, len(chunks)))
    size = max((ch.nbytes for ch in chunks), default=0) + ALIGN
    # workers == 1 produces in the calling thread, a chunk at a time: one buffer
    buffers = [StagingBuffer(size) for _ in range(BUFFERS_PER_WORKER * workers if workers > 1 else 1)]
    crc = 0
    try:
        with open(path, "xb", buffering=0) as fh:
            writer: ChunkWriter = _PlainWriter(fh)
            if mode == "direct":
                writer = directio.DirectWriter(fh, path, total)
            try:
                # closing(): on any error the producers are stopped here, before the file is closed
                with contextlib.closing(_produced(chunks, workers, buffers)) as produced:
                    for ch, staging, start, chunk_crc in produced:
                        crc = crc32_combine(crc, chunk_crc, ch.nbytes)
                        writer.write(staging, start, ch.offset, ch.nbytes)
                        if on_progress is not None and ch.data is None:
                            on_progress(ch.nbytes)
            finally:
                direct_bytes = writer.close()
            os.fsync(fh.fileno())
    finally:
        for staging in buffers:
            staging.close()
    return WrittenFile(total, crc, "direct" if direct_bytes else "buffered", direct_bytes)


class _PlainWriter:
    """Sequential writes through the page cache: the portable path."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def write(self, staging: StagingBuffer, start: int, offset: int, n: int) -> None:
        view = staging.view[start : start + n]
        while len(view):
            written = self.fh.write(view)
            if not written:
                raise OSError(f"write() wrote nothing at offset {offset + n - len(view)}")
            view = view[written:]

    def close(self) -> int:
        return 0


def _produced(
    chunks: Sequence[Chunk], workers: int, buffers: list[StagingBuffer]
) -> Generator[tuple[Chunk, StagingBuffer, int, int], None, None]:
    """Yield ``(chunk, staging, start, crc32)`` in file order, the chunk's bytes at ``staging.view[start:]``.

    ``start`` is the chunk's file offset modulo :data:`ALIGN`, ``crc32`` the CRC-32 of the chunk's bytes (taken by
    the thread that produced them, right after). A buffer is refilled once the caller asks for the next chunk
    (it is done with the buffer then); with ``workers > 1`` producer threads fill the free buffers, up to
    ``len(buffers)`` chunks ahead of the caller.
    """
    if workers == 1:
        for ch in chunks:
            yield ch, buffers[0], *_fill(ch, buffers[0])
        return
    threads = torch.get_num_threads()
    lock = threading.Lock()
    active = 0  # producers inside _fill

    def fill(ch: Chunk, staging: StagingBuffer) -> tuple[int, int]:
        # One intra-op thread per producer: the producers are the parallelism, and OpenMP teams of their own would
        # spin on the cores the writer and the other producers need. The setting is shared by the threads (it also
        # becomes the default of threads created meanwhile), so the first producer in sets it and the last one out
        # puts it back: a producer that finished first must not give the others their teams back mid-fill.
        nonlocal active
        with lock:
            if active == 0:
                torch.set_num_threads(1)
            active += 1
        try:
            return _fill(ch, staging)
        finally:
            with lock:
                active -= 1
                if active == 0:
                    torch.set_num_threads(threads)

    free = list(buffers)
    pending: list[tuple[Chunk, StagingBuffer, Future[tuple[int, int]]]] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hfexport-produce")
    try:
        queued = 0
        while pending or queued < len(chunks):
            while free and queued < len(chunks):
                staging = free.pop()
                pending.append((chunks[queued], staging, pool.submit(fill, chunks[queued], staging)))
                queued += 1
            ch, staging, future = pending.pop(0)
            yield ch, staging, *future.result()
            free.append(staging)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # no producer may still write into a buffer once closed


def _fill(ch: Chunk, staging: StagingBuffer) -> tuple[int, int]:
    """Put ``ch``'s bytes into ``staging`` at ``ch.offset % ALIGN``; returns that start and the bytes' CRC-32."""
    start = ch.offset % ALIGN
    n = ch.nbytes
    if ch.data is not None:
        staging.view[start : start + n] = ch.data
    elif n:
        assert ch.produce is not None
        raw = staging.tensor[start : start + n]
        if start % ch.dtype.itemsize == 0:
            ch.produce(raw.view(ch.dtype).view(ch.shape))
        else:  # a dtype whose size does not divide the offset (mixed dtypes in one file): produce, then copy
            out = torch.empty(ch.shape, dtype=ch.dtype)
            ch.produce(out)
            raw.copy_(out.reshape(-1).view(torch.uint8))
    return start, checksum.crc32(staging.view[start : start + n])
