"""CRC-32 (zlib's, the checksum of zip and gzip) as the manifest records it: combined from pieces, or of a file.

The writer computes the CRC-32 of every chunk in the thread that produced it, while its bytes are still in the
CPU cache, and combines them in file order (:func:`crc32_combine`) into the file's CRC-32, without a second pass
over the data (:func:`hfexport.io.chunkio.write_shard`); :func:`crc32_file` reads a file back to compute it again
(small files, verification).

:func:`crc32` is zlib's CRC-32 (same polynomial, same values), computed by ISA-L (the ``isal`` package) where it
is installed: about 10x faster than Python's ``zlib.crc32`` on x86-64 with PCLMULQDQ (``benchmarks/README.md``);
without it, ``zlib.crc32``.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterable
from functools import lru_cache

logger = logging.getLogger(__name__)

__all__ = ["SparseCrc", "crc32", "crc32_combine", "crc32_file", "crc32_of_sparse", "crc32_zeros"]


def _fastest_crc32() -> Callable[..., int]:
    try:
        from isal.isal_zlib import crc32 as isal_crc32
    except ImportError:  # not installed (a platform without its wheels): zlib's, ~10x slower
        return zlib.crc32
    if isal_crc32(b"123456789") != zlib.crc32(b"123456789"):  # the CRC-32 check value; never expected to differ
        logger.warning("isal's crc32 disagrees with zlib's: using zlib's")
        return zlib.crc32
    return isal_crc32


#: ``crc32(data, value=0)``: zlib's CRC-32 of ``data`` continuing from ``value`` (ISA-L's where installed).
crc32: Callable[..., int] = _fastest_crc32()

_POLY = 0xEDB88320  # the CRC-32 polynomial, reflected (zlib's bit order)


def _multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the polynomial (both reflected: bit 31 is ``x^0``)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()  # _X2N[k] = x^(2^k) modulo the polynomial


def _x8nmodp(n: int) -> int:
    """``x^(8n)`` modulo the polynomial: the shift that appending ``n`` bytes applies to a CRC."""
    p = 1 << 31  # x^0
    k = 3  # 8n = n * 2^3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``: zlib's ``crc32_combine``.

    Python's ``zlib`` module lacks it. This is zlib's (1.2.12+) algorithm: a few dozen integer operations per call,
    whatever the lengths.

    Example:
        >>> crc32_combine(zlib.crc32(b"hello "), zlib.crc32(b"world"), 5) == zlib.crc32(b"hello world")
        True

    Raises:
        ValueError: ``len2`` is negative.
    """
    if len2 < 0:
        raise ValueError(f"len2 must be >= 0, not {len2}")
    return _multmodp(_x8nmodp(len2), crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


@lru_cache(maxsize=1024)
def _shift_tables(n: int) -> tuple[list[int], ...]:
    """Byte tables of the linear map ``v -> v * x^(8n)`` (a CRC moved ``n`` bytes on): ``T[k][b]`` is the image of
    byte ``b`` at byte position ``k``. Built from the images of the 32 single bits (32 multiplications); the ranges
    of a distributed export repeat a few gaps many times (one per row of a transposed weight)."""
    p = _x8nmodp(n)
    basis = [_multmodp(p, 1 << i) for i in range(32)]
    tables = []
    for k in range(4):
        table = [0] * 256
        for b in range(1, 256):
            low = b & -b
            table[b] = table[b ^ low] ^ basis[8 * k + low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


def _shifted(value: int, n: int) -> int:
    """``value * x^(8n)`` modulo the polynomial: the CRC ``value`` moved ``n`` bytes on."""
    t0, t1, t2, t3 = _shift_tables(n)
    return t0[value & 255] ^ t1[(value >> 8) & 255] ^ t2[(value >> 16) & 255] ^ t3[value >> 24]


@lru_cache(maxsize=4096)
def crc32_zeros(n: int) -> int:
    """The CRC-32 of ``n`` zero bytes (without touching ``n`` bytes).

    Example:
        >>> crc32_zeros(1000) == zlib.crc32(bytes(1000))
        True
    """
    return _multmodp(_x8nmodp(n), 0xFFFFFFFF) ^ 0xFFFFFFFF


class SparseCrc:
    """What the byte ranges one writer put into a file contribute to the file's CRC-32.

    The ranks of a distributed export each write some byte ranges of a file (its tensors' rows), each range's
    CRC-32 taken from the buffer it was written from. The CRC-32 is affine: the file's is the XOR of what each
    writer's ranges contribute (each range in place, every other byte taken as zero) and a constant that depends
    only on the file's size (:func:`crc32_of_sparse`). A writer adds its ranges in ascending offset order
    (:meth:`add`), a few integer operations each, whatever their lengths; :meth:`value` is its contribution.

    Example:
        >>> data = bytes(range(256)) * 4
        >>> a, b = SparseCrc(), SparseCrc()
        >>> a.add(0, zlib.crc32(data[:100]), 100); a.add(600, zlib.crc32(data[600:]), 424)
        >>> b.add(100, zlib.crc32(data[100:600]), 500)
        >>> crc32_of_sparse([a.value(1024), b.value(1024)], 1024) == zlib.crc32(data)
        True
    """

    def __init__(self) -> None:
        self._raw = 0  # the linear part of the CRC of everything added so far, up to ``_end``
        self._end = 0

    def add(self, offset: int, crc: int, length: int) -> None:
        """Add the range ``[offset, offset + length)`` whose bytes have CRC-32 ``crc``.

        Raises:
            ValueError: the range starts before the end of the range added last (ranges go in ascending order).
        """
        if offset < self._end or length < 0:
            raise ValueError(f"range [{offset}, {offset + length}) added after one ending at {self._end}")
        if not length:
            return
        raw = (crc ^ crc32_zeros(length)) & 0xFFFFFFFF  # the range's linear part
        if self._raw:
            raw ^= _shifted(self._raw, offset + length - self._end)
        self._raw, self._end = raw, offset + length

    def value(self, size: int) -> int:
        """The contribution to the CRC-32 of a file of ``size`` bytes (``size`` >= the end of every range)."""
        if size < self._end:
            raise ValueError(f"a file of {size} bytes cannot hold a range ending at {self._end}")
        return _shifted(self._raw, size - self._end) if self._raw and size > self._end else self._raw


def crc32_of_sparse(contributions: Iterable[int], size: int) -> int:
    """The CRC-32 of a file of ``size`` bytes from every writer's :meth:`SparseCrc.value` (the writers' ranges
    tile the file: no byte written twice, none left out)."""
    raw = 0
    for value in contributions:
        raw ^= value
    return raw ^ crc32_zeros(size)


def crc32_file(path: str | os.PathLike[str], chunk: int = 8 << 20, *, start: int = 0, stop: int | None = None) -> int:
    """The CRC-32 of a file's contents (bytes ``start:stop``; ``stop=None``: to the end), read ``chunk`` bytes at a
    time through one reused buffer.

    Raises:
        OSError: the file cannot be read, or ends before ``stop``.
    """
    crc, position = 0, start
    buffer = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        while stop is None or position < stop:
            n = fh.readinto(buffer if stop is None else buffer[: min(chunk, stop - position)])
            if not n:
                if stop is not None:
                    raise OSError(f"{os.fspath(path)} ends at byte {position}, before byte {stop}")
                break
            crc = crc32(buffer[:n], crc)
            position += n
    return crc
