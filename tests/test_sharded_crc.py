"""The CRC-32 a rank reports for the ranges it writes (hfexport/training/sharded.py's runs of nearby ranges)."""

from __future__ import annotations

import random
import zlib

import pytest

from hfexport._util.checksum import SparseCrc, crc32_of_sparse
from hfexport.training.sharded import _GAP, _RunCrc


def _tiles(size: int, writers: int, rng: random.Random) -> list[list[tuple[int, int]]]:
    """Ranges tiling ``[0, size)``, dealt to ``writers`` in turn (strided, as a transposed block's columns), with
    runs of one writer's ranges long enough to leave gaps above ``_GAP`` in the others'."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(writers)]
    offset, who = 0, 0
    while offset < size:
        n = min(size - offset, rng.choice([1, 7, 512, 2048, _GAP + 3, 3 * _GAP]))
        out[who].append((offset, n))
        offset += n
        who = (who + 1) % writers if rng.random() < 0.8 else who
    return out


@pytest.mark.parametrize("seed", range(6))
def test_run_crc_combines_to_the_files_crc32(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.randrange(1, 1 << 20)
    data = rng.randbytes(size)
    writers = rng.choice([1, 2, 4])
    parts, plain = [], []
    for ranges in _tiles(size, writers, rng):
        run, sparse = _RunCrc(), SparseCrc()
        for offset, n in ranges:
            run.add(offset, memoryview(data)[offset : offset + n])
            sparse.add(offset, zlib.crc32(data[offset : offset + n]), n)
        parts.append(run.value(size))
        plain.append(sparse.value(size))
    assert parts == plain  # the same contribution as one combine per range
    assert crc32_of_sparse(parts, size) == zlib.crc32(data)


def test_run_crc_of_nothing_is_nothing() -> None:
    assert _RunCrc().value(100) == SparseCrc().value(100)
