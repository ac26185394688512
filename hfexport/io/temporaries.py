"""hfexport's temporaries next to an output: made with a marker, removed, and cleaned up after a killed run.

Every directory hfexport creates next to an output (``.NAME.tmp-PID-XXXXXXXX`` for a write,
``.NAME.old-PID-XXXXXXXX`` for a version being replaced or rotated away) carries a marker naming the process that
made it (:func:`make_temporary`); a pointer being renamed over ``latest`` says the same in its name
(:func:`pointer_temporary`). Cleanup removes only such a temporary, once that process is known to be dead
(:func:`clean_stale_temporaries`, with :mod:`hfexport._util.liveness`; the rules are README's *What cleanup may
delete*).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from hfexport._util.jsonio import dumps as json_dumps
from hfexport._util.liveness import host_digest, process_identity, process_is_dead, start_time, writer_is_dead
from hfexport._util.text import utc_timestamp
from hfexport.io.names import MANIFEST_NAME
from hfexport.io.outputpath import replace_refusal

logger = logging.getLogger(__name__)

__all__ = [
    "MARKER_NAME",
    "OLD_TAG",
    "PAYLOAD",
    "TMP_TAG",
    "clean_stale_temporaries",
    "make_temporary",
    "pointer_temporary",
    "release_temporary",
    "remove_temporary",
    "temporary_name",
]

TMP_TAG = ".tmp-"
OLD_TAG = ".old-"
MARKER_NAME = "hfexport-temporary.json"  # inside every temporary hfexport creates: who made it, for what
PAYLOAD = "payload"  # the data inside a temporary (the marker stays next to it until the very end)
_NAME_MAX = 255  # bytes in one path component (Linux, macOS; most file systems)
_TEMPORARY = re.compile(r"^\.(?P<base>.+)(?P<tag>\.tmp-|\.old-)(?P<pid>[0-9]+)-(?P<token>[0-9a-f]{8})$", re.DOTALL)
# A pointer (``latest``) being replaced by rename: a symlink or a small file, so no marker fits inside; its name
# says who made it: PID, that process's start time, and a digest of host, boot and PID namespace.
_POINTER = re.compile(
    r"^\.(?P<base>.+)\.tmp-(?P<pid>[0-9]+)-(?P<start>[0-9]+)-(?P<where>[0-9a-f]{8})-(?P<token>[0-9a-f]{8})$", re.DOTALL
)
_POINTER_MAX_BYTES = 4096  # the text-file fallback of a pointer holds one version name


def temporary_name(name: str, tag: str, pid: int, token: str) -> str:
    """``.NAME{tag}PID-TOKEN``, with ``NAME`` shortened so that the whole name fits in 255 bytes."""
    suffix = f"{tag}{pid}-{token}"
    budget = _NAME_MAX - 1 - len(suffix)
    raw = os.fsencode(name)
    if len(raw) > budget:
        cut = raw[:budget]
        for back in range(4):  # end on a whole UTF-8 character when the name is UTF-8
            try:
                cut[: len(cut) - back].decode("utf-8")
            except UnicodeDecodeError:
                continue
            cut = cut[: len(cut) - back]
            break
        name = os.fsdecode(cut)
    return f".{name}{suffix}"


def make_temporary(parent: Path, name: str, tag: str = TMP_TAG) -> Path:
    """Create an hfexport temporary directory next to the output ``parent/name``, with its marker inside.

    The marker (``hfexport-temporary.json``) is written before the directory is used: it is what makes the
    directory provably hfexport's (see :func:`clean_stale_temporaries`). Put the data in ``path / PAYLOAD``.

    Args:
        parent: The directory holding the output.
        name: The output's name (its temporary's name is derived from it, shortened if needed).
        tag: ``".tmp-"`` for a write in progress, ``".old-"`` for a directory being replaced or deleted.

    Returns:
        The new directory.
    """
    if tag not in (TMP_TAG, OLD_TAG):
        raise ValueError(f"Invalid temporary tag {tag!r}: expected {TMP_TAG!r} or {OLD_TAG!r}.")
    path = parent / temporary_name(name, tag, os.getpid(), uuid.uuid4().hex[:8])
    content = json_dumps(
        {
            "hfexport_temporary": 1,
            "target": name,
            "tag": tag.strip(".-"),
            **process_identity(),
            "pid": os.getpid(),
            "start_time": start_time(os.getpid()),
            "created": utc_timestamp(),
        },
        name=MARKER_NAME,
    )
    path.mkdir()
    try:
        # Written right after the mkdir, without an fsync: a killed process loses nothing already written, and
        # after a power cut (another boot) the marker's writer is unknown anyway. A kill in between (microseconds)
        # leaves an empty directory without a marker: left in place and logged, never guessed at.
        with open(path / MARKER_NAME, "w", encoding="utf-8") as fh:
            fh.write(content)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def remove_temporary(path: Path) -> None:
    """Delete a temporary made by :func:`make_temporary`: its data first, its marker last (an interrupted removal
    still leaves a directory that cleanup recognises)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in list(path.iterdir()):
            if entry.name == MARKER_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    with contextlib.suppress(FileNotFoundError):
        (path / MARKER_NAME).unlink()
    shutil.rmtree(path, ignore_errors=True)


