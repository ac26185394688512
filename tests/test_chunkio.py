"""write_shard on its plain path: any tiling of a file, parallel producers, errors, and the choice of I/O mode."""

from __future__ import annotations

import functools
import random
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch

from hfexport.errors import ConversionError
from hfexport.io import chunkio
from hfexport.io.chunkio import BUFFERS_PER_WORKER, Chunk, resolve_io, write_shard


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


def producer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("hfexport-produce")]


@pytest.mark.parametrize("workers", [1, 3])
def test_any_tiling_is_written_exactly(tmp_path: Path, workers: int) -> None:
    rng = random.Random(workers)
    for trial in range(25):
        chunks, expected = random_file(rng)
        reported: list[int] = []
        result = write_shard(tmp_path / f"f{trial}", chunks, workers=workers, on_progress=reported.append)
        assert (tmp_path / f"f{trial}").read_bytes() == expected, trial
        assert result.size == len(expected) and result.crc32 == zlib.crc32(expected)
        assert (result.io, result.direct_bytes) == ("buffered", 0)
        assert sum(reported) == len(expected) - chunks[0].nbytes  # produced chunks only, not the header
    assert producer_threads() == []


def test_chunks_must_tile_and_the_file_must_be_new(tmp_path: Path) -> None:
    gap = [Chunk(0, torch.uint8, (2,), data=b"ab"), Chunk(3, torch.uint8, (1,), data=b"c")]
    with pytest.raises(ValueError, match="must tile the file"):
        write_shard(tmp_path / "gap", gap)
    assert not (tmp_path / "gap").exists()
    with pytest.raises(ValueError, match="has 2 bytes, its shape says 3"):
        write_shard(tmp_path / "short", [Chunk(0, torch.uint8, (3,), data=b"ab")])
    (tmp_path / "taken").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_shard(tmp_path / "taken", [Chunk(0, torch.uint8, (1,), data=b"x")])
    assert (tmp_path / "taken").read_bytes() == b"old"


@pytest.mark.parametrize("workers", [1, 3])
def test_the_first_failure_in_file_order_is_raised_and_the_producers_stop(tmp_path: Path, workers: int) -> None:
    produced: list[int] = []

    def make(i: int):  # type: ignore[no-untyped-def]
        def produce(out: torch.Tensor) -> None:
            produced.append(i)
            if i in (5, 9):
                raise RuntimeError(f"chunk {i} failed")
            out.fill_(1.0)

        return produce

    chunks = [Chunk(i * 4000, torch.float32, (1000,), produce=make(i)) for i in range(40)]
    with pytest.raises(RuntimeError, match="chunk 5 failed") as failure:
        write_shard(tmp_path / "f", chunks, workers=workers)
    assert producer_threads() == [], failure  # stopped, even while the error (and its traceback) is still held
    assert max(produced) < 5 + BUFFERS_PER_WORKER * workers + 1  # at most the look-ahead past the failure


def test_a_failing_write_stops_the_producers_before_returning(tmp_path: Path) -> None:
    """An error on the writer's side (here: the progress callback) leaves no producer filling buffers behind."""

    def fail(n: int) -> None:
        raise OSError(28, "No space left on device")

    chunks = [Chunk(i * 4000, torch.float32, (1000,), produce=lambda out: out.fill_(2.0)) for i in range(20)]
    with pytest.raises(OSError, match="No space left") as failure:
        write_shard(tmp_path / "f", chunks, workers=3, on_progress=fail)
    assert producer_threads() == [], failure  # stopped, even while the error (and its traceback) is still held


def test_parallel_producers_leave_torch_thread_settings_as_they_were(tmp_path: Path) -> None:
    """Producers run torch with one intra-op thread each; the caller's setting and new threads' default survive."""
    before = torch.get_num_threads()
    seen: list[int] = []

    def produce(out: torch.Tensor, slow: bool) -> None:
        if slow:  # the other producer finishes meanwhile: it must not give this one its thread team back
            time.sleep(0.3)
        seen.append(torch.get_num_threads())
        out.fill_(1.0)

    chunks = [
        Chunk(i * 4000, torch.float32, (1000,), produce=functools.partial(produce, slow=i == 0)) for i in range(8)
    ]
    write_shard(tmp_path / "f", chunks, workers=2)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
    fresh: list[int] = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert fresh == [before]


def test_io_mode_the_option_and_the_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkio.sys, "platform", "linux")
    monkeypatch.delenv("HFEXPORT_DIRECT_IO", raising=False)
    for io in ("auto", "buffered", "direct"):
        assert resolve_io(io) == io
    for value, mode in [("0", "buffered"), ("OFF", "buffered"), ("1", "direct"), ("on", "direct"), ("auto", "auto")]:
        monkeypatch.setenv("HFEXPORT_DIRECT_IO", value)
        assert resolve_io("buffered") == mode, value
        assert resolve_io("direct") == mode, value
    monkeypatch.setenv("HFEXPORT_DIRECT_IO", "fast")
    with pytest.raises(ConversionError, match=r"HFEXPORT_DIRECT_IO='fast'.*0 \(buffered\), 1 \(direct\) or auto"):
        resolve_io("buffered")
    monkeypatch.delenv("HFEXPORT_DIRECT_IO")
    with pytest.raises(ConversionError, match="Invalid io 'fast': choose one of auto, buffered, direct"):
        resolve_io("fast")


def test_without_direct_io_every_mode_is_the_plain_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Elsewhere than Linux, "auto" and "direct" are "buffered" (and the direct-I/O module is never entered)."""
    monkeypatch.setattr(chunkio.sys, "platform", "darwin")
    monkeypatch.delenv("HFEXPORT_DIRECT_IO", raising=False)
    assert [resolve_io(io) for io in ("auto", "buffered", "direct")] == ["buffered"] * 3
    chunks, expected = random_file(random.Random(3))
    result = write_shard(tmp_path / "f", chunks, io="direct")
    assert (tmp_path / "f").read_bytes() == expected
    assert (result.io, result.direct_bytes) == ("buffered", 0)
