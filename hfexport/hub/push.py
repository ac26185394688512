"""Pushes of exported versions to the Hugging Face Hub.

Each version directory (``step_000500/``) becomes one commit on a branch of a model repository, tagged with
the directory name, so that ``from_pretrained(repo_id, revision="step_000500")`` loads exactly that version.
Files that did not change since the previous version (a tokenizer, a model card) are not sent again: the Hub
reports their remote ids and the client skips them. Files an earlier hfexport push put on the branch that the new
version lacks are deleted in the same commit; nothing else is (the user's files stay, a ``README.md`` hfexport did
not write is kept: :mod:`hfexport.hub.owned`). The branch never goes back: a version older than the one the branch
serves (the push journal says which) is committed beside it and reachable by its tag only.

Only the version's own files are published (:func:`~hfexport.hub.files.publishable_files`), and each commit is
verified on the Hub before it is tagged: its files are listed at the commit and their sizes and hashes compared
with the local ones (:func:`~hfexport.hub.files.verify_remote`).

Every request has a timeout (``timeout_s``: connect and each read or write, so an upload that keeps sending is
not cut). Pushes are retried with exponential backoff on the failures that pass (connection errors, timeouts,
HTTP 5xx and 429, honouring ``Retry-After``, a verification mismatch); other HTTP errors fail at once.
:class:`HubPusher` runs them on one background thread, in step order, so that training never waits for the
network, and never dies because of it unless asked to. Each version's state (pending, failed, pushed at a commit,
skipped) is kept in the export root's push journal (:mod:`hfexport.hub.journal`), from which a restarted run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hfexport._util.worker import Queue, Worker
from hfexport.errors import HFExportError, HubError, HubSetupError
from hfexport.hub.files import publishable_files, verify_remote
from hfexport.hub.journal import PushJournal
from hfexport.hub.options import HubOptions, check_ref_name
from hfexport.hub.owned import plan_remote
from hfexport.hub.retry import MAX_RETRY_AFTER_S, bounded_requests, describe, http_status, is_transient, with_retries
from hfexport.io.versions import LATEST, resolve_latest, step_of

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = [
    "MAX_RETRY_AFTER_S",
    "HubOptions",
    "HubPusher",
    "PushFailure",
    "PushResult",
    "bounded_requests",
    "check_ref_name",
    "push_version",
    "resolve_push_dir",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# While pushes fall behind, say so at most this often (seconds).
BEHIND_LOG_INTERVAL_S = 60.0


@dataclass
class PushResult:
    """One version pushed: its commit on the Hub, its tag, how many attempts and how long it took."""

    version_dir: Path
    step: int | None
    commit_oid: str | None
    tag: str | None
    attempts: int
    seconds: float


@dataclass
class PushFailure:
    """One version that could not be pushed, with the error (a :class:`~hfexport.errors.HubError`)."""

    version_dir: Path
    step: int
    error: BaseException

    @property
    def transient(self) -> bool:
        """Whether it failed on errors that pass (the Hub or the network down): worth pushing again later."""
        cause = self.error.__cause__
        return cause is not None and is_transient(cause)


# ------------------------------------------------------------------------------------------ one push
def _make_api(options: HubOptions) -> HfApi:
    from huggingface_hub import HfApi

    return HfApi(token=options.token, library_name="hfexport")


def resolve_push_dir(path: str | Path) -> Path:
    """The version directory to push for ``path``.

    Args:
        path: A version directory (``hf_exports/step_000500``), or an export root holding a ``latest``
            entry (a symlink to the newest version, or a text file holding its directory name), or that entry.

    Returns:
        The version directory, resolved (so its name is the version's, never ``latest``).

    Raises:
        HubError: ``path`` is neither a version directory nor an export root with a valid ``latest``, or its
            ``latest`` designates anything but a version directory inside that root (``../elsewhere``, a symlink
            leaving the root).
    """
    path = Path(path)
    latest = path / LATEST if path.is_dir() else path
    if latest.name == LATEST and (latest.is_symlink() or latest.exists()):
        try:
            return resolve_latest(latest.parent)
        except HFExportError as error:
            raise HubError(
                f"Refusing to push: {error} Pass a version directory such as hf_exports/step_000500 instead."
            ) from error
    if path.is_dir() and ((path / "config.json").is_file() or any(path.glob("*.safetensors"))):
        return path.resolve()
    if not path.exists():
        raise HubError(f"Nothing to push at {path}: the path does not exist.")
    raise HubError(
        f"Nothing to push at {path}: expected a version directory (holding config.json and *.safetensors) "
        "or an export root holding `latest`, e.g. hf_exports/step_000500 or hf_exports."
    )


def _set_tag(api: HfApi, options: HubOptions, tag: str, oid: str, message: str) -> None:
    """Point ``tag`` at ``oid``; an existing tag pointing elsewhere is moved, with a warning."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(options.repo_id, tag=tag, revision=oid, tag_message=message)
        return
    except HfHubHTTPError as error:
        if http_status(error) != 409:
            raise
    refs = api.list_repo_refs(options.repo_id)
    current = next((t.target_commit for t in refs.tags if t.name == tag), None)
    if current == oid:
        return  # a retry after the tag was created, or the same version pushed again
    logger.warning("Tag %r of %s pointed at %s; moving it to %s.", tag, options.repo_id, current, oid)
    api.delete_tag(options.repo_id, tag=tag)
    api.create_tag(options.repo_id, tag=tag, revision=oid, tag_message=message)


def push_version(
    version_dir: str | Path,
    options: HubOptions,
    *,
    step: int | None = None,
    tag: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
    progress: bool = False,
    skip_if_pushed: bool = False,
) -> PushResult:
    """Push one version directory as one commit, verify it, then tag it (as the module docstring describes).
    Synchronous. The result is recorded in the export root's push journal when the directory is a ``step_XXXXXX``
    version. The repository (and the branch) must exist: call :meth:`HubPusher.setup` first.

    The commit goes on ``options.revision``, unless the journal says the branch already serves a newer version of
    this export root: then the version is committed beside the branch (on a temporary branch, deleted afterwards)
    and reachable by its tag only, so that the branch never goes back to an older version; without a tag it is not
    pushed (logged, journaled as ``skipped``). Files of the branch that hfexport did not push are never deleted,
    and a ``README.md`` it did not write is kept (:mod:`hfexport.hub.owned`).

    While it runs, the export root's push lock is held (:meth:`~hfexport.hub.journal.PushJournal.push_lock`), so that
    two processes never push the same root at once.

    Args:
        version_dir: The version directory to push (complete, in its final place).
        options: Where and how to push.
        step: The training step (the commit title says it). ``None``: read from a ``step_000500`` name if any.
        tag: The tag to set on the commit. ``None``: the directory name when ``options.tag_versions``.
        commit_message: The commit title; default ``"Export step {step}"`` or ``"Export {directory name}"``.
        api: An ``HfApi`` to use (default: one built from ``options.token``).
        progress: Log each file and its size before uploading.
        skip_if_pushed: Do nothing when the journal says the version was pushed already (by another process).

    Returns:
        What was pushed: the verified commit id, the tag, the number of attempts and the time taken
        (``commit_oid`` ``None`` when nothing was pushed: an untagged older version, or pushed already).

    Raises:
        HubError: The push failed for good (a permanent error, retries exhausted, a file that may not be
            published); the cause is chained.
        OptionError: ``tag`` is not a valid tag name.

    Example:
        ```python
        result = push_version("hf_exports/step_000500", HubOptions("me/gpt2-run"), step=500)
        print(result.commit_oid, result.tag)
        ```
    """
    version_dir = Path(version_dir)
    if tag is not None:
        check_ref_name(tag, "tag")
    if not version_dir.is_dir():
        raise HubError(f"Cannot push {version_dir}: it is not a directory (was it rotated away?).")
    step = step_of(version_dir.name) if step is None else step
    if tag is None and options.tag_versions:
        tag = version_dir.name
    version_step = step_of(version_dir.name)
    what = f"Pushing {version_dir.name} to {options.repo_id}@{options.revision}"
    if version_step is None:  # not a version hfexport names: no journal beside it
        return _push(version_dir, options, step, tag, commit_message, api, progress, None, what)
    journal = PushJournal(version_dir.parent)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(journal.push_lock(_lock_wait_s(options), what))
        except OSError as exc:  # a read-only export root: pushing it is still allowed, unserialized
            logger.warning("%s without the export root's push lock (%s): it cannot be created.", what, exc)
        if skip_if_pushed:
            entry = journal.versions(options.repo_id, options.revision).get(version_dir.name)
            if entry is not None and entry["state"] == "pushed":
                logger.info("%s was pushed already (by another push from this export root).", version_dir.name)
                return PushResult(version_dir, step, entry.get("commit"), entry.get("tag"), 0, 0.0)
        branch = journal.branch(options.repo_id, options.revision)
        newer = branch if branch is not None and version_step < branch["step"] else None
        if newer is not None and not tag:
            logger.warning(
                "Not pushing %s to %s@%s: the branch serves %s, a newer version, and the version has no tag to be "
                "reachable by (pass --tag, or hub_tag_versions=True).",
                version_dir.name,
                options.repo_id,
                options.revision,
                newer["name"],
            )
            _journal(version_dir, options, step, "skipped")
            return PushResult(version_dir, step, None, None, 0, 0.0)
        return _push(version_dir, options, step, tag, commit_message, api, progress, newer, what)


def _lock_wait_s(options: HubOptions) -> float:
    """How long a push waits for another push from the same export root: long enough for one whole push."""
    return (options.max_retries + 1) * (8 * options.timeout_s + options.backoff_max_s)


def _push(
    version_dir: Path,
    options: HubOptions,
    step: int | None,
    tag: str | None,
    commit_message: str | None,
    api: HfApi | None,
    progress: bool,
    newer: dict[str, Any] | None,
    what: str,
) -> PushResult:
    title = commit_message or (f"Export step {step}" if step is not None else f"Export {version_dir.name}")
    description = f"Pushed by hfexport from the version directory `{version_dir.name}`."
    api = api if api is not None else _make_api(options)
    names = publishable_files(version_dir)
    if progress:
        for name in names:
            logger.info("  %s (%.1f MB)", name, (version_dir / name).stat().st_size / 1e6)
    if newer is not None:
        logger.info(
            "%s: the branch serves %s, a newer version; committing beside it, reachable by the tag %s only.",
            what,
            newer["name"],
            tag,
        )
    _quiet_empty_commit_warning()

    def attempt() -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        # A cheap request the client does not retry by itself: when the Hub is down, this attempt fails in
        # milliseconds and our own backoff decides what next. It also lists the files now on the revision.
        info = api.model_info(options.repo_id, revision=options.revision, files_metadata=True)
        remote = {s.rfilename: s.size for s in info.siblings or []}
        plan = plan_remote(api, options.repo_id, str(info.sha), remote, names, what)
        operations: list[Any] = [CommitOperationAdd(name, str(version_dir / name)) for name in plan.upload]
        operations += [CommitOperationDelete(name) for name in plan.delete]
        revision = options.revision
        if newer is not None:  # beside the branch: a temporary branch from its head, deleted once tagged
            revision = f"hfexport-tmp-{version_dir.name}-{uuid.uuid4().hex[:8]}"
            api.create_branch(options.repo_id, branch=revision, revision=str(info.sha))
        try:
            commit = api.create_commit(
                options.repo_id,
                operations,
                commit_message=title,
                commit_description=description,
                revision=revision,
            )
            if commit.oid == info.sha:
                logger.info("%s: its files are on the Hub already; no new commit.", what)
            listed = api.list_repo_tree(options.repo_id, revision=commit.oid, recursive=True)
            verify_remote(listed, version_dir, plan.upload, f"{what} (commit {str(commit.oid)[:10]})")
            if tag:
                _set_tag(api, options, tag, commit.oid, title)
        finally:
            if revision != options.revision:
                with contextlib.suppress(Exception):
                    api.delete_branch(options.repo_id, branch=revision)
        return commit.oid

    started = time.monotonic()
    try:
        oid, attempts = with_retries(what, options, attempt)
    except HubError as error:
        _journal(version_dir, options, step, "failed", error=str(error))
        raise
    seconds = time.monotonic() - started
    _journal(version_dir, options, step, "pushed", commit=oid, tag=tag, on_branch=newer is None)
    logger.info(
        "Pushed %s to %s@%s: commit %s%s, verified (%.1f s, %d attempt(s)).",
        version_dir.name,
        options.repo_id,
        options.revision if newer is None else f"{options.revision} (tag only: the branch serves {newer['name']})",
        oid[:10] if oid else None,
        f", tag {tag}" if tag else "",
        seconds,
        attempts,
    )
    return PushResult(version_dir, step, oid, tag, attempts, seconds)


class _DropEmptyCommitWarning(logging.Filter):
    """huggingface_hub warns "No files have been modified since last commit..." on its own logger, which both
    prints it (its own handler) and passes it on: hfexport says it once, in its own words, instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No files have been modified since last commit")


_EMPTY_COMMIT_FILTER = _DropEmptyCommitWarning()


def _quiet_empty_commit_warning() -> None:
    hf_logger = logging.getLogger("huggingface_hub.hf_api")
    if _EMPTY_COMMIT_FILTER not in hf_logger.filters:
        hf_logger.addFilter(_EMPTY_COMMIT_FILTER)


def _journal(version_dir: Path, options: HubOptions, step: int | None, state: str, **extra: Any) -> None:
    """Record a version's push state in its export root's journal (``step_XXXXXX`` directories only); a failure to
    record is logged, never raised (the push itself is what matters)."""
    if step is None or step_of(version_dir.name) is None:
        return
    try:
        PushJournal(version_dir.parent).record(
            options.repo_id, options.revision, version_dir.name, step, state, **extra
        )
    except Exception as exc:
        logger.warning("Could not record the push state of %s in the push journal: %s", version_dir.name, exc)


# ------------------------------------------------------------------------------------- background pusher
@dataclass(order=True)
class _PushJob:
    """One version waiting for (or in) its push."""

    step: int
    final: bool
    version_dir: Path = field(compare=False)


class _StepOrder(Queue[_PushJob]):
    """The pusher's queue policy: versions in step order, one entry per directory, never a wait for room; with
    ``coalesce`` (``push_mode="latest"``) only the newest intermediate version waits (finals always stay)."""

    def __init__(self, coalesce: bool) -> None:
        super().__init__()
        self.coalesce = coalesce

    def add(self, job: _PushJob) -> list[_PushJob]:
        self.jobs = sorted([j for j in self.jobs if j.version_dir != job.version_dir] + [job])
        intermediate = [j for j in self.jobs if not j.final] if self.coalesce else []
        for old in intermediate[:-1]:
            logger.info(
                "Skipping the Hub push of %s (hub_push='latest'): a newer version (%s) is waiting and pushes are "
                "behind.",
                old.version_dir.name,
                intermediate[-1].version_dir.name,
            )
            self.jobs.remove(old)
        return intermediate[:-1]


class HubPusher:
    """Pushes versions in the background, one at a time, in step order (``push_mode``, ``on_push_error``: see
    :class:`HubOptions`).

    :meth:`submit` only queues (it never waits for the network) and marks the version pending in the journal; while
    pushes fall behind, a warning says how many wait (at most once a minute). A failed push is logged, journaled
    and recorded in :attr:`failures`. With ``push_mode="every"``, versions that failed because the Hub or the
    network was down are pushed again, in step order, before the next version submitted; while the Hub stays down
    each gets one attempt (so a backlog costs one timeout per version), until a push succeeds. A version not pushed
    yet (queued, in flight or failed) is :meth:`is_pending`, so that rotation keeps it.

    Args:
        options: Where and how to push.
        api: An ``HfApi`` to use (default: one built from ``options.token``).
        token_hint: How the user passes a token, for error messages (``"hub_token=..."``, ``"--token"``).

    Example:
        ```python
        pusher = HubPusher(HubOptions("me/gpt2-run"))
        pusher.setup()
        pusher.resume(Path("hf_exports"))  # versions a previous run left unpushed
        pusher.submit(Path("hf_exports/step_000500"), step=500)
        pusher.submit(Path("hf_exports/step_001000"), step=1000, final=True)
        pusher.close()
        ```
    """

    def __init__(self, options: HubOptions, *, api: HfApi | None = None, token_hint: str = "hub_token=...") -> None:
        self.options = options
        self.token_hint = token_hint
        self._api = api
        self._queue = _StepOrder(coalesce=options.push_mode == "latest")
        # Never at interpreter exit: pending pushes wait in the journal for the next run (no exit on the network).
        self._worker = Worker(self._run, lambda job: job.version_dir.name, queue=self._queue, name="hfexport-hub-push")
        self._cond = self._worker.lock  # guards the pusher's records below too
        self._setup_lock = threading.Lock()
        self._setup_done = False
        self._failures: list[PushFailure] = []
        self._results: list[PushResult] = []
        self._skipped: list[Path] = []
        self._checked = 0  # failures already raised by check()
        self._behind_logged_at: float | None = None
        self._hub_down = False  # the last push failed for good on errors that pass: one attempt each until one works

    @property
    def api(self) -> HfApi:
        if self._api is None:
            self._api = _make_api(self.options)
        return self._api

    # -------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Check the token and create the repository (and branch) if needed. Idempotent; fails fast.

        Raises:
            HubSetupError: The token is missing or rejected, the repository cannot be created or written to,
                or the Hub cannot be reached (after the configured retries).
        """
        with self._setup_lock:
            if self._setup_done:
                return
            self._setup()
            self._setup_done = True

    def _setup(self) -> None:
        from huggingface_hub.errors import LocalTokenNotFoundError

        opts, api = self.options, self.api
        endpoint = getattr(api, "endpoint", "the Hub")
        try:
            user, _ = with_retries(
                f"Checking the Hub token at {endpoint}",
                opts,
                lambda: api.whoami()["name"],
                error_cls=HubSetupError,
                hint="check the network, HF_ENDPOINT and proxy settings",
            )
        except HubSetupError as error:
            if isinstance(error.__cause__, LocalTokenNotFoundError):
                raise HubSetupError(
                    f"No Hugging Face token found for pushing to {opts.repo_id}: set HF_TOKEN, run "
                    f"`hf auth login`, or pass {self.token_hint}"
                ) from error.__cause__
            if http_status(error.__cause__) == 401:
                raise HubSetupError(
                    f"The Hub rejected the token (401 Unauthorized at {endpoint}) while preparing to push "
                    f"to {opts.repo_id}: set HF_TOKEN or pass {self.token_hint} with a valid token that has "
                    "write access."
                ) from error.__cause__
            raise

        def create() -> bool | None:
            api.create_repo(opts.repo_id, private=opts.private, exist_ok=True)
            if opts.revision != "main":
                api.create_branch(opts.repo_id, branch=opts.revision, exist_ok=True)
            return api.model_info(opts.repo_id).private

        try:
            private, _ = with_retries(
                f"Creating {opts.repo_id}", opts, create, error_cls=HubSetupError, hint="try again later"
            )
        except HubSetupError as error:
            status = http_status(error.__cause__)
            if status in (401, 403):
                reason = "403 Forbidden" if status == 403 else "401 Unauthorized"
                raise HubSetupError(
                    f"The Hub refused to create or write to {opts.repo_id} for user {user!r} ({reason}). "
                    f"Push to a repository under your namespace ('{user}/...') or an organization you can "
                    "write to, with a token that has write access."
                ) from error.__cause__
            raise
        if opts.private and private is False:
            logger.warning("%s already exists and is public: the pushed versions will be public.", opts.repo_id)
        logger.info("Hub repository %s@%s ready (user %s).", opts.repo_id, opts.revision, user)

    # ------------------------------------------------------------------------------------ queueing
    def submit(self, version_dir: Path, *, step: int, final: bool = False, mark_pending: bool = True) -> None:
        """Queue a push of a complete version directory, mark it pending in the journal, and return at once.

        Args:
            version_dir: The version directory, in its final place (it must stay there until pushed:
                see :meth:`is_pending`).
            step: Its training step (pushes happen in step order).
            final: The last version of the run: never coalesced away.
            mark_pending: Mark it pending in the journal (not when it is queued from the journal: another process
                may have pushed it since it was read, and the push re-checks the journal under the push lock).

        Raises:
            HubError: The pusher is closed.
        """
        job = _PushJob(step, final, Path(version_dir).absolute())
        if self._worker.closed:
            raise HubError(f"Cannot submit {job.version_dir.name}: the Hub pusher is closed.")
        if mark_pending:
            _journal(job.version_dir, self.options, step, "pending")
        with self._cond:
            skipped = self._worker.submit(job)
            # Versions whose push failed because the Hub or the network was down go again, before this one (step
            # order), each time a new version arrives.
            active = {j.version_dir for j in self._worker.pending()}
            for f in self._failures:
                retry = self.options.push_mode == "every" and f.transient and f.version_dir not in active
                if retry and f.version_dir.is_dir():
                    self._worker.submit(_PushJob(f.step, False, f.version_dir))
            self._skipped += [old.version_dir for old in skipped]
            self._log_if_behind()
        for old in skipped:
            _journal(old.version_dir, self.options, old.step, "skipped")

    def resume(self, root: Path) -> list[tuple[int, Path]]:
        """Queue the versions of ``root`` that its push journal lists as not pushed (pending or failed).

        Entries whose directory is gone (removed by the user) are dropped from the journal.

        Args:
            root: The export root.

        Returns:
            ``(step, version_dir)`` of the versions queued, in step order.
        """
        journal = PushJournal(root)
        queued = []
        base = Path(root).resolve()
        for step, name in journal.unpushed(self.options.repo_id, self.options.revision):
            path = Path(root) / name  # the journal holds step_XXXXXX names only (checked when it is read)
            if step_of(name) is not None and path.is_dir() and not path.is_symlink() and path.resolve().parent == base:
                queued.append((step, path))
            else:
                logger.info("%s was pending a Hub push but is gone from %s; forgetting it", name, root)
                with contextlib.suppress(OSError):
                    journal.forget(self.options.repo_id, self.options.revision, name)
        if queued:
            logger.info(
                "Resuming %d Hub push(es) to %s@%s a previous run left unfinished: %s",
                len(queued),
                self.options.repo_id,
                self.options.revision,
                ", ".join(p.name for _, p in queued),
            )
        for step, path in queued:
            self.submit(path, step=step, mark_pending=False)
        return queued

    def resubmit(self, version_dir: Path, *, step: int) -> bool:
        """Queue ``version_dir`` again unless the journal says it was pushed (resuming from a checkpoint).

        Returns:
            Whether it was queued.
        """
        path = Path(version_dir)
        entry = PushJournal(path.parent).versions(self.options.repo_id, self.options.revision).get(path.name)
        if (entry is not None and entry.get("state") == "pushed") or not path.is_dir():
            return False
        logger.info("Re-queueing the Hub push of %s, pending when the previous run stopped", path.name)
        self.submit(path, step=step)
        return True

    def _log_if_behind(self) -> None:
        """Say that pushes are behind (how many wait, the oldest) at most every :data:`BEHIND_LOG_INTERVAL_S`."""
        waiting, in_flight = self._queue.jobs, self._worker.running
        if len(waiting) < 2:
            return
        now = time.monotonic()
        if self._behind_logged_at is not None and now - self._behind_logged_at < BEHIND_LOG_INTERVAL_S:
            return
        self._behind_logged_at = now
        logger.warning(
            "Hub pushes to %s are behind: %d version(s) wait (oldest %s)%s; they stay on disk until pushed. "
            "hub_push='latest' pushes only the newest waiting version.",
            self.options.repo_id,
            len(waiting),
            waiting[0].version_dir.name,
            f", {in_flight.version_dir.name} being pushed" if in_flight is not None else "",
        )

    def is_pending(self, version_dir: Path) -> bool:
        """Whether ``version_dir`` is not pushed yet: queued, being pushed, or failed (so it must be kept)."""
        path = Path(version_dir).absolute()
        return any(pending == path for _, pending in self.pending())

    def pending(self) -> list[tuple[int, Path]]:
        """``(step, version_dir)`` of the versions not pushed yet: queued, being pushed, or failed."""
        with self._cond:
            jobs = {j.version_dir: j.step for j in self._worker.pending()}
            for f in self._failures:  # a failure is forgotten once the same directory is pushed
                jobs.setdefault(f.version_dir, f.step)
        return sorted((step, path) for path, step in jobs.items())

    @property
    def skipped(self) -> list[Path]:
        """The versions coalesced away (``push_mode="latest"``), in order."""
        with self._cond:
            return list(self._skipped)

    @property
    def failures(self) -> list[PushFailure]:
        """The versions whose push failed (and has not succeeded since), in step order, each with its error."""
        with self._cond:
            return list(self._failures)

    @property
    def results(self) -> list[PushResult]:
        """The pushes that succeeded, in order."""
        with self._cond:
            return list(self._results)

    # -------------------------------------------------------------------------------------- worker
    def _run(self, job: _PushJob) -> None:
        """Push one version (on the worker). Whatever the push raises is recorded as that version's failure, before
        the worker counts it done; a ``KeyboardInterrupt``/``SystemExit`` then goes on to the worker, which stores
        it for :meth:`check` and :meth:`close` to raise as itself."""
        result: PushResult | None = None
        failure: PushFailure | None = None
        try:
            result, failure = self._push_one(job)
        except BaseException as exc:  # a bug: never a silent death with a version left in flight
            error = HubError(f"Pushing {job.version_dir.name} failed: {describe(exc)}")
            error.__cause__ = exc
            failure = PushFailure(job.version_dir, job.step, error)
            logger.error("Hub push of %s failed unexpectedly: %s", job.version_dir.name, describe(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._cond:
                self._failures = [f for f in self._failures if f.version_dir != job.version_dir]
                if result is not None and result.commit_oid is not None:
                    self._results.append(result)
                if failure is not None:
                    self._failures.append(failure)
                    self._failures.sort(key=lambda f: f.step)
                self._checked = min(self._checked, len(self._failures))

    def _push_one(self, job: _PushJob) -> tuple[PushResult | None, PushFailure | None]:
        # While the Hub is down, one attempt per version (not the whole retry policy each), so that a backlog
        # costs one timeout per version, not (max_retries + 1) of them; the first success restores the policy.
        options = replace(self.options, max_retries=0) if self._hub_down else self.options
        try:
            self.setup()
            result = push_version(job.version_dir, options, step=job.step, api=self.api, skip_if_pushed=True)
            self._hub_down = False
            return result, None
        except Exception as exc:
            error = exc
            if not isinstance(exc, HubError):
                error = HubError(f"Pushing {job.version_dir.name} failed: {describe(exc)}")
                error.__cause__ = exc
            failure = PushFailure(job.version_dir, job.step, error)
            self._hub_down = failure.transient
            _journal(job.version_dir, self.options, job.step, "failed", error=str(error))
            logger.warning(
                "Hub push of %s failed%s: %s",
                job.version_dir.name,
                "" if self.options.on_push_error == "raise" else " (training goes on; the version stays on disk)",
                error,
            )
            return None, failure

    # ------------------------------------------------------------------------------ surfacing, end
    def check(self) -> None:
        """Raise the first failure not raised yet, when ``on_push_error="raise"``; otherwise do nothing.

        Raises:
            HubError: A push failed (the cause is chained).
            KeyboardInterrupt: (or ``SystemExit``) raised in the push thread, as itself.
        """
        self._raise_interrupt()
        with self._cond:
            if self.options.on_push_error != "raise" or self._checked >= len(self._failures):
                return
            failure = self._failures[self._checked]
            self._checked += 1
        raise HubError(f"Hub push of {failure.version_dir.name} failed: {failure.error}") from failure.error

    def wait(self, timeout: float | None = None) -> None:
        """Block until every queued push is done (or ``timeout`` seconds have passed; then log a warning)."""
        with self._cond:
            count = len(self._worker.pending())
            if count == 0:
                return
            logger.info("Waiting for %d pending Hub push(es) to %s...", count, self.options.repo_id)
            if not self._worker.wait(timeout):
                left = self._worker.pending()
                logger.warning(
                    "Still %d Hub push(es) pending %s: %s",
                    len(left),
                    f"after {timeout:.1f} s" if self._worker.alive else "and the push thread has stopped",
                    ", ".join(j.version_dir.name for j in left),
                )

    def _raise_interrupt(self) -> None:
        error = self._worker.take_error()  # only what is no Exception: the others are failures
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the pending pushes, stop the worker and log a summary. Idempotent.

        Raises:
            HubError: With ``on_push_error="raise"``, when any push failed (the first failure is chained).
            KeyboardInterrupt: (or ``SystemExit``) raised in the push thread, as itself.
        """
        self.wait()
        self._worker.close()
        failures = self.failures
        if failures:
            logger.warning(
                "%d Hub push(es) to %s failed: %s. The versions stay on disk (rotation keeps them) and the push "
                "journal lists them: a new run on the same export root, or `hfexport push %s --repo_id %s "
                "--pending`, pushes them.",
                len(failures),
                self.options.repo_id,
                "; ".join(f"{f.version_dir.name}: {f.error}" for f in failures),
                failures[0].version_dir.parent,
                self.options.repo_id,
            )
        elif self._results:
            logger.info("All %d Hub push(es) to %s succeeded.", len(self._results), self.options.repo_id)
        self._raise_interrupt()
        if failures and self.options.on_push_error == "raise":
            raise HubError(
                f"{len(failures)} Hub push(es) to {self.options.repo_id} failed, the first: "
                f"{failures[0].version_dir.name}: {failures[0].error}"
            ) from failures[0].error
