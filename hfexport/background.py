"""One background worker that runs jobs in order, shaped like Lightning's ``AsyncCheckpointIO``.

At most one job runs and at most one more waits (``busy`` says a job waits); :meth:`BackgroundWriter.submit`
blocks on a condition (no polling) until the waiting slot is free. A job that raises stores its error (the most
recent one) for :meth:`BackgroundWriter.take_error`; the worker goes on with the next job. :meth:`wait` blocks
until every submitted job has run.

A script that ends without :meth:`BackgroundWriter.close` still gets its pending jobs run at interpreter exit
(said on stderr), in the worker if it still runs, else in the exiting thread; a job that fails then is reported on
stderr. A forked child inherits the writer's jobs but not its thread: it never runs them.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook registered before ours, so ours runs first
import contextlib
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BackgroundWriter"]

Job = TypeVar("Job")


class BackgroundWriter(Generic[Job]):
    """Runs ``run(job)`` for each submitted job on one worker thread, in submission order.

    Args:
        run: What to do with a job; it may raise (the error is stored, the worker goes on).
        describe: ``job`` in words, for the messages at exit (``"step 5 to hf_exports/step_000005"``).
        name: The worker thread's name.
    """

    def __init__(self, run: Callable[[Job], None], describe: Callable[[Job], str], name: str = "hfexport-writer"):
        self._run = run
        self._describe = describe
        self._name = name
        self._cond = threading.Condition()  # guards everything below
        self._waiting: deque[Job] = deque()  # submitted, not taken by the worker yet (at most one)
        self._running: Job | None = None
        self._error: BaseException | None = None
        self._error_what = ""
        self._thread: threading.Thread | None = None
        self._closed = False
        self._owner_pid = os.getpid()
        _LIVE.add(self)
        _register_exit_hooks()

    @property
    def busy(self) -> bool:
        """Whether a job already waits (a new one would have to wait for the slot)."""
        with self._cond:
            return bool(self._waiting)

    def pending(self) -> list[Job]:
        """The jobs submitted and not finished (the running one first)."""
        with self._cond:
            return ([self._running] if self._running is not None else []) + list(self._waiting)

    def wait_for_slot(self) -> None:
        """Block until no job waits (the worker may still run one)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._waiting)

    def submit(self, job: Job) -> None:
        """Hand ``job`` to the worker (blocks while another job waits)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this BackgroundWriter is closed")
            self._cond.wait_for(lambda: not self._waiting)
            self._waiting.append(job)
            self._cond.notify_all()
        self._start()

    def run_here(self, job: Job) -> None:
        """Run ``job`` in the calling thread, storing its error as the worker would; a ``KeyboardInterrupt`` or
        ``SystemExit`` goes through untouched (not stored)."""
        try:
            self._run(job)
        except Exception as exc:
            self._store(exc, job)

    def take_error(self) -> BaseException | None:
        """The stored error (cleared), or ``None``."""
        with self._cond:
            error, self._error = self._error, None
            return error

    def wait(self) -> None:
        """Block until every submitted job has run."""
        with self._cond:
            self._cond.wait_for(lambda: not self._waiting and self._running is None)

    def close(self) -> None:
        """Run what is pending, then stop the worker. Idempotent."""
        self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        _LIVE.discard(self)

    # --------------------------------------------------------------------------------------------- internal
    def _start(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
            if not self._run_next(BaseException):  # stored: raised (or reported) in the training thread
                return

    def _run_next(self, catch: type[BaseException]) -> bool:
        """Run the next waiting job in this thread, storing what it raises of ``catch``; ``False`` if none waits."""
        with self._cond:
            if not self._waiting:
                return False
            job = self._running = self._waiting.popleft()
            self._cond.notify_all()
        try:
            self._run(job)
        except catch as exc:
            self._store(exc, job)
        finally:
            with self._cond:
                self._running = None
                self._cond.notify_all()
        return True

    def _store(self, exc: BaseException, job: Job) -> None:
        with self._cond:
            self._error = exc
            self._error_what = self._describe(job)

    def _finish_at_exit(self) -> None:
        """At interpreter exit: run what is still pending (in this thread if the worker is gone), and report on
        stderr what could not be done (logging may be unconfigured or shut down by then)."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        count = len(self.pending())
        if count:
            _say(
                f"hfexport: finishing {count} pending export{'s' if count > 1 else ''} before exit "
                "(call exporter.close() to do this explicitly)"
            )
            thread = self._thread
            if thread is not None and thread.is_alive():
                self.wait()
            else:
                while self._run_next(Exception):  # a KeyboardInterrupt stops it (see _finish_all_at_exit)
                    pass
        with self._cond:
            error, self._error = self._error, None
            what = self._error_what
        if error is not None:
            _say(f"hfexport: error: the export of {what} could not be written: {error}")


def _say(line: str) -> None:
    """One line on stderr (at exit, where logging may be unconfigured or already shut down)."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed
        print(line, file=sys.stderr, flush=True)


# Writers that may hold pending jobs; finished at interpreter exit if close() was never called.
_LIVE: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_registered = False


def _register_exit_hooks() -> None:
    """Register :func:`_finish_all_at_exit` twice: as a threading exit hook, which runs before
    ``concurrent.futures`` refuses new work and before non-daemon threads are joined (the worker still runs
    normally then), and as an ``atexit`` hook for what a non-daemon thread submitted after that."""
    global _hooks_registered
    with _hooks_lock:
        if _hooks_registered:
            return
        _hooks_registered = True
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9; hooks run last-registered first
    if register is not None:
        with contextlib.suppress(RuntimeError):  # the interpreter is already shutting down
            register(_finish_all_at_exit)
    atexit.register(_finish_all_at_exit)


def _finish_all_at_exit() -> None:
    for writer in list(_LIVE):
        try:
            writer._finish_at_exit()
        except KeyboardInterrupt:
            _say("hfexport: interrupted at exit; pending exports were not written")
            return
        except Exception as exc:  # at exit: report, never raise into the interpreter's shutdown
            _say(f"hfexport: error: could not finish the pending exports: {exc!r}")
