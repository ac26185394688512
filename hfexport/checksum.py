"""The CRC-32 of a file on disk (zlib's, the checksum of zip and gzip), as the manifest records it.

The writer computes the CRC-32 of the weights as it writes them (:func:`hfexport.chunkio.write_shard`); this
reads a file back to compute it again (small files, verification).
"""

from __future__ import annotations

import os
import zlib

__all__ = ["crc32_file"]


def crc32_file(path: str | os.PathLike[str], chunk: int = 8 << 20) -> int:
    """The CRC-32 of a file's contents, read ``chunk`` bytes at a time through one reused buffer."""
    crc = 0
    buffer = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            crc = zlib.crc32(buffer[:n], crc)
    return crc
