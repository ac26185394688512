"""The one worker thread (hfexport/_util/worker.py) under both queue policies: the writer's one slot and the
pusher's step order; errors stored and handed back as themselves; close waits; exit hooks only where asked."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hfexport._util.worker import Abandoned, ExitWords, OneSlot, Queue, Worker, at_exit_workers, finish_all_at_exit
from hfexport.hub.options import HubOptions
from hfexport.hub.push import HubPusher, _PushJob, _StepOrder

WORDS = ExitWords(
    finishing="finishing {count} pending job{s}",
    failed="error: {what} failed: {error}",
    interrupted="interrupted",
    lost="not done: {jobs}",
    still=" (still stopping)",
)


class Gate:
    """A job runner that records each job and holds the first one until released."""

    def __init__(self) -> None:
        self.ran: list[object] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, job: object) -> None:
        self.started.set()
        assert self.release.wait(10)
        self.ran.append(job)


def test_one_slot_holds_one_waiting_job_and_submit_blocks_until_the_slot_is_free() -> None:
    gate = Gate()
    worker: Worker[int] = Worker(gate, str, queue=OneSlot(), name="test-one-slot")
    assert worker.submit(1) == [] and gate.started.wait(10)
    assert not worker.busy
    worker.submit(2)
    assert worker.busy and worker.pending() == [1, 2] and worker.running == 1
    submitted = threading.Event()
    third = threading.Thread(target=lambda: (worker.submit(3), submitted.set()))
    third.start()
    assert not submitted.wait(0.2)  # job 2 holds the slot
    gate.release.set()
    assert submitted.wait(10)
    third.join(10)
    worker.close()
    assert gate.ran == [1, 2, 3] and worker.pending() == [] and not worker.alive


def test_the_pushers_policy_runs_in_step_order_and_coalesces_intermediate_versions() -> None:
    gate = Gate()
    queue = _StepOrder(coalesce=True)
    worker: Worker[_PushJob] = Worker(gate, lambda job: str(job.step), queue=queue, name="test-step-order")
    jobs = {step: _PushJob(step, step == 4, Path(f"/v/step_{step}")) for step in range(1, 7)}
    worker.submit(jobs[1])
    assert gate.started.wait(10)  # job 1 runs; the others wait
    assert worker.submit(jobs[5]) == []
    assert worker.submit(jobs[2]) == [jobs[2]]  # older than the waiting 5: dropped at once
    assert worker.submit(jobs[4]) == []  # a final: always stays
    assert worker.submit(jobs[6]) == [jobs[5]]
    again = _PushJob(6, False, jobs[6].version_dir)
    assert worker.submit(again) == []  # the same directory again: one entry
    assert not worker.busy  # this policy never makes submit wait
    assert [job.step for job in worker.pending()] == [1, 4, 6]
    gate.release.set()
    assert worker.wait(10)
    worker.close()
    assert gate.ran == [jobs[1], jobs[4], again]


def test_a_failing_job_is_stored_and_the_worker_goes_on_an_interrupt_comes_back_as_itself() -> None:
    ran: list[str] = []

    def run(job: str) -> None:
        ran.append(job)
        if job == "fail":
            raise OSError("disk full on purpose")
        if job == "stop":
            raise KeyboardInterrupt

    worker: Worker[str] = Worker(run, str, queue=Queue(), name="test-errors")
    for job in ("fail", "ok", "stop", "after"):
        worker.submit(job)
    assert worker.wait(10)
    assert ran == ["fail", "ok", "stop", "after"]  # neither the error nor the interrupt stopped the worker
    error = worker.take_error()
    assert type(error) is KeyboardInterrupt  # the most recent, as itself
    assert worker.take_error() is None
    worker.run_here("fail")  # in the caller's thread: stored as the worker would
    assert isinstance(worker.take_error(), OSError)
    with pytest.raises(KeyboardInterrupt):
        worker.run_here("stop")  # goes through, not stored
    assert worker.take_error() is None
    worker.close()


def test_close_waits_for_the_running_and_waiting_jobs_then_refuses_new_ones() -> None:
    gate = Gate()
    worker: Worker[int] = Worker(gate, str, queue=Queue(), name="test-close")
    worker.submit(1)
    worker.submit(2)
    assert gate.started.wait(10)
    assert not worker.wait(timeout=0.05)  # bounded: returns with the jobs still pending
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (worker.close(), closed.set()))
    closer.start()
    assert not closed.wait(0.2)  # close waits for job 1, still held
    gate.release.set()
    assert closed.wait(10)
    closer.join(10)
    assert gate.ran == [1, 2] and worker.closed and not worker.alive
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(3)
    worker.close()  # idempotent


def test_a_wait_never_hangs_on_a_worker_thread_that_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    worker: Worker[int] = Worker(lambda job: None, str, queue=Queue(), name="test-no-thread")
    monkeypatch.setattr(worker, "_start", lambda: None)  # as in a forked child: jobs inherited, no thread
    worker.submit(1)
    assert worker.wait() is False and worker.pending() == [1]


def test_exit_hooks_run_only_the_workers_made_with_exit_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[str] = []

    def run(job: str) -> None:
        ran.append(job)
        if job == "bad":
            raise OSError("on purpose")

    finished: Worker[str] = Worker(run, str, queue=Queue(), name="test-exit", at_exit=WORDS)
    left: Worker[str] = Worker(run, str, queue=Queue(), name="test-no-exit")  # like the Hub pusher's
    for worker in (finished, left):
        monkeypatch.setattr(worker, "_start", lambda: None)  # the thread gone: jobs run in the exiting thread
    finished.submit("good")
    finished.submit("bad")
    left.submit("network")
    assert finished in at_exit_workers() and left not in at_exit_workers()
    finish_all_at_exit()  # the first hook
    finished._finish_at_exit(last=True)  # the last one also stops the worker
    err = capsys.readouterr().err
    assert "hfexport: finishing 2 pending jobs" in err and "hfexport: error: bad failed: on purpose" in err
    assert ran == ["good", "bad"] and left.pending() == ["network"]  # exit never waits for the pusher's worker
    assert finished.closed and finished not in at_exit_workers()


def test_ctrl_c_at_exit_stops_the_running_job_and_names_what_was_lost(capsys: pytest.CaptureFixture[str]) -> None:
    started, seen = threading.Event(), []

    def run(job: str) -> None:
        started.set()
        try:
            while True:  # Python bytecode: where the asynchronous exception lands
                threading.Event().wait(0.01)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    worker: Worker[str] = Worker(run, str, queue=Queue(), name="test-abandon", at_exit=WORDS)
    worker.submit("long")
    worker.submit("next")
    assert started.wait(10)
    worker._abandon_at_exit()
    assert seen == [Abandoned] and worker.closed and not worker.alive
    assert "hfexport: not done: long, next\n" in capsys.readouterr().err
    assert isinstance(worker.take_error(), Abandoned)


def test_an_interrupt_in_the_push_thread_is_a_failure_and_is_raised_as_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupted(job: _PushJob) -> None:
        raise KeyboardInterrupt

    pusher = HubPusher(HubOptions("me/run"))
    monkeypatch.setattr(pusher, "_push_one", interrupted)  # no network: the push itself is never reached
    version = tmp_path / "step_000001"
    version.mkdir()
    pusher.submit(version, step=1)
    pusher.wait()
    assert [f.version_dir for f in pusher.failures] == [version.absolute()]
    with pytest.raises(KeyboardInterrupt):
        pusher.check()
    pusher.close()  # the interrupt was delivered once; on_push_error="warn" does not raise the failure