def release_temporary(path: Path) -> None:
    """Stop owning a temporary without deleting what it holds (the user's files): its marker goes, so no cleanup
    ever removes it."""
    with contextlib.suppress(OSError):
        (path / MARKER_NAME).unlink()
    logger.warning("Kept %s: it holds files hfexport did not write. Check it and remove it by hand.", path)


def clean_stale_temporaries(parent: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries that killed hfexport runs left in ``parent``.

    Only a directory named like hfexport's temporaries (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.old-PID-XXXXXXXX``)
    that holds hfexport's marker is removed, and only when the process the marker names is known to be dead: same
    host, boot and PID namespace as this process, and that PID no longer runs (or now belongs to a process started
    at another time). Anything else (another program's files, a temporary of a process that may still be running,
    on this host or another) is left in place and logged.

    Args:
        parent: The directory holding the outputs.
        name: Only temporaries of this output name; ``None`` for all.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        pointer = _POINTER.match(entry.name)
        if pointer:
            if (name is None or name == pointer["base"]) and _remove_stale_pointer(entry, pointer):
                removed.append(entry)
            continue
        match = _TEMPORARY.match(entry.name)
        if not match:
            continue
        marker = _read_marker(entry)
        if marker is None:
            if name is None or name.startswith(match["base"]):
                logger.info("Leaving %s: it has no hfexport marker, so it may not be hfexport's", entry)
            continue
        if name is not None and marker["target"] != name:
            continue
        dead, why = writer_is_dead(marker)
        if not dead:
            logger.info("Leaving %s: %s (remove it by hand if nothing is writing it)", entry, why)
            continue
        payload = entry / PAYLOAD
        problem = replace_refusal(payload) if (payload / MANIFEST_NAME).is_file() else None
        if problem:  # a replaced export that someone added files to (a swap interrupted by the kill): keep them
            logger.info("Leaving %s: it holds an export that %s", entry, problem)
            continue
        remove_temporary(entry)
        logger.info("Removed %s, left by an interrupted export (%s)", entry, why)
        removed.append(entry)
    return removed


def pointer_temporary(parent: Path, name: str) -> Path:
    """A fresh path beside ``parent / name`` for a pointer (a symlink or a small text file) that will be renamed
    over it. Its name proves who made it (see :func:`clean_stale_temporaries`), since no marker fits inside."""
    pid = os.getpid()
    return parent / f".{name}.tmp-{pid}-{start_time(pid) or 0}-{host_digest()}-{uuid.uuid4().hex[:8]}"


def _remove_stale_pointer(entry: Path, match: re.Match[str]) -> bool:
    """Unlink a pointer temporary of a dead hfexport process on this host; leave (and log) anything else."""
    pid, start = int(match["pid"]), int(match["start"])
    try:
        st = entry.lstat()
    except OSError:
        return False
    is_pointer = stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size <= _POINTER_MAX_BYTES)
    if not is_pointer:
        logger.info("Leaving %s: named like hfexport's pointer temporaries but not a symlink or a small file", entry)
        return False
    if match["where"] != host_digest():
        logger.info("Leaving %s: made on another host, boot or PID namespace, whose state is unknown here", entry)
        return False
    dead, why = process_is_dead(pid, start)
    if not dead:
        logger.info("Leaving %s: %s", entry, why)
        return False
    with contextlib.suppress(FileNotFoundError):
        entry.unlink()  # a symlink or a one-line file: unlinking it never touches what it points to
    logger.info("Removed %s, a pointer left by an interrupted export (%s)", entry, why)
    return True


def _read_marker(entry: Path) -> dict[str, Any] | None:
    if entry.is_symlink() or not entry.is_dir():
        return None
    try:
        with open(entry / MARKER_NAME, encoding="utf-8") as fh:
            marker = json.loads(fh.read(1 << 16))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(marker, dict)
        or marker.get("hfexport_temporary") != 1
        or not isinstance(marker.get("target"), str)
        or not isinstance(marker.get("pid"), int)
        or isinstance(marker.get("pid"), bool)
    ):
        return None
    return marker
