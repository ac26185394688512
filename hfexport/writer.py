"""Writing a Hugging Face model directory atomically, then proving it holds what was meant.

Everything goes into a hidden temporary sibling of the target (``.NAME.tmp-PID-XXXXXXXX/payload/``): safetensors
shards (produced and written chunk by chunk, their CRC-32 computed as they are written: see
:mod:`hfexport.chunkio`) and their index, ``config.json`` and the other small files, the tokenizer, and
``hfexport.json`` (a manifest with every file's size and CRC-32). Each file and the directory are fsynced, the
result is verified again as a whole by :func:`hfexport.dircheck.check_directory` (every shard's header checked as
strictly as ``safetensors`` does and against what was written: names, dtypes, shapes, offsets, sizes; the index;
the small files' contents), and only then the directory is renamed into place. Replacing an existing
directory (``force``) swaps the two atomically where the OS allows (Linux ``renameat2(RENAME_EXCHANGE)``), so
readers see the old version or the new one, never a mix.

A failure (or ``KeyboardInterrupt``) removes the temporary directory; a killed process leaves only a hidden
temporary, which :func:`clean_stale_temporaries` removes on a later run.

Temporaries: every directory hfexport creates next to an output (``.NAME.tmp-PID-XXXXXXXX`` for a write,
``.NAME.old-PID-XXXXXXXX`` for a version being replaced or rotated away) carries a marker naming the process that
made it (:func:`make_temporary`), and cleanup removes only such a directory, once that process is known to be dead
(:func:`clean_stale_temporaries`; the rules are README's *What cleanup may delete*).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checksum import crc32
from .dircheck import Expected, check_directory, unsafe_name
from .errors import OutputExistsError, OutputPathError, VerificationError
from .fsutil import fsync_dir, fsync_tree, libc_function, resolve_inside, write_durably
from .jsonio import dumps as json_dumps
from .jsonio import loads as strict_json
from .names import INDEX_FILE, MANIFEST_NAME, SINGLE_FILE
from .safetensors_io import OutputTensor, TensorRecord, write_safetensors
from .text import utc_timestamp
from .tokenizer import resolve_tokenizer
from .validation import shown

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "OutputTensor",
    "WriteResult",
    "check_export_root",
    "check_output_path",
    "clean_stale_temporaries",
    "interrupt_outcome",
    "make_temporary",
    "output_path_text",
    "parse_size",
    "pointer_temporary",
    "release_temporary",
    "remove_temporary",
    "replace_refusal",
    "write_hf_directory",
]

_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"
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


@dataclass
class WriteResult:
    """What :func:`write_hf_directory` wrote.

    Attributes:
        path: The published directory.
        files: File name → size in bytes.
        crc32: File name → CRC-32 as 8 hex digits (the checksum of zip and gzip).
        tensor_count: Number of tensors written.
        tensor_bytes: Bytes of tensor data written.
        seconds: Wall time of the whole write, verification included.
    """

    path: Path
    files: dict[str, int] = field(default_factory=dict)
    crc32: dict[str, str] = field(default_factory=dict)
    tensor_count: int = 0
    tensor_bytes: int = 0
    seconds: float = 0.0


def parse_size(value: int | str) -> int:
    """Parse ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count (at least 1 byte, finite).

    Raises:
        ValueError: not a size (``"abc"``, ``"inf"``, ``"1e400"``, ``"0.5"`` bytes, ``0``, ``-1MB``).
    """
    hint = "expected a number of bytes or e.g. '5GB', '500MB', '2GiB' (--max_shard_size)"
    if isinstance(value, bool):
        raise ValueError(f"Invalid size {value!r}: {hint}.")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"Invalid size {value}: must be at least 1 byte; {hint}.")
        return value
    text = str(value).strip().upper().replace(" ", "")
    units = {
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "B": 1,
    }
    unit = next((u for u in units if text.endswith(u)), "")
    number, factor = (text[: -len(unit)], units[unit]) if unit else (text, 1)
    try:
        size = float(number) * factor
    except ValueError:
        raise ValueError(f"Invalid size {value!r}: {hint}.") from None
    if not math.isfinite(size):
        raise ValueError(f"Invalid size {value!r}: not a finite number; {hint}.")
    if size < 1:
        raise ValueError(f"Invalid size {value!r}: must be at least 1 byte; {hint}.")
    return int(size)


def check_output_path(
    output_dir: str | os.PathLike[str],
    *,
    force: bool,
    protected: Sequence[str | os.PathLike[str]] = (),
    option: str = "output_dir",
) -> Path:
    """Refuse an output path that cannot or must not receive the export; return it as an absolute path.

    Refused whatever ``force`` says: an empty path (an unset shell variable), a name that is not UTF-8 or longer
    than file systems allow (see :func:`output_path_text`), a symlink,
    a path under a file, a file, the working directory or one of its ancestors, the home directory, a
    file-system root or mount point, and a directory holding one of ``protected`` (the checkpoint being read).
    A non-empty directory is refused without ``force``; with it, only a directory hfexport wrote may be replaced
    (see :func:`replace_refusal`).

    Args:
        output_dir: The directory to publish.
        force: Whether an existing export may be replaced.
        protected: Paths the output must not hold (the checkpoint file, the tokenizer being copied).
        option: How the caller names the path, for the messages: ``"output_dir"`` (the Python API: ``Choose
            another output_dir``), ``"--output_dir"`` (the CLI), ``"dirpath"`` (the Lightning callback).

    Returns:
        The absolute output path (``~`` expanded, symlinks in its parents kept).

    Raises:
        OutputPathError: the path cannot be used (the message says which and the fix).
        OutputExistsError: the path is occupied (a file, a non-empty directory, a directory hfexport did not write).
        OSError: the file system is read-only (``EROFS``; an environment failure, not bad input).
    """
    target = output_path_text(output_dir, option=option)
    if target.is_symlink():
        dest = os.readlink(target)
        raise OutputPathError(
            f"Output path {str(target)!r} is a symlink (to {dest!r}): publishing renames a directory into place, "
            f"which would replace the link itself. Pass the link's target as {option}, or remove the link."
        )
    existing = target
    while not existing.exists():  # the nearest existing ancestor, which must be a directory
        existing = existing.parent
    if existing != target and not existing.is_dir():
        raise OutputPathError(
            f"Output path {str(target)!r} cannot be created: {str(existing)!r} is a file, not a directory. "
            f"Choose another {option}."
        )
    _check_protected(target, protected, option)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"Output path {str(target)!r} is a file, not a directory. Choose another {option}.")
    if _read_only(existing):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(existing))
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise OutputExistsError(
                f"Output directory {str(target)!r} already exists and is not empty. Pass "
                f"{'--force' if _is_cli(option) else 'force=True'} to replace an earlier export of hfexport, or "
                f"choose another {option}."
            )
        problem = replace_refusal(target)
        if problem:
            raise OutputExistsError(
                f"{'--force' if _is_cli(option) else 'force=True'} only replaces a directory that hfexport wrote, and "
                f"{str(target)!r} {problem}. Nothing was changed: move your files away or choose another {option}."
            )
    return target


def _is_cli(option: str) -> bool:
    return option.startswith("--")


def _passing(option: str, example: str) -> str:
    """How to pass ``example`` as ``option``: ``--output_dir hf_model`` (CLI) or ``output_dir='hf_model'``."""
    return f"{option} {example}" if _is_cli(option) else f"{option}={example!r}"


#: The longest file name (one path component) and whole path, in bytes, that Linux file systems take.
NAME_MAX = 255
PATH_MAX = 4096


def output_path_text(output_dir: Any, *, option: str = "output_dir") -> Path:
    """``output_dir`` as an absolute path (``~`` expanded, nothing on disk read), refusing what no file system can
    hold: a value that is not a path, an empty one (an unset shell variable), a ``~user`` of no known user, a name
    that is not UTF-8 (safetensors cannot open it), a name longer than 255 bytes or a path longer than 4096 bytes.

    Args:
        output_dir: The path as given.
        option: How the caller names it, for the messages (see :func:`check_output_path`).

    Raises:
        OutputPathError: naming the problem and ``option``.
    """
    if not isinstance(output_dir, (str, os.PathLike)):
        raise OutputPathError(
            f"Invalid value for {option}={shown(output_dir)}: expected a path (a str or os.PathLike), not a "
            f"{type(output_dir).__name__}."
        )
    text = os.fsdecode(os.fspath(output_dir))
    if not text.strip():
        raise OutputPathError(
            f"The output directory ({option}) is an empty string (an unset shell variable?). Pass the directory to "
            f"create: {_passing(option, 'hf_exports' if not _is_cli(option) else 'DIR')}."
        )
    try:
        expanded = Path(text).expanduser()
    except RuntimeError:  # "Could not determine home directory": ~user of no known user, or no HOME
        raise OutputPathError(
            f"{_passing(option, text)} starts with {text.split('/')[0]!r}, which names no known user's home "
            "directory. "
            f"Pass the path without '~', or an absolute one."
        ) from None
    target = expanded.absolute()
    try:
        os.fsencode(target).decode("utf-8")
    except UnicodeDecodeError:
        raise OutputPathError(
            f"Output path {str(target)!r} is not valid UTF-8, which safetensors cannot open. Choose a UTF-8 name "
            f"for {option}."
        ) from None
    too_long = [part for part in target.parts if len(os.fsencode(part)) > NAME_MAX]
    if too_long:
        name = too_long[0]
        raise OutputPathError(
            f"{option}: the name {name[:40]!r}... is {len(os.fsencode(name))} bytes long; file systems take names of "
            f"at most {NAME_MAX} bytes. Choose a shorter {option}."
        )
    if len(os.fsencode(target)) >= PATH_MAX - 64:  # room for step_XXXXXX, temporaries and the files' names
        raise OutputPathError(
            f"{option}: the path is {len(os.fsencode(target))} bytes long; file systems take paths of at most "
            f"{PATH_MAX} bytes, including the files written in it. Choose a shorter {option}."
        )
    return target


def check_export_root(output_dir: Any, *, option: str = "output_dir", probe: bool = True) -> Path:
    """The export root of an ``HFExporter`` or ``HFExportCallback``, checked when it is built (not at the first
    export): what :func:`output_path_text` refuses, then (with ``probe``, on the rank that writes) a root under a
    file, and a root that cannot be written (read-only, no permission), found by creating and removing an empty
    directory in it (or in its nearest existing ancestor, when it does not exist yet).

    Args:
        output_dir: The root as given.
        option: How the caller names it, for the messages (``"output_dir"``, ``"dirpath"``).
        probe: Check the file system too.

    Returns:
        The root, ``~`` expanded (relative if it was given relative).

    Raises:
        OutputPathError: naming the problem, ``option`` and the fix.
    """
    target = output_path_text(output_dir, option=option)
    root = Path(os.fsdecode(os.fspath(output_dir))).expanduser()
    if not probe:
        return root
    existing = target
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.exists() else "a broken symlink"
        raise OutputPathError(
            f"{option}={str(root)!r} cannot be used: {str(existing)!r} is {what}, not a directory. Choose another "
            f"{option}."
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hfexport-probe-", dir=existing))
    except OSError as exc:
        raise OutputPathError(
            f"{option}={str(root)!r} cannot be written: creating a directory in {str(existing)!r} fails "
            f"({exc.strerror or exc}). Choose a directory you can write to as {option}, or fix its permissions."
        ) from None
    return root


def _check_protected(target: Path, protected: Sequence[str | os.PathLike[str]], option: str = "output_dir") -> None:
    """Refuse the directories an export must never replace, compared through symlinks."""
    real = Path(os.path.realpath(target))
    fix = f"Pass a new directory for the export, e.g. {_passing(option, 'hf_model')}."
    if real == real.parent or os.path.ismount(real):
        raise OutputPathError(f"Output path {str(target)!r} is a file-system root or mount point. {fix}")
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was removed: nothing to protect there
        cwd = None
    if cwd is not None and cwd.is_relative_to(real):
        what = "the working directory" if real == cwd else "an ancestor of the working directory"
        raise OutputPathError(f"Output path {str(target)!r} is {what}. {fix}")
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no home directory known
        home = None
    if home is not None and real == home:
        raise OutputPathError(f"Output path {str(target)!r} is the home directory. {fix}")
    for path in protected:
        source = Path(os.path.realpath(os.fspath(path)))
        if source.is_relative_to(real):
            raise OutputPathError(f"Output path {str(target)!r} holds {str(path)!r}, which is being read. {fix}")


def _read_only(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (``False`` where that cannot be told)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # Windows: no statvfs
        return False


def replace_refusal(directory: Path) -> str | None:
    """Why ``force`` may not replace ``directory``, or ``None`` when it may.

    A directory may be replaced only when hfexport wrote it: its ``hfexport.json`` manifest is there and lists
    every regular file below it, with the size it was written with (nothing else: no other file, symlink,
    empty directory or special file). An empty directory may always be used.
    """
    found: dict[str, int] = {}
    foreign: list[str] = []
    _scan(directory, "", found, foreign)
    if not found and not foreign:
        return None
    if MANIFEST_NAME not in found:
        return f"has no {MANIFEST_NAME} manifest (it was not written by hfexport)"
    sizes = _listed(directory)
    if sizes is None:
        return f"has an unreadable {MANIFEST_NAME} manifest"
    extra = foreign + sorted(name for name in found if name not in sizes and name != MANIFEST_NAME)
    if extra:
        shown = ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        return f"holds {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} its {MANIFEST_NAME} does not list ({shown})"
    changed = sorted(name for name, size in found.items() if name in sizes and sizes[name] != size)
    if changed:
        return f"holds files changed since hfexport wrote them ({', '.join(changed[:3])})"
    return None


def _listed(directory: Path) -> dict[str, int] | None:
    """The files the manifest of ``directory`` lists, with their sizes; ``None`` when it cannot be read."""
    try:
        listed = json.loads((directory / MANIFEST_NAME).read_bytes())["files"]
        return {str(name): int(entry["size"]) for name, entry in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _scan(directory: Path, prefix: str, found: dict[str, int], foreign: list[str]) -> None:
    """Regular files below ``directory`` (relative name → size) and everything else (names in ``foreign``)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_file(follow_symlinks=False):
                found[rel] = entry.stat(follow_symlinks=False).st_size
            elif entry.is_dir(follow_symlinks=False):
                before = len(found) + len(foreign)
                _scan(Path(entry.path), rel + "/", found, foreign)
                if len(found) + len(foreign) == before:
                    foreign.append(rel + "/")
            else:
                foreign.append(rel)


