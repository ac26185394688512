"""write_shard's direct-I/O path (io="direct", and "auto" for large files): exact files, fallbacks, preallocation."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import sys
import zlib
from pathlib import Path

import pytest
import torch
from test_chunkio import random_file

from hfexport.io import chunkio, directio
from hfexport.io.chunkio import ALIGN, Chunk, write_shard

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="direct I/O: Linux")


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HFEXPORT_DIRECT_IO", raising=False)


def direct_io_works_here(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    os.unlink(directory / "probe")
    return True


@pytest.fixture
def direct_dir(tmp_path: Path) -> Path:
    if not direct_io_works_here(tmp_path):
        pytest.skip("no direct I/O on this file system")
    return tmp_path


def whole_blocks(chunks: list[Chunk]) -> int:
    """Bytes in the 4096-byte blocks that lie entirely inside one chunk (what direct I/O writes)."""
    total = 0
    for ch in chunks:
        lo, hi = -(-ch.offset // ALIGN) * ALIGN, (ch.offset + ch.nbytes) // ALIGN * ALIGN
        total += max(0, hi - lo)
    return total


@pytest.mark.parametrize("workers", [1, 3])
def test_direct_writes_any_tiling_exactly(direct_dir: Path, workers: int) -> None:
    rng = random.Random(f"direct{workers}")
    for trial in range(25):
        chunks, expected = random_file(rng)
        result = write_shard(direct_dir / f"f{trial}", chunks, io="direct", workers=workers)
        assert (direct_dir / f"f{trial}").read_bytes() == expected, trial
        assert result.size == len(expected) and result.crc32 == zlib.crc32(expected)
        assert result.direct_bytes == whole_blocks(chunks)  # every whole block directly, the edges buffered
        assert result.io == ("direct" if result.direct_bytes else "buffered")


def test_auto_writes_large_files_directly_and_small_ones_through_the_page_cache(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "auto": direct I/O for a file of at least DIRECT_MIN_BYTES, the page cache below."""
    rng = random.Random(7)
    chunks, expected = random_file(rng)
    while len(expected) < 200_000 or whole_blocks(chunks) < 100_000:
        chunks, expected = random_file(rng)
    monkeypatch.setattr(chunkio, "DIRECT_MIN_BYTES", len(expected))
    result = write_shard(direct_dir / "large", chunks, io="auto", workers=2)
    assert (direct_dir / "large").read_bytes() == expected and result.crc32 == zlib.crc32(expected)
    assert (result.io, result.direct_bytes) == ("direct", whole_blocks(chunks))
    monkeypatch.setattr(chunkio, "DIRECT_MIN_BYTES", len(expected) + 1)
    result = write_shard(direct_dir / "small", chunks, io="auto", workers=2)
    assert (direct_dir / "small").read_bytes() == expected and result.crc32 == zlib.crc32(expected)
    assert (result.io, result.direct_bytes) == ("buffered", 0)


def test_a_file_system_that_refuses_direct_io_gets_the_page_cache(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open(O_DIRECT) fails with EINVAL on some file systems (e.g. tmpfs before Linux 6.6): nothing goes direct."""
    real_open = os.open

    def refusing(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(directio.os, "open", refusing)
    chunks, expected = random_file(random.Random(5))
    result = write_shard(direct_dir / "f", chunks, io="direct")
    assert (direct_dir / "f").read_bytes() == expected
    assert (result.io, result.direct_bytes) == ("buffered", 0)


def test_a_direct_write_refused_mid_file_continues_through_the_page_cache(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems open with O_DIRECT yet refuse a write (EINVAL): that chunk and the rest go buffered."""
    real = directio._pwrite_all
    direct_writes: list[int] = []

    def refusing_the_second(fd: int, data: memoryview, offset: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            direct_writes.append(len(data))
            if len(direct_writes) == 2:
                raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, data, offset)

    monkeypatch.setattr(directio, "_pwrite_all", refusing_the_second)
    rng = random.Random(9)
    chunks, expected = random_file(rng)
    while sum(1 for ch in chunks if whole_blocks([ch])) < 4:
        chunks, expected = random_file(rng)
    result = write_shard(direct_dir / "f", chunks, io="direct", workers=2)
    assert (direct_dir / "f").read_bytes() == expected
    assert result.crc32 == zlib.crc32(expected)
    assert len(direct_writes) == 2 and result.direct_bytes == direct_writes[0]


def test_training_exports_stay_on_the_plain_path_and_convert_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """export_hf (training) writes with io="buffered": the direct-I/O module is never entered; convert uses "auto"."""
    from nanogpt import make_gpt

    from hfexport import convert_checkpoint, export_hf

    entered: list[bool] = []
    real_init = directio.DirectWriter.__init__

    def spy(self: directio.DirectWriter, *args: object, **kwargs: object) -> None:
        entered.append(True)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(directio.DirectWriter, "__init__", spy)
    monkeypatch.setattr(chunkio, "DIRECT_MIN_BYTES", 0)  # "auto" writes these tiny files directly too
    model = make_gpt(3, n_embd=32)
    export_hf(model, 10, tmp_path / "exports")
    assert entered == []
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, tmp_path / "ckpt.pt")
    convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "converted")
    assert entered == [True]


def test_direct_preallocates_the_whole_file_before_the_first_write(direct_dir: Path) -> None:
    """A full disk fails before anything is written: the file's blocks are reserved before the first chunk."""
    path = direct_dir / "f"
    allocated: list[int] = []
    rng = random.Random(3)
    chunks, expected = random_file(rng)
    while len(expected) < 300_000:
        chunks, expected = random_file(rng)
    first = next(ch for ch in chunks if ch.data is None and ch.produce is not None)
    produce = first.produce

    def measuring(out: torch.Tensor) -> None:
        allocated.append(os.stat(path).st_blocks * 512)
        produce(out)  # type: ignore[misc]

    first.produce = measuring
    result = write_shard(path, chunks, io="direct", workers=1)
    assert path.read_bytes() == expected and result.crc32 == zlib.crc32(expected)
    assert allocated and allocated[0] >= len(expected)  # fallocate'd before anything was written
