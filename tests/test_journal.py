"""The push journal: atomic, per (repo_id, revision), and read back as written."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hfexport.hub.journal import JOURNAL_DIR, JOURNAL_NAME, PushJournal


def test_records_states_per_repository_and_branch(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        (tmp_path / f"step_{step:06d}").mkdir()
    journal = PushJournal(tmp_path)
    journal.record("me/a", "main", "step_000002", 2, "pushed", commit="c" * 40, tag="step_000002")
    journal.record("me/a", "main", "step_000004", 4, "failed", error="HTTP 503")
    journal.record("me/a", "main", "step_000006", 6, "pending")
    journal.record("me/a", "run-2", "step_000002", 2, "pending")
    journal.record("me/a", "main", "step_000008", 8, "skipped")

    assert journal.unpushed("me/a", "main") == [(4, "step_000004"), (6, "step_000006")]
    assert journal.unpushed("me/a", "run-2") == [(2, "step_000002")]
    assert journal.unpushed("me/b", "main") == []
    entry = journal.versions("me/a", "main")["step_000002"]
    assert (entry["state"], entry["commit"], entry["tag"]) == ("pushed", "c" * 40, "step_000002")
    assert [t for t, _ in journal.states()["step_000002"]] == ["me/a@main", "me/a@run-2"]

    journal.record("me/a", "main", "step_000004", 4, "pushed", commit="d" * 40)
    journal.forget("me/a", "main", "step_000006")
    assert journal.unpushed("me/a", "main") == []


def test_written_atomically_in_the_hidden_folder_without_local_paths(tmp_path: Path) -> None:
    journal = PushJournal(tmp_path)
    journal.record("me/a", "main", "step_000002", 2, "pending")

    assert journal.path == tmp_path / JOURNAL_DIR / JOURNAL_NAME
    assert sorted(p.name for p in journal.path.parent.iterdir()) == ["journal.lock", JOURNAL_NAME]  # no temporaries
    text = journal.path.read_text()
    assert str(tmp_path) not in text
    assert json.loads(text)["targets"]["me/a@main"]["versions"]["step_000002"]["state"] == "pending"


def test_an_unreadable_journal_reads_as_empty_with_a_warning(tmp_path: Path, caplog) -> None:
    journal = PushJournal(tmp_path)
    journal.path.parent.mkdir()
    journal.path.write_text("{not json")

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.journal"):
        assert journal.unpushed("me/a", "main") == []

    assert "cannot be read" in caplog.text
    journal.record("me/a", "main", "step_000002", 2, "pending")  # and it is rewritten whole
    assert journal.unpushed("me/a", "main") == [(2, "step_000002")]


def test_unknown_state_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="state"):
        PushJournal(tmp_path).record("me/a", "main", "step_000002", 2, "lost")


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    import threading

    def write(worker: int) -> None:
        journal = PushJournal(tmp_path)  # a journal object per thread, as the writer and the pusher have
        for i in range(10):
            journal.record("me/a", "main", f"step_{worker * 100 + i:06d}", worker * 100 + i, "pending")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(PushJournal(tmp_path).unpushed("me/a", "main")) == 60


@pytest.mark.parametrize(
    "bad",
    [
        {"targets": {"me/a@main": "x"}},
        [1, 2],
        {"targets": {"me/a@main": {"repo_id": "me/a", "revision": "main", "versions": {"../private": {"step": 1}}}}},
        {"targets": {"me/a@main": {"repo_id": "me/a", "revision": "main", "versions": {"step_000001": []}}}},
        {"targets": {"me/a@dev": {"repo_id": "me/a", "revision": "main", "versions": {}}}},
        {"targets": {}, "format": 2},
    ],
)
def test_a_journal_not_matching_the_schema_is_set_aside_never_deleted(tmp_path: Path, caplog, bad) -> None:
    journal = PushJournal(tmp_path)
    journal.path.parent.mkdir()
    journal.path.write_text(json.dumps(bad))
    before = journal.path.read_bytes()

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.journal"):
        assert journal.unpushed("me/a", "main") == []
        assert journal.states() == {}

    (aside,) = journal.path.parent.glob(f"{JOURNAL_NAME}.bad-*")
    assert aside.read_bytes() == before and not journal.path.exists()
    assert "set aside" in caplog.text and caplog.text.count("set aside") == 1
    (tmp_path / "step_000002").mkdir()
    journal.record("me/a", "main", "step_000002", 2, "pending")  # a new journal is started
    assert journal.unpushed("me/a", "main") == [(2, "step_000002")]


def test_only_version_names_are_recorded(tmp_path: Path) -> None:
    for name in ("../private_stuff", "latest", "step_5", "/abs/step_000001"):
        with pytest.raises(ValueError, match="version name"):
            PushJournal(tmp_path).record("me/a", "main", name, 1, "pending")


def test_settled_entries_of_versions_whose_directory_is_gone_are_pruned(tmp_path: Path) -> None:
    journal = PushJournal(tmp_path)
    for step in (1, 2, 3):
        (tmp_path / f"step_{step:06d}").mkdir()
    journal.record("me/a", "main", "step_000001", 1, "pushed", commit="a" * 40)
    journal.record("me/a", "main", "step_000002", 2, "failed", error="503")
    (tmp_path / "step_000001").rmdir()  # rotated away
    (tmp_path / "step_000002").rmdir()  # removed while unpushed: kept until a resume forgets it (logged)
    journal.record("me/a", "main", "step_000003", 3, "pushed", commit="b" * 40, on_branch=True)

    assert sorted(journal.versions("me/a", "main")) == ["step_000002", "step_000003"]
    assert journal.branch("me/a", "main") == {"step": 3, "name": "step_000003", "commit": "b" * 40}
