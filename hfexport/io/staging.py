"""Staging memory: where a chunk of a file is produced before it is written (plain or direct I/O).

A chunk is produced at its file offset modulo :data:`ALIGN` in a page-aligned buffer, so that the direct-I/O writer
(:mod:`hfexport.io.directio`) can send its whole blocks with ``O_DIRECT``; :mod:`hfexport.io.chunkio` fills the
buffers and
both writers read them.
"""

from __future__ import annotations

import contextlib
import mmap

import torch

__all__ = ["ALIGN", "StagingBuffer"]

ALIGN = 4096  # chunks are produced at their file offset modulo this, so direct I/O can write their whole blocks


class StagingBuffer:
    """Page-aligned anonymous memory, seen as a ``memoryview`` and as a ``torch.uint8`` tensor."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, max(size, ALIGN))
        self.view = memoryview(self.map)
        self.tensor = torch.frombuffer(self.map, dtype=torch.uint8)

    def close(self) -> None:
        del self.tensor
        with contextlib.suppress(BufferError):  # a view still exported somewhere: the GC unmaps it later
            self.view.release()
            self.map.close()
