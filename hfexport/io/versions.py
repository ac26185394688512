"""Versioned export roots: ``step_000500/`` directories, the ``latest`` pointer, listing and rotation.

Layout of an export root::

    hf_exports/
      step_000500/      a complete Hugging Face directory (+ hfexport.json)
      step_001000/
      latest -> step_001000

``latest`` is a relative symlink replaced atomically (a new link renamed over the old one). Where symlinks are
not available it is a small text file holding the version's directory name. The exporter moves it to each version
it writes, so it designates the current run's newest version even when training went back to an earlier step and
a higher ``step_*`` of the abandoned run is still there (see :mod:`hfexport.training.exporter`). Only names matching
``step_\\d{6,}`` are versions; hidden ``.step_*.tmp-*`` directories are unfinished writes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hfexport._util.fs import replace_atomically, write_durably
from hfexport.errors import HFExportError
from hfexport.io.names import MANIFEST_NAME
from hfexport.io.outputpath import replace_refusal
from hfexport.io.temporaries import (
    PAYLOAD,
    clean_stale_temporaries,
    make_temporary,
    pointer_temporary,
    remove_temporary,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LATEST",
    "Version",
    "VersionStore",
    "list_versions",
    "read_latest",
    "resolve_latest",
    "set_latest",
    "step_of",
    "version_name",
]

LATEST = "latest"
_VERSION = re.compile(r"^step_(\d{6,})$")


@dataclass(frozen=True)
class Version:
    """A complete version directory in an export root."""

    step: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def version_name(step: int) -> str:
    """``500`` → ``"step_000500"`` (six digits, more when needed).

    Raises:
        ValueError: a negative step.
    """
    if step < 0:
        raise ValueError(f"Invalid step {step}: must be >= 0.")
    return f"step_{step:06d}"


def step_of(name: str) -> int | None:
    """``"step_000500"`` → ``500``; ``None`` for any name that is not a version's (``latest``, ``step_5``)."""
    m = _VERSION.match(name)
    return int(m.group(1)) if m else None


def list_versions(root: str | os.PathLike[str]) -> list[Version]:
    """Complete versions in ``root``, oldest step first."""
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        step = step_of(entry.name)
        if step is not None and entry.is_dir() and not entry.is_symlink():
            found.append(Version(step, entry))
    return sorted(found, key=lambda v: v.step)


def read_latest(root: str | os.PathLike[str]) -> str | None:
    """The version name ``latest`` points at, or ``None`` when there is no (valid) pointer."""
    link = Path(root) / LATEST
    if link.is_symlink():
        name = os.readlink(link)
    elif link.is_file():
        name = link.read_text().strip()
    else:
        return None
    name = Path(name).name
    return name if step_of(name) is not None else None


def resolve_latest(root: str | os.PathLike[str]) -> Path:
    """The version directory ``root/latest`` designates (resolved, so its name is the version's).

    The one place ``latest`` is resolved (the exporter, ``verify`` and ``push`` use it): the entry may be a symlink
    or a text file holding the version's name; it must designate an existing ``step_XXXXXX`` directory directly
    inside ``root`` (not ``../elsewhere``, not a symlink leaving the root).

    Raises:
        HFExportError: no ``latest``, or it designates anything else.
    """
    base = Path(root)
    link = base / LATEST
    if link.is_symlink() or link.is_dir():
        target = link.resolve()
    elif link.is_file():
        target = (base / link.read_text(encoding="utf-8").strip()).resolve()
    else:
        raise HFExportError(f"{str(root)!r} has no valid 'latest' version; is it an hfexport export root?")
    real_root = base.resolve()
    inside = target.parent == real_root and step_of(target.name) is not None
    if not inside or (real_root / target.name).is_symlink() or not target.is_dir():
        raise HFExportError(
            f"{str(root)!r} has no valid 'latest' version: {link} points at {target}, which is not a version "
            f"directory (step_XXXXXX) of the export root {real_root}."
        )
    return target


