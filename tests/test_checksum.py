"""CRC-32 combination (zlib's crc32_combine, which Python's zlib lacks) and file checksums."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest

from hfexport.checksum import crc32_combine, crc32_concat, crc32_file


def test_combine_equals_crc_of_the_concatenation() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = rng.randbytes(rng.choice([0, 1, 7, 100, 4096, 70001]))
        b = rng.randbytes(rng.choice([0, 1, 7, 100, 4096, 70001]))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_concat_of_many_pieces() -> None:
    rng = random.Random(1)
    pieces = [rng.randbytes(rng.randrange(0, 5000)) for _ in range(50)]
    assert crc32_concat((zlib.crc32(p), len(p)) for p in pieces) == zlib.crc32(b"".join(pieces))
    assert crc32_concat([]) == 0


def test_combine_refuses_negative_length() -> None:
    with pytest.raises(ValueError):
        crc32_combine(0, 0, -1)


def test_crc32_file(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    (tmp_path / "f").write_bytes(data)
    assert crc32_file(tmp_path / "f", chunk=1 << 20) == zlib.crc32(data)
    (tmp_path / "empty").write_bytes(b"")
    assert crc32_file(tmp_path / "empty") == 0
