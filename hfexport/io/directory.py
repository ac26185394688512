"""Assembling a Hugging Face model directory in a temporary, then proving it holds what was meant.

Everything goes into a hidden temporary sibling of the target (``.NAME.tmp-PID-XXXXXXXX/payload/``, made by
:func:`hfexport.io.temporaries.make_temporary`): safetensors shards (produced and written chunk by chunk, their CRC-32
computed as they are written: see :mod:`hfexport.io.chunkio`) and their index, ``config.json`` and the other small
files, the tokenizer's files (resolved by the caller), and ``hfexport.json`` (a manifest with every file's size and
CRC-32). Each file and the directory are fsynced, the result is verified again as a whole by
:func:`hfexport.io.check.check_directory` (every shard's header checked as strictly as ``safetensors`` does and
against what was written: names, dtypes, shapes, offsets, sizes; the index; the small files' contents), and only
then the directory is published by :func:`hfexport.io.publish.publish_directory` (renamed into place, or swapped
atomically with the export it replaces).

A failure (or ``KeyboardInterrupt``) removes the temporary directory; a killed process leaves only a hidden
temporary, which :func:`~hfexport.io.temporaries.clean_stale_temporaries` removes on a later run.

The rest lives apart: which paths may be written and replaced in :mod:`hfexport.io.outputpath`, temporaries and their
cleanup in :mod:`hfexport.io.temporaries` (with :mod:`hfexport._util.liveness`), the atomic publish in
:mod:`hfexport.io.publish`. Their public names stay importable from here.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfexport._util.checksum import crc32
from hfexport._util.fs import fsync_tree, write_durably
from hfexport._util.jsonio import dumps as json_dumps
from hfexport._util.jsonio import loads as strict_json
from hfexport.errors import OutputExistsError, OutputPathError, VerificationError
from hfexport.io.check import Expected, check_directory, unsafe_name
from hfexport.io.layout import Layout, plan_layout
from hfexport.io.names import INDEX_FILE, MANIFEST_NAME
from hfexport.io.outputpath import (
    NAME_MAX,
    PATH_MAX,
    check_export_root,
    check_output_path,
    output_path_text,
    replace_refusal,
)
from hfexport.io.publish import (
    StrandedError,
    dispose,
    interrupt_outcome,
    make_parents,
    note_interrupt,
    publish_directory,
    remove_created,
)
from hfexport.io.safetensors import OutputTensor, TensorRecord, write_safetensors
from hfexport.io.temporaries import (
    MARKER_NAME,
    PAYLOAD,
    TMP_TAG,
    clean_stale_temporaries,
    make_temporary,
    pointer_temporary,
    release_temporary,
    remove_temporary,
    temporary_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "MARKER_NAME",
    "NAME_MAX",
    "PATH_MAX",
    "PAYLOAD",
    "OutputExistsError",
    "OutputPathError",
    "OutputTensor",
    "WeightsWriter",
    "WriteResult",
    "check_export_root",
    "check_output_path",
    "clean_stale_temporaries",
    "interrupt_outcome",
    "make_temporary",
    "note_interrupt",
    "output_path_text",
    "parse_size",
    "pointer_temporary",
    "release_temporary",
    "remove_temporary",
    "replace_refusal",
    "temporary_name",
    "write_hf_directory",
]


#: ``weights(tmp, layout)``: create every weights file of ``layout`` in ``tmp`` (fsynced); return name → CRC-32.
WeightsWriter = Callable[[Path, Layout], Mapping[str, int]]


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


def write_hf_directory(
    output_dir: str | os.PathLike[str],
    tensors: Sequence[OutputTensor],
    files: Mapping[str, bytes | str],
    *,
    manifest: Mapping[str, Any] | None = None,
    tokenizer_files: Mapping[str, bytes] | None = None,
    max_shard_size: int | str = "5GB",
    force: bool = False,
    protected: Sequence[str | os.PathLike[str]] = (),
    progress: bool | None = None,
    workers: int = 1,
    io: str = "buffered",
    option: str = "output_dir",
    log_level: int = logging.INFO,
    weights: WeightsWriter | None = None,
) -> WriteResult:
    """Write a complete Hugging Face directory atomically and verify it.

    Args:
        output_dir: The directory to publish.
        tensors: The tensors, in file order; each is produced (``fill``) chunk by chunk as it is written.
        files: Other files: name → content (``config.json``, ``generation_config.json``, ``README.md``, ...).
        manifest: Facts for ``hfexport.json`` (step, dtype, ...); file sizes and checksums are added.
        tokenizer_files: The tokenizer's files, already resolved by the caller (name → content: the
            :attr:`~hfexport.tokenizers.tokenizer.ExportTokenizer.files` of
            :func:`~hfexport.tokenizers.tokenizer.resolve_tokenizer`;
            ``None``: none); written like the others, never over one of the model's files.
        max_shard_size: Past this many bytes of tensors, write shards plus ``model.safetensors.index.json``.
        force: Replace an earlier export of hfexport at ``output_dir`` (atomically); never anything else (see
            :func:`check_output_path`).
        protected: Paths the output directory must not hold (the checkpoint being read).
        progress: Show a progress bar; ``None`` shows it only on a terminal.
        workers: Threads producing the weights in parallel (``1``: the calling thread only).
        io: How the weights reach the disk: ``"buffered"`` (default), ``"auto"`` or ``"direct"`` (see
            :func:`hfexport.io.chunkio.write_shard`; ``HFEXPORT_DIRECT_IO`` overrides it).
        option: How the caller names ``output_dir``, for the messages (see :func:`check_output_path`).
        log_level: The level of the "Wrote ..." line (the exporter logs its own line per version, at ``INFO``).
        weights: Writes the weights' files itself (the ranks of a distributed export: see
            :mod:`hfexport.training.sharded`): called with the temporary directory and the :class:`Layout` (every
            file's header and every tensor's byte range), it creates every file of the layout, fsynced, and returns
            each one's CRC-32; ``tensors`` then only give names, dtypes and shapes (their ``fill`` is not called).
            ``None``: the tensors are produced and written here, chunk by chunk.

    Returns:
        What was written.

    Raises:
        OutputPathError: the output path must not or cannot be used (see :func:`check_output_path`).
        OutputExistsError: the output path is a file, a non-empty directory without ``force``, a directory that
            hfexport did not write, or it appeared or was filled while writing (nothing is published then).
        VerificationError: the written files do not hold what was meant (nothing is published).
        ValueError: a file name that would lead out of the directory, a ``.json`` file that is not JSON, or a
            tokenizer file named like one of the model's.
    """
    start = time.perf_counter()
    _check_files(files)
    target = check_output_path(output_dir, force=force, protected=protected, option=option)
    max_shard = parse_size(max_shard_size)
    created = make_parents(target.parent)
    clean_stale_temporaries(target.parent, target.name)
    try:
        container = make_temporary(target.parent, target.name, TMP_TAG)
    except BaseException:
        remove_created(created)
        raise
    tmp = container / PAYLOAD
    identity: tuple[int, int] | None = None
    try:
        tmp.mkdir()
        identity = _identity(tmp)
        result = _write_all(tmp, tensors, files, manifest, tokenizer_files, max_shard, progress, workers, io, weights)
        _verify(tmp, result.records, result.small, result.crc32)  # every file was fsynced as it was written
        fsync_tree(tmp)
        publish_directory(tmp, target, force=force, protected=protected, option=option)
    except BaseException as exc:
        published = identity is not None and _identity(target) == identity
        if isinstance(exc, StrandedError):
            release_temporary(container)  # it holds the user's previous directory: never removed
        elif published:
            dispose(container)  # the version ``target`` replaced, if the swap put it there
        else:
            remove_temporary(container)  # the unpublished write
        remove_created(created)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: on their way, untouched
            note_interrupt(exc, target, published=published)
        raise
    dispose(container)
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
    tokenizer_files: Mapping[str, bytes] | None,
    max_shard: int,
    progress: bool | None,
    workers: int,
    io: str,
    weights: WeightsWriter | None = None,
) -> _Written:
    from tqdm.auto import tqdm

    layout = plan_layout([(t.name, t.dtype, tuple(t.shape)) for t in tensors], max_shard)
    by_name = {t.name: t for t in tensors}
    total = layout.tensor_bytes
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    records: list[TensorRecord] = [rec for file in layout.files for rec in file.records]
    sizes: dict[str, int] = {}
    checksums: dict[str, str] = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing", disable=disable, leave=False) as bar:
        bar_lock = threading.Lock()

        def advance(n: int) -> None:  # called from the writer's worker threads
            with bar_lock:
                bar.update(n)

        if weights is not None:  # the weights are written elsewhere (each rank of a distributed export)
            written_crcs = weights(tmp, layout)
            for file in layout.files:
                sizes[file.name] = file.size
                checksums[file.name] = f"{written_crcs[file.name]:08x}"
        else:
            for file in layout.files:
                shard = [by_name[rec.name] for rec in file.records]
                written = write_safetensors(
                    tmp / file.name, list(file.records), shard, io=io, workers=workers, on_progress=advance
                )
                sizes[file.name] = written.size
                checksums[file.name] = f"{written.crc32:08x}"
        small = {name: _content(value) for name, value in files.items()}
        if tokenizer_files is not None:
            taken = set(small) | set(sizes) | {INDEX_FILE, MANIFEST_NAME}
            small.update(_tokenizer_files(tokenizer_files, protected=taken))
        if layout.index is not None:
            small[INDEX_FILE] = layout.index
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


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, content)


def _tokenizer_files(tokenizer_files: Mapping[str, bytes], protected: set[str]) -> dict[str, bytes]:
    """The tokenizer's files (resolved by the caller: see :mod:`hfexport.tokenizers.tokenizer`), to be written as
    regular files
    like the others.

    The resolver reads only the files a tokenizer is made of, and yields only ``tokenizer.json``,
    ``tokenizer_config.json`` and (for a tokenizer converted from one) the sentencepiece ``tokenizer.model``, from
    the bytes read: nothing else of a tokenizer directory (no symlink, no stray file) enters the export. Here a
    tokenizer file is refused if it would replace one of the model's files.
    """
    clash = sorted(set(tokenizer_files) & protected)
    if clash:
        raise ValueError(f"The tokenizer's files {clash} would replace the model's; nothing was written.")
    return {name: bytes(content) for name, content in tokenizer_files.items()}


def _verify(tmp: Path, records: list[TensorRecord], files: Mapping[str, bytes], checksums: Mapping[str, str]) -> None:
    """Reopen everything and compare it with what was meant to be written (:func:`check_directory`).

    Raises:
        VerificationError: with every problem found.
    """
    problems = check_directory(tmp, Expected(records, files, tuple(checksums))).problems
    if problems:
        raise VerificationError(f"the written directory is not what was meant: {'; '.join(problems)}")
