"""One reader of ``hfexport.json`` for the writer, pushes, the directory check and the Hub (issue 19 §4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hfexport.errors import HubError
from hfexport.hub.files import publishable_files
from hfexport.io.check import check_directory
from hfexport.io.directory import replace_refusal
from hfexport.io.manifest import NO_INTEGER_SIZE, listed_sizes, manifest_files, parse_manifest, read_manifest


def test_parse_manifest_checks_each_entry() -> None:
    data = {"step": 3, "files": {"a": {"size": 1, "crc32": "00000000"}, "b": {"size": True}, "c": {"size": 2}}}
    parsed = parse_manifest(data)
    assert parsed is not None
    assert parsed.entries == data["files"]
    assert parsed.invalid == {"b": NO_INTEGER_SIZE}
    assert manifest_files(data) is None  # one broken entry: not a manifest of hfexport
    assert manifest_files({"files": {"c": {"size": 2}}}) == {"c": {"size": 2}}
    for bad in ([], {"files": []}, {"step": 1}, "x", None):
        assert parse_manifest(bad) is None and manifest_files(bad) is None
    assert manifest_files({"files": {"a": {"size": 1, "crc32": 5}}}) is None


@pytest.mark.parametrize("size", ["3", 3.0, None, [3]])
def test_every_reader_refuses_a_size_that_is_not_an_integer(tmp_path: Path, size: Any) -> None:
    """The writer (``force``), a push and the directory check read the same schema, each with its own policy."""
    (tmp_path / "config.json").write_text("{}")
    manifest = {"files": {"config.json": {"size": size, "crc32": "00000000"}}}
    (tmp_path / "hfexport.json").write_text(json.dumps(manifest))
    assert read_manifest(tmp_path) is None and listed_sizes(tmp_path) is None
    assert replace_refusal(tmp_path) == "has an unreadable hfexport.json manifest"
    with pytest.raises(HubError, match=r"its hfexport\.json is not an hfexport manifest"):
        publishable_files(tmp_path)
    problems = check_directory(tmp_path).problems
    assert "config.json: its hfexport.json entry has no integer size" in problems


def test_readers_agree_on_a_good_manifest(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "hfexport.json").write_text(json.dumps({"files": {"config.json": {"size": 2}}}))
    assert listed_sizes(tmp_path) == {"config.json": 2}
    assert replace_refusal(tmp_path) is None
    assert publishable_files(tmp_path) == ["config.json", "hfexport.json"]


def test_an_unreadable_manifest(tmp_path: Path) -> None:
    (tmp_path / "hfexport.json").write_bytes(b"{not json")
    with pytest.raises(ValueError):
        read_manifest(tmp_path)
    assert listed_sizes(tmp_path) is None
    assert replace_refusal(tmp_path) == "has an unreadable hfexport.json manifest"
    with pytest.raises(HubError, match=r"its hfexport\.json cannot be read"):
        publishable_files(tmp_path)
