"""Streaming safetensors writer and a byte-level reader for verification.

``safetensors.torch.save_file`` needs every tensor in memory at once; hfexport writes a plan chunk by chunk
instead (the header only needs names, dtypes and shapes, which are known up front, so every tensor's place in
the file is known before any of it is produced). Each tensor is cut into chunks of about 8 MB along its first
dimension (a transposed weight is produced whole: its rows are the source's columns), and
:func:`hfexport.io.chunkio.write_shard` produces and writes them. Memory held: a few staging buffers, never a whole
model. The format written is the standard one (8-byte little-endian header length, JSON header padded with
spaces to 8 bytes, then the raw bytes). :func:`read_header` reads it back, as strictly as ``safetensors`` does,
for every verification.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from hfexport._util.text import short
from hfexport.errors import FileFormatError
from hfexport.io.chunkio import Chunk, WrittenFile, write_shard

__all__ = [
    "DTYPE_NAMES",
    "DTYPE_SIZES",
    "OutputTensor",
    "TensorRecord",
    "header_bytes",
    "read_header",
    "write_safetensors",
]

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

# The dtypes of the safetensors format that hfexport checks and torch loads (byte sizes); the sub-byte and
# ``*FNUZ``/``E8M0`` float8 types of recent safetensors releases are left out: a file using them is reported.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
MAX_HEADER_BYTES = 100_000_000  # the format's limit (safetensors' MAX_HEADER_SIZE)
_U64_MAX = (1 << 64) - 1
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})

CHUNK_BYTES = 8 << 20  # a chunk of a tensor: fits the caches of the checks that follow its production
WHOLE_MAX = 64 << 20  # tensors that prefer to be produced whole (transposes) are, up to this size


@dataclass
class OutputTensor:
    """One tensor to write: its header facts up front, its data produced on demand, in pieces.

    Attributes:
        name: The tensor's name in the file.
        dtype: Its dtype.
        shape: Its shape.
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
    fill: Callable[[torch.Tensor, int, int], None]
    whole: bool = False
    done: Callable[[], None] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class TensorRecord:
    """What was written for one tensor: enough to verify it later without holding it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    file: str = ""


def header_bytes(records: list[TensorRecord], metadata: dict[str, str]) -> bytes:
    """A safetensors header for ``records`` (in file order): the 8-byte length, then the JSON padded to 8 bytes."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for rec in records:
        header[rec.name] = {
            "dtype": DTYPE_NAMES[rec.dtype],
            "shape": list(rec.shape),
            "data_offsets": [offset, offset + rec.nbytes],
        }
        offset += rec.nbytes
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    path: str | Path,
    records: list[TensorRecord],
    tensors: Sequence[OutputTensor],
    *,
    metadata: dict[str, str] | None = None,
    io: str = "buffered",
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> WrittenFile:
    """Create a safetensors file whose tensors are produced chunk by chunk (see :mod:`hfexport.io.chunkio`).

    Args:
        path: The file to create (it must not exist).
        records: Name, dtype and shape of each tensor, in file order (``tensors``' order).
        tensors: How to produce each tensor.
        metadata: The header's ``__metadata__``; ``{"format": "pt"}`` by default.
        io: How the bytes reach the disk: ``"buffered"`` (default), ``"auto"`` or ``"direct"``
            (:func:`hfexport.io.chunkio.write_shard`).
        workers: Threads producing chunks in parallel (``1``: the calling thread only).
        on_progress: Called with the byte count of every tensor chunk written.

    Returns:
        The file's size and CRC-32.

    Raises:
        ValueError: ``records`` and ``tensors`` disagree.
    """
    if len(records) != len(tensors):
        raise ValueError(f"{len(records)} tensors announced, {len(tensors)} given")
    head = header_bytes(records, metadata or {"format": "pt"})
    chunks = [Chunk(0, torch.uint8, (len(head),), data=head)]
    offset = len(head)
    for rec, tensor in zip(records, tensors, strict=True):
        if tensor.dtype != rec.dtype or tuple(tensor.shape) != rec.shape:
            raise ValueError(
                f"Tensor {rec.name!r} is {tensor.dtype} {tuple(tensor.shape)}, the header says {rec.dtype} {rec.shape}"
            )
        pieces = _chunks(tensor, offset)
        if tensor.done is not None:
            _call_when_all_produced(pieces, tensor.done)
        chunks.extend(pieces)
        offset += tensor.nbytes
    return write_shard(path, chunks, io=io, workers=workers, on_progress=on_progress)


def _chunks(tensor: OutputTensor, offset: int) -> list[Chunk]:
    """The tensor's chunks, starting at file offset ``offset``."""
    shape = tuple(tensor.shape)
    nbytes = tensor.nbytes
    rows = shape[0] if shape else 1
    fill = tensor.fill
    if not shape or nbytes <= CHUNK_BYTES or rows <= 1 or (tensor.whole and nbytes <= WHOLE_MAX):
        return [Chunk(offset, tensor.dtype, shape, produce=_rows(fill, 0, rows))]
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
                produce=_rows(fill, start, stop),
            )
        )
        offset += (stop - start) * row_bytes
    return chunks


def _rows(fill: Callable[[torch.Tensor, int, int], None], start: int, stop: int) -> Callable[[torch.Tensor], None]:
    """A chunk's producer: ``fill`` of rows ``start:stop``."""
    return lambda out: fill(out, start, stop)


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