def write_hf_directory(
    output_dir: str | os.PathLike[str],
    tensors: Sequence[OutputTensor],
    files: Mapping[str, bytes | str],
    *,
    manifest: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    max_shard_size: int | str = "5GB",
    force: bool = False,
    protected: Sequence[str | os.PathLike[str]] = (),
    progress: bool | None = None,
    workers: int = 1,
    io: str = "buffered",
    option: str = "output_dir",
    log_level: int = logging.INFO,
) -> WriteResult:
    """Write a complete Hugging Face directory atomically and verify it.

    Args:
        output_dir: The directory to publish.
        tensors: The tensors, in file order; each is produced (``fill``) chunk by chunk as it is written.
        files: Other files: name → content (``config.json``, ``generation_config.json``, ``README.md``, ...).
        manifest: Facts for ``hfexport.json`` (step, dtype, ...); file sizes and checksums are added.
        tokenizer: A tokenizer to write (``tokenizer.json`` + ``tokenizer_config.json``): an
            :class:`~hfexport.tokenizer.ExportTokenizer` or any spec :func:`~hfexport.tokenizer.resolve_tokenizer`
            takes (``None``: none).
        max_shard_size: Past this many bytes of tensors, write shards plus ``model.safetensors.index.json``.
        force: Replace an earlier export of hfexport at ``output_dir`` (atomically); never anything else (see
            :func:`check_output_path`).
        protected: Paths the output directory must not hold (the checkpoint being read).
        progress: Show a progress bar; ``None`` shows it only on a terminal.
        workers: Threads producing the weights in parallel (``1``: the calling thread only).
        io: How the weights reach the disk: ``"buffered"`` (default), ``"auto"`` or ``"direct"`` (see
            :func:`hfexport.chunkio.write_shard`; ``HFEXPORT_DIRECT_IO`` overrides it).
        option: How the caller names ``output_dir``, for the messages (see :func:`check_output_path`).
        log_level: The level of the "Wrote ..." line (the exporter logs its own line per version, at ``INFO``).

    Returns:
        What was written.

    Raises:
        OutputPathError: the output path must not or cannot be used (see :func:`check_output_path`).
        OutputExistsError: the output path is a file, a non-empty directory without ``force``, a directory that
            hfexport did not write, or it appeared or was filled while writing (nothing is published then).
        VerificationError: the written files do not hold what was meant (nothing is published).
        ValueError: a file name that would lead out of the directory, or a ``.json`` file that is not JSON.
    """
    start = time.perf_counter()
    _check_files(files)
    target = check_output_path(output_dir, force=force, protected=protected, option=option)
    max_shard = parse_size(max_shard_size)
    created = _make_parents(target.parent)
    clean_stale_temporaries(target.parent, target.name)
    try:
        container = make_temporary(target.parent, target.name, _TMP_TAG)
    except BaseException:
        _remove_created(created)
        raise
    tmp = container / PAYLOAD
    identity: tuple[int, int] | None = None
    try:
        tmp.mkdir()
        identity = _identity(tmp)
        result = _write_all(tmp, tensors, files, manifest, tokenizer, max_shard, progress, workers, io)
        _verify(tmp, result.records, result.small, result.crc32)  # every file was fsynced as it was written
        fsync_tree(tmp)
        _publish(tmp, target, force=force, protected=protected, option=option)
    except BaseException as exc:
        published = identity is not None and _identity(target) == identity
        if isinstance(exc, _StrandedError):
            release_temporary(container)  # it holds the user's previous directory: never removed
        elif published:
            _dispose(container)  # the version ``target`` replaced, if the swap put it there
        else:
            remove_temporary(container)  # the unpublished write
        _remove_created(created)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: on their way, untouched
            note_interrupt(exc, target, published=published)
        raise
    _dispose(container)
    out = WriteResult(
        path=target,
        files=result.sizes,
        crc32=result.crc32,
        tensor_count=len(result.records),
        tensor_bytes=sum(r.nbytes for r in result.records),
        seconds=time.perf_counter() - start,
    )
    logger.log(
        log_level,
        "Wrote %s (%d tensors, %.1f MB) in %.2fs",
        target,
        out.tensor_count,
        out.tensor_bytes / 1e6,
        out.seconds,
    )
    return out


