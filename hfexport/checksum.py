"""CRC-32 helpers: the checksum of a file from the checksums of its pieces, and of a file on disk.

The writer computes a CRC-32 (zlib's, the one of zip and gzip) of every chunk it writes while the bytes are
still in the CPU cache; the manifest's per-file checksum is then combined from those chunk checksums in file
order, without a second pass over the data. :func:`crc32_combine` is zlib's ``crc32_combine`` (absent from
Python's ``zlib`` module), in the polynomial form zlib 1.2.12+ uses: a few dozen integer operations per
call, whatever the lengths.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterable

logger = logging.getLogger(__name__)

__all__ = ["crc32_combine", "crc32_concat", "crc32_file"]

_POLY = 0xEDB88320  # reflected CRC-32 polynomial


def _multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial (reflected bit order)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x2n_table()  # x^(2^k) modulo the polynomial


def _x2nmodp(n: int, k: int) -> int:
    """``x^(n * 2^k)`` modulo the polynomial."""
    p = 1 << 31  # x^0
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``.

    Example:
        >>> crc32_combine(zlib.crc32(b"hello "), zlib.crc32(b"world"), 5) == zlib.crc32(b"hello world")
        True
    """
    if len2 < 0:
        raise ValueError("len2 must be >= 0")
    return _multmodp(_x2nmodp(len2, 3), crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


def crc32_concat(parts: Iterable[tuple[int, int]]) -> int:
    """The CRC-32 of consecutive pieces given as ``(crc32, length)`` pairs, in order."""
    crc = 0
    for part_crc, length in parts:
        crc = crc32_combine(crc, part_crc, length)
    return crc


def crc32_file(path: str | os.PathLike[str], chunk: int = 8 << 20) -> int:
    """The CRC-32 of a file's contents, read ``chunk`` bytes at a time through one reused buffer."""
    crc = 0
    buffer = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            crc = zlib.crc32(buffer[:n], crc)
    return crc
