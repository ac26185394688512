"""What a push may publish, and whether what landed on the Hub is what was meant to.

:func:`publishable_files` lists a version directory's own files: those of its ``hfexport.json`` manifest (plus the
manifest), or, for a directory hfexport did not write, the standard model, config, tokenizer and card files only.
Nothing outside the directory is ever listed: a file that is a symlink leaving it is refused.

:func:`verify_remote` compares the files of a commit as the Hub lists them (``list_repo_tree`` at the commit) with
the local files: the size, and the LFS SHA-256 for LFS files or the git blob id for regular files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hfexport._util.fs import hash_file, resolve_inside, sha256_file
from hfexport.errors import HubError, PushVerificationError
from hfexport.io.check import unsafe_name
from hfexport.io.manifest import manifest_files, read_manifest
from hfexport.io.names import MANIFEST_NAME

__all__ = ["STANDARD_FILES", "git_blob_id", "manifest_files", "publishable_files", "verify_remote"]

logger = logging.getLogger(__name__)

# A directory without a manifest: only these are pushed (weights, configs, tokenizer, card).
STANDARD_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def publishable_files(version_dir: Path) -> list[str]:
    """The files of ``version_dir`` a push publishes, as relative POSIX paths, sorted.

    Args:
        version_dir: A version directory.

    Returns:
        The manifest's files and the manifest itself; or, without a manifest, the standard files present.

    Raises:
        HubError: a listed file is missing, is not a regular file, or resolves outside ``version_dir`` (a symlink
            leaving it, an absolute or ``..`` path in the manifest); or there is nothing to push.
    """
    base = version_dir.resolve()
    manifest_path = version_dir / MANIFEST_NAME
    present = sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file())
    if manifest_path.is_file():
        try:
            listed = read_manifest(version_dir)
        except (OSError, ValueError) as exc:
            raise HubError(
                f"Cannot push {version_dir.name}: its {MANIFEST_NAME} cannot be read ({exc}); run "
                f"`hfexport verify {version_dir}`."
            ) from exc
        if listed is None:
            raise HubError(
                f"Cannot push {version_dir.name}: its {MANIFEST_NAME} is not an hfexport manifest (an object whose "
                f"'files' maps each file to its size and crc32); run `hfexport verify {version_dir}`."
            )
        names = sorted({*listed, MANIFEST_NAME})
        for name in names:
            _check_relative(version_dir, name)
        missing = [n for n in names if not (version_dir / n).is_file() and not (version_dir / n).is_symlink()]
        if missing:
            raise HubError(
                f"Cannot push {version_dir.name}: {missing} listed in {MANIFEST_NAME} are missing; run "
                f"`hfexport verify {version_dir}`."
            )
    else:
        names = [n for n in present if "/" not in n and any(fnmatch.fnmatch(n, pat) for pat in STANDARD_FILES)]
        if not names:
            raise HubError(
                f"Nothing to push in {version_dir}: no {MANIFEST_NAME} and none of the standard model files "
                f"({', '.join(STANDARD_FILES[:4])}, ...)."
            )
        logger.info(
            "%s has no %s (not written by hfexport): pushing only its standard model files: %s",
            version_dir.name,
            MANIFEST_NAME,
            ", ".join(names),
        )
    for name in names:
        _check_inside(version_dir, base, name)
    stray = sorted(set(present) - set(names))
    if stray:
        logger.info(
            "Not pushing %d file(s) of %s that are not part of the version: %s", len(stray), version_dir.name, stray
        )
    return names


def _check_relative(version_dir: Path, name: str) -> None:
    why = unsafe_name(name)
    if why:
        raise HubError(f"Refusing to push {version_dir.name}: {name!r} {why}, not a path inside the version directory.")


def _check_inside(version_dir: Path, base: Path, name: str) -> None:
    resolved, inside = resolve_inside(version_dir / name, base)
    if not inside:
        raise HubError(
            f"Refusing to push {version_dir.name}: {name} is a symlink to {resolved}, outside the version directory."
            " Replace it with the file itself."
        )
    if not resolved.is_file():
        raise HubError(f"Refusing to push {version_dir.name}: {name} is not a regular file.")


def git_blob_id(path: Path) -> str:
    """The git blob id (SHA-1 of ``blob <size>\\0<bytes>``) of a file: the Hub's ``oid`` of a regular file."""
    return hash_file(hashlib.sha1(b"blob %d\0" % path.stat().st_size), path)


def verify_remote(remote: Iterable[Any], version_dir: Path, names: list[str], what: str) -> None:
    """Compare a commit's files as listed by the Hub with the local files.

    Args:
        remote: The entries of ``HfApi.list_repo_tree(..., revision=commit, recursive=True)`` (``RepoFile`` objects
            with ``path``, ``size``, ``blob_id`` and ``lfs``; folders are ignored).
        version_dir: The version directory pushed.
        names: The files pushed (relative POSIX paths).
        what: Names the push in the error message.

    Raises:
        PushVerificationError: a file is missing on the Hub, or its size or hash differs from the local file.
    """
    listed = {e.path: e for e in remote if hasattr(e, "blob_id") and hasattr(e, "size")}
    problems = []
    for name in names:
        local = version_dir / name
        entry = listed.get(name)
        if entry is None:
            problems.append(f"{name} is missing")
            continue
        size = local.stat().st_size
        lfs = getattr(entry, "lfs", None)
        if entry.size != size:
            problems.append(f"{name} has {entry.size} bytes on the Hub, {size} here")
        elif lfs is not None:
            sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            if sha256 != sha256_file(local):
                problems.append(f"{name}: LFS sha256 {sha256} on the Hub differs from the local file's")
        elif entry.blob_id != git_blob_id(local):
            problems.append(f"{name}: git blob id {entry.blob_id} on the Hub differs from the local file's")
    if problems:
        raise PushVerificationError(
            f"{what}: the commit on the Hub does not hold the local files: {'; '.join(problems)}"
        )