def read_header(fh: BinaryIO) -> tuple[dict[str, Any], int]:
    """Read a safetensors header and check it as strictly as ``safetensors`` does when it opens a file.

    The rules are those of the format (and of its reference implementation, ``SafeTensors::read_metadata``): an
    8-byte little-endian header length of at most 100 MB that fits in the file; a UTF-8 JSON object; an optional
    ``__metadata__`` mapping strings to strings; for every tensor a known ``dtype``, a ``shape`` of non-negative
    integers and ``data_offsets`` ``[begin, end]`` with ``end - begin`` = elements × item size (computed without
    overflowing 64 bits); the tensors, sorted by offsets, tile the data section from its first byte to the end
    of the file with no gap and no overlap. A few things ``safetensors`` tolerates are refused as well, because
    hfexport cannot vouch for them: dtypes outside :data:`DTYPE_SIZES`, duplicate JSON keys, fields other than
    ``dtype``/``shape``/``data_offsets`` in a tensor's entry.

    Args:
        fh: A binary file object positioned anywhere (it is read from offset 0; its size is found by seeking).

    Returns:
        ``(header, data_start)``: the parsed JSON object and the offset of the data section.

    Raises:
        FileFormatError: the file is not a valid safetensors file; the message says what is wrong.
    """
    fh.seek(0, os.SEEK_END)
    file_size = fh.tell()
    fh.seek(0)
    raw = fh.read(8)
    if len(raw) != 8:
        raise FileFormatError(f"{file_size} bytes: shorter than the 8-byte header length")
    (size,) = struct.unpack("<Q", raw)
    if size > MAX_HEADER_BYTES:
        raise FileFormatError(f"header length {size} exceeds the format's limit of {MAX_HEADER_BYTES} bytes")
    if 8 + size > file_size:
        raise FileFormatError(f"header length {size} runs past the end of the file ({file_size} bytes)")
    body = fh.read(size)
    if len(body) != size:
        raise FileFormatError("the header is truncated")
    try:
        header = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_int=_non_negative_int,
        )
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"the header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FileFormatError(f"the header is not valid JSON ({short(exc)})") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"the header is a JSON {type(header).__name__}, not an object")
    spans = []
    for name, entry in header.items():
        _check_text(name, "a tensor name")
        if name == "__metadata__":
            _check_metadata(entry)
        else:
            spans.append((*_check_entry(name, entry), name))
    position = 0
    for begin, end, nbytes, name in sorted(spans, key=lambda span: (span[0], span[1])):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else "leaves a gap before it"
            raise FileFormatError(
                f"tensor {name!r}: data_offsets [{begin}, {end}] {what} (expected to begin at {position})"
            )
        if end - begin != nbytes:
            raise FileFormatError(
                f"tensor {name!r}: data_offsets [{begin}, {end}] span {end - begin} bytes, "
                f"its dtype and shape need {nbytes}"
            )
        position = end
    if 8 + size + position != file_size:
        raise FileFormatError(
            f"the header describes {8 + size + position} bytes, the file has {file_size} "
            + ("(truncated?)" if file_size < 8 + size + position else "(trailing bytes)")
        )
    return header, 8 + size


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _non_negative_int(text: str) -> int | float:
    # Every integer of a header is a size or an offset: a negative one (even "-0", which Rust's JSON reads as a
    # float) is returned as a float, which the checks below refuse like any non-integer.
    return float(text) if text.startswith("-") else int(text)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FileFormatError(f"{what} {text!r} is not valid Unicode (an unpaired surrogate)") from None


def _check_metadata(metadata: Any) -> None:
    if metadata is None:  # safetensors reads `null` as no metadata
        return
    if not isinstance(metadata, dict):
        raise FileFormatError(f"__metadata__ is a JSON {type(metadata).__name__}, not an object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise FileFormatError(f"__metadata__[{key!r}] is {type(value).__name__}, not a string")
        _check_text(key, "the __metadata__ key")
        _check_text(value, f"__metadata__[{key!r}]")


def _u64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _U64_MAX


def _check_entry(name: str, entry: Any) -> tuple[int, int, int]:
    """``(begin, end, nbytes)`` of a tensor entry, or :class:`FileFormatError`."""
    if not isinstance(entry, dict):
        raise FileFormatError(f"tensor {name!r}: its entry is a JSON {type(entry).__name__}, not an object")
    if set(entry) != _ENTRY_FIELDS:
        missing, extra = sorted(_ENTRY_FIELDS - set(entry)), sorted(set(entry) - _ENTRY_FIELDS)
        raise FileFormatError(f"tensor {name!r}: fields missing {missing}, unexpected {extra}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise FileFormatError(f"tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_u64(d) for d in shape):
        raise FileFormatError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative 64-bit integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_u64(o) for o in offsets):
        raise FileFormatError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end] (non-negative integers)")
    begin, end = offsets
    if end < begin:
        raise FileFormatError(f"tensor {name!r}: data_offsets [{begin}, {end}] end before they begin")
    numel = 1
    for dim in shape:  # the overflow rule of safetensors: every partial product must fit in 64 bits
        numel *= dim
        if numel > _U64_MAX:
            raise FileFormatError(f"tensor {name!r}: shape {shape} overflows 64 bits")
    if numel * DTYPE_SIZES[dtype] * 8 > _U64_MAX:
        raise FileFormatError(f"tensor {name!r}: shape {shape} of {dtype} overflows 64 bits")
    return begin, end, numel * DTYPE_SIZES[dtype]
