"""One background worker that runs jobs in order, shaped like Lightning's ``AsyncCheckpointIO``.

At most one job runs and at most one more waits (``busy`` says a job waits); :meth:`BackgroundWriter.submit`
blocks on a condition (no polling) until the waiting slot is free. A job that raises stores its error (the most
recent one) for :meth:`BackgroundWriter.take_error`; the worker goes on with the next job. :meth:`wait` blocks
until every submitted job has run.

A script that ends without :meth:`BackgroundWriter.close` still gets its pending jobs run at interpreter exit
(said on stderr), in the worker if it still runs, else in the exiting thread; a job that fails then is reported on
stderr. The last exit hook then stops and joins the worker: a thread left inside torch when the interpreter
finalizes is killed there, which aborts the process. Ctrl-C at exit stops the running job (its temporary removed)
and names what was not written. A forked child inherits the writer's jobs but not its thread: it never runs them.
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

__all__ = ["BackgroundWriter", "ExportAbandoned"]

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

    def finish_within(self, seconds: float, why: str) -> None:
        """Give the pending jobs ``seconds`` to finish; then drop the waiting ones and stop the running one (an
        :class:`ExportAbandoned` raised in the worker, whose write removes its unpublished temporary). Each outcome
        is said on stderr, naming the job. For a signal handler (preemption): never raises, always bounded.

        Args:
            seconds: The grace period.
            why: What asks, for the messages (``"SIGTERM"``).
        """
        if self._closed or os.getpid() != self._owner_pid:
            return
        with self._cond:
            pending = ([self._running] if self._running is not None else []) + list(self._waiting)
            if not pending:
                return
            _say(
                f"hfexport: {why}: finishing the export of "
                + ", ".join(self._describe(job) for job in pending)
                + f" (up to {seconds:g}s)"
            )
            if self._cond.wait_for(lambda: not self._waiting and self._running is None, timeout=seconds):
                _say(f"hfexport: {why}: finished the export of " + ", ".join(self._describe(job) for job in pending))
                return
            dropped = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
            running, thread = self._running, self._thread
        finished = [job for job in pending if job is not running and job not in dropped]
        if finished:
            _say(f"hfexport: {why}: finished the export of " + ", ".join(self._describe(job) for job in finished))
        for job in dropped:
            _say(
                f"hfexport: {why}: abandoned the export of {self._describe(job)}: not started within {seconds:g}s; "
                "nothing of it was written"
            )
        if running is None or thread is None or not thread.is_alive() or thread.ident is None:
            return
        _raise_in(thread.ident, ExportAbandoned)
        with self._cond:
            stopped = self._cond.wait_for(lambda: self._running is not running, timeout=_STOP_TIMEOUT_S)
            error = self._error
            if stopped and isinstance(error, ExportAbandoned):
                self._error = None  # the abandonment is reported here, not raised later as a failure
        if not stopped:
            _say(
                f"hfexport: {why}: abandoned the export of {self._describe(running)}: not finished within "
                f"{seconds:g}s and still writing; nothing of it is published (its hidden temporary is removed by "
                "the next run on this root)"
            )
        elif isinstance(error, ExportAbandoned):
            from hfexport.io.publish import interrupt_outcome  # imported here, where it is needed

            _say(
                f"hfexport: {why}: abandoned the export of {self._describe(running)}: not finished within "
                f"{seconds:g}s; {interrupt_outcome(error)}, no temporary left"
            )
        else:  # it ended on its own in the meantime (the exception never reached it)
            _say(f"hfexport: {why}: finished the export of {self._describe(running)}")

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

    def _finish_at_exit(self, last: bool = False) -> None:
        """At interpreter exit: run what is still pending (in this thread if the worker is gone), and report on
        stderr what could not be done (logging may be unconfigured or shut down by then).

        Args:
            last: The last chance (the ``atexit`` hook, after non-daemon threads were joined): the worker thread is
                also stopped and joined, so that no thread of hfexport is left inside torch (OpenMP, a GIL released
                in C++) when the interpreter finalizes: such a thread is killed there by ``pthread_exit``, which
                aborts the process (``terminate called without an active exception``, exit status 134).
        """
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
                self.wait()  # a KeyboardInterrupt: see _finish_all_at_exit
            else:
                while self._run_next(Exception):  # a KeyboardInterrupt stops it (see _finish_all_at_exit)
                    pass
        with self._cond:
            error, self._error = self._error, None
            what = self._error_what
        if error is not None and not isinstance(error, ExportAbandoned):
            _say(f"hfexport: error: the export of {what} could not be written: {error}")
        if last:
            self._stop_worker(_STOP_TIMEOUT_S)

    def _stop_worker(self, timeout: float) -> None:
        """Mark the writer closed and join its idle worker (at most ``timeout`` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        _LIVE.discard(self)

    def _abandon_at_exit(self) -> None:
        """Ctrl-C while exit waits for the writer: drop the waiting versions and stop the running one (its
        temporary removed), bounded, so that the worker is out of torch before the interpreter finalizes."""
        with self._cond:
            dropped = list(self._waiting)
            self._waiting.clear()
            running, thread = self._running, self._thread
            self._cond.notify_all()
        stopped = True
        if running is not None and thread is not None and thread.is_alive() and thread.ident is not None:
            _raise_in(thread.ident, ExportAbandoned)
            with self._cond:
                stopped = self._cond.wait_for(lambda: self._running is not running, timeout=_STOP_TIMEOUT_S)
        lost = ([running] if running is not None else []) + dropped
        if lost:
            _say(
                "hfexport: interrupted at exit; not written: "
                + ", ".join(self._describe(job) for job in lost)
                + ("" if stopped else " (still stopping: its hidden temporary is removed by the next run)")
            )
        if stopped:
            self._stop_worker(_STOP_TIMEOUT_S)


class ExportAbandoned(SystemExit):
    """Raised in the writer's thread to stop the export in progress (preemption: its grace period is over); a
    ``SystemExit``, so the write removes its unpublished temporary and lets it through, as for Ctrl-C."""


_STOP_TIMEOUT_S = 10.0  # how long a stopped export may take to remove its temporary


def _raise_in(thread_id: int, exc: type[BaseException]) -> None:
    """Raise ``exc`` in the thread ``thread_id`` at its next Python instruction (CPython's async exception)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


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
    normally then), and as an ``atexit`` hook for what a non-daemon thread submitted after that, which also stops
    and joins the worker threads (no thread of hfexport is left when the interpreter finalizes)."""
    global _hooks_registered
    with _hooks_lock:
        if _hooks_registered:
            return
        _hooks_registered = True
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9; hooks run last-registered first
    if register is not None:
        with contextlib.suppress(RuntimeError):  # the interpreter is already shutting down
            register(_finish_all_at_exit)
    atexit.register(_finish_all_at_exit, last=True)


def _finish_all_at_exit(last: bool = False) -> None:
    for writer in list(_LIVE):
        try:
            writer._finish_at_exit(last)
        except KeyboardInterrupt:
            _say("hfexport: interrupted at exit; stopping the pending exports")
            for other in list(_LIVE):  # no worker may be left inside torch when the interpreter finalizes
                with contextlib.suppress(Exception, KeyboardInterrupt):
                    other._abandon_at_exit()
            return
        except Exception as exc:  # at exit: report, never raise into the interpreter's shutdown
            _say(f"hfexport: error: could not finish the pending exports: {exc!r}")
