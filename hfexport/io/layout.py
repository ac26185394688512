"""Where every tensor of an export goes: its file and its byte range, decided before a byte is written.

The layout of a Hugging Face directory's weights is a pure function of the output tensors' names, dtypes and
shapes (in file order) and the shard size: which ``model-XXXXX-of-YYYYY.safetensors`` file each tensor lands in,
each file's header (hence where its data section starts) and each tensor's offset in it, and the index
``model.safetensors.index.json``. The single-process writer (:mod:`hfexport.io.directory`) and the per-rank writer
of a distributed export both take it from :func:`plan_layout`, so that every rank of a distributed export computes
the same layout without talking to the others, and their files are byte-identical to a single-process export's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hfexport._util.jsonio import dumps as json_dumps
from hfexport.io.names import INDEX_FILE, SINGLE_FILE
from hfexport.io.safetensors import TensorRecord, header_bytes

__all__ = ["FileLayout", "Layout", "Slot", "plan_layout", "shard_names"]


@dataclass(frozen=True)
class Slot:
    """One tensor's place: its file and the absolute byte range of its data in that file.

    Attributes:
        name: The tensor's name.
        dtype: Its dtype.
        shape: Its shape.
        file: The file's name.
        start: Where its data begins in the file (the header included).
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: str
    start: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one row along the first dimension (the whole tensor for a 0-d one)."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize if self.shape else self.dtype.itemsize


@dataclass(frozen=True)
class FileLayout:
    """One safetensors file: its header bytes (length prefix included), size and tensors in file order."""

    name: str
    header: bytes
    size: int
    records: tuple[TensorRecord, ...]


@dataclass(frozen=True)
class Layout:
    """Every file of an export's weights, every tensor's slot, and the index (``None`` for a single file)."""

    files: tuple[FileLayout, ...]
    slots: dict[str, Slot]
    index: bytes | None

    @property
    def tensor_bytes(self) -> int:
        return sum(slot.nbytes for slot in self.slots.values())


def shard_names(count: int) -> list[str]:
    """The file names of ``count`` shards (``model.safetensors`` alone)."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def plan_layout(
    tensors: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    max_shard_bytes: int,
    metadata: dict[str, str] | None = None,
) -> Layout:
    """The layout of ``tensors`` (name, dtype, shape; in file order) split into shards of at most
    ``max_shard_bytes`` bytes of data (a larger tensor gets a shard of its own).

    Raises:
        ValueError: duplicate tensor names.
    """
    names = [name for name, _, _ in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in the output")
    groups: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
    size = 0
    for entry in tensors:
        nbytes = math.prod(entry[2]) * entry[1].itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += nbytes
    files = []
    slots: dict[str, Slot] = {}
    for fname, group in zip(shard_names(len(groups)), groups, strict=True):
        records = tuple(
            TensorRecord(name, dtype, tuple(shape), math.prod(shape) * dtype.itemsize, file=fname)
            for name, dtype, shape in group
        )
        head = header_bytes(list(records), metadata or {"format": "pt"})
        offset = len(head)
        for rec in records:
            slots[rec.name] = Slot(rec.name, rec.dtype, rec.shape, fname, offset)
            offset += rec.nbytes
        files.append(FileLayout(fname, head, offset, records))
    index = None
    if len(files) > 1:
        total = sum(slot.nbytes for slot in slots.values())
        weight_map = dict(sorted((name, slot.file) for name, slot in slots.items()))
        body = {"metadata": {"total_size": total}, "weight_map": weight_map}
        index = (json_dumps(body, name=INDEX_FILE, indent=2) + "\n").encode()
    return Layout(tuple(files), slots, index)
