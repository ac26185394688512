"""hfexport's on-disk cache, and GPT-2's tokenizer read from it instead of being built again."""

from __future__ import annotations

from pathlib import Path

import pytest

import hfexport.tokenizers.tokenizer
from hfexport.tokenizers import cache


@pytest.fixture
def cache_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HFEXPORT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_entry_reads_back_and_a_damaged_one_reads_as_missing(cache_at: Path) -> None:
    assert cache.read_entry("x.json") is None
    cache.write_entry("x.json", b'{"a": 1}\n')
    assert cache.read_entry("x.json") == b'{"a": 1}\n'
    assert [p.name for p in cache_at.iterdir()] == ["x.json"]  # no temporary left
    raw = (cache_at / "x.json").read_bytes()
    (cache_at / "x.json").write_bytes(raw[:-3])  # truncated
    assert cache.read_entry("x.json") is None
    (cache_at / "x.json").write_bytes(raw.replace(b'"a"', b'"b"'))  # changed
    assert cache.read_entry("x.json") is None


def test_where_the_cache_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HFEXPORT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "hfexport"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "hfexport"
    monkeypatch.setenv("HFEXPORT_CACHE", "")  # off
    assert cache.cache_dir() is None
    cache.write_entry("x.json", b"{}")
    assert cache.read_entry("x.json") is None and not (tmp_path / "home" / ".cache").exists()


def test_an_unwritable_cache_only_costs_the_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("HFEXPORT_CACHE", str(tmp_path / "file" / "cache"))
    cache.write_entry("x.json", b"{}")  # no error
    assert cache.read_entry("x.json") is None


def test_gpt2_tokenizer_is_built_once_then_read_from_the_cache(cache_at: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hfexport.tokenizers.tokenizer, "_gpt2", None)  # as in a new process
    built = hfexport.tokenizers.tokenizer.gpt2_parts().serialized
    assert built is not None and built.size == 50257
    (entry,) = cache_at.glob("gpt2-tokenizer-*.json")

    def no_build(data: Path) -> None:
        raise AssertionError("built again instead of read from the cache")

    monkeypatch.setattr(hfexport.tokenizers.tokenizer, "_build_gpt2", no_build)
    monkeypatch.setattr(hfexport.tokenizers.tokenizer, "_gpt2", None)
    assert hfexport.tokenizers.tokenizer.gpt2_parts().serialized == built  # same bytes, size and special ids
    entry.write_bytes(entry.read_bytes()[:-100])  # damaged: built again, and the entry repaired
    monkeypatch.undo()
    monkeypatch.setenv("HFEXPORT_CACHE", str(cache_at))
    monkeypatch.setattr(hfexport.tokenizers.tokenizer, "_gpt2", None)
    assert hfexport.tokenizers.tokenizer.gpt2_parts().serialized == built
    assert cache.read_entry(entry.name) == built.text


READ_ENTRY_CAPPED = """
import logging, resource, sys
logging.basicConfig(level=logging.WARNING)
from hfexport.tokenizers import cache
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/statm") as fh:
    used = int(fh.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 512 * 1024 * 1024, hard))  # a runaway read fails, not the machine
print(repr(cache.read_entry(sys.argv[1])))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs and /dev/zero")
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "outside", "huge"])
def test_an_entry_that_is_not_a_regular_file_in_the_cache_is_never_read(
    cache_at: Path, tmp_path: Path, kind: str
) -> None:
    import os
    import subprocess
    import sys

    cache_at.mkdir()
    entry = cache_at / "gpt2-tokenizer-0123456789abcdef.json"
    if kind == "fifo":
        os.mkfifo(entry)  # a plain open() would wait for a writer forever
    elif kind == "dev_zero":
        entry.symlink_to("/dev/zero")  # a plain read would never end (all memory)
    elif kind == "outside":
        secret = tmp_path / "secret.json"
        cache.write_entry(entry.name, b"{}")
        secret.write_bytes(entry.read_bytes())  # a valid entry, but outside the cache directory
        entry.unlink()
        entry.symlink_to(secret)
    else:
        with open(entry, "wb") as fh:
            fh.truncate(cache.MAX_ENTRY_BYTES + 1)  # sparse: no disk used
    proc = subprocess.run(
        [sys.executable, "-c", READ_ENTRY_CAPPED, entry.name], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None", proc.stdout
    assert f"Ignoring the cache entry {entry}" in proc.stderr
    cache.write_entry(entry.name, b"{}")  # the next write replaces it with a real entry
    assert entry.is_file() and not entry.is_symlink() and cache.read_entry(entry.name) == b"{}"


def test_a_cache_directory_reached_through_a_symlink_still_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")  # ~/.cache on another disk
    monkeypatch.setenv("HFEXPORT_CACHE", str(tmp_path / "link"))
    cache.write_entry("x.json", b"{}")
    assert cache.read_entry("x.json") == b"{}"
