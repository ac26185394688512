"""Writing a Hugging Face model directory atomically, then proving it holds what was meant.

Everything goes into a hidden temporary sibling (``.NAME.tmp-PID-XXXX``) of the target: safetensors shards
(produced and written chunk by chunk, each chunk read back and compared as soon as it is written: see
:mod:`hfexport.chunkio`) and their index, ``config.json`` and the other small files, the tokenizer, and
``hfexport.json`` (a manifest with every file's size and CRC-32). Each file and the directory are fsynced, the
result is verified again as a whole (every shard reopened with ``safetensors``: names, dtypes, shapes, offsets,
sizes; the small files' contents), and only then the directory is renamed into place. Replacing an existing
directory (``force``) swaps the two atomically where the OS allows (Linux ``renameat2(RENAME_EXCHANGE)``), so
readers see the old version or the new one, never a mix.

A failure removes the temporary directory; a killed process leaves only a hidden temporary, which
:func:`clean_stale_temporaries` removes on the next run.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checksum import crc32_file
from .errors import OutputExistsError, VerificationError
from .fsutil import fsync_dir, fsync_tree, libc_function
from .safetensors_io import DTYPE_NAMES, OutputTensor, TensorRecord, read_header, write_safetensors

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "OutputTensor",
    "WriteResult",
    "clean_stale_temporaries",
    "parse_size",
    "write_hf_directory",
]

MANIFEST_NAME = "hfexport.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
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
    """Parse ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count.

    Raises:
        ValueError: not a size.
    """
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"Invalid size {value}: must be > 0.")
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
        size = int(float(number) * factor)
    except ValueError:
        raise ValueError(f"Invalid size {value!r}: expected a number of bytes or e.g. '5GB', '500MB'.") from None
    if size <= 0:
        raise ValueError(f"Invalid size {value!r}: must be > 0.")
    return size


def check_output_path(output_dir: Path, *, force: bool) -> None:
    """Refuse an output path that is a file, or a non-empty directory without ``force``.

    Raises:
        OutputExistsError: with the fix in the message.
    """
    if output_dir.is_symlink() and not output_dir.is_dir():
        raise OutputExistsError(f"Output path {str(output_dir)!r} is a dangling symlink; remove it or pick another.")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(
            f"Output path {str(output_dir)!r} is a file, not a directory. Choose another --output_dir."
        )
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise OutputExistsError(
            f"Output directory {str(output_dir)!r} already exists and is not empty. Pass --force (force=True) "
            "to replace it atomically, or choose another --output_dir."
        )


def write_hf_directory(
    output_dir: str | os.PathLike[str],
    tensors: Sequence[OutputTensor],
    files: Mapping[str, bytes | str],
    *,
    manifest: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    max_shard_size: int | str = "5GB",
    force: bool = False,
    progress: bool | None = None,
    workers: int = 1,
) -> WriteResult:
    """Write a complete Hugging Face directory atomically and verify it.

    Args:
        output_dir: The directory to publish.
        tensors: The tensors, in file order; each is produced (``get()``) just before it is written.
        files: Other files: name → content (``config.json``, ``generation_config.json``, ``README.md``, ...).
        manifest: Facts for ``hfexport.json`` (step, dtype, ...); file sizes and checksums are added.
        tokenizer: A tokenizer object with ``save_pretrained`` or a path (file or directory) to copy in.
        max_shard_size: Past this many bytes of tensors, write shards plus ``model.safetensors.index.json``.
        force: Replace a non-empty ``output_dir`` (atomically).
        progress: Show a progress bar; ``None`` shows it only on a terminal.
        workers: Threads producing and writing the weights in parallel (``1``: the calling thread only).

    Returns:
        What was written.

    Raises:
        OutputExistsError: the output path is a file, or a non-empty directory without ``force``.
        VerificationError: the written files do not hold what was meant (nothing is published).
    """
    start = time.perf_counter()
    target = Path(output_dir).expanduser().absolute()
    check_output_path(target, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent, target.name)
    tmp = target.parent / f".{target.name}{_TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        result = _write_all(tmp, tensors, files, manifest, tokenizer, parse_size(max_shard_size), progress, workers)
        shard_files = sorted({tmp / rec.file for rec in result.records})
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfexport-fsync") as pool:
            # The disk flush and the final verification overlap; nothing is published before both are done.
            synced = pool.submit(_fsync_files, shard_files)
            _verify(tmp, result.records, result.small, result.crc32)
            synced.result()
        fsync_tree(tmp)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
            written = write_safetensors(tmp / fname, recs, shard, workers=workers, on_progress=advance)
            # fsynced by write_hf_directory, while the directory is verified
            records.extend(recs)
            sizes[fname] = written.size
            checksums[fname] = f"{written.crc32:08x}"
            weight_map.update({r.name: fname for r in recs})
        small = {name: _content(value) for name, value in files.items()}
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            small[INDEX_FILE] = (json.dumps(index, indent=2) + "\n").encode()
        for name, content in small.items():
            _write_file(tmp / name, content)
            sizes[name] = len(content)
            checksums[name] = f"{zlib.crc32(content):08x}"
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp, protected=set(small) | set(sizes))
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
    return _Written(records, sizes, checksums, {name: small[name] for name in files})


def _content(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _fsync_files(paths: Sequence[Path]) -> None:
    for path in paths:
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


def _save_tokenizer(tokenizer: Any, tmp: Path, protected: set[str]) -> None:
    """Save a tokenizer object, or copy tokenizer files from a path, without clobbering the model's files."""
    staging = tmp / ".tokenizer"
    staging.mkdir()
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(staging))
    else:
        src = Path(tokenizer).expanduser()
        if src.is_dir():
            for item in src.iterdir():
                if (
                    item.is_file()
                    and not item.name.endswith((".safetensors", ".bin", ".pt"))
                    and item.name
                    not in (
                        "config.json",
                        "generation_config.json",
                        "README.md",
                        MANIFEST_NAME,
                        INDEX_FILE,
                    )
                ):
                    shutil.copy2(item, staging / item.name)
        elif src.is_file():
            shutil.copy2(src, staging / src.name)
        else:
            raise FileNotFoundError(f"Tokenizer path {str(src)!r} does not exist; pass a tokenizer directory or file.")
    for item in staging.iterdir():
        if item.name in protected:
            continue
        with open(item, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(item, tmp / item.name)
    shutil.rmtree(staging)


def _verify(tmp: Path, records: list[TensorRecord], files: Mapping[str, bytes], checksums: Mapping[str, str]) -> None:
    """Reopen everything and compare it with what was meant to be written.

    The tensor bytes were read back and compared chunk by chunk as they were written (:mod:`hfexport.chunkio`);
    this checks each shard as a whole, through ``safetensors`` (names, dtypes, shapes, metadata) and its header
    (offsets, sizes), and the small files' contents.
    """
    from safetensors import safe_open

    by_file: dict[str, list[TensorRecord]] = {}
    for rec in records:
        by_file.setdefault(rec.file, []).append(rec)
    for fname, recs in by_file.items():
        path = tmp / fname
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            expected = {r.name for r in recs}
            if keys != expected:
                raise VerificationError(
                    f"{fname}: tensors {sorted(keys ^ expected)[:5]} differ between the file and what was written"
                )
            if (f.metadata() or {}).get("format") != "pt":
                raise VerificationError(f"{fname}: missing {{'format': 'pt'}} metadata")
            for rec in recs:
                sl = f.get_slice(rec.name)
                if sl.get_dtype() != DTYPE_NAMES[rec.dtype] or tuple(sl.get_shape()) != rec.shape:
                    raise VerificationError(
                        f"{fname}: {rec.name} is {sl.get_dtype()} {sl.get_shape()}, expected "
                        f"{DTYPE_NAMES[rec.dtype]} {list(rec.shape)}"
                    )
        with open(path, "rb", buffering=0) as fh:
            header, data_start = read_header(fh)
            size = os.fstat(fh.fileno()).st_size
        position = 0
        for rec in recs:
            begin, end = header[rec.name]["data_offsets"]
            if (begin, end) != (position, position + rec.nbytes):
                raise VerificationError(
                    f"{fname}: {rec.name} lies at bytes {begin}:{end}, expected {position}:{position + rec.nbytes}"
                )
            position = end
        if size != data_start + position:
            raise VerificationError(f"{fname}: file size {size} does not match its header")
    for name, content in files.items():
        if (tmp / name).read_bytes() != content:
            raise VerificationError(f"{name} does not hold what was written")
        if name.endswith(".json"):
            json.loads(content)
    if len(by_file) > 1:
        index = json.loads((tmp / INDEX_FILE).read_text())
        if index["weight_map"] != {r.name: r.file for r in records}:
            raise VerificationError(f"{INDEX_FILE} does not map every tensor to its shard")
    missing = [name for name in checksums if not (tmp / name).is_file()]
    if missing:
        raise VerificationError(f"files missing after writing: {missing}")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); ``False`` where unsupported."""
    renameat2 = libc_function(
        "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    )
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _publish(tmp: Path, target: Path) -> None:
    """Move the finished temporary directory into place (replacing ``target`` if it exists)."""
    if target.is_dir() and not target.is_symlink():
        if not any(target.iterdir()):
            target.rmdir()
        elif _exchange(tmp, target):
            # ``tmp`` now holds the old version; it is removed below by the caller's cleanup path.
            fsync_dir(target.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        else:
            old = target.parent / f".{target.name}{_OLD_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(tmp, target)
    fsync_dir(target.parent)


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
