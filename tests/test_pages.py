"""Giving back the pages of a memory-mapped checkpoint: only mapped file pages, data intact, memory returned."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest
import torch

from hfexport.io.pages import MappedCheckpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise on /proc/self/maps: Linux")

MB = 1 << 20


def saved(path: Path, **kwargs: object) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tensors = {"big": torch.randn(8 * MB, generator=gen), "small": torch.randn(10, generator=gen)}  # 32 MB + 40 B
    torch.save(tensors, path, **kwargs)
    return tensors


def test_release_returns_the_pages_and_keeps_the_data(tmp_path: Path) -> None:
    original = saved(tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True, mmap=True)
    mapped = MappedCheckpoint(tmp_path / "ckpt.pt")
    assert mapped and mapped.ranges
    assert torch.equal(loaded["big"], original["big"])  # every page of "big" is now resident
    rss = psutil.Process().memory_info().rss
    freed = mapped.release(loaded["big"])
    assert freed >= 32 * MB - 2 * 4096 and mapped.released == freed
    assert psutil.Process().memory_info().rss <= rss - 24 * MB
    assert torch.equal(loaded["big"], original["big"])  # read again from the page cache
    assert torch.equal(loaded["small"], original["small"])
    assert mapped.release(loaded["small"]) == 0  # no whole page of its own


def test_memory_that_is_not_the_mapped_file_is_never_touched(tmp_path: Path) -> None:
    saved(tmp_path / "ckpt.pt")
    torch.load(tmp_path / "ckpt.pt", weights_only=True, mmap=True)
    mapped = MappedCheckpoint(tmp_path / "ckpt.pt")
    ordinary = torch.arange(8 * MB, dtype=torch.float32)
    assert mapped.release(ordinary) == 0
    assert torch.equal(ordinary, torch.arange(8 * MB, dtype=torch.float32))


def test_a_legacy_format_file_is_not_mapped_so_nothing_is_released(tmp_path: Path) -> None:
    original = saved(tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    loaded = torch.load(tmp_path / "legacy.pt", weights_only=True)  # the legacy format cannot be mapped
    mapped = MappedCheckpoint(tmp_path / "legacy.pt")
    assert not mapped
    assert mapped.release(loaded["big"]) == 0
    assert torch.equal(loaded["big"], original["big"])
