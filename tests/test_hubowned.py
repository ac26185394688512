"""A push to an existing repository: hfexport deletes or replaces only what an earlier hfexport push put there.

The real ``huggingface_hub`` client against the local Hub of ``conftest.py``; the user's own files are committed
straight into the server's state, as if uploaded through the web interface.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from nanogpt import make_gpt
from test_hub import fast_options, make_version, ready, write_manifest

from hfexport import export_hf
from hfexport.cli import main
from hfexport.hub.push import push_version

REPO = "tester/existing"
USER_FILES = {
    "LICENSE": b"MIT License\n\nCopyright (c) the user\n",
    "eval_results.json": b'{"hellaswag": 0.31}\n',
    "paper/notes.md": b"# Notes\n\nsecret-free notes of the user\n",
}
USER_CARD = b"---\nlicense: mit\n---\n# My model\n\nThe card the user wrote by hand.\n"


def test_cli_push_to_an_existing_repo_keeps_the_users_files_and_card(hub_server, tmp_path: Path, caplog) -> None:
    hub_server.seed_files(REPO, {**USER_FILES, "README.md": USER_CARD})
    export_hf(make_gpt(), 1, tmp_path)

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.push"):
        assert main(["push", str(tmp_path), "--repo_id", REPO]) == 0

    files = hub_server.files_at(REPO, "main")
    for name, data in USER_FILES.items():
        assert files.get(name) == data, f"{name} was deleted or changed by the push"
    assert files["README.md"] == USER_CARD  # kept, never silently replaced
    assert files["model.safetensors"] == (tmp_path / "step_000001" / "model.safetensors").read_bytes()
    assert files["hfexport.json"] == (tmp_path / "step_000001" / "hfexport.json").read_bytes()
    assert "keeping the README.md" in caplog.text and "delete or rename README.md on the Hub" in caplog.text


def test_only_files_an_earlier_push_put_there_are_deleted(hub_server, tmp_path: Path) -> None:
    options = ready(hub_server)
    repo = options.repo_id
    first = make_version(tmp_path, 500)
    (first / "generation_config.json").write_text("{}")  # hfexport's, in the first version only
    write_manifest(first)
    push_version(first, options)
    hub_server.seed_files(repo, USER_FILES)  # the user adds files between two pushes

    push_version(make_version(tmp_path, 1000, card="---\nlicense: mit\n---\n# step 1000\n"), options)

    files = hub_server.files_at(repo, "main")
    assert "generation_config.json" not in files  # hfexport pushed it, the new version lacks it: deleted
    assert {name: files.get(name) for name in USER_FILES} == USER_FILES  # the user's: left as they are
    assert files["README.md"] == (tmp_path / "step_001000" / "README.md").read_bytes()  # hfexport's card: updated
    assert json.loads(files["hfexport.json"])["step"] == 1000


def test_a_card_the_user_edited_after_a_push_is_kept(hub_server, tmp_path: Path, caplog) -> None:
    options = ready(hub_server)
    push_version(make_version(tmp_path, 500), options)
    edited = b"---\nlicense: mit\n---\n# gpt2-run\n\nEdited on the Hub by the user.\n"
    hub_server.seed_files(options.repo_id, {"README.md": edited})

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.push"):
        push_version(make_version(tmp_path, 1000), options)

    assert hub_server.files_at(options.repo_id, "main")["README.md"] == edited
    assert "keeping the README.md" in caplog.text


def test_a_foreign_manifest_on_the_hub_deletes_nothing(hub_server, tmp_path: Path, caplog) -> None:
    options = replace(fast_options(), repo_id=REPO)
    hub_server.seed_files(REPO, {"hfexport.json": b"[1, 2]", "LICENSE": USER_FILES["LICENSE"]})

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.push"):
        push_version(make_version(tmp_path, 500), options)

    files = hub_server.files_at(REPO, "main")
    assert files["LICENSE"] == USER_FILES["LICENSE"]
    assert files["hfexport.json"] == (tmp_path / "step_000500" / "hfexport.json").read_bytes()  # ours now
    assert "not an hfexport manifest" in caplog.text
