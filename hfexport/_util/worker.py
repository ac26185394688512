"""One worker thread running jobs in the order its queue policy gives: the background writer's and the Hub pusher's.

A job that raises anything (``KeyboardInterrupt`` included) stores its error for :meth:`Worker.take_error`, which
hands it back as itself; the worker goes on. A worker made with :class:`ExitWords` (the writer's) has its pending
jobs run at interpreter exit: in a ``threading`` exit hook (before ``concurrent.futures`` refuses new work and
non-daemon threads are joined), then in an ``atexit`` one that also stops and joins the worker, bounded (a thread
left inside torch when the interpreter finalizes is killed there, which aborts the process); Ctrl-C then stops the
running job (:class:`Abandoned` raised in its thread). Without them (the pusher's) exit never waits for the worker.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook registered before ours, so ours runs first
import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["STOP_TIMEOUT_S", "Abandoned", "ExitWords", "OneSlot", "Queue", "Worker", "finish_all_at_exit", "say"]

Job = TypeVar("Job")
STOP_TIMEOUT_S = 10.0  # how long a stopped job may take to clean up, and an idle worker to end, at exit
_POLL_S = 1.0  # how often a wait looks whether the worker thread is still alive


class Queue(Generic[Job]):
    """A worker's queue policy, called with the worker's lock held: ``jobs`` wait in the order they will run (the
    first runs next). This one: any number wait, in submission order; subclasses change :meth:`add` and
    :meth:`has_room`."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def has_room(self) -> bool:
        """Whether a job may be added now (``submit`` waits until it may)."""
        return True

    def add(self, job: Job) -> list[Job]:
        """Queue ``job``; return the waiting jobs it replaced (dropped, never run)."""
        self.jobs.append(job)
        return []


class OneSlot(Queue[Job]):
    """At most one job waits (shaped like Lightning's ``AsyncCheckpointIO``)."""

    def has_room(self) -> bool:
        return not self.jobs


@dataclass(frozen=True)
class ExitWords:
    """What a worker finished at interpreter exit says on stderr, each after ``hfexport: ``."""

    finishing: str  # {count} jobs pending, {s} the plural's "s"
    failed: str  # {what} failed with {error}
    interrupted: str  # Ctrl-C while they run
    lost: str  # {jobs} not done after Ctrl-C
    still: str  # after `lost` when the running job did not stop in time


class Abandoned(SystemExit):
    """Raised in a worker's thread to stop the job it runs (Ctrl-C at exit, a grace period over); a
    ``SystemExit``, so the job's cleanup runs and lets it through, as for Ctrl-C."""


