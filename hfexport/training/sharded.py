"""Each rank's part of a distributed export: its local shards, cast and copied to the host, written in place.

Under FSDP2 (``fully_shard``) every parameter is a DTensor whose rows are spread over the ranks (``Shard(0)``).
Instead of gathering them to rank 0, every rank takes a :class:`LocalSnapshot` of the rows it holds (each cast on its
own device, then copied to host memory: the only part that stalls training) and writes them straight into the
final safetensors files (:func:`write_local`), at the byte ranges the :class:`~hfexport.io.layout.Layout` gives
them. The layout is a pure function of the plan, so every rank knows where each of its rows goes without asking:

* a plain tensor (and a kept range of rows: vocabulary trimming, one part of litgpt's fused ``qkv``): the rank's
  rows are one contiguous range of the output;
* Llama's q/k RoPE permutation reorders the rows of each head (interleaved pairs → halves): a rank's rows of one
  head become two runs of output rows, the even rows and the odd ones;
* GPT-2's Conv1D transpose: the rank's rows of the ``nn.Linear`` weight are a block of the output's columns, one
  short range in every output row (written one range at a time, from a transposed copy of the block).

The source tensors that are not sharded (plain tensors, zeros for a missing tensor) are written by rank 0 alone;
of replicated shards (HSDP), the replica whose coordinate is 0 on every replicated mesh dimension writes. Each
range's CRC-32 is taken from the buffer it is written from and folded into the rank's
:class:`~hfexport._util.checksum.SparseCrc` of its file; rank 0 combines every rank's into the file's CRC-32.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import torch

from hfexport._util.checksum import SparseCrc, crc32, crc32_file
from hfexport._util.fs import pwrite_all
from hfexport.convert import check_finite
from hfexport.families import ConversionPlan, TensorPlan
from hfexport.io.layout import FileLayout, Layout, Slot
from hfexport.io.safetensors import OutputTensor
from hfexport.io.staging import StagingBuffer

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

logger = logging.getLogger(__name__)

__all__ = [
    "HostPool",
    "LocalSnapshot",
    "Piece",
    "create_files",
    "header_contribution",
    "is_dtensor",
    "read_back",
    "row_share",
    "sharding_problem",
    "take_local_snapshot",
    "write_local",
]


def is_dtensor(t: Any) -> TypeGuard[DTensor]:
    """Whether ``t`` is a DTensor (FSDP2's parameters), without importing DTensor where it is absent."""
    return type(t).__name__ == "DTensor" or hasattr(t, "full_tensor")


def sharding_problem(plan: ConversionPlan) -> str | None:
    """Why this plan's DTensors cannot be written rank by rank (``None``: they can).

    Supported: every DTensor placed ``Shard(0)`` (what ``fully_shard`` makes) or ``Replicate()`` on each mesh
    dimension; anything else (a tensor-parallel ``Shard(1)``, a ``Partial`` sum, a strided shard) is gathered.
    """
    try:
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # noqa: F401
    except ImportError as exc:  # a torch without DTensor's helpers
        return f"this torch has no DTensor layout helpers ({exc})"
    for tp in plan.tensors:
        src = tp.source
        if src is None or not is_dtensor(src):
            continue
        for placement in src.placements:
            if not (type(placement) is Shard and placement.dim == 0) and not isinstance(placement, Replicate):
                return f"{tp.name} is placed {placement} (only Shard(0) and Replicate are written rank by rank)"
        if tp.transpose and tp.rope_heads is not None:
            return f"{tp.name} is both transposed and RoPE-permuted"
    return None


@dataclass
class Piece:
    """Rows of one output tensor that this rank writes, held in the source's layout, cast.

    Attributes:
        index: The tensor's position in the plan.
        first: The first of these rows, counted in the output's source rows (after any row selection: the
            output's row, or its column for a transposed tensor).
        rows: How many.
        host: The rows in the export dtype, on the host (``None``: the tensor is written as zeros).
        view: ``host``'s bytes (in the host buffer it lives in).
    """

    index: int
    first: int
    rows: int
    host: torch.Tensor | None
    view: memoryview | None = None  # ``host``'s bytes


@dataclass
class LocalSnapshot:
    """This rank's part of an export: the plan (every rank's is the same) and the pieces this rank writes."""

    plan: ConversionPlan
    dtype: torch.dtype
    pieces: list[Piece]
    nbytes: int = 0
    buffers: list[StagingBuffer] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Bytes of every output tensor (all ranks' rows), in the export dtype."""
        return sum(math.prod(tp.shape) * self.dtype.itemsize for tp in self.plan.tensors)

    def outputs(self) -> list[OutputTensor]:
        """Every output tensor's name, dtype and shape (what the layout is made of); never filled here."""
        return [OutputTensor(tp.name, self.dtype, tuple(tp.shape), fill=_not_here) for tp in self.plan.tensors]


def _not_here(out: torch.Tensor, start: int, stop: int) -> None:
    raise RuntimeError("a distributed export's tensors are written by each rank, not produced here")


class HostPool:
    """Host buffers of the last written local snapshot, reused by the next one (pages already resident)."""

    def __init__(self) -> None:
        self._spare: list[StagingBuffer] = []

    def take(self, nbytes: int) -> StagingBuffer:
        """A buffer of at least ``nbytes`` (a spare one of the smallest size that fits, else a new one)."""
        fits = [b for b in self._spare if len(b.view) >= nbytes]
        if fits:
            best = min(fits, key=lambda b: len(b.view))
            self._spare.remove(best)
            return best
        return StagingBuffer(nbytes)

    def give_back(self, snapshot: LocalSnapshot) -> None:
        """Keep ``snapshot``'s buffers (its version is written) for the next snapshot; empty the snapshot."""
        snapshot.pieces.clear()
        self.clear()
        self._spare, snapshot.buffers = snapshot.buffers, []

    def clear(self) -> None:
        """Unmap the spare buffers (each once, even when the writer's thread and ``close()`` both clear)."""
        spare, self._spare = self._spare, []
        for buffer in spare:
            buffer.close()


def _selection(tp: TensorPlan, source_rows: int) -> tuple[int, int]:
    """The source rows ``[a, b)`` the output is made of."""
    if tp.row_start is not None:
        rows = tp.shape[1] if tp.transpose else tp.shape[0]
        return tp.row_start, tp.row_start + rows
    if tp.rows is not None:
        return 0, tp.rows
    return 0, source_rows


def _local_rows(src: Any) -> tuple[int, int] | None:
    """The global rows ``[lo, hi)`` of this rank's shard of ``src``, or ``None`` when another replica writes them."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh = src.device_mesh
    coordinate = mesh.get_coordinate()
    if coordinate is None:  # not part of the mesh
        return None
    for dim, placement in enumerate(src.placements):
        if placement.is_replicate() and coordinate[dim] != 0:
            return None
    shape, offset = compute_local_shape_and_global_offset(src.shape, mesh, src.placements)
    return offset[0], offset[0] + shape[0]


#: ``held(source)``: the global rows ``[lo, hi)`` of ``source`` this rank holds and their tensor, or ``None``.
Held = Callable[[torch.Tensor], "tuple[tuple[int, int], torch.Tensor] | None"]


def take_local_snapshot(
    plan: ConversionPlan,
    dtype: torch.dtype,
    rank: int,
    pool: HostPool | None = None,
    *,
    held: Held | None = None,
) -> LocalSnapshot:
    """Copy the rows this rank writes to host memory in ``dtype`` (no collective: every rank takes its own).

    Each DTensor's local shard (only the rows the output uses) is cast on its device, then copied into a host
    buffer; rank 0 also copies the tensors that are not sharded. A source used by several outputs with the same
    rows is copied once.

    Args:
        plan: The plan over the live (sharded) tensors.
        dtype: The export dtype.
        rank: This rank (rank 0 writes what is not sharded).
        pool: Host buffers of the last written snapshot to reuse.
        held: Which rows of a source this rank holds (default: a DTensor's local shard; any other tensor whole,
            on rank 0 only). Tests split plain tensors with it, as any number of ranks would hold them.

    Raises:
        RuntimeError: a DTensor's local shard does not have the rows its placement says (never expected).
    """
    pool = pool if pool is not None else HostPool()
    snapshot = LocalSnapshot(plan, dtype, [])
    cache: dict[tuple[int, int, int], tuple[torch.Tensor, memoryview]] = {}
    with torch.no_grad():
        for index, tp in enumerate(plan.tensors):
            src = tp.source
            if src is None:
                if rank == 0:
                    rows = tp.shape[0] if tp.shape else 1
                    snapshot.pieces.append(Piece(index, 0, rows, None))
                continue
            if src.dim() == 0:  # a scalar: rank 0 writes it whole
                if rank == 0:
                    local = src.to_local() if is_dtensor(src) else src
                    snapshot.pieces.append(Piece(index, 0, 1, *_to_host(local.detach(), dtype, snapshot, pool)))
                continue
            a, b = _selection(tp, src.shape[0])
            mine = held(src) if held is not None else _held(src, rank, tp.name)
            if mine is None:
                continue
            (first, last), local = mine
            lo, hi = max(first, a), min(last, b)
            if lo >= hi:
                continue  # an uneven shard with no row of this output
            key = (id(src), lo, hi)
            if key not in cache:
                cache[key] = _to_host(local.detach()[lo - first : hi - first], dtype, snapshot, pool)
            snapshot.pieces.append(Piece(index, lo - a, hi - lo, *cache[key]))
    return snapshot


def row_share(rank: int, world: int) -> Held:
    """``held`` for weights that are whole on every rank (DDP): ``rank`` takes the ``torch.chunk`` share of every
    tensor's rows (``ceil(rows / world)`` each; the last ranks fewer, or none)."""

    def held(src: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
        size = -(-src.shape[0] // world)
        lo, hi = min(src.shape[0], rank * size), min(src.shape[0], (rank + 1) * size)
        return (lo, hi), src[lo:hi]

    return held


def _held(src: torch.Tensor, rank: int, name: str) -> tuple[tuple[int, int], torch.Tensor] | None:
    """The rows of ``src`` this rank holds: a DTensor's local shard, any other tensor whole on rank 0."""
    if not is_dtensor(src):
        return ((0, src.shape[0]), src) if rank == 0 else None
    rows = _local_rows(src)
    if rows is None:
        return None
    local = src.to_local()
    if local.shape[0] != rows[1] - rows[0]:
        raise RuntimeError(f"{name}: the local shard has {local.shape[0]} rows, its placement says {rows[1] - rows[0]}")
    return rows, local


def _to_host(
    local: torch.Tensor, dtype: torch.dtype, snapshot: LocalSnapshot, pool: HostPool
) -> tuple[torch.Tensor, memoryview]:
    """``local`` cast to ``dtype`` (on its own device: half the bytes cross to the host for bf16), in a host buffer;
    with the buffer's bytes."""
    nbytes = local.numel() * dtype.itemsize
    buffer = pool.take(nbytes)
    snapshot.buffers.append(buffer)
    snapshot.nbytes += nbytes
    host = buffer.tensor[:nbytes].view(dtype).view(local.shape)
    if local.device.type == "cpu":
        host.copy_(local)
    else:
        host.copy_(local.to(dtype))
    return host, buffer.view[:nbytes]


def create_files(tmp: Path, layout: Layout) -> None:
    """Create every weights file of ``layout`` in ``tmp`` at its final size, its header written (rank 0, before
    the other ranks open them); the data sections are filled by the ranks."""
    for file in layout.files:
        fd = os.open(tmp / file.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            pwrite_all(fd, memoryview(file.header), 0)
            os.ftruncate(fd, file.size)
        finally:
            os.close(fd)


def header_contribution(file: FileLayout) -> int:
    """What the header (written by :func:`create_files`) contributes to the file's CRC-32."""
    part = SparseCrc()
    part.add(0, crc32(file.header), len(file.header))
    return part.value(file.size)


def write_local(tmp: Path, layout: Layout, snapshot: LocalSnapshot, *, allow_nonfinite: bool = False) -> dict[str, int]:
    """Write this rank's pieces into the files :func:`create_files` made, fsync them; return, per file, what the
    ranges written contribute to its CRC-32 (:class:`~hfexport._util.checksum.SparseCrc`).

    Raises:
        ConversionError: a piece holds NaN/inf (unless ``allow_nonfinite``).
        OSError: a write failed (disk full, the file is gone).
    """
    plan = snapshot.plan
    by_file: dict[str, list[Piece]] = {}
    for piece in snapshot.pieces:
        by_file.setdefault(layout.slots[plan.tensors[piece.index].name].file, []).append(piece)
    out: dict[str, int] = {}
    scratch = _Scratch()
    try:
        for file in layout.files:
            if file.name in by_file:
                out[file.name] = _write_file(
                    tmp / file.name, file, by_file[file.name], layout, snapshot, scratch, allow_nonfinite
                )
    finally:
        scratch.close()
    return out


def read_back(tmp: Path, layout: Layout, rank: int, world: int) -> dict[str, int]:
    """What this rank's slice of every weights file, read back through the file system, contributes to its CRC-32.

    The ranks cut every file into ``world`` equal byte ranges, whoever wrote them, so each byte is read once, by a
    rank that (past rank 0's node) usually did not write it: the combined CRC-32 of what the file system returns
    must equal the one combined from what the ranks wrote, else a write was lost or two ranks' writes to one page
    clobbered each other. Reads through one 8 MB buffer (:func:`~hfexport._util.checksum.crc32_file`).

    Raises:
        OSError: a file cannot be read, or is shorter than its layout.
    """
    out: dict[str, int] = {}
    for file in layout.files:
        lo, hi = file.size * rank // world, file.size * (rank + 1) // world
        part = SparseCrc()
        if hi > lo:
            part.add(lo, crc32_file(tmp / file.name, start=lo, stop=hi), hi - lo)
        out[file.name] = part.value(file.size)
    return out


def _write_file(
    path: Path,
    file: FileLayout,
    pieces: list[Piece],
    layout: Layout,
    snapshot: LocalSnapshot,
    scratch: _Scratch,
    allow_nonfinite: bool,
) -> int:
    """Write ``pieces`` into ``path`` (one of ``layout``'s files), fsync it; return their CRC-32 contribution."""
    plan = snapshot.plan
    part = SparseCrc()
    fd = os.open(path, os.O_WRONLY)
    try:
        for piece in sorted(pieces, key=lambda p: (layout.slots[plan.tensors[p.index].name].start, p.first)):
            tp = plan.tensors[piece.index]
            if piece.host is not None:
                check_finite(tp.name, piece.host, snapshot.dtype, allow_nonfinite, source=None)
            for offset, view in _ranges(tp, layout.slots[tp.name], piece, scratch):
                part.add(offset, crc32(view), len(view))
                pwrite_all(fd, view, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return part.value(file.size)


class _Scratch:
    """One host buffer, grown on demand, that the ranges needing a copy (a transposed block, RoPE runs, zeros)
    are assembled in before they are written."""

    def __init__(self) -> None:
        self.buffer: StagingBuffer | None = None

    def take(self, nbytes: int) -> StagingBuffer:
        if self.buffer is None or len(self.buffer.view) < nbytes:
            self.close()
            self.buffer = StagingBuffer(nbytes)
        return self.buffer

    def close(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None


def _ranges(tp: TensorPlan, slot: Slot, piece: Piece, scratch: _Scratch) -> Iterator[tuple[int, memoryview]]:
    """``(file offset, bytes)`` of every range ``piece`` fills, in ascending offset order (the bytes may live in
    ``scratch``: each range is written before the next is made)."""
    itemsize = slot.dtype.itemsize
    if piece.host is None:  # zeros: the whole tensor, in bands of at most 8 MB
        rows = slot.shape[0] if slot.shape else 1
        step = max(1, (8 << 20) // max(1, slot.row_bytes))
        band = scratch.take(min(rows, step) * slot.row_bytes)
        band.tensor.zero_()
        for r in range(0, rows, step):
            yield slot.start + r * slot.row_bytes, band.view[: min(step, rows - r) * slot.row_bytes]
        return
    host = piece.host
    if tp.transpose:  # a block of the output's columns: one short range in every output row
        columns, rows, width = slot.shape[1], host.shape[1], host.shape[0]
        stride = width * itemsize
        block = scratch.take(rows * stride)
        block.tensor[: rows * stride].view(slot.dtype).view(rows, width).copy_(host.t())
        if width == columns:  # every column: the block is the whole tensor, one range
            yield slot.start + piece.first * itemsize, block.view[: rows * stride]
            return
        for r in range(rows):
            yield slot.start + (r * columns + piece.first) * itemsize, block.view[r * stride : (r + 1) * stride]
        return
    if tp.rope_heads is not None:  # interleaved rotary pairs → halves, head by head: even rows, then odd rows
        head_dim = slot.shape[0] // tp.rope_heads
        half = head_dim // 2
        stop = piece.first + piece.rows
        for head in range(piece.first // head_dim, (stop - 1) // head_dim + 1):
            base = head * head_dim
            k0, k1 = max(piece.first, base) - base, min(stop, base + head_dim) - base
            for parity in (0, 1):
                k = k0 + ((parity - k0) % 2)  # the first in-head row of this parity
                if k >= k1:
                    continue
                rows_t = host[base + k - piece.first : base + k1 - piece.first : 2]
                n = rows_t.shape[0] * slot.row_bytes
                run = scratch.take(n)
                run.tensor[:n].view(slot.dtype).view(rows_t.shape).copy_(rows_t)
                yield slot.start + (base + parity * half + k // 2) * slot.row_bytes, run.view[:n]
        return
    assert piece.view is not None
    yield slot.start + piece.first * slot.row_bytes, piece.view
