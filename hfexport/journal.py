"""The push journal of an export root: which version reached which Hub repository, at which commit.

It lives in ``<root>/.hfexport/push-journal.json`` (never inside a version directory, so it is never pushed), is
rewritten atomically (a temporary file, fsync, rename) under a lock, and records per ``(repo_id, revision)``::

    {"format": 1, "targets": {"me/run@main": {"repo_id": "me/run", "revision": "main", "versions": {
        "step_000500": {"step": 500, "state": "pushed", "commit": "3f1c...", "tag": "step_000500", "time": "..."},
        "step_001000": {"step": 1000, "state": "failed", "error": "...", "time": "..."},
        "step_001500": {"step": 1500, "state": "pending", "time": "..."}}}}}

States: ``pending`` (queued or being pushed), ``failed`` (retries spent), ``pushed`` (committed and verified on the
Hub; ``commit`` is the verified commit), ``skipped`` (coalesced away by ``hub_push="latest"``). ``pending`` and
``failed`` versions are *unpushed*: a restarted exporter, callback or ``hfexport push ROOT --pending`` pushes them.
Only version directory names are stored, never absolute paths.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .fsutil import fsync_dir

__all__ = ["JOURNAL_DIR", "JOURNAL_NAME", "UNPUSHED", "PushJournal"]

logger = logging.getLogger(__name__)

JOURNAL_DIR = ".hfexport"
JOURNAL_NAME = "push-journal.json"
STATES = ("pending", "failed", "pushed", "skipped")
UNPUSHED = ("pending", "failed")
_FORMAT = 1
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _target(repo_id: str, revision: str) -> str:
    return f"{repo_id}@{revision}"


class PushJournal:
    """The push journal of one export root.

    Args:
        root: The export root (the directory holding ``step_XXXXXX/``).

    Example:
        ```python
        journal = PushJournal("hf_exports")
        journal.record("me/run", "main", "step_000500", 500, "pushed", commit="3f1c...")
        journal.unpushed("me/run", "main")  # [] once everything is pushed
        ```
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def path(self) -> Path:
        return self.root / JOURNAL_DIR / JOURNAL_NAME

    # ------------------------------------------------------------------------------------------ reading
    def read(self) -> dict[str, Any]:
        """The whole journal (an empty one when the file does not exist or cannot be parsed)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": _FORMAT, "targets": {}}
        except (OSError, ValueError) as exc:
            logger.warning("The push journal %s cannot be read (%s); treating it as empty.", self.path, exc)
            return {"format": _FORMAT, "targets": {}}
        if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
            logger.warning("The push journal %s is not in the expected format; treating it as empty.", self.path)
            return {"format": _FORMAT, "targets": {}}
        return data

    def versions(self, repo_id: str, revision: str) -> dict[str, dict[str, Any]]:
        """``version name → entry`` for one repository and branch."""
        target = self.read()["targets"].get(_target(repo_id, revision)) or {}
        return dict(target.get("versions") or {})

    def unpushed(self, repo_id: str, revision: str) -> list[tuple[int, str]]:
        """``(step, version name)`` of the versions not pushed yet (pending or failed), in step order."""
        return sorted(
            (int(e.get("step", 0)), name)
            for name, e in self.versions(repo_id, revision).items()
            if e.get("state") in UNPUSHED
        )

    def states(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """``version name → [(repo_id@revision, entry), ...]`` over every target, for listings."""
        out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, target in sorted(self.read()["targets"].items()):
            for name, entry in (target.get("versions") or {}).items():
                out.setdefault(name, []).append((key, entry))
        return out

    # ------------------------------------------------------------------------------------------ writing
    def record(
        self,
        repo_id: str,
        revision: str,
        name: str,
        step: int,
        state: str,
        *,
        commit: str | None = None,
        tag: str | None = None,
        error: str | None = None,
    ) -> None:
        """Set the state of one version for one target (atomically rewrites the journal).

        Raises:
            ValueError: an unknown state.
            OSError: the journal cannot be written (e.g. a read-only export root).
        """
        if state not in STATES:
            raise ValueError(f"Invalid push state {state!r}. Expected one of {STATES}.")
        entry: dict[str, Any] = {"step": int(step), "state": state, "time": _now()}
        entry.update({k: v for k, v in (("commit", commit), ("tag", tag), ("error", error)) if v is not None})
        with self._locked():
            data = self.read()
            target = data["targets"].setdefault(
                _target(repo_id, revision), {"repo_id": repo_id, "revision": revision, "versions": {}}
            )
            target.setdefault("versions", {})[name] = entry
            self._write(data)

    def forget(self, repo_id: str, revision: str, name: str) -> None:
        """Drop one version's entry for one target (its directory is gone)."""
        with self._locked():
            data = self.read()
            target = data["targets"].get(_target(repo_id, revision))
            if target and (target.get("versions") or {}).pop(name, None) is not None:
                self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{JOURNAL_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True, allow_nan=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(folder)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: a lock per journal in this process, and a file lock across processes (POSIX)."""
        key = str(self.path.absolute())
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(key, threading.Lock())
        with lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                import fcntl
            except ImportError:  # Windows: the in-process lock only
                yield
                return
            with open(self.path.parent / "journal.lock", "a+b") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
