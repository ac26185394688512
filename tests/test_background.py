"""The background writer: one worker, jobs in order, one stored error, at most one job waiting."""

from __future__ import annotations

import threading

import pytest

from hfexport.training.background import BackgroundWriter


def test_jobs_run_in_order_on_one_thread_and_a_failure_is_stored_not_fatal() -> None:
    seen: list[tuple[int, str]] = []

    def run(job: int) -> None:
        seen.append((job, threading.current_thread().name))
        if job == 2:
            raise OSError("disk full on purpose")

    writer: BackgroundWriter[int] = BackgroundWriter(run, lambda job: f"job {job}", name="test-writer")
    for job in range(1, 5):
        writer.submit(job)
    writer.wait()
    assert [job for job, _ in seen] == [1, 2, 3, 4]  # the worker went on after the failure
    assert {name for _, name in seen} == {"test-writer"}
    error = writer.take_error()
    assert isinstance(error, OSError) and "on purpose" in str(error)
    assert writer.take_error() is None  # taken once
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(5)


def test_at_most_one_job_waits_and_submit_blocks_until_the_slot_is_free() -> None:
    release = threading.Event()
    started = threading.Event()

    def run(job: int) -> None:
        started.set()
        release.wait(10)

    writer: BackgroundWriter[int] = BackgroundWriter(run, str)
    writer.submit(1)
    assert started.wait(10)  # the worker holds job 1
    assert not writer.busy
    writer.submit(2)  # waits for the worker
    assert writer.busy and [job for job in writer.pending()] == [1, 2]
    third = threading.Thread(target=writer.submit, args=(3,))
    third.start()
    third.join(0.2)
    assert third.is_alive()  # blocked: job 2 still waits
    release.set()
    third.join(10)
    assert not third.is_alive()
    writer.close()
    assert writer.pending() == []


def test_run_here_stores_an_error_but_lets_an_interrupt_through_unstored() -> None:
    def run(job: str) -> None:
        raise {"fail": ValueError("bad"), "stop": KeyboardInterrupt()}[job]

    writer: BackgroundWriter[str] = BackgroundWriter(run, str)
    writer.run_here("fail")
    assert isinstance(writer.take_error(), ValueError)
    with pytest.raises(KeyboardInterrupt):
        writer.run_here("stop")
    assert writer.take_error() is None
    writer.close()