@dataclass
class _Written:
    records: list[TensorRecord]
    sizes: dict[str, int]
    crc32: dict[str, str]
    small: dict[str, bytes]  # the small files' contents, as written


def _shard(tensors: Sequence[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _check_files(files: Mapping[str, bytes | str]) -> None:
    """Refuse, before anything is written, a file name that is not a plain relative path (each is written as
    ``tmp / name``: it must not lead out of the temporary) and a ``.json`` file that is not strict JSON (the
    tokenizer's are made by serializers)."""
    for name, content in files.items():  # written as ``tmp / name``: a name must not lead out of the temporary
        why = unsafe_name(name)
        if why:
            raise ValueError(f"Cannot write the file {name!r} into a model directory: the name {why}.")
        if name.endswith(".json"):  # refused before anything is written (the tokenizer's are made by serializers)
            try:
                strict_json(content)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"Cannot write {name!r}: it is not valid JSON ({exc}).") from None


def _write_all(
    tmp: Path,
    tensors: Sequence[OutputTensor],
    files: Mapping[str, bytes | str],
    manifest: Mapping[str, Any] | None,
    tokenizer: Any,
    max_shard: int,
    progress: bool | None,
    workers: int,
    io: str,
) -> _Written:
    from tqdm.auto import tqdm

    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in the output")
    shards = _shard(tensors, max_shard)
    total = sum(t.nbytes for t in tensors)
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    records: list[TensorRecord] = []
    sizes: dict[str, int] = {}
    checksums: dict[str, str] = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing", disable=disable, leave=False) as bar:
        bar_lock = threading.Lock()

        def advance(n: int) -> None:  # called from the writer's worker threads
            with bar_lock:
                bar.update(n)

        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards):
            fname = SINGLE_FILE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            recs = [TensorRecord(t.name, t.dtype, t.shape, t.nbytes, file=fname) for t in shard]
            written = write_safetensors(tmp / fname, recs, shard, io=io, workers=workers, on_progress=advance)
            records.extend(recs)
            sizes[fname] = written.size
            checksums[fname] = f"{written.crc32:08x}"
            weight_map.update({r.name: fname for r in recs})
        small = {name: _content(value) for name, value in files.items()}
        if tokenizer is not None:
            small.update(_tokenizer_files(tokenizer, protected=set(small) | set(sizes) | {INDEX_FILE, MANIFEST_NAME}))
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            small[INDEX_FILE] = (json_dumps(index, name=INDEX_FILE, indent=2) + "\n").encode()
        for name, content in small.items():
            _write_file(tmp / name, content)
            sizes[name] = len(content)
            checksums[name] = f"{crc32(content):08x}"
        if manifest is not None:
            body = dict(manifest)
            body["files"] = {name: {"size": sizes[name], "crc32": checksums[name]} for name in sorted(sizes)}
            content = (json_dumps(body, name=MANIFEST_NAME, indent=2, default=str) + "\n").encode()
            _write_file(tmp / MANIFEST_NAME, content)
            sizes[MANIFEST_NAME] = len(content)
            checksums[MANIFEST_NAME] = f"{crc32(content):08x}"
    return _Written(records, sizes, checksums, {name: small[name] for name in small if name != INDEX_FILE})


