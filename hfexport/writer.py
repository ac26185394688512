"""Writing a Hugging Face model directory atomically, then proving it holds what was meant.

Everything goes into a hidden temporary sibling (``.NAME.tmp-PID-XXXX``) of the target: safetensors shards
(produced and written chunk by chunk, their CRC-32 computed as they are written: see
:mod:`hfexport.chunkio`) and their index, ``config.json`` and the other small files, the tokenizer, and
``hfexport.json`` (a manifest with every file's size and CRC-32). Each file and the directory are fsynced, the
result is verified again as a whole by :func:`hfexport.dircheck.check_directory` (every shard's header checked as
strictly as ``safetensors`` does and against what was written: names, dtypes, shapes, offsets, sizes; the index;
the small files' contents), and only then the directory is renamed into place. Replacing an existing
directory (``force``) swaps the two atomically where the OS allows (Linux ``renameat2(RENAME_EXCHANGE)``), so
readers see the old version or the new one, never a mix.

A failure removes the temporary directory; a killed process leaves only a hidden temporary, which
:func:`clean_stale_temporaries` removes on the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checksum import crc32_file
from .dircheck import Expected, check_directory, unsafe_name
from .errors import OutputExistsError, OutputPathError, VerificationError
from .fsutil import fsync_dir, fsync_tree, libc_function
from .names import INDEX_FILE, MANIFEST_NAME, SINGLE_FILE
from .safetensors_io import OutputTensor, TensorRecord, write_safetensors

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "OutputTensor",
    "WriteResult",
    "check_output_path",
    "clean_stale_temporaries",
    "parse_size",
    "replace_refusal",
    "write_hf_directory",
]

_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"


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
) -> Path:
    """Refuse an output path that cannot or must not receive the export; return it as an absolute path.

    Refused whatever ``force`` says: an empty path (an unset shell variable), a name that is not UTF-8, a symlink,
    a path under a file, a file, the working directory or one of its ancestors, the home directory, a
    file-system root or mount point, and a directory holding one of ``protected`` (the checkpoint being read).
    A non-empty directory is refused without ``force``; with it, only a directory hfexport wrote may be replaced
    (see :func:`replace_refusal`).

    Args:
        output_dir: The directory to publish.
        force: Whether an existing export may be replaced.
        protected: Paths the output must not hold (the checkpoint file, the tokenizer being copied).

    Returns:
        The absolute output path (``~`` expanded, symlinks in its parents kept).

    Raises:
        OutputPathError: the path cannot be used (the message says which and the fix).
        OutputExistsError: the path is occupied (a file, a non-empty directory, a directory hfexport did not write).
        OSError: the file system is read-only (``EROFS``; an environment failure, not bad input).
    """
    text = os.fsdecode(os.fspath(output_dir))
    if not text.strip():
        raise OutputPathError(
            "The output directory is an empty string (an unset shell variable?). Pass the directory to create: "
            "--output_dir DIR (output_dir=...)."
        )
    target = Path(text).expanduser().absolute()
    try:
        os.fsencode(target).decode("utf-8")
    except UnicodeDecodeError:
        raise OutputPathError(
            f"Output path {str(target)!r} is not valid UTF-8, which safetensors cannot open. Choose a UTF-8 name "
            "for --output_dir."
        ) from None
    if target.is_symlink():
        dest = os.readlink(target)
        raise OutputPathError(
            f"Output path {str(target)!r} is a symlink (to {dest!r}): publishing renames a directory into place, "
            "which would replace the link itself. Pass the link's target as --output_dir, or remove the link."
        )
    existing = target
    while not existing.exists():  # the nearest existing ancestor, which must be a directory
        existing = existing.parent
    if existing != target and not existing.is_dir():
        raise OutputPathError(
            f"Output path {str(target)!r} cannot be created: {str(existing)!r} is a file, not a directory. "
            "Choose another --output_dir."
        )
    _check_protected(target, protected)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"Output path {str(target)!r} is a file, not a directory. Choose another --output_dir.")
    if _read_only(existing):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(existing))
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise OutputExistsError(
                f"Output directory {str(target)!r} already exists and is not empty. Pass --force (force=True) to "
                "replace an earlier export of hfexport, or choose another --output_dir."
            )
        problem = replace_refusal(target)
        if problem:
            raise OutputExistsError(
                f"--force only replaces a directory that hfexport wrote, and {str(target)!r} {problem}. Nothing was "
                "changed: move your files away or choose another --output_dir."
            )
    return target


def _check_protected(target: Path, protected: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse the directories an export must never replace, compared through symlinks."""
    real = Path(os.path.realpath(target))
    fix = "Pass a new directory for the export, e.g. --output_dir hf_model."
    if real == real.parent or os.path.ismount(real):
        raise OutputPathError(f"Output path {str(target)!r} is a file-system root or mount point. {fix}")
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was removed: nothing to protect there
        cwd = None
    if cwd is not None and (real == cwd or real in cwd.parents):
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
        if source == real or real in source.parents:
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
    try:
        listed = json.loads((directory / MANIFEST_NAME).read_bytes())["files"]
        sizes = {str(name): int(entry["size"]) for name, entry in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"has an unreadable {MANIFEST_NAME} manifest"
    extra = foreign + sorted(name for name in found if name not in sizes and name != MANIFEST_NAME)
    if extra:
        shown = ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        return f"holds {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} its {MANIFEST_NAME} does not list ({shown})"
    changed = sorted(name for name, size in found.items() if name in sizes and sizes[name] != size)
    if changed:
        return f"holds files changed since hfexport wrote them ({', '.join(changed[:3])})"
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

    Returns:
        What was written.

    Raises:
        OutputPathError: the output path must not or cannot be used (see :func:`check_output_path`).
        OutputExistsError: the output path is a file, a non-empty directory without ``force``, a directory that
            hfexport did not write, or it appeared or was filled while writing (nothing is published then).
        VerificationError: the written files do not hold what was meant (nothing is published).
    """
    start = time.perf_counter()
    for name in files:  # written as ``tmp / name``: a name must not lead out of the temporary directory
        why = unsafe_name(name)
        if why:
            raise ValueError(f"Cannot write the file {name!r} into a model directory: the name {why}.")
    target = check_output_path(output_dir, force=force, protected=protected)
    max_shard = parse_size(max_shard_size)
    created = _make_parents(target.parent)
    clean_stale_temporaries(target.parent, target.name)
    tmp = target.parent / f".{target.name}{_TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except BaseException:
        _remove_created(created)
        raise
    try:
        result = _write_all(tmp, tensors, files, manifest, tokenizer, max_shard, progress, workers, io)
        _verify(tmp, result.records, result.small, result.crc32)  # every file was fsynced as it was written
        fsync_tree(tmp)
        _publish(tmp, target, force=force, protected=protected)
    except BaseException as exc:
        if not isinstance(exc, _StrandedError):  # never remove a temporary that holds the user's files
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    out = WriteResult(
        path=target,
        files=result.sizes,
        crc32=result.crc32,
        tensor_count=len(result.records),
        tensor_bytes=sum(r.nbytes for r in result.records),
        seconds=time.perf_counter() - start,
    )
    logger.info(
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
            small[INDEX_FILE] = (json.dumps(index, indent=2) + "\n").encode()
        for name, content in small.items():
            _write_file(tmp / name, content)
            sizes[name] = len(content)
            checksums[name] = f"{zlib.crc32(content):08x}"
        for path in sorted(tmp.rglob("*")):
            rel = path.relative_to(tmp).as_posix()
            if path.is_file() and rel not in checksums:
                checksums[rel] = f"{crc32_file(path):08x}"
                sizes[rel] = path.stat().st_size
        if manifest is not None:
            body = dict(manifest)
            body["files"] = {name: {"size": sizes[name], "crc32": checksums[name]} for name in sorted(sizes)}
            content = (json.dumps(body, indent=2, default=str) + "\n").encode()
            _write_file(tmp / MANIFEST_NAME, content)
            sizes[MANIFEST_NAME] = len(content)
            checksums[MANIFEST_NAME] = f"{zlib.crc32(content):08x}"
    return _Written(records, sizes, checksums, {name: small[name] for name in small if name != INDEX_FILE})


def _content(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


def _tokenizer_files(tokenizer: Any, protected: set[str]) -> dict[str, bytes]:
    """The tokenizer's files (see :mod:`hfexport.tokenizer`), to be written as regular files like the others.

    Only the files a tokenizer is made of are read from a source, and only ``tokenizer.json`` and
    ``tokenizer_config.json`` are written: nothing else of a tokenizer directory (no symlink, no stray file)
    enters the export, and a tokenizer never replaces one of the model's files.
    """
    from .tokenizer import resolve_tokenizer

    resolved = resolve_tokenizer(tokenizer)
    if resolved is None:
        return {}
    clash = sorted(set(resolved.files) & protected)
    if clash:
        raise ValueError(f"The tokenizer's files {clash} would replace the model's; nothing was written.")
    return {name: bytes(content) for name, content in resolved.files.items()}


def _verify(tmp: Path, records: list[TensorRecord], files: Mapping[str, bytes], checksums: Mapping[str, str]) -> None:
    """Reopen everything and compare it with what was meant to be written (:func:`check_directory`).

    This checks each shard's header as strictly as ``safetensors`` does and against the records (names, dtypes,
    shapes, offsets, sizes), the index, and the small files' contents.

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
    created = []
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


