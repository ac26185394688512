"""Publishing a finished temporary directory at its target, atomically, and what an interrupt left.

:func:`publish_directory` renames the temporary into place without replacing anything but an empty directory; with
``force`` it swaps it with an earlier export of hfexport atomically where the OS allows (Linux
``renameat2(RENAME_EXCHANGE)``), so readers see the old version or the new one, never a mix, and removes the old
version's files (those its manifest lists) with :func:`dispose`. :func:`make_parents` creates the output's missing
parents (removed again by :func:`remove_created` when nothing is published); :func:`note_interrupt` and
:func:`interrupt_outcome` say whether a ``KeyboardInterrupt`` came before or after the publish.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hfexport._util.fs import fsync_dir, libc_function, resolve_inside
from hfexport.errors import OutputExistsError
from hfexport.io.manifest import listed_sizes
from hfexport.io.names import MANIFEST_NAME
from hfexport.io.outputpath import check_output_path, force_flag, replace_refusal
from hfexport.io.temporaries import OLD_TAG, PAYLOAD, make_temporary, release_temporary, remove_temporary

logger = logging.getLogger(__name__)

__all__ = [
    "StrandedError",
    "dispose",
    "interrupt_outcome",
    "make_parents",
    "note_interrupt",
    "publish_directory",
    "remove_created",
]


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class StrandedError(OutputExistsError):
    """A swap could not be undone: the temporary path holds the user's previous directory (never removed)."""


def make_parents(directory: Path) -> list[Path]:
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
            remove_created(created)
            raise
        created.append(path)
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Remove the directories :func:`make_parents` created, innermost first, as long as they are empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:  # not empty (someone else's files) or gone: leave it and what is above it
            return


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
        f"{force_flag(option)} only replaces a directory that hfexport wrote, and "
        f"{str(target)!r} changed while the export was written: it now {problem}. It was kept as it is and nothing "
        f"was published; move your files away or choose another {option}."
    )


def publish_directory(
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
                raise StrandedError(
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
    container = make_temporary(target.parent, target.name, OLD_TAG)
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
    dispose(container)


def _remove_export(directory: Path) -> None:
    """Remove a replaced export: the files its manifest lists, then its directories, if they are empty.

    Anything else (a file that appeared at the last moment) is kept, with the directory, and logged.
    """
    listed = listed_sizes(directory)  # checked by replace_refusal before anything is removed
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


def dispose(container: Path) -> None:
    """Remove a temporary after publishing. Its payload, if any, is the version that was replaced: only the files
    its manifest lists are removed (:func:`_remove_export`); if anything else is left, the temporary is released."""
    payload = container / PAYLOAD
    if payload.exists():
        _remove_export(payload)
    if payload.exists():
        release_temporary(container)
    else:
        remove_temporary(container)


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
        exc: A ``KeyboardInterrupt`` (or ``SystemExit``) that went through
            :func:`hfexport.io.directory.write_hf_directory`.

    Returns:
        ``"nothing was published"`` when the interrupt came before the rename, else ``"PATH was published
        (complete) before the interrupt"``.
    """
    published = [str(target) for target, done in getattr(exc, "hfexport_outcomes", []) if done]
    if published:
        return f"{', '.join(published)} was published (complete) before the interrupt"
    return "nothing was published"