def _content(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def note_interrupt(exc: BaseException, target: Path, published: bool) -> None:
    """Record on a KeyboardInterrupt/SystemExit whether ``target`` was published before it (see
    :func:`interrupt_outcome`); the exception itself goes on untouched."""
    outcomes = getattr(exc, "hfexport_outcomes", None)
    if not isinstance(outcomes, list):
        outcomes = []
        with contextlib.suppress(AttributeError, TypeError):
            exc.hfexport_outcomes = outcomes  # type: ignore[attr-defined]  # our own attribute on the exception
    outcomes.append((target, published))


def interrupt_outcome(exc: BaseException) -> str:
    """What an interrupted write left, for the message that reports the interrupt.

    Args:
        exc: A ``KeyboardInterrupt`` (or ``SystemExit``) that went through :func:`write_hf_directory`.

    Returns:
        ``"nothing was published"`` when the interrupt came before the rename, else ``"PATH was published
        (complete) before the interrupt"``.
    """
    published = [str(target) for target, done in getattr(exc, "hfexport_outcomes", []) if done]
    if published:
        return f"{', '.join(published)} was published (complete) before the interrupt"
    return "nothing was published"


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, content)


def _tokenizer_files(tokenizer: Any, protected: set[str]) -> dict[str, bytes]:
    """The tokenizer's files (see :mod:`hfexport.tokenizer`), to be written as regular files like the others.

    Only the files a tokenizer is made of are read from a source, and only ``tokenizer.json``,
    ``tokenizer_config.json`` and (for a tokenizer converted from one) the sentencepiece ``tokenizer.model`` are
    written, from the bytes read: nothing else of a tokenizer directory (no symlink, no stray file) enters the
    export, and a tokenizer never replaces one of the model's files.
    """
    resolved = resolve_tokenizer(tokenizer)
    if resolved is None:
        return {}
    clash = sorted(set(resolved.files) & protected)
    if clash:
        raise ValueError(f"The tokenizer's files {clash} would replace the model's; nothing was written.")
    return {name: bytes(content) for name, content in resolved.files.items()}