class Worker(Generic[Job]):
    """Runs ``run(job)`` for each submitted job on one thread, in the order ``queue`` gives.

    Args:
        run: What to do with a job; it may raise (the error is stored, the worker goes on).
        describe: ``job`` in words, for the messages (``"step 5 to hf_exports/step_000005"``).
        queue: The queue policy.
        name: The thread's name.
        at_exit: Finish the pending jobs at interpreter exit, saying so in these words (``None``: never).

    Attributes:
        lock: The (re-entrant) lock guarding the queue and the attributes below: hold it to do several things as one.
        running: The job being run, or ``None``.
        closed: Whether :meth:`close` was called (no job is accepted any more).
    """

    def __init__(
        self,
        run: Callable[[Job], None],
        describe: Callable[[Job], str],
        *,
        queue: Queue[Job],
        name: str,
        at_exit: ExitWords | None = None,
    ) -> None:
        self._run, self._describe, self._queue, self._name, self._words = run, describe, queue, name, at_exit
        self.lock = threading.Condition()
        self.running: Job | None = None
        self.closed = False
        self._error: BaseException | None = None
        self._error_what = ""
        self._thread: threading.Thread | None = None
        self._owner_pid = os.getpid()
        if at_exit is not None:
            _AT_EXIT.add(self)
            _register_exit_hooks()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Whether the policy has no room (a new job would have to wait)."""
        with self.lock:
            return not self._queue.has_room()

    def wait_for_slot(self) -> None:
        """Block until the policy has room (the worker may still run a job)."""
        with self.lock:
            self.lock.wait_for(self._queue.has_room)

    def pending(self) -> list[Job]:
        """The jobs submitted and not finished (the running one first)."""
        with self.lock:
            return ([self.running] if self.running is not None else []) + self._queue.jobs

    def submit(self, job: Job) -> list[Job]:
        """Queue ``job`` (blocks until the policy has room); returns the waiting jobs the policy dropped for it.
        A ``RuntimeError`` once closed."""
        with self.lock:
            if self.closed:
                raise RuntimeError(f"this {type(self).__name__} is closed")
            self.lock.wait_for(self._queue.has_room)
            dropped = self._queue.add(job)
            self.lock.notify_all()
            self._start()
        return dropped

    def run_here(self, job: Job) -> None:
        """Run ``job`` in the calling thread, storing its error as the worker would; a ``KeyboardInterrupt`` or
        ``SystemExit`` goes through untouched (not stored)."""
        try:
            self._run(job)
        except Exception as exc:
            self._store(exc, job)

    def take_error(self) -> BaseException | None:
        """The stored error (cleared), or ``None``."""
        with self.lock:
            error, self._error = self._error, None
            return error

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has run, or no worker thread is alive to run them, or ``timeout``
        seconds have passed. Returns whether every job has run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while self._busy() and self.alive:
                remaining = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
                if remaining <= 0:
                    break
                self.lock.wait(remaining)
            return not self._busy()

    def close(self) -> None:
        """Run what is pending, then stop the worker thread and join it. Idempotent."""
        self.wait()
        self._stop(None)

    # --------------------------------------------------------------------------------------------- internal
    def _busy(self) -> bool:
        return self.running is not None or bool(self._queue.jobs)

    def _start(self) -> None:
        with self.lock:
            if not self.alive:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self._queue.jobs or self.closed)
            if not self._run_next(BaseException):  # stored: raised (or reported) in the caller's thread
                return

    def _run_next(self, catch: type[BaseException]) -> bool:
        """Run the next waiting job in this thread, storing what it raises of ``catch``; ``False`` if none waits."""
        with self.lock:
            if not self._queue.jobs:
                return False
            job = self.running = self._queue.jobs.pop(0)
            self.lock.notify_all()
        try:
            self._run(job)
        except catch as exc:
            self._store(exc, job)
        finally:
            with self.lock:
                self.running = None
                self.lock.notify_all()
        return True

    def _store(self, exc: BaseException, job: Job) -> None:
        with self.lock:
            self._error, self._error_what = exc, self._describe(job)

    def _stop(self, timeout: float | None) -> None:
        """Mark the worker closed and join its thread (at most ``timeout`` seconds)."""
        with self.lock:
            self.closed = True
            self.lock.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        _AT_EXIT.discard(self)

    def _drop_waiting(self) -> tuple[list[Job], Job | None]:
        """Drop the waiting jobs; return them and the running job."""
        with self.lock:
            dropped, self._queue.jobs = self._queue.jobs, []
            self.lock.notify_all()
            return dropped, self.running

    def _stop_job(self, job: Job) -> bool | None:
        """Raise :class:`Abandoned` in the worker thread while it runs ``job``. Returns whether the job ended
        within :data:`STOP_TIMEOUT_S` (``None``: no worker thread runs it)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread.ident is None:
            return None
        raise_in(thread.ident, Abandoned)
        with self.lock:
            return self.lock.wait_for(lambda: self.running is not job, timeout=STOP_TIMEOUT_S)

    def _finish_at_exit(self, last: bool) -> None:
        """Run what is still pending (in this thread if the worker is gone), report on stderr what failed; when
        ``last`` (the ``atexit`` hook, after non-daemon threads were joined), also stop and join the worker, so that
        no thread of it is left inside torch when the interpreter finalizes (``pthread_exit`` kills it there, which
        aborts the process: ``terminate called without an active exception``, exit status 134)."""
        words = self._words
        if words is None or self.closed or os.getpid() != self._owner_pid:
            return
        count = len(self.pending())
        if count:
            say("hfexport: " + words.finishing.format(count=count, s="s" if count > 1 else ""))
            if self.alive:
                self.wait()  # a KeyboardInterrupt: see finish_all_at_exit
            else:
                while self._run_next(Exception):  # a KeyboardInterrupt stops it (see finish_all_at_exit)
                    pass
        with self.lock:
            error, what, self._error = self._error, self._error_what, None
        if error is not None and not isinstance(error, Abandoned):
            say("hfexport: " + words.failed.format(what=what, error=error))
        if last:
            self._stop(STOP_TIMEOUT_S)

    def _abandon_at_exit(self) -> None:
        """Ctrl-C while exit waits for the worker: drop the waiting jobs and stop the running one, bounded, so that
        the worker is out of torch before the interpreter finalizes."""
        dropped, running = self._drop_waiting()
        stopped = self._stop_job(running) if running is not None else None
        lost = ([running] if running is not None else []) + dropped
        if lost and self._words is not None:
            jobs = ", ".join(self._describe(job) for job in lost)
            say("hfexport: " + self._words.lost.format(jobs=jobs) + ("" if stopped is not False else self._words.still))
        if stopped is not False:
            self._stop(STOP_TIMEOUT_S)


def raise_in(thread_id: int, exc: type[BaseException]) -> None:
    """Raise ``exc`` in the thread ``thread_id`` at its next Python instruction (CPython's async exception)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def say(line: str) -> None:
    """One line on stderr (at exit or in a signal handler, where logging may be unconfigured or shut down)."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed
        print(line, file=sys.stderr, flush=True)


# Workers with exit words that may hold pending jobs: finished at interpreter exit if close() was never called.
_AT_EXIT: weakref.WeakSet[Worker[Any]] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_registered = False


def at_exit_workers() -> list[Worker[Any]]:
    """The workers whose pending jobs are finished at interpreter exit (not closed yet)."""
    return list(_AT_EXIT)


def _register_exit_hooks() -> None:
    """Register :func:`finish_all_at_exit` as a ``threading`` exit hook and as an ``atexit`` one (``last``)."""
    global _hooks_registered
    with _hooks_lock:
        if _hooks_registered:
            return
        _hooks_registered = True
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9; hooks run last-registered first
    if register is not None:
        with contextlib.suppress(RuntimeError):  # the interpreter is already shutting down
            register(finish_all_at_exit)
    atexit.register(finish_all_at_exit, last=True)


def finish_all_at_exit(last: bool = False) -> None:
    """What the exit hooks run: each worker's pending jobs; on Ctrl-C, every worker's running job stopped."""
    for worker in at_exit_workers():
        try:
            worker._finish_at_exit(last)
        except KeyboardInterrupt:
            if worker._words is not None:
                say("hfexport: " + worker._words.interrupted)
            for other in at_exit_workers():  # no worker may be left inside torch when the interpreter finalizes
                with contextlib.suppress(Exception, KeyboardInterrupt):
                    other._abandon_at_exit()
            return
        except Exception as exc:  # at exit: report, never raise into the interpreter's shutdown
            say(f"hfexport: error: could not finish the pending jobs of {worker._name}: {exc!r}")
