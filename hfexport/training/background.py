"""The background writer: a :class:`~hfexport._util.worker.Worker` that writes versions in order, one running and
at most one more waiting (:class:`~hfexport._util.worker.OneSlot`), its pending versions written at interpreter
exit when ``close()`` was forgotten (said on stderr), and given a grace period on SIGTERM (:meth:`finish_within`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from hfexport._util.worker import Abandoned, ExitWords, OneSlot, Worker, at_exit_workers, finish_all_at_exit, say

__all__ = ["BackgroundWriter", "ExportAbandoned", "live"]

Job = TypeVar("Job")
ExportAbandoned = Abandoned  # raised in the writer's thread to stop an export: its temporary is removed
_finish_all_at_exit = finish_all_at_exit  # what the interpreter's exit hooks run
_WORDS = ExitWords(
    finishing="finishing {count} pending export{s} before exit (call exporter.close() to do this explicitly)",
    failed="error: the export of {what} could not be written: {error}",
    interrupted="interrupted at exit; stopping the pending exports",
    lost="interrupted at exit; not written: {jobs}",
    still=" (still stopping: its hidden temporary is removed by the next run)",
)


class BackgroundWriter(Worker[Job]):
    """Runs ``run(job)`` for each submitted job on one worker thread, in submission order (``submit`` blocks while
    a job waits); a job's error is stored for :meth:`take_error`, the worker goes on.

    Args:
        run: What to do with a job; it may raise (the error is stored, the worker goes on).
        describe: ``job`` in words, for the messages at exit (``"step 5 to hf_exports/step_000005"``).
        name: The worker thread's name.
    """

    def __init__(self, run: Callable[[Job], None], describe: Callable[[Job], str], name: str = "hfexport-writer"):
        super().__init__(run, describe, queue=OneSlot(), name=name, at_exit=_WORDS)

    def finish_within(self, seconds: float, why: str) -> None:
        """Give the pending jobs ``seconds`` to finish; then drop the waiting ones and stop the running one (an
        :class:`ExportAbandoned` raised in the worker, whose write removes its unpublished temporary). Each outcome
        is said on stderr, naming the job. For a signal handler (preemption): never raises, always bounded.

        Args:
            seconds: The grace period.
            why: What asks, for the messages (``"SIGTERM"``).
        """
        pending = self.pending()
        if self.closed or os.getpid() != self._owner_pid or not pending:
            return

        def said(what: str, jobs: list[Job], end: str = "") -> None:
            say(f"hfexport: {why}: {what} the export of " + ", ".join(self._describe(job) for job in jobs) + end)

        said("finishing", pending, f" (up to {seconds:g}s)")
        if self.wait(seconds):
            said("finished", pending)
            return
        dropped, running = self._drop_waiting()
        finished = [job for job in pending if job is not running and job not in dropped]
        if finished:
            said("finished", finished)
        for job in dropped:
            said("abandoned", [job], f": not started within {seconds:g}s; nothing of it was written")
        stopped = self._stop_job(running) if running is not None else None
        if stopped is None or running is None:
            return
        with self.lock:
            error = self._error
            if stopped and isinstance(error, ExportAbandoned):
                self._error = None  # the abandonment is reported here, not raised later as a failure
        what = f"abandoned the export of {self._describe(running)}: not finished within {seconds:g}s"
        if not stopped:
            say(
                f"hfexport: {why}: {what} and still writing; nothing of it is published (its hidden temporary is "
                "removed by the next run on this root)"
            )
        elif isinstance(error, ExportAbandoned):
            from hfexport.io.publish import interrupt_outcome  # imported here, where it is needed

            say(f"hfexport: {why}: {what}; {interrupt_outcome(error)}, no temporary left")
        else:  # it ended on its own in the meantime (the exception never reached it)
            said("finished", [running])


def live() -> list[BackgroundWriter[object]]:
    """The background writers not closed yet (each finishes its pending jobs at interpreter exit)."""
    return [worker for worker in at_exit_workers() if isinstance(worker, BackgroundWriter)]