def _verify(tmp: Path, records: list[TensorRecord], files: Mapping[str, bytes], checksums: Mapping[str, str]) -> None:
    """Reopen everything and compare it with what was meant to be written (:func:`check_directory`).

    Raises:
        VerificationError: with every problem found.
    """
    problems = check_directory(tmp, Expected(records, files, tuple(checksums))).problems
    if problems:
        raise VerificationError(f"the written directory is not what was meant: {'; '.join(problems)}")


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing ancestors; return those this call created, outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # made meanwhile by someone else: theirs, not ours to remove
            continue
        except BaseException:
            _remove_created(created)
            raise
        created.append(path)
    return created


def _remove_created(created: Sequence[Path]) -> None:
    """Remove the directories :func:`_make_parents` created, innermost first, as long as they are empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:  # not empty (someone else's files) or gone: leave it and what is above it
            return


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class _StrandedError(OutputExistsError):
    """A swap could not be undone: the temporary path holds the user's previous directory (never removed)."""


def _renameat2(a: Path, b: Path, flags: int) -> int | None:
    """Linux ``renameat2(a, b, flags)``: ``0``, or the ``errno`` of a failure; ``None`` where unsupported."""
    renameat2 = libc_function(
        "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    )
    if renameat2 is None:
        return None
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return 0
    err = ctypes.get_errno()
    return None if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) else err  # old kernel / file system


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); ``False`` where unsupported."""
    return _renameat2(a, b, _RENAME_EXCHANGE) == 0


def _appeared(target: Path, option: str) -> OutputExistsError:
    return OutputExistsError(
        f"{str(target)!r} appeared or was filled while the export was written (by another program?); its contents "
        f"are kept and nothing was published. Move them away, or choose another {option}."
    )


def _rename_noreplace(tmp: Path, target: Path, option: str = "output_dir") -> None:
    """Rename ``tmp`` to ``target`` unless ``target`` holds anything.

    ``renameat2(RENAME_NOREPLACE)`` where available; otherwise (and onto an empty directory) a plain
    ``rename(2)``, which replaces only an empty directory and fails on a non-empty one, atomically either way.

    Raises:
        OutputExistsError: ``target`` exists and is not an empty directory.
    """
    err = _renameat2(tmp, target, _RENAME_NOREPLACE)
    if err == 0:
        return
    if err is not None and err != errno.EEXIST:
        raise OSError(err, os.strerror(err), str(target))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise _appeared(target, option)
    try:
        if os.name == "nt" and target.is_dir():
            target.rmdir()  # Windows' rename never replaces a directory; rmdir refuses a non-empty one
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR) or target.exists():
            raise _appeared(target, option) from exc
        raise


def _changed(target: Path, problem: str, option: str) -> OutputExistsError:
    return OutputExistsError(
        f"{'--force' if _is_cli(option) else 'force=True'} only replaces a directory that hfexport wrote, and "
        f"{str(target)!r} changed while the export was written: it now {problem}. It was kept as it is and nothing "
        f"was published; move your files away or choose another {option}."
    )


def _publish(
    tmp: Path,
    target: Path,
    *,
    force: bool,
    protected: Sequence[str | os.PathLike[str]] = (),
    option: str = "output_dir",
) -> None:
    """Move the finished temporary directory into place.

    Without ``force`` nothing is replaced but an empty directory. With ``force``, a non-empty ``target`` is
    checked again now (it must still be an export of hfexport), swapped atomically with the temporary, and the
    old version (then at the temporary's path) checked once more before its files are removed: if anything
    appeared in it meanwhile, the swap is undone and the user's directory stays as it was.

    Raises:
        OutputExistsError: ``target`` appeared, was filled, or is no longer an export of hfexport.
    """
    if not (force and target.is_dir() and not target.is_symlink() and any(target.iterdir())):
        _rename_noreplace(tmp, target, option)
        fsync_dir(target.parent)
        return
    check_output_path(target, force=True, protected=protected, option=option)
    if _exchange(tmp, target):
        old = tmp  # the swap put the previous version at the temporary's path
        problem = replace_refusal(old)
        if problem:
            if not _exchange(tmp, target):
                raise _StrandedError(
                    f"{str(target)!r} changed while the export was written and the swap could not be undone: "
                    f"your previous directory is at {str(tmp)!r}, untouched; move it back."
                )
            raise _changed(target, problem, option)
        fsync_dir(target.parent)
        _remove_export(old)
        return
    if not target.exists():  # removed meanwhile: nothing left to replace
        _rename_noreplace(tmp, target, option)
        fsync_dir(target.parent)
        return
    container = make_temporary(target.parent, target.name, _OLD_TAG)
    old = container / PAYLOAD
    try:
        os.rename(target, old)
    except BaseException:
        remove_temporary(container)
        raise
    problem = replace_refusal(old)
    if problem:
        os.rename(old, target)
        remove_temporary(container)
        raise _changed(target, problem, option)
    try:
        _rename_noreplace(tmp, target, option)
    except BaseException:
        os.rename(old, target)
        remove_temporary(container)
        raise
    fsync_dir(target.parent)
    _dispose(container)


def _remove_export(directory: Path) -> None:
    """Remove a replaced export: the files its manifest lists, then its directories, if they are empty.

    Anything else (a file that appeared at the last moment) is kept, with the directory, and logged.
    """
    listed = _listed(directory)  # checked by replace_refusal before anything is removed
    names = [*listed, MANIFEST_NAME] if listed is not None else []
    root = directory.resolve()
    for name in names:
        path = directory / name
        if resolve_inside(path, root)[1]:  # never outside the directory ("../x" in a manifest)
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
            except OSError:
                pass
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    try:
        directory.rmdir()
    except OSError:
        logger.warning(
            "Kept %s (the replaced export): it holds files hfexport did not write. Remove it once checked.",
            directory,
        )


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


def make_temporary(parent: Path, name: str, tag: str = _TMP_TAG) -> Path:
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
    if tag not in (_TMP_TAG, _OLD_TAG):
        raise ValueError(f"Invalid temporary tag {tag!r}: expected {_TMP_TAG!r} or {_OLD_TAG!r}.")
    path = parent / temporary_name(name, tag, os.getpid(), uuid.uuid4().hex[:8])
    content = json_dumps(
        {
            "hfexport_temporary": 1,
            "target": name,
            "tag": tag.strip(".-"),
            **_process_identity(),
            "pid": os.getpid(),
            "start_time": _start_time(os.getpid()),
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


def _dispose(container: Path) -> None:
    """Remove a temporary after publishing. Its payload, if any, is the version that was replaced: only the files
    its manifest lists are removed (:func:`_remove_export`); if anything else is left, the temporary is released."""
    payload = container / PAYLOAD
    if payload.exists():
        _remove_export(payload)
    if payload.exists():
        release_temporary(container)
    else:
        remove_temporary(container)


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
        dead, why = _writer_is_dead(marker)
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
    return parent / f".{name}.tmp-{pid}-{_start_time(pid) or 0}-{_where()}-{uuid.uuid4().hex[:8]}"


def _where() -> str:
    """8 hex digits naming this host, boot and PID namespace (a PID means something only within all three)."""
    here = _process_identity()
    text = "\0".join(str(here[key]) for key in ("host", "boot_id", "pid_namespace"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


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
    if match["where"] != _where():
        logger.info("Leaving %s: made on another host, boot or PID namespace, whose state is unknown here", entry)
        return False
    dead, why = _process_is_dead(pid, start)
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


def _writer_is_dead(marker: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the process that made a temporary is known to be dead, and why (or why that is not known)."""
    pid = marker["pid"]
    here = _process_identity()
    for key, what in (("host", "host"), ("boot_id", "boot"), ("pid_namespace", "PID namespace")):
        if marker.get(key) != here[key]:
            return False, f"made by PID {pid} in another {what} ({marker.get(key)!r}), whose state is unknown here"
    return _process_is_dead(pid, marker.get("start_time"))


def _process_is_dead(pid: int, start: int | None) -> tuple[bool, str]:
    """Whether process ``pid`` of this host, started at ``start`` (``None`` or ``0``: unknown), has exited."""
    if not _pid_alive(pid):
        return True, f"PID {pid} has exited"
    now = _start_time(pid)
    if start and now is not None and start != now:
        return True, f"PID {pid} has exited (that PID now belongs to another process)"
    return False, f"made by PID {pid}, which is still running"


@functools.lru_cache(maxsize=1)
def _process_identity() -> dict[str, str | None]:
    """Where this process runs: host name, boot id and PID namespace (``None`` where the OS does not say)."""

    def read(path: str, link: bool = False) -> str | None:
        try:
            return os.readlink(path) if link else Path(path).read_text().strip()
        except OSError:
            return None

    return {
        "host": socket.gethostname(),
        "boot_id": read("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": read("/proc/self/ns/pid", link=True),
    }


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/PID/stat`` (after the command name), or ``None`` where there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    """The process's start time (field 22 of ``/proc/PID/stat``, clock ticks since boot); ``None`` if unknown."""
    fields = _proc_stat(pid)
    if fields is None or len(fields) < 20 or not fields[19].isdigit():
        return None
    return int(fields[19])


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it has exited and only waits to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True  # cannot tell: assume it runs
    fields = _proc_stat(pid)
    return not (fields is not None and fields and fields[0] in ("Z", "X"))