def set_latest(root: str | os.PathLike[str], name: str) -> None:
    """Point ``root/latest`` at the version ``name`` atomically (symlink, or a text file as a fallback)."""
    base = Path(root)
    link = base / LATEST
    if link.is_dir() and not link.is_symlink():  # checked first: a refusal leaves no temporary behind
        raise HFExportError(f"{str(link)!r} is a real directory; hfexport needs that name for its pointer. Move it.")

    def fill(tmp: Path) -> None:
        try:
            os.symlink(name, tmp, target_is_directory=True)
        except (OSError, NotImplementedError):
            write_durably(tmp, (name + "\n").encode())

    replace_atomically(link, fill, temporary=pointer_temporary(base, LATEST))


def remove_version(version: Version) -> None:
    """Delete a version directory: moved out of sight first (into a marked hfexport temporary, which a later run
    removes if this one is killed meanwhile), so it never appears half-deleted."""
    trash = make_temporary(version.path.parent, version.name, ".old-")
    try:
        os.replace(version.path, trash / PAYLOAD)
    finally:
        remove_temporary(trash)


class VersionStore:
    """The versions one run writes into an export root: publishing, ``latest``, rotation.

    Single-threaded: only the thread that writes the versions changes it (the background writer, or the training
    loop when writing synchronously, and :meth:`rotate` after that thread stopped). :attr:`created` is an immutable
    tuple replaced at each change, so another thread may read it at any time.

    Args:
        root: The export root (created; stale temporaries of killed runs removed).
        keep_last_n: Keep only this run's last N versions, in write order (``None``: all).
    """

    def __init__(self, root: Path, keep_last_n: int | None) -> None:
        self.root = root
        self.keep_last_n = keep_last_n
        self.created: tuple[str, ...] = ()  # this run's versions (and the run it resumes), in write order
        self._warned_ahead = False
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(root)

    def restore(self, names: list[str]) -> None:
        """Take over a previous run's :attr:`created` (those still on disk)."""
        existing = {v.name for v in list_versions(self.root)}
        self.created = tuple(name for name in names if name in existing)

    def published(self, step: int, *, unwritten: set[str], is_pushing: Callable[[Path], bool]) -> None:
        """``step`` was just published: it becomes ``latest`` and this run's newest version, then rotation runs
        (see :meth:`rotate`)."""
        name = version_name(step)
        self.created = (*(n for n in self.created if n != name), name)  # write order: what rotation removes first
        set_latest(self.root, name)
        ahead = [v.name for v in list_versions(self.root) if v.step > step]
        if ahead and not self._warned_ahead:
            self._warned_ahead = True
            logger.warning(
                "%s: %s hold(s) steps above %d, the step just written: training went back (resumed from an earlier "
                "checkpoint?). They are kept, but `latest` follows the current run and points at %s. Delete them "
                "by hand if that future is abandoned.",
                self.root,
                ", ".join(ahead),
                step,
                name,
            )
        self.rotate(keep_name=name, unwritten=unwritten, is_pushing=is_pushing)

    def rotate(self, *, keep_name: str | None = None, unwritten: set[str], is_pushing: Callable[[Path], bool]) -> None:
        """Remove this run's oldest versions (write order) beyond ``keep_last_n``; never ``keep_name`` (the version
        just written), ``latest``, one being written again (``unwritten``: not counted either), or one
        ``is_pushing`` (its Hub push pending)."""
        keep = self.keep_last_n
        if keep is None:
            return
        latest = read_latest(self.root)
        skip = unwritten - {keep_name}
        mine = [n for n in self.created if n not in skip and (self.root / n).is_dir()]
        kept_for_hub = []
        for name in mine[: max(0, len(mine) - keep)]:  # older (in write order) than the newest keep_last_n
            path = self.root / name
            if name in (keep_name, latest):
                continue
            if is_pushing(path):
                kept_for_hub.append(name)  # not pushed yet (queued, in flight or failed): never deleted
                continue
            problem = replace_refusal(path) if (path / MANIFEST_NAME).is_file() else None
            if problem:  # you added or changed files in it: they are not hfexport's to delete
                logger.warning("Keeping %s past keep_last_n=%d: it %s. Remove it by hand.", path, keep, problem)
                continue
            remove_version(Version(int(step_of(name) or 0), path))
            self.created = tuple(n for n in self.created if n != name)
            logger.info("Removed %s (keep_last_n=%d)", path, keep)
        if kept_for_hub:
            logger.info(
                "Keeping %d version(s) past keep_last_n=%d until their Hub push succeeds: %s",
                len(kept_for_hub),
                keep,
                ", ".join(kept_for_hub),
            )
