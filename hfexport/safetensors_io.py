"""Streaming safetensors writer and a byte-level reader for verification.

``safetensors.torch.save_file`` needs every tensor in memory at once; hfexport writes a plan one tensor at a
time instead (the header only needs names, dtypes and shapes, which are known up front), so converting a
checkpoint costs one or two tensors of extra memory (one being written while the next is produced), not the
whole model. The format written is the standard one
(8-byte little-endian header length, JSON header padded with spaces to 8 bytes, then the raw bytes) and is
read back by ``safetensors.safe_open`` during verification.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import struct
import sys
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

logger = logging.getLogger(__name__)

__all__ = ["DTYPE_NAMES", "TensorRecord", "read_header", "tensor_bytes", "write_safetensors"]

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass
class TensorRecord:
    """What was written for one tensor: enough to verify it later without holding it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    crc32: int = 0
    file: str = ""


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor."""
    if tensor.numel() == 0:
        return memoryview(b"")
    flat = tensor.reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def _header(records: list[TensorRecord], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for rec in records:
        header[rec.name] = {
            "dtype": DTYPE_NAMES[rec.dtype],
            "shape": list(rec.shape),
            "data_offsets": [offset, offset + rec.nbytes],
        }
        offset += rec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    fh: BinaryIO,
    records: list[TensorRecord],
    tensors: Iterable[torch.Tensor],
    *,
    metadata: dict[str, str] | None = None,
    on_bytes: Callable[[memoryview], None] | None = None,
) -> None:
    """Write a safetensors file whose tensors arrive one at a time.

    Writing a tensor (the copy into the page cache, its CRC-32 and ``on_bytes``, e.g. a SHA-256) runs on a
    helper thread while the next tensor is produced (cast, transposed, checked) on the calling thread: all of
    these release the GIL, so the two overlap. At most two tensors are alive: the one being written and the
    one being produced.

    Args:
        fh: A binary file opened for writing.
        records: Name, dtype and shape of each tensor, in the order ``tensors`` yields them. Their ``crc32``
            is filled in as the bytes are written.
        tensors: The tensors (contiguous, CPU), produced lazily so only one or two need to be alive.
        metadata: The header's ``__metadata__``; ``{"format": "pt"}`` by default.
        on_bytes: Called with every chunk written (e.g. a progress bar or a hash), in file order.
    """
    head = _header(records, metadata or {"format": "pt"})
    fh.write(head)
    if on_bytes:
        on_bytes(memoryview(head))

    unflushed = [0]

    def write_one(rec: TensorRecord, tensor: torch.Tensor) -> None:
        data = tensor_bytes(tensor)
        fh.write(data)
        unflushed[0] += len(data)
        if unflushed[0] >= _WRITEBACK_BYTES:  # let the disk work while the next tensors are produced
            fh.flush()
            _start_writeback(fh)
            unflushed[0] = 0
        rec.crc32 = zlib.crc32(data)
        if on_bytes:
            on_bytes(data)
        del data

    # Pull tensors one by one (not ``zip``: its reused result tuple would keep one more tensor alive).
    source = iter(tensors)
    count = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfexport-write") as pool:
        pending: Future[None] | None = None
        try:
            for rec in records:
                tensor = next(source, None)
                if tensor is None:
                    break
                count += 1
                if tensor.dtype != rec.dtype or tuple(tensor.shape) != rec.shape:
                    raise ValueError(
                        f"Tensor {rec.name!r} is {tensor.dtype} {tuple(tensor.shape)}, the header says "
                        f"{rec.dtype} {rec.shape}"
                    )
                if pending is not None:
                    pending.result()  # in order, and never more than one tensor waiting to be written
                pending = pool.submit(write_one, rec, tensor)
                del tensor
            if pending is not None:
                pending.result()
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
    if count != len(records) or next(source, None) is not None:
        raise ValueError(f"{len(records)} tensors announced, {count if count < len(records) else 'more'} given")


_WRITEBACK_BYTES = 64 << 20
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def _start_writeback(fh: BinaryIO) -> None:
    """Start (not wait for) the disk write of a file's dirty pages: Linux ``sync_file_range``, best effort.

    The final ``fsync`` then has little left to do: the disk writes overlap the conversion instead of following
    it. Elsewhere, or when the call fails, nothing happens (the ``fsync`` still makes the file durable).
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                func = libc.sync_file_range
                func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                func.restype = ctypes.c_int
                _sync_file_range = func
            except (OSError, AttributeError):
                pass
    if _sync_file_range:
        with contextlib.suppress(OSError, ValueError, ctypes.ArgumentError):  # e.g. no fileno(): nothing to start
            _sync_file_range(fh.fileno(), 0, 0, _SYNC_FILE_RANGE_WRITE)


def read_header(fh: BinaryIO) -> tuple[dict[str, Any], int]:
    """Read a safetensors header; returns ``(header, data_start)``. Raises ``ValueError`` when malformed."""
    raw = fh.read(8)
    if len(raw) != 8:
        raise ValueError("file shorter than a safetensors header")
    (size,) = struct.unpack("<Q", raw)
    if size > 100_000_000:
        raise ValueError(f"header length {size} is implausible")
    body = fh.read(size)
    if len(body) != size:
        raise ValueError("truncated header")
    return json.loads(body), 8 + size
