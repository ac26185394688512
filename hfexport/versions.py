"""Versioned export roots: ``step_000500/`` directories, the ``latest`` pointer, listing and rotation.

Layout of an export root::

    hf_exports/
      step_000500/      a complete Hugging Face directory (+ hfexport.json)
      step_001000/
      latest -> step_001000

``latest`` is a relative symlink replaced atomically (a new link renamed over the old one). Where symlinks are
not available it is a small text file holding the version's directory name. The exporter moves it to each version
it writes, so it designates the current run's newest version even when training went back to an earlier step and
a higher ``step_*`` of the abandoned run is still there (see :mod:`hfexport.exporter`). Only names matching
``step_\\d{6,}`` are versions; hidden ``.step_*.tmp-*`` directories are unfinished writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import HFExportError
from .fsutil import fsync_dir

logger = logging.getLogger(__name__)

__all__ = [
    "LATEST",
    "Version",
    "list_versions",
    "read_latest",
    "resolve_latest",
    "set_latest",
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


def list_versions(root: str | os.PathLike[str]) -> list[Version]:
    """Complete versions in ``root``, oldest step first."""
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        m = _VERSION.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink():
            found.append(Version(int(m.group(1)), entry))
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
    return name if _VERSION.match(name) else None


def resolve_latest(root: str | os.PathLike[str]) -> Path:
    """The directory ``root/latest`` designates.

    Raises:
        HFExportError: no ``latest`` or it designates nothing complete.
    """
    name = read_latest(root)
    if name is None or not (Path(root) / name).is_dir():
        raise HFExportError(f"{str(root)!r} has no valid 'latest' version; is it an hfexport export root?")
    return Path(root) / name


def set_latest(root: str | os.PathLike[str], name: str) -> None:
    """Point ``root/latest`` at the version ``name`` atomically (symlink, or a text file as a fallback)."""
    base = Path(root)
    link = base / LATEST
    if link.is_dir() and not link.is_symlink():  # checked first: a refusal leaves no temporary behind
        raise HFExportError(f"{str(link)!r} is a real directory; hfexport needs that name for its pointer. Move it.")
    tmp = base / f".{LATEST}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        try:
            os.symlink(name, tmp, target_is_directory=True)
        except (OSError, NotImplementedError):
            tmp.write_text(name + "\n")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(base)


def remove_version(version: Version) -> None:
    """Delete a version directory: moved out of sight first (into a marked hfexport temporary, which a later run
    removes if this one is killed meanwhile), so it never appears half-deleted."""
    from .writer import PAYLOAD, make_temporary, remove_temporary

    trash = make_temporary(version.path.parent, version.name, ".old-")
    try:
        os.replace(version.path, trash / PAYLOAD)
    finally:
        remove_temporary(trash)
