"""Which output paths an export may be written to and replace: the path policy of the writer and the exporter.

:func:`output_path_text` refuses what no file system holds (an empty path, a name that is not UTF-8, too long),
:func:`check_export_root` checks an exporter's root when it is built, :func:`check_output_path` refuses a directory
an export must never replace (a symlink, the working or home directory, a mount point, one holding the checkpoint
being read, a non-empty directory without ``force``), and :func:`replace_refusal` says why ``force`` may not
replace a directory: only one that hfexport wrote, as its ``hfexport.json`` manifest proves, may be.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hfexport._util.validation import shown
from hfexport.errors import OutputExistsError, OutputPathError
from hfexport.io.manifest import listed_sizes
from hfexport.io.names import MANIFEST_NAME

logger = logging.getLogger(__name__)

__all__ = [
    "NAME_MAX",
    "PATH_MAX",
    "check_export_root",
    "check_output_path",
    "force_flag",
    "output_path_text",
    "replace_refusal",
]


#: The longest file name (one path component) and whole path, in bytes, that Linux file systems take.
NAME_MAX = 255
PATH_MAX = 4096


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


def force_flag(option: str) -> str:
    """How the caller's user passes ``force``: ``--force`` (CLI) or ``force=True``."""
    return "--force" if _is_cli(option) else "force=True"


def _passing(option: str, example: str) -> str:
    """How to pass ``example`` as ``option``: ``--output_dir hf_model`` (CLI) or ``output_dir='hf_model'``."""
    return f"{option} {example}" if _is_cli(option) else f"{option}={example!r}"


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
    sizes = listed_sizes(directory)
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
