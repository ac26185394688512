"""The chunk writer: any tiling of a file, direct and buffered I/O, parallel workers, read-back, errors."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest
import torch

from hfexport import chunkio
from hfexport.chunkio import ALIGN, Chunk, _AlignedBuffer, _Session, direct_io_mode, write_chunks
from hfexport.errors import VerificationError


def random_file(rng: random.Random) -> tuple[list[Chunk], bytes]:
    """A header (known bytes) followed by typed chunks of awkward sizes: empty, odd, block-crossing, large."""
    head = rng.randbytes(rng.choice([0, 8, 4095, 4096, 5000]))
    chunks = [Chunk(0, torch.uint8, (len(head),), data=head)]
    parts = [head]
    offset = len(head)
    for _ in range(rng.randrange(0, 14)):
        dtype = rng.choice([torch.bfloat16, torch.float32, torch.uint8])
        count = rng.choice([0, 1, 3, 1000, 2048, 5000, 70001])
        raw = torch.randint(
            0,
            256,
            (count * dtype.itemsize,),
            dtype=torch.uint8,
            generator=torch.Generator().manual_seed(rng.randrange(1 << 30)),
        )

        def produce(out: torch.Tensor, raw: torch.Tensor = raw, dtype: torch.dtype = dtype) -> None:
            out.copy_(raw.view(dtype))

        chunks.append(Chunk(offset, dtype, (count,), produce=produce))
        parts.append(bytes(raw.numpy()))
        offset += raw.numel()
    return chunks, b"".join(parts)


def direct_io_works_here(directory: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(directory / "probe", os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    os.unlink(directory / "probe")
    return True


def whole_blocks(chunks: list[Chunk]) -> int:
    """Bytes in the 4096-byte blocks that lie entirely inside one chunk (what direct I/O writes)."""
    total = 0
    for ch in chunks:
        lo, hi = -(-ch.offset // ALIGN) * ALIGN, (ch.offset + ch.nbytes) // ALIGN * ALIGN
        total += max(0, hi - lo)
    return total


@pytest.mark.parametrize("direct", ["1", "0", "auto"])
@pytest.mark.parametrize("workers", [1, 3])
def test_any_tiling_is_written_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: str, workers: int
) -> None:
    monkeypatch.setenv("HFEXPORT_DIRECT_IO", direct)
    always_direct = direct == "1" and direct_io_works_here(tmp_path)
    rng = random.Random(f"{direct}{workers}")
    for trial in range(25):
        chunks, expected = random_file(rng)
        reported: list[int] = []
        result = write_chunks(tmp_path / f"f{trial}", chunks, workers=workers, on_progress=reported.append)
        assert (tmp_path / f"f{trial}").read_bytes() == expected, trial
        assert result.size == len(expected) and result.crc32 == zlib.crc32(expected)
        for ch, crc in zip(chunks, result.chunk_crc32, strict=True):
            assert crc == zlib.crc32(expected[ch.offset : ch.offset + ch.nbytes])
        assert sum(reported) == len(expected) - chunks[0].nbytes  # produced chunks only, not the header
        # "1": every whole block goes out directly; "0" never; "auto" only after 64 MB of slow page-cache writes
        assert result.direct_bytes == (whole_blocks(chunks) if always_direct else 0)


@pytest.mark.parametrize("slow", [True, False])
def test_auto_switches_to_direct_io_after_slow_page_cache_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    """After PROBE_BYTES of page-cache writes slower than SLOW_BYTES_PER_S, the rest goes out directly."""
    if not direct_io_works_here(tmp_path):
        pytest.skip("no direct I/O on this file system")
    monkeypatch.setenv("HFEXPORT_DIRECT_IO", "auto")
    monkeypatch.setattr(chunkio, "PROBE_BYTES", 100_000)
    monkeypatch.setattr(chunkio, "SLOW_BYTES_PER_S", 1e30 if slow else 0.0)  # every rate is slow / none is
    rng = random.Random(7)
    chunks, expected = random_file(rng)
    while len(expected) < 1_000_000 or whole_blocks(chunks) < 600_000:
        chunks, expected = random_file(rng)
    # One worker: chunks are written in order, so exactly the chunks after the probe window go out directly (with
    # two, a chunk another writer started before the decision still goes through the page cache).
    result = write_chunks(tmp_path / "f", chunks, workers=1)
    assert (tmp_path / "f").read_bytes() == expected
    assert result.crc32 == zlib.crc32(expected)
    if slow:  # the first ~100 KB went through the page cache, most of the rest directly
        assert 0 < result.direct_bytes <= whole_blocks(chunks)
        assert result.direct_bytes >= whole_blocks(chunks) - 200_000 - max(c.nbytes for c in chunks)
    else:
        assert result.direct_bytes == 0


def test_chunks_must_tile_and_the_file_must_be_new(tmp_path: Path) -> None:
    gap = [Chunk(0, torch.uint8, (2,), data=b"ab"), Chunk(3, torch.uint8, (1,), data=b"c")]
    with pytest.raises(ValueError, match="must tile the file"):
        write_chunks(tmp_path / "gap", gap)
    assert not (tmp_path / "gap").exists()
    (tmp_path / "taken").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_chunks(tmp_path / "taken", [Chunk(0, torch.uint8, (1,), data=b"x")])
    assert (tmp_path / "taken").read_bytes() == b"old"


@pytest.mark.parametrize("workers", [1, 3])
def test_the_first_failure_in_file_order_is_raised(tmp_path: Path, workers: int) -> None:
    def fine(out: torch.Tensor) -> None:
        out.fill_(1.0)

    def fail(which: str):  # type: ignore[no-untyped-def]
        def produce(out: torch.Tensor) -> None:
            raise RuntimeError(f"chunk {which} failed")

        return produce

    chunks = []
    for i in range(12):
        produce = fail(str(i)) if i in (5, 9) else fine
        chunks.append(Chunk(i * 4000, torch.float32, (1000,), produce=produce))
    with pytest.raises(RuntimeError, match="chunk 5 failed"):
        write_chunks(tmp_path / "f", chunks, workers=workers)


@pytest.mark.parametrize(
    ("direct", "blocks"),
    [(True, 2), (False, 2), (False, 128)],  # 512 KiB through the page cache: compared through a mapping
)
def test_read_back_mismatch_is_a_verification_error(tmp_path: Path, direct: bool, blocks: int) -> None:
    """The comparison that follows every write: bytes on disk that differ from the staging buffer are refused."""
    if direct and not direct_io_works_here(tmp_path):
        pytest.skip("no direct I/O on this file system")
    size = (blocks + 2) * ALIGN
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))
    chunks = [Chunk(0, torch.uint8, (size,), data=path.read_bytes())]
    n = blocks * ALIGN
    fd = os.open(path, os.O_RDWR)
    try:
        with _Session(path, fd, chunks, mode="always" if direct else "never") as session:
            read_fd = session.direct_fd if direct else session.read_fd
            meant, readback = _AlignedBuffer(n), _AlignedBuffer(n)
            meant.view[:n] = path.read_bytes()[ALIGN : ALIGN + n]
            session._check(read_fd, ALIGN, meant, 0, n, readback, direct=direct)  # equal: no error
            meant.view[n - 100] ^= 0xFF
            with pytest.raises(VerificationError, match="read back different"):
                session._check(read_fd, ALIGN, meant, 0, n, readback, direct=direct)
            meant.view[n - 100] ^= 0xFF
            with pytest.raises(VerificationError, match=r"read back (short|different)"):  # past the end of the file
                session._check(read_fd, 2 * ALIGN + ALIGN * (blocks // 2), meant, 0, n, readback, direct=direct)
    finally:
        os.close(fd)


def test_direct_io_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    linux = hasattr(os, "O_DIRECT") and os.uname().sysname == "Linux"
    for value, mode in [("0", "never"), ("false", "never"), ("OFF", "never"), ("1", "always"), ("on", "always")]:
        monkeypatch.setenv("HFEXPORT_DIRECT_IO", value)
        assert direct_io_mode() == (mode if linux else "never")
    monkeypatch.delenv("HFEXPORT_DIRECT_IO")
    assert direct_io_mode() == ("auto" if linux else "never")


def test_parallel_producers_leave_torch_thread_settings_as_they_were(tmp_path: Path) -> None:
    """Producers run torch with one intra-op thread each; the caller's setting and new threads' default survive."""
    import threading

    before = torch.get_num_threads()
    seen: list[int] = []

    def produce(out: torch.Tensor) -> None:
        seen.append(torch.get_num_threads())
        out.fill_(1.0)

    write_chunks(
        tmp_path / "f", [Chunk(i * 4000, torch.float32, (1000,), produce=produce) for i in range(8)], workers=2
    )
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
    fresh: list[int] = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert fresh == [before]


def test_without_positional_io_seek_and_read_write_give_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where os.pwrite/os.preadv are missing (Windows), a locked seek-then-write/read path is used instead."""
    monkeypatch.setattr(chunkio, "_HAVE_POSITIONAL_IO", False)
    monkeypatch.setenv("HFEXPORT_DIRECT_IO", "0")
    rng = random.Random(11)
    for trial in range(10):
        chunks, expected = random_file(rng)
        result = write_chunks(tmp_path / f"f{trial}", chunks, workers=3)
        assert (tmp_path / f"f{trial}").read_bytes() == expected
        assert result.crc32 == zlib.crc32(expected)
