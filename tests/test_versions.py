"""Export roots: version names, listing, the ``latest`` pointer (symlink and text-file fallback), removal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nanogpt import make_gpt

from hfexport import HFExporter, HFExportError
from hfexport.io.versions import (
    VersionStore,
    list_versions,
    read_latest,
    remove_version,
    resolve_latest,
    set_latest,
    step_of,
    version_name,
)


def make_root(tmp_path: Path, *steps: int) -> Path:
    for step in steps:
        (tmp_path / version_name(step)).mkdir()
        (tmp_path / version_name(step) / "config.json").write_text("{}")
    return tmp_path


def test_version_name() -> None:
    assert version_name(0) == "step_000000"
    assert version_name(500) == "step_000500"
    assert version_name(12_345_678) == "step_12345678"
    with pytest.raises(ValueError, match="Invalid step -1"):
        version_name(-1)


def test_list_versions_sees_only_complete_version_directories(tmp_path: Path) -> None:
    make_root(tmp_path, 1000, 20, 3)
    (tmp_path / ".step_000040.tmp-123-abcd").mkdir()  # an unfinished write
    (tmp_path / "step_000050").write_text("a file, not a version")
    (tmp_path / "step_12").mkdir()  # not six digits
    (tmp_path / "step_000060").symlink_to("step_000020")
    (tmp_path / "notes").mkdir()
    assert [(v.step, v.name) for v in list_versions(tmp_path)] == [
        (3, "step_000003"),
        (20, "step_000020"),
        (1000, "step_001000"),
    ]
    assert list_versions(tmp_path / "missing") == []


def test_set_latest_is_a_relative_symlink_replaced_atomically(tmp_path: Path) -> None:
    make_root(tmp_path, 1, 2)
    set_latest(tmp_path, "step_000001")
    set_latest(tmp_path, "step_000002")
    link = tmp_path / "latest"
    assert link.is_symlink() and os.readlink(link) == "step_000002"
    assert read_latest(tmp_path) == "step_000002"
    assert resolve_latest(tmp_path) == tmp_path / "step_000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001", "step_000002"]  # no temporaries


def test_latest_text_file_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_root(tmp_path, 7, 8)
    (tmp_path / "latest").write_text("step_000007\n")  # what a filesystem without symlinks holds
    assert read_latest(tmp_path) == "step_000007"
    assert resolve_latest(tmp_path) == tmp_path / "step_000007"

    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError(1, "Operation not permitted (symlinks unsupported here)")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    set_latest(tmp_path, "step_000008")
    link = tmp_path / "latest"
    assert not link.is_symlink() and link.read_text() == "step_000008\n"
    assert read_latest(tmp_path) == "step_000008"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000007", "step_000008"]


def test_read_latest_ignores_what_is_not_a_version(tmp_path: Path) -> None:
    assert read_latest(tmp_path) is None
    (tmp_path / "latest").write_text("../../etc\n")
    assert read_latest(tmp_path) is None
    with pytest.raises(HFExportError, match="no valid 'latest'"):
        resolve_latest(tmp_path)
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").symlink_to("step_000009")  # dangling: the version is gone
    assert read_latest(tmp_path) == "step_000009"
    with pytest.raises(HFExportError, match="no valid 'latest'"):
        resolve_latest(tmp_path)


def test_set_latest_refuses_a_real_directory_named_latest(tmp_path: Path) -> None:
    make_root(tmp_path, 1)
    (tmp_path / "latest").mkdir()
    with pytest.raises(HFExportError, match="is a real directory"):
        set_latest(tmp_path, "step_000001")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_remove_version_leaves_no_trace(tmp_path: Path) -> None:
    make_root(tmp_path, 1, 2)
    (tmp_path / "step_000001" / "sub").mkdir()
    (tmp_path / "step_000001" / "sub" / "model.safetensors").write_bytes(b"x" * 100)
    first, second = list_versions(tmp_path)
    remove_version(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002"]
    assert list_versions(tmp_path) == [second]


def test_step_of_parses_only_version_names() -> None:
    assert step_of("step_000500") == 500 and step_of("step_1234567") == 1234567
    assert [step_of(n) for n in ("step_5", "latest", "step_000500x", ".step_000500.tmp-1-abcdef12")] == [None] * 4


def test_resolve_latest_refuses_a_pointer_leaving_the_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    root = make_root(tmp_path / "root", 1)
    make_root(tmp_path / "elsewhere", 1)
    (root / "latest").write_text("../elsewhere/step_000001\n")
    with pytest.raises(HFExportError, match="not a version directory"):
        resolve_latest(root)
    (root / "latest").write_text("step_000001\n")
    assert resolve_latest(root) == (root / "step_000001").resolve()


def test_the_store_rotates_its_own_oldest_versions_but_never_a_protected_one(tmp_path: Path) -> None:
    make_root(tmp_path, 1)  # a foreign version: never this store's to remove
    store = VersionStore(tmp_path, keep_last_n=2)
    pushing = {"step_000010"}
    for step in (10, 20, 30, 40):
        make_root(tmp_path, step)
        store.published(step, unwritten=set(), is_pushing=lambda path: path.name in pushing)
    # 10 waits for its push (kept past keep_last_n), 20 was removed, 30 and 40 are the newest two.
    assert [v.step for v in list_versions(tmp_path)] == [1, 10, 30, 40]
    assert store.created == ("step_000010", "step_000030", "step_000040")
    assert read_latest(tmp_path) == "step_000040"
    pushing.clear()
    # 30 is being written again: neither removed nor counted, so 10 and 40 are the newest two.
    store.rotate(unwritten={"step_000030"}, is_pushing=lambda path: False)
    assert [v.step for v in list_versions(tmp_path)] == [1, 10, 30, 40]
    store.rotate(unwritten=set(), is_pushing=lambda path: False)  # pushed now
    assert [v.step for v in list_versions(tmp_path)] == [1, 30, 40]


def test_rotation_keeps_a_version_you_added_files_to(tmp_path: Path) -> None:
    """Rotation deletes what hfexport wrote: a version holding a file its manifest does not list is kept."""
    model = make_gpt(0)
    exporter = HFExporter(tmp_path, keep_last_n=1, async_write=False)
    exporter.export(model, 1)
    (tmp_path / "step_000001" / "eval-results.txt").write_text("mine")
    exporter.export(model, 2)
    exporter.export(model, 3)
    exporter.close()
    assert (tmp_path / "step_000001" / "eval-results.txt").read_text() == "mine"  # kept, with the user's file
    assert [v.step for v in list_versions(tmp_path)] == [1, 3]  # step 2 was hfexport's alone: rotated
