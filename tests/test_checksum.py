"""The CRC-32 the manifest records: of a buffer (ISA-L's where installed), of pieces combined, of a file."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from hfexport._util import checksum
from hfexport._util.checksum import crc32, crc32_combine, crc32_file


@pytest.mark.parametrize("size", [0, 1, 15, 16, 63, 64, 255, 4096 + 7, (1 << 20) + 3])
def test_crc32_equals_zlibs_at_every_size_and_continuation(size: int) -> None:
    data = memoryview(os.urandom(size))
    assert crc32(data) == zlib.crc32(data)
    assert crc32(data, 0xDEADBEEF) == zlib.crc32(data, 0xDEADBEEF)  # continuing a running CRC, as crc32_file does
    assert crc32(data[size // 3 :], crc32(data[: size // 3])) == zlib.crc32(data)


def test_the_accelerated_crc32_is_the_one_used_where_isal_is_installed() -> None:
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    assert checksum.crc32 is isal_zlib.crc32


def test_crc32_file(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # three whole buffers and a partial one
    (tmp_path / "f").write_bytes(data)
    assert crc32_file(tmp_path / "f", chunk=1 << 20) == zlib.crc32(data)
    (tmp_path / "empty").write_bytes(b"")
    assert crc32_file(tmp_path / "empty") == 0


@pytest.mark.parametrize(
    ("len1", "len2"), [(0, 0), (0, 5), (5, 0), (1, 1), (3, 4096), (4097, 1), (65536 + 3, 1000 + 7), (17, 1 << 20)]
)
def test_crc32_combine_equals_the_crc_of_the_concatenation(len1: int, len2: int) -> None:
    a, b = os.urandom(len1), os.urandom(len2)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == zlib.crc32(a + b)


def test_crc32_combine_over_many_pieces_in_order() -> None:
    pieces = [os.urandom(n) for n in (0, 1, 7, 4096, 100_003, 0, 513)]
    crc = 0
    for piece in pieces:
        crc = crc32_combine(crc, zlib.crc32(piece), len(piece))
    assert crc == zlib.crc32(b"".join(pieces))
    assert crc32_combine(zlib.crc32(pieces[3]), zlib.crc32(pieces[4]), len(pieces[4])) != crc32_combine(
        zlib.crc32(pieces[4]), zlib.crc32(pieces[3]), len(pieces[3])
    )  # the order matters: this is not an XOR of the pieces' checksums


def test_crc32_combine_rejects_a_negative_length() -> None:
    with pytest.raises(ValueError, match="len2"):
        crc32_combine(0, 0, -1)


def test_sparse_crcs_of_interleaved_ranges_combine_into_the_files() -> None:
    """Ranges written by several writers in any interleaving (a transposed block: one short range per row) give
    the file's CRC-32; a range added out of order, or a size short of the ranges, is refused."""
    import itertools
    import random
    import zlib

    from hfexport._util.checksum import SparseCrc, crc32_of_sparse, crc32_zeros

    rng = random.Random(0)
    for _ in range(100):
        size = rng.randint(0, 5000)
        data = rng.randbytes(size)
        cuts = sorted({0, size, *(rng.randint(0, size) for _ in range(rng.randint(0, 30)))})
        writers = [SparseCrc() for _ in range(rng.randint(1, 5))]
        for lo, hi in itertools.pairwise(cuts):
            rng.choice(writers).add(lo, zlib.crc32(data[lo:hi]), hi - lo)
        assert crc32_of_sparse([w.value(size) for w in writers], size) == zlib.crc32(data)
    assert all(crc32_zeros(n) == zlib.crc32(bytes(n)) for n in (0, 1, 7, 4096, 123457))
    part = SparseCrc()
    part.add(10, 0, 5)
    with pytest.raises(ValueError, match="added after one ending at 15"):
        part.add(12, 0, 1)
    with pytest.raises(ValueError, match="cannot hold a range ending at 15"):
        part.value(14)
