"""hfexport's on-disk cache: files that are expensive to make and always the same, kept between processes.

One user today: GPT-2's ``tokenizer.json``, which every export of a GPT-2 vocabulary carries and which takes
``tokenizers`` ~0.1-0.2 s to build from the BPE files (:func:`hfexport.tokenizers.tokenizer.gpt2_parts`); read from
here it
takes a few milliseconds. The caller names an entry by everything its content depends on (e.g. the SHA-256 of
the source files and the ``tokenizers`` version), so an entry never goes stale; each file also carries the
SHA-256 of its content, checked on every read, so a truncated or damaged entry is rebuilt, never used. An entry is
read as tokenizer files are (:func:`hfexport.tokenizers.parts.read_inside`): only a regular file inside the cache
directory, opened without blocking and at most :data:`MAX_ENTRY_BYTES` long; anything else in its place (a FIFO, a
symlink to ``/dev/zero`` or out of the directory, a huge file) is never read, and is rebuilt (logged).

Where: ``HFEXPORT_CACHE`` when set (an empty value turns the cache off), else ``$XDG_CACHE_HOME/hfexport``, else
``~/.cache/hfexport``. Nothing here is required: an unreadable or unwritable cache only costs the time to
rebuild (logged at DEBUG). Deleting the directory is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from hfexport._util.fs import replace_atomically
from hfexport.errors import TokenizerError
from hfexport.tokenizers.parts import read_inside

logger = logging.getLogger(__name__)

__all__ = ["cache_dir", "read_entry", "write_entry"]

ENV_CACHE = "HFEXPORT_CACHE"
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # GPT-2's tokenizer.json is ~2 MB
_MAGIC = b"hfexport-cache sha256="


def cache_dir() -> Path | None:
    """The cache directory (not created here), or ``None`` when ``HFEXPORT_CACHE`` is set to an empty value."""
    env = os.environ.get(ENV_CACHE)
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "hfexport"


def read_entry(name: str) -> bytes | None:
    """The content stored under ``name``, or ``None`` when there is none or it does not match its checksum."""
    directory = cache_dir()
    if directory is None:
        return None
    path = directory / name
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        raw = read_inside(path, Path(os.path.realpath(directory)), limit=MAX_ENTRY_BYTES)
    except TokenizerError as exc:  # a FIFO, a device, a symlink out of the cache, a huge file: never read
        logger.warning("Ignoring the cache entry %s (%s); it will be rebuilt", path, exc)
        return None
    except OSError:
        return None
    header, _, content = raw.partition(b"\n")
    if header != _MAGIC + hashlib.sha256(content).hexdigest().encode():
        logger.debug("Cache entry %s is damaged (checksum); it will be rebuilt", directory / name)
        return None
    return content


def write_entry(name: str, content: bytes) -> None:
    """Store ``content`` under ``name``, atomically (a reader sees the old entry, the new one or none)."""
    directory = cache_dir()
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)

        def fill(tmp: Path) -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private, as mkstemp makes it
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + hashlib.sha256(content).hexdigest().encode() + b"\n" + content)

        replace_atomically(directory / name, fill, durable=False)  # a lost entry is only rebuilt
    except OSError as exc:
        logger.debug("Cannot write the cache entry %s (%s): not cached", directory / name, exc)
