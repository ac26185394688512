"""write_shard's direct-I/O path (io="direct" / "auto"): exact files, the switch, the read-back from the device."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import random
import sys
import threading
import zlib
from pathlib import Path

import pytest
import torch
from test_chunkio import random_file

from hfexport import directio
from hfexport.chunkio import ALIGN, Chunk, StagingBuffer, write_shard
from hfexport.errors import VerificationError

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


@pytest.mark.parametrize("slow", [True, False])
def test_auto_switches_to_direct_io_after_slow_page_cache_writes(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    """After PROBE_BYTES of page-cache writes slower than SLOW_BYTES_PER_S, the rest goes out directly."""
    monkeypatch.setattr(directio, "PROBE_BYTES", 100_000)
    monkeypatch.setattr(directio, "SLOW_BYTES_PER_S", 1e30 if slow else 0.0)  # every rate is slow / none is
    rng = random.Random(7)
    chunks, expected = random_file(rng)
    while len(expected) < 1_000_000 or whole_blocks(chunks) < 600_000:
        chunks, expected = random_file(rng)
    result = write_shard(direct_dir / "f", chunks, io="auto", workers=2)
    assert (direct_dir / "f").read_bytes() == expected
    assert result.crc32 == zlib.crc32(expected)
    if slow:  # the first ~100 KB (and the chunk that crossed it) went through the page cache, the rest directly
        assert 0 < result.direct_bytes <= whole_blocks(chunks)
        assert result.direct_bytes >= whole_blocks(chunks) - 100_000 - 2 * max(c.nbytes for c in chunks)
        assert result.io == "direct"
    else:
        assert (result.io, result.direct_bytes) == ("buffered", 0)


def test_bytes_the_device_does_not_hold_are_a_verification_error(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct write that stores something else (simulated: one byte flipped on its way) fails the read-back."""
    real = directio._pwrite_all

    def corrupting(fd: int, data: memoryview, offset: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            bad = StagingBuffer(len(data))  # aligned, as direct I/O needs
            bad.view[: len(data)] = data
            bad.view[len(data) // 2] ^= 0xFF
            data = bad.view[: len(data)]
        real(fd, data, offset)

    monkeypatch.setattr(directio, "_pwrite_all", corrupting)
    payload = os.urandom(5 * ALIGN)
    chunks = [Chunk(0, torch.uint8, (100,), data=payload[:100]), Chunk(100, torch.uint8, (len(payload) - 100,))]
    chunks[1].data = payload[100:]
    with pytest.raises(VerificationError, match=r"with direct I/O at offset 4096 read back from the device as diff"):
        write_shard(direct_dir / "f", chunks, io="direct")
    assert write_shard(direct_dir / "g", chunks, io="buffered").crc32 == zlib.crc32(payload)  # not read back


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

    def spy(self: directio.DirectWriter, *args: object, always: bool, **kwargs: object) -> None:
        entered.append(always)
        real_init(self, *args, always=always, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(directio.DirectWriter, "__init__", spy)
    model = make_gpt(3, n_embd=32)
    export_hf(model, 10, tmp_path / "exports")
    assert entered == []
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, tmp_path / "ckpt.pt")
    convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "converted")
    assert entered == [False]  # auto: page cache until it proves slow


def test_the_writing_thread_never_waits_for_a_read_back(direct_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With producer threads, a buffer's read-back is awaited by the producer that refills it, not by the writer."""
    settled_by: list[str] = []
    real = directio.DirectWriter.settle

    def recording(self: directio.DirectWriter, staging: StagingBuffer) -> None:
        settled_by.append(threading.current_thread().name)
        real(self, staging)

    monkeypatch.setattr(directio.DirectWriter, "settle", recording)
    rng = random.Random(11)
    chunks, expected = random_file(rng)
    while len(chunks) < 10 or whole_blocks(chunks) < 200_000:
        chunks, expected = random_file(rng)
    result = write_shard(direct_dir / "f", chunks, io="direct", workers=2)
    assert (direct_dir / "f").read_bytes() == expected and result.crc32 == zlib.crc32(expected)
    assert len(settled_by) == len(chunks)
    assert all(name.startswith("hfexport-produce") for name in settled_by), set(settled_by)


def test_auto_preallocates_the_file_and_hands_page_cache_writes_to_the_disk_early(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "auto": the whole file is allocated before the first chunk is written, and every WRITEBACK_BYTES written
    through the page cache are handed to the disk (sync_file_range), in order, without gaps."""
    monkeypatch.setattr(directio, "SLOW_BYTES_PER_S", 0.0)  # never slow: everything through the page cache
    monkeypatch.setattr(directio, "WRITEBACK_BYTES", 50_000)
    ranges: list[tuple[int, int]] = []
    real = directio._start_writeback
    monkeypatch.setattr(directio, "_start_writeback", lambda fd, o, n: (ranges.append((o, n)), real(fd, o, n)))
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
    result = write_shard(path, chunks, io="auto", workers=1)
    assert path.read_bytes() == expected and (result.io, result.direct_bytes) == ("buffered", 0)
    assert allocated and allocated[0] >= len(expected)  # fallocate'd before anything was written
    assert ranges and ranges[0][0] == 0
    assert all(o + n == o2 for (o, n), (o2, _) in itertools.pairwise(ranges))
    assert all(n >= 50_000 for _, n in ranges) and ranges[-1][0] + ranges[-1][1] <= len(expected)
