"""Streaming safetensors writer and a byte-level reader for verification.

``safetensors.torch.save_file`` needs every tensor in memory at once; hfexport writes a plan chunk by chunk
instead (the header only needs names, dtypes and shapes, which are known up front, so every tensor's place in
the file is known before any of it is produced). Each tensor is cut into chunks of about 8 MB along its first
dimension (a transposed weight is produced whole: its rows are the source's columns), and
:func:`hfexport.chunkio.write_chunks` produces, writes and checks the chunks with one or more worker threads.
Memory held: a staging buffer and a read-back buffer per worker, never a whole model. The format written is the
standard one (8-byte little-endian header length, JSON header padded with spaces to 8 bytes, then the raw
bytes) and is read back by ``safetensors.safe_open`` during verification.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .checksum import crc32_concat
from .chunkio import Chunk, ChunkedFile, write_chunks

logger = logging.getLogger(__name__)

__all__ = ["DTYPE_NAMES", "OutputTensor", "TensorRecord", "read_header", "tensor_bytes", "write_safetensors"]

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

CHUNK_BYTES = 8 << 20  # a chunk of a tensor: fits the caches of the checks that follow its production
WHOLE_MAX = 64 << 20  # tensors that prefer to be produced whole (transposes) are, up to this size


@dataclass
class OutputTensor:
    """One tensor to write: its header facts up front, its data produced on demand, in pieces.

    Give ``fill`` (preferred) or ``get``.

    Attributes:
        name: The tensor's name in the file.
        dtype: Its dtype.
        shape: Its shape.
        get: Returns the whole tensor (contiguous, CPU, ``dtype`` and ``shape``).
        fill: ``fill(out, start, stop)`` writes rows ``start:stop`` (along the first dimension) into ``out``, a
            contiguous CPU tensor of ``dtype`` and shape ``(stop - start, *shape[1:])`` (for a 0-d tensor:
            shape ``()``, rows ``0:1``). May be called from several threads at once, for different rows.
        whole: Prefer one call for the whole tensor (e.g. a transpose, whose output rows are strided columns of
            its source) as long as it is at most ``WHOLE_MAX`` bytes.
        done: Called once every row has been produced (e.g. to release the source's memory).
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    get: Callable[[], torch.Tensor] | None = None
    fill: Callable[[torch.Tensor, int, int], None] | None = None
    whole: bool = False
    done: Callable[[], None] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def materialize(self) -> torch.Tensor:
        """The whole tensor, as a new contiguous CPU tensor (what the writer streams, in one piece)."""
        if self.fill is None:
            assert self.get is not None, f"OutputTensor {self.name!r} has neither fill nor get"
            return self.get()
        out = torch.empty(self.shape, dtype=self.dtype)
        self.fill(out, 0, self.shape[0] if self.shape else 1)
        return out


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
    path: str | Path,
    records: list[TensorRecord],
    tensors: Sequence[OutputTensor],
    *,
    metadata: dict[str, str] | None = None,
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> ChunkedFile:
    """Create a safetensors file whose tensors are produced chunk by chunk (see :mod:`hfexport.chunkio`).

    Args:
        path: The file to create (it must not exist).
        records: Name, dtype and shape of each tensor, in file order (``tensors``' order). Their ``crc32`` is
            filled in.
        tensors: How to produce each tensor.
        metadata: The header's ``__metadata__``; ``{"format": "pt"}`` by default.
        workers: Threads producing and writing chunks in parallel (``1``: the calling thread only).
        on_progress: Called with the byte count of every tensor chunk written and checked.

    Returns:
        The file's size and CRC-32.

    Raises:
        ValueError: ``records`` and ``tensors`` disagree, or a ``get`` returned the wrong dtype or shape.
    """
    if len(records) != len(tensors):
        raise ValueError(f"{len(records)} tensors announced, {len(tensors)} given")
    head = _header(records, metadata or {"format": "pt"})
    chunks = [Chunk(0, torch.uint8, (len(head),), data=head)]
    owners = [-1]
    offset = len(head)
    for i, (rec, tensor) in enumerate(zip(records, tensors, strict=True)):
        if tensor.dtype != rec.dtype or tuple(tensor.shape) != rec.shape:
            raise ValueError(
                f"Tensor {rec.name!r} is {tensor.dtype} {tuple(tensor.shape)}, the header says {rec.dtype} {rec.shape}"
            )
        pieces = _chunks(tensor, offset)
        if tensor.done is not None:
            _call_when_all_produced(pieces, tensor.done)
        for chunk in pieces:
            chunks.append(chunk)
            owners.append(i)
            offset += chunk.nbytes
    result = write_chunks(path, chunks, workers=workers, on_progress=on_progress)
    for i, rec in enumerate(records):
        rec.crc32 = crc32_concat(
            (crc, ch.nbytes) for crc, ch, owner in zip(result.chunk_crc32, chunks, owners, strict=True) if owner == i
        )
    return result


def _chunks(tensor: OutputTensor, offset: int) -> list[Chunk]:
    """The tensor's chunks, starting at file offset ``offset``."""
    shape = tuple(tensor.shape)
    nbytes = tensor.nbytes
    rows = shape[0] if shape else 1
    if tensor.fill is None:
        return [Chunk(offset, tensor.dtype, shape, produce=_from_get(tensor))]
    fill = tensor.fill
    if not shape or nbytes <= CHUNK_BYTES or rows <= 1 or (tensor.whole and nbytes <= WHOLE_MAX):
        return [Chunk(offset, tensor.dtype, shape, produce=lambda out: fill(out, 0, rows))]
    row_bytes = nbytes // rows
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    chunks = []
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chunks.append(
            Chunk(
                offset,
                tensor.dtype,
                (stop - start, *shape[1:]),
                produce=lambda out, start=start, stop=stop: fill(out, start, stop),
            )
        )
        offset += (stop - start) * row_bytes
    return chunks


def _call_when_all_produced(chunks: list[Chunk], done: Callable[[], None]) -> None:
    """Wrap the chunks' producers so that ``done`` runs after the last of them (from whichever thread)."""
    left = [len(chunks)]
    lock = threading.Lock()
    for chunk in chunks:
        produce = chunk.produce
        assert produce is not None

        def counted(out: torch.Tensor, produce: Callable[[torch.Tensor], None] = produce) -> None:
            produce(out)
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                done()

        chunk.produce = counted


def _from_get(tensor: OutputTensor) -> Callable[[torch.Tensor], None]:
    assert tensor.get is not None, f"OutputTensor {tensor.name!r} has neither fill nor get"
    get = tensor.get

    def produce(out: torch.Tensor) -> None:
        value = get()
        if value.dtype != tensor.dtype or tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(
                f"Tensor {tensor.name!r} is {value.dtype} {tuple(value.shape)}, the header says "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )
        out.copy_(value)

    return produce


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