def _appeared(target: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{str(target)!r} appeared or was filled while the export was written (by another program?); its contents "
        "are kept and nothing was published. Move them away, or choose another --output_dir."
    )


def _rename_noreplace(tmp: Path, target: Path) -> None:
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
        raise _appeared(target)
    try:
        if os.name == "nt" and target.is_dir():
            target.rmdir()  # Windows' rename never replaces a directory; rmdir refuses a non-empty one
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR) or target.exists():
            raise _appeared(target) from exc
        raise


def _changed(target: Path, problem: str) -> OutputExistsError:
    return OutputExistsError(
        f"--force only replaces a directory that hfexport wrote, and {str(target)!r} changed while the export was "
        f"written: it now {problem}. It was kept as it is and nothing was published; move your files away or "
        "choose another --output_dir."
    )


def _publish(tmp: Path, target: Path, *, force: bool, protected: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Move the finished temporary directory into place.

    Without ``force`` nothing is replaced but an empty directory. With ``force``, a non-empty ``target`` is
    checked again now (it must still be an export of hfexport), swapped atomically with the temporary, and the
    old version (then at the temporary's path) checked once more before its files are removed: if anything
    appeared in it meanwhile, the swap is undone and the user's directory stays as it was.

    Raises:
        OutputExistsError: ``target`` appeared, was filled, or is no longer an export of hfexport.
    """
    if not (force and target.is_dir() and not target.is_symlink() and any(target.iterdir())):
        _rename_noreplace(tmp, target)
        fsync_dir(target.parent)
        return
    check_output_path(target, force=True, protected=protected)
    if _exchange(tmp, target):
        old = tmp  # the swap put the previous version at the temporary's path
        problem = replace_refusal(old)
        if problem:
            if not _exchange(tmp, target):
                raise _StrandedError(
                    f"{str(target)!r} changed while the export was written and the swap could not be undone: "
                    f"your previous directory is at {str(tmp)!r}, untouched; move it back."
                )
            raise _changed(target, problem)
        fsync_dir(target.parent)
        _remove_export(old)
        return
    if not target.exists():  # removed meanwhile: nothing left to replace
        _rename_noreplace(tmp, target)
        fsync_dir(target.parent)
        return
    old = target.parent / f".{target.name}{_OLD_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    problem = replace_refusal(old)
    if problem:
        os.rename(old, target)
        raise _changed(target, problem)
    try:
        _rename_noreplace(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    fsync_dir(target.parent)
    _remove_export(old)


def _remove_export(directory: Path) -> None:
    """Remove a replaced export: the files its manifest lists, then its directories, if they are empty.

    Anything else (a file that appeared at the last moment) is kept, with the directory, and logged.
    """
    try:
        listed = json.loads((directory / MANIFEST_NAME).read_bytes())["files"]
        names = [str(name) for name in listed] + [MANIFEST_NAME]
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    root = directory.resolve()
    for name in names:
        path = directory / name
        if root in path.resolve().parents:  # never outside the directory ("../x" in a manifest)
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


def clean_stale_temporaries(parent: Path, name: str | None = None) -> list[Path]:
    """Remove hidden temporaries left by killed runs (those whose process is gone).

    Args:
        parent: The directory holding the outputs.
        name: Only temporaries of this output name; ``None`` for all.

    Returns:
        The paths removed.
    """
    removed = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if not entry.name.startswith("."):
            continue
        for tag in (_TMP_TAG, _OLD_TAG):
            if tag not in entry.name:
                continue
            base, _, rest = entry.name[1:].rpartition(tag)
            if name is not None and base != name:
                continue
            pid_text = rest.split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
                continue
            if pid_text.isdigit() and int(pid_text) == os.getpid():
                continue
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("Removed %s, left by an interrupted export", entry)
            removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
