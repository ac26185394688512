"""The push journal of an export root: which version reached which Hub repository, at which commit.

It lives in ``<root>/.hfexport/push-journal.json`` (never inside a version directory, so it is never pushed), is
rewritten atomically (a temporary file, fsync, rename) under a lock, and records per ``(repo_id, revision)``::

    {"format": 1, "targets": {"me/run@main": {"repo_id": "me/run", "revision": "main", "versions": {
        "step_000500": {"step": 500, "state": "pushed", "commit": "3f1c...", "tag": "step_000500", "time": "..."},
        "step_001000": {"step": 1000, "state": "failed", "error": "...", "time": "..."},
        "step_001500": {"step": 1500, "state": "pending", "time": "..."}}}}}

States: ``pending`` (queued or being pushed), ``failed`` (retries spent), ``pushed`` (committed and verified on the
Hub; ``commit`` is the verified commit), ``skipped`` (coalesced away by ``hub_push="latest"``, or older than what the
branch serves and untagged). ``pending`` and ``failed`` versions are *unpushed*: a restarted exporter, callback or
``hfexport push ROOT --pending`` pushes them. A target also records, under ``branch``, the newest version its branch
serves (``{"step": 1000, "name": "step_001000", "commit": "..."}``): an older version is then pushed to its tag only.
Only version directory names (``step_XXXXXX``, nothing else) are stored, never paths.

The file is parsed against that schema. One that cannot be read or does not match it (a hand edit, another tool, an
entry such as ``"../elsewhere"``) is set aside, renamed ``push-journal.json.bad-<time>`` (never deleted), with a
warning, and the journal starts empty. Entries of versions whose directory is gone (rotated away) and whose push is
settled (pushed, skipped) are pruned whenever the journal is written. :meth:`PushJournal.push_lock` serializes whole
pushes from one export root across threads and processes (a training run and ``hfexport push --pending``).
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

from hfexport._util.fs import write_atomically
from hfexport._util.text import utc_timestamp
from hfexport.errors import HubError
from hfexport.io.versions import step_of

__all__ = ["JOURNAL_DIR", "JOURNAL_NAME", "UNPUSHED", "PushJournal", "journal_problem"]

logger = logging.getLogger(__name__)

JOURNAL_DIR = ".hfexport"
JOURNAL_NAME = "push-journal.json"
STATES = ("pending", "failed", "pushed", "skipped")
UNPUSHED = ("pending", "failed")
_FORMAT = 1
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()  # journal lock files this thread holds (the lock is re-entrant within a thread)
_OPTIONAL_TEXT = ("commit", "tag", "error", "time")


def _target(repo_id: str, revision: str) -> str:
    return f"{repo_id}@{revision}"


def _empty() -> dict[str, Any]:
    return {"format": _FORMAT, "targets": {}}


def journal_problem(data: Any) -> str | None:
    """What makes ``data`` (a parsed journal) not a push journal, or ``None`` when it is one.

    The schema: ``{"format": 1, "targets": {"<repo_id>@<revision>": {"repo_id": str, "revision": str,
    "versions": {"step_XXXXXX": {"step": int, "state": one of STATES, "commit"/"tag"/"error"/"time": str}},
    "branch": {"step": int, "name": "step_XXXXXX", "commit": str}}}}`` (``branch`` optional).
    """
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        return "it is not an object with a 'targets' object"
    if data.get("format", _FORMAT) != _FORMAT:
        return f"unknown format {data.get('format')!r} (expected {_FORMAT})"
    for key, target in data["targets"].items():
        if not isinstance(target, dict):
            return f"target {key!r} is not an object"
        repo_id, revision = target.get("repo_id"), target.get("revision")
        if not isinstance(repo_id, str) or not isinstance(revision, str) or key != _target(repo_id, revision):
            return f"target {key!r} does not name its repo_id and revision"
        versions = target.get("versions", {})
        if not isinstance(versions, dict):
            return f"the versions of {key!r} are not an object"
        for name, entry in versions.items():
            why = _entry_problem(name, entry)
            if why:
                return f"{key!r}: {why}"
        branch = target.get("branch")
        if branch is not None and (
            not isinstance(branch, dict)
            or step_of(str(branch.get("name"))) is None
            or type(branch.get("step")) is not int
            or not isinstance(branch.get("commit", ""), str)
        ):
            return f"the branch record of {key!r} is malformed"
    return None


def _entry_problem(name: Any, entry: Any) -> str | None:
    if not isinstance(name, str) or step_of(name) is None:
        return f"entry {name!r} is not a version directory name (step_XXXXXX)"
    if not isinstance(entry, dict):
        return f"entry {name!r} is not an object"
    if type(entry.get("step")) is not int or entry["step"] != step_of(name):
        return f"entry {name!r} has step {entry.get('step')!r}, not {step_of(name)}"
    if entry.get("state") not in STATES:
        return f"entry {name!r} has an unknown state {entry.get('state')!r}"
    bad = [k for k in _OPTIONAL_TEXT if k in entry and not isinstance(entry[k], str)]
    if bad:
        return f"entry {name!r}: {', '.join(bad)} not text"
    return None


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
        """The whole journal, checked against the schema (:func:`journal_problem`): an empty one when the file does
        not exist; a file that cannot be read or parsed, or does not match, is set aside (renamed, with a warning)
        and reads as empty."""
        data, problem = self._load()
        if problem is None:
            return data
        try:
            with self._locked():  # set aside under the lock, and only if it is still the bad file
                data, problem = self._load()
                if problem is not None:
                    self._set_aside(problem)
                    return _empty()
        except OSError as exc:  # no lock on a read-only root: leave the file as it is
            logger.warning("The push journal %s is unusable (%s); treating it as empty (%s).", self.path, problem, exc)
            return _empty()
        return data

    def _load(self) -> tuple[dict[str, Any], str | None]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _empty(), None
        except (OSError, ValueError) as exc:
            return _empty(), f"it cannot be read ({exc})"
        return data, journal_problem(data)

    def _set_aside(self, problem: str) -> None:
        aside = self.path.with_name(f"{JOURNAL_NAME}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning(
                "The push journal %s is unusable (%s); treating it as empty (it could not be set aside: %s).",
                self.path,
                problem,
                exc,
            )
            return
        logger.warning(
            "The push journal %s is unusable (%s). It was set aside as %s (not deleted) and a new one is started: "
            "versions it listed as not pushed are not pushed again automatically (push them with `hfexport push "
            "VERSION_DIR --repo_id ...`).",
            self.path,
            problem,
            aside.name,
        )

    def versions(self, repo_id: str, revision: str) -> dict[str, dict[str, Any]]:
        """``version name → entry`` for one repository and branch."""
        target = self.read()["targets"].get(_target(repo_id, revision)) or {}
        return dict(target.get("versions") or {})

    def branch(self, repo_id: str, revision: str) -> dict[str, Any] | None:
        """The newest version pushed to the branch (``{"step", "name", "commit"}``), or ``None``."""
        target = self.read()["targets"].get(_target(repo_id, revision)) or {}
        return target.get("branch")

    def unpushed(self, repo_id: str, revision: str) -> list[tuple[int, str]]:
        """``(step, version name)`` of the versions not pushed yet (pending or failed), in step order."""
        return sorted(
            (int(e["step"]), name) for name, e in self.versions(repo_id, revision).items() if e["state"] in UNPUSHED
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
        on_branch: bool = False,
    ) -> None:
        """Set the state of one version for one target (atomically rewrites the journal, pruning the settled
        entries of versions whose directory is gone).

        Args:
            on_branch: The version's commit is now the head of the branch (it is the newest the branch served).

        Raises:
            ValueError: an unknown state, or a name that is not a version directory's (``step_XXXXXX``).
            OSError: the journal cannot be written (e.g. a read-only export root).
        """
        if state not in STATES:
            raise ValueError(f"Invalid push state {state!r}. Expected one of {STATES}.")
        if step_of(name) is None:
            raise ValueError(f"Invalid version name {name!r} for the push journal: expected step_XXXXXX.")
        entry: dict[str, Any] = {"step": step_of(name), "state": state, "time": utc_timestamp()}
        entry.update({k: v for k, v in (("commit", commit), ("tag", tag), ("error", error)) if v is not None})
        with self._locked():
            data = self.read()
            target = data["targets"].setdefault(
                _target(repo_id, revision), {"repo_id": repo_id, "revision": revision, "versions": {}}
            )
            target.setdefault("versions", {})[name] = entry
            if on_branch:
                target["branch"] = {"step": entry["step"], "name": name, "commit": commit or ""}
            self._prune(data, keep=name)
            self._write(data)

    def prune(self) -> None:
        """Drop the pushed or skipped entries of versions whose directory is gone (rotated, removed); the journal is
        rewritten only when there was one to drop.

        Raises:
            OSError: the journal cannot be written (e.g. a read-only export root).
        """
        if not self.path.is_file():
            return
        with self._locked():
            data = self.read()
            if self._prune(data, keep=None):
                self._write(data)

    def _prune(self, data: dict[str, Any], *, keep: str | None) -> bool:
        """Drop the pushed or skipped entries of versions whose directory is gone (rotated, removed); whether any
        was dropped."""
        pruned = False
        for key, target in data["targets"].items():
            versions = target.get("versions") or {}
            gone = [
                name
                for name, entry in versions.items()
                if name != keep
                and entry["state"] not in UNPUSHED
                and not ((self.root / name).is_dir() and not (self.root / name).is_symlink())
            ]
            for name in gone:
                del versions[name]
            if gone:
                pruned = True
                logger.debug("Pruned %d journal entr(ies) of %s whose directory is gone: %s", len(gone), key, gone)
        return pruned

    def forget(self, repo_id: str, revision: str, name: str) -> None:
        """Drop one version's entry for one target (its directory is gone)."""
        with self._locked():
            data = self.read()
            target = data["targets"].get(_target(repo_id, revision))
            if target and (target.get("versions") or {}).pop(name, None) is not None:
                self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_atomically(self.path, text.encode("utf-8"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: a lock per journal in this process, and a file lock across processes (POSIX)."""
        with _file_lock(self.path.parent / "journal.lock"):
            yield

    @contextlib.contextmanager
    def push_lock(self, timeout_s: float, what: str) -> Iterator[None]:
        """Hold the export root's push lock for a whole push (re-checking the journal inside it), so that a training
        run and ``hfexport push --pending`` on the same root never push the same version twice.

        Args:
            timeout_s: How long to wait for another push from this root to finish.
            what: Names the push in the error message.

        Raises:
            HubError: the lock was not free within ``timeout_s`` (a transient failure: retried later).
        """
        with _file_lock(self.path.parent / "push.lock", timeout_s=timeout_s, what=what):
            yield


@contextlib.contextmanager
def _file_lock(path: Path, *, timeout_s: float | None = None, what: str = "") -> Iterator[None]:
    """An exclusive lock on ``path``: re-entrant within a thread, exclusive across threads (an in-process lock) and
    processes (``flock``, POSIX). ``timeout_s``: how long to wait (``None``: until it is free)."""
    key = str(path.absolute())
    held: dict[str, int] = _HELD.__dict__.setdefault("counts", {})
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(key, threading.RLock())
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if not lock.acquire(timeout=-1 if timeout_s is None else timeout_s):
        raise _busy(path, timeout_s, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows: the in-process lock only
            fcntl = None  # type: ignore[assignment]  # the module or None: the type checker sees one platform
        with open(path, "a+b") as fh:
            if fcntl is not None:
                while True:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                        break
                    except BlockingIOError:
                        if deadline is not None and time.monotonic() >= deadline:  # LOCK_NB: a deadline
                            raise _busy(path, timeout_s, what) from None
                        time.sleep(0.05)
            held[key] = 1
            try:
                yield
            finally:
                held.pop(key, None)
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        lock.release()


def _busy(path: Path, timeout_s: float | None, what: str) -> HubError:
    error = HubError(
        f"{what}: another push from this export root (a training run or `hfexport push`) held {path.name} for "
        f"{timeout_s:.0f} s; the version stays journaled as not pushed and is pushed later."
    )
    error.__cause__ = TimeoutError(f"{path} busy")  # transient: worth trying again
    return error
