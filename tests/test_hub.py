"""Hub pushes, end to end: the real ``huggingface_hub`` client against the local Hub of ``conftest.py``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from pathlib import Path

import pytest
import torch
from hub_server import git_blob_sha1
from huggingface_hub import HfApi, hf_hub_download
from safetensors.torch import save_file

from hfexport.errors import HubError, HubSetupError
from hfexport.hub.files import publishable_files
from hfexport.hub.journal import PushJournal
from hfexport.hub.push import HubOptions, HubPusher, push_version, resolve_push_dir

REPO = "tester/gpt2-run"
TOKEN = "hf_test_token"
CARD = "---\nlicense: mit\nlibrary_name: transformers\n---\n# gpt2-run\n\nExported by hfexport.\n"


def make_version(root: Path, step: int, *, seed: int | None = None, card: str = CARD, manifest: bool = True) -> Path:
    """A small version directory as the writer would publish it (``manifest=False``: without its hfexport.json)."""
    path = root / f"step_{step:06d}"
    path.mkdir(parents=True)
    generator = torch.Generator().manual_seed(step if seed is None else seed)
    save_file({"wte.weight": torch.randn(16, 8, generator=generator)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 8}))
    (path / "README.md").write_text(card)
    if manifest:
        write_manifest(path)
    return path


def write_manifest(path: Path, **facts) -> None:
    """The ``hfexport.json`` the writer puts in a version: each file's size and CRC-32."""
    files = {
        p.name: {"size": p.stat().st_size, "crc32": f"{zlib.crc32(p.read_bytes()):08x}"}
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != "hfexport.json"
    }
    step = {"step": int(path.name[5:])} if path.name.startswith("step_") else {}
    (path / "hfexport.json").write_text(json.dumps({**step, **facts, "files": files}, indent=2))


def fast_options(**kwargs) -> HubOptions:
    """Options with retry delays small enough for tests."""
    defaults = {"max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    return HubOptions(REPO, **{**defaults, **kwargs})


def ready(hub_server, **kwargs) -> HubOptions:
    options = fast_options(**kwargs)
    HubPusher(options).setup()
    return options


def commit_paths(request) -> list[str]:
    return sorted(item["value"]["path"] for item in request.ndjson() if item["key"] == "file")


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo_id": "no-namespace"}, "namespace/name"),
        ({"repo_id": "a/b/c"}, "namespace/name"),
        ({"repo_id": "me/bad--name"}, "namespace/name"),
        ({"repo_id": REPO, "on_push_error": "ignore"}, "on_push_error"),
        ({"repo_id": REPO, "max_retries": -1}, "max_retries"),
        ({"repo_id": REPO, "backoff_base_s": 5.0, "backoff_max_s": 1.0}, "backoff_max_s"),
        ({"repo_id": REPO, "revision": ""}, "revision"),
        ({"repo_id": REPO, "token": ""}, "token"),
    ],
)
def test_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HubOptions(**kwargs)


def test_options_repr_hides_the_token():
    assert TOKEN not in repr(HubOptions(REPO, token=TOKEN))


# ------------------------------------------------------------------------------------------ push_version
def test_push_version_round_trip(hub_server, tmp_path, caplog):
    options = ready(hub_server)
    version = make_version(tmp_path, 500)

    with caplog.at_level(logging.INFO, logger="hfexport.hub.push"):
        result = push_version(version, options, step=500, progress=True)

    assert (result.step, result.tag, result.attempts) == (500, "step_000500", 1)
    assert "model.safetensors" in caplog.text and "Pushed step_000500" in caplog.text
    for name in ("model.safetensors", "config.json", "README.md"):
        downloaded = hf_hub_download(REPO, name, revision="step_000500", cache_dir=tmp_path / "cache")
        assert Path(downloaded).read_bytes() == (version / name).read_bytes()
    api = HfApi()
    assert api.list_repo_commits(REPO)[0].title == "Export step 500"
    tags = {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags}
    assert tags == {"step_000500": result.commit_oid}
    assert api.model_info(REPO).private is True


def test_unchanged_files_are_not_sent_again(hub_server, tmp_path):
    options = ready(hub_server)
    push_version(make_version(tmp_path, 500), options, step=500)
    push_version(make_version(tmp_path, 1000), options, step=1000)

    first, second = hub_server.requests_to(r"/commit/main$", method="POST")
    assert commit_paths(first) == ["README.md", "config.json", "hfexport.json", "model.safetensors"]
    assert commit_paths(second) == ["hfexport.json", "model.safetensors"]  # config and card unchanged: skipped
    titles = [c.title for c in HfApi().list_repo_commits(REPO)]
    assert titles[:2] == ["Export step 1000", "Export step 500"]


def test_large_files_go_through_lfs(hub_server, tmp_path):
    options = ready(hub_server)
    hub_server.lfs_min_size = 200  # the weights (~600 bytes) become LFS files, config and card stay regular
    first = make_version(tmp_path, 500, manifest=False)
    push_version(first, options, step=500)
    second = make_version(tmp_path, 1000, seed=500, manifest=False)  # same weights as step 500
    push_version(second, options, step=1000)

    assert len(hub_server.requests_to(r"^/lfs-upload/", method="PUT")) == 1  # the same weights: sent once
    (first_commit,) = hub_server.requests_to(r"/commit/main$", method="POST")  # step 1000 changed nothing
    assert "lfsFile" in [item["key"] for item in first_commit.ndjson()]
    downloaded = hf_hub_download(REPO, "model.safetensors", revision="step_001000", cache_dir=tmp_path / "c")
    assert Path(downloaded).read_bytes() == (second / "model.safetensors").read_bytes()


def test_revision_mirrors_the_directory(hub_server, tmp_path):
    options = ready(hub_server)
    first = make_version(tmp_path, 500)
    (first / "generation_config.json").write_text("{}")  # only in the first version
    write_manifest(first)
    push_version(first, options, step=500)
    push_version(make_version(tmp_path, 1000), options, step=1000)

    api = HfApi()
    assert "generation_config.json" in api.list_repo_files(REPO, revision="step_000500")
    assert "generation_config.json" not in api.list_repo_files(REPO, revision="step_001000")


def test_step_unknown_uses_the_directory_name(hub_server, tmp_path):
    options = ready(hub_server, tag_versions=False)
    version = tmp_path / "final"
    make_version(tmp_path, 7).rename(version)

    result = push_version(version, options)

    assert (result.step, result.tag) == (None, None)
    assert HfApi().list_repo_commits(REPO)[0].title == "Export final"
    assert HfApi().list_repo_refs(REPO).tags == []


def test_existing_tag_is_moved_with_a_warning(hub_server, tmp_path, caplog):
    options = ready(hub_server)
    push_version(make_version(tmp_path / "a", 500), options, step=500)
    with caplog.at_level(logging.WARNING, logger="hfexport.hub.push"):
        second = push_version(make_version(tmp_path / "b", 500, seed=1), options, step=500)

    tags = {t.name: t.target_commit for t in HfApi().list_repo_refs(REPO).tags}
    assert tags["step_000500"] == second.commit_oid
    assert "moving it" in caplog.text


def test_branch_revision_is_created_and_used(hub_server, tmp_path):
    options = ready(hub_server, revision="run-1")
    push_version(make_version(tmp_path, 500), options, step=500)

    api = HfApi()
    assert api.list_repo_commits(REPO, revision="run-1")[0].title == "Export step 500"
    assert api.list_repo_commits(REPO, revision="main")[0].title == "initial commit"


# ----------------------------------------------------------------------------------------- failures
def test_retries_server_errors(hub_server, tmp_path):
    options = ready(hub_server)
    hub_server.inject(r"/commit/", status=500, times=2)

    result = push_version(make_version(tmp_path, 500), options, step=500)

    assert result.attempts == 3
    assert len(hub_server.requests_to(r"/commit/", method="POST")) == 3
    assert HfApi().list_repo_commits(REPO)[0].title == "Export step 500"


def test_honours_retry_after_on_429(hub_server, tmp_path):
    options = ready(hub_server)
    hub_server.inject(r"/commit/", status=429, times=1, retry_after=1)

    started = time.monotonic()
    result = push_version(make_version(tmp_path, 500), options, step=500)

    assert result.attempts == 2
    assert time.monotonic() - started >= 1.0  # the backoff alone would have waited ~0.01 s


def test_retries_dropped_connections(hub_server, tmp_path):
    options = ready(hub_server)
    hub_server.inject(r"/commit/", drop=True, times=1)

    result = push_version(make_version(tmp_path, 500), options, step=500)

    assert result.attempts == 2
    assert HfApi().list_repo_refs(REPO).tags[0].name == "step_000500"


def test_slow_answer_is_waited_for(hub_server, tmp_path):
    options = ready(hub_server)
    hub_server.inject(r"/commit/", status=None, delay_s=0.5)

    result = push_version(make_version(tmp_path, 500), options, step=500)

    assert result.attempts == 1 and result.seconds >= 0.5


def test_permanent_errors_are_not_retried(hub_server, tmp_path):
    options = ready(hub_server)
    hub_server.inject(r"/commit/", status=400, times=None)

    with pytest.raises(HubError, match="not retried") as info:
        push_version(make_version(tmp_path, 500), options, step=500)

    assert len(hub_server.requests_to(r"/commit/", method="POST")) == 1
    assert info.value.__cause__ is not None


def test_retries_are_bounded(hub_server, tmp_path):
    options = ready(hub_server, max_retries=2)
    hub_server.inject(r"/commit/", status=503, times=None)

    with pytest.raises(HubError, match="after 3 attempt"):
        push_version(make_version(tmp_path, 500), options, step=500)

    assert len(hub_server.requests_to(r"/commit/", method="POST")) == 3


# ------------------------------------------------------------------------------------------ pusher
def test_pusher_pushes_in_the_background(hub_server, tmp_path):
    pusher = HubPusher(fast_options())
    pusher.setup()
    pusher.setup()  # idempotent
    versions = [make_version(tmp_path, step) for step in (500, 1000)]

    pusher.submit(versions[0], step=500)
    pusher.wait()
    pusher.submit(versions[1], step=1000, final=True)
    pusher.close()

    assert [r.step for r in pusher.results] == [500, 1000]
    assert pusher.failures == [] and pusher.pending() == []
    tags = {t.name for t in HfApi().list_repo_refs(REPO).tags}
    assert tags == {"step_000500", "step_001000"}
    assert len(hub_server.requests_to(r"/api/whoami-v2")) == 1


def test_submit_returns_at_once_while_the_hub_is_slow(hub_server, tmp_path):
    pusher = HubPusher(fast_options())
    pusher.setup()
    hub_server.inject(r"/commit/", status=None, delay_s=1.0, times=None)
    versions = [make_version(tmp_path, step) for step in (1, 2, 3)]

    for step, version in enumerate(versions, start=1):
        started = time.monotonic()
        pusher.submit(version, step=step)
        assert time.monotonic() - started < 0.5

    pusher.close()


def test_wait_with_a_timeout_returns_and_warns(hub_server, tmp_path, caplog):
    pusher = HubPusher(fast_options())
    pusher.setup()
    hub_server.inject(r"/commit/", status=None, delay_s=0.5)
    version = make_version(tmp_path, 500)
    pusher.submit(version, step=500)

    with caplog.at_level(logging.INFO, logger="hfexport.hub.push"):
        pusher.wait(timeout=0.05)
        assert pusher.is_pending(version)
        pusher.close()

    assert "Waiting for 1 pending Hub push(es)" in caplog.text
    assert "Still 1 Hub push(es) pending" in caplog.text
    assert not pusher.is_pending(version) and pusher.pending() == []


def test_close_without_any_push(hub_server):
    pusher = HubPusher(fast_options())
    pusher.close()
    pusher.close()  # idempotent
    assert hub_server.requests == []


def test_latest_mode_coalesces_intermediate_versions_and_keeps_the_final(hub_server, tmp_path, caplog):
    pusher = HubPusher(fast_options(push_mode="latest"))
    pusher.setup()
    hub_server.inject(r"/commit/", status=None, delay_s=0.5, times=1)  # the first push is slow
    versions = {step: make_version(tmp_path, step) for step in (1, 2, 3, 4, 5)}

    with caplog.at_level(logging.INFO, logger="hfexport.hub.push"):
        pusher.submit(versions[1], step=1)
        deadline = time.monotonic() + 5
        while not hub_server.requests_to(r"/commit/") and time.monotonic() < deadline:
            time.sleep(0.01)  # step 1 is in flight
        pusher.submit(versions[2], step=2)
        pusher.submit(versions[3], step=3)
        pusher.submit(versions[4], step=4, final=True)
        pusher.submit(versions[5], step=5)
        assert pusher.is_pending(versions[1])  # in flight
        assert not pusher.is_pending(versions[2])  # coalesced away
        assert [step for step, _ in pusher.pending()] == [1, 4, 5]
        pusher.close()

    assert [r.step for r in pusher.results] == [1, 4, 5]
    assert "Skipping the Hub push of step_000002 (hub_push='latest')" in caplog.text
    assert "Skipping the Hub push of step_000003" in caplog.text
    assert not pusher.is_pending(versions[5])
    assert pusher.skipped == [versions[2].absolute(), versions[3].absolute()]
    journal = PushJournal(tmp_path).versions(REPO, "main")
    assert {name: e["state"] for name, e in journal.items()} == {
        "step_000001": "pushed",
        "step_000002": "skipped",
        "step_000003": "skipped",
        "step_000004": "pushed",
        "step_000005": "pushed",
    }
    assert {t.name for t in HfApi().list_repo_refs(REPO).tags} == {"step_000001", "step_000004", "step_000005"}


def test_every_version_is_pushed_in_order_by_default_and_falling_behind_is_said_once(hub_server, tmp_path, caplog):
    pusher = HubPusher(fast_options())
    pusher.setup()
    hub_server.inject(r"/commit/", status=None, delay_s=0.5, times=1)  # the first push is slow
    versions = {step: make_version(tmp_path, step) for step in (1, 2, 3, 4, 5)}

    with caplog.at_level(logging.INFO, logger="hfexport.hub.push"):
        pusher.submit(versions[1], step=1)
        deadline = time.monotonic() + 5
        while not hub_server.requests_to(r"/commit/") and time.monotonic() < deadline:
            time.sleep(0.01)  # step 1 is in flight
        for step in (2, 3, 4, 5):
            pusher.submit(versions[step], step=step)
        assert all(pusher.is_pending(versions[step]) for step in (2, 3, 4, 5))
        pusher.close()

    assert [r.step for r in pusher.results] == [1, 2, 3, 4, 5]
    assert pusher.skipped == [] and "Skipping" not in caplog.text
    behind = [r.getMessage() for r in caplog.records if "are behind" in r.getMessage()]
    assert len(behind) == 1, behind  # at most once a minute
    assert "2 version(s) wait (oldest step_000002)" in behind[0]
    titles = [c.title for c in HfApi().list_repo_commits(REPO)][:5]
    assert titles == [f"Export step {step}" for step in (5, 4, 3, 2, 1)]  # committed in step order
    for version in versions.values():
        downloaded = hf_hub_download(REPO, "model.safetensors", revision=version.name, cache_dir=tmp_path / "c")
        assert Path(downloaded).read_bytes() == (version / "model.safetensors").read_bytes()


def test_pending_keeps_failed_versions(hub_server, tmp_path):
    pusher = HubPusher(fast_options(max_retries=0))
    pusher.setup()
    hub_server.inject(r"/commit/", status=500, times=1)
    version = make_version(tmp_path, 500)

    pusher.submit(version, step=500)
    pusher.wait()

    assert pusher.pending() == [(500, version.absolute())]
    assert pusher.is_pending(version)  # failed, not pushed: rotation must keep it
    assert PushJournal(tmp_path).unpushed(REPO, "main") == [(500, "step_000500")]
    pusher.submit(version, step=500)  # resubmitted (e.g. after a resume): now it succeeds
    pusher.close()
    assert pusher.pending() == []


@pytest.mark.parametrize("mode", ["warn", "raise"])
def test_hub_that_stays_down(hub_server, tmp_path, caplog, mode):
    pusher = HubPusher(fast_options(max_retries=2, on_push_error=mode))
    pusher.setup()
    hub_server.down = True

    with caplog.at_level(logging.INFO, logger="hfexport.hub.push"):
        pusher.submit(make_version(tmp_path, 500), step=500, final=True)
        if mode == "warn":
            pusher.close()
        else:
            pusher.wait()
            with pytest.raises(HubError, match="step_000500"):
                pusher.check()
            with pytest.raises(HubError, match="1 Hub push"):
                pusher.close()

    assert [f.step for f in pusher.failures] == [500]
    assert isinstance(pusher.failures[0].error, HubError)
    assert "1 Hub push(es) to tester/gpt2-run failed" in caplog.text
    assert pusher.pending() == [(500, (tmp_path / "step_000500").absolute())]
    with pytest.raises(HubError, match="closed"):
        pusher.submit(tmp_path / "step_000500", step=500)


def test_check_is_silent_when_warning(hub_server, tmp_path):
    pusher = HubPusher(fast_options(max_retries=0))
    pusher.setup()
    hub_server.inject(r"/commit/", status=500, times=1)
    pusher.submit(make_version(tmp_path, 500), step=500)
    pusher.wait()

    pusher.check()
    assert len(pusher.failures) == 1
    pusher.close()


# ------------------------------------------------------------------------------------------- setup
def test_setup_rejects_a_bad_token(hub_server):
    pusher = HubPusher(fast_options(token="hf_wrong"))

    with pytest.raises(HubSetupError, match="rejected the token") as info:
        pusher.setup()

    assert "HF_TOKEN" in str(info.value) and "hub_token=" in str(info.value)
    assert "hf_wrong" not in str(info.value)
    assert hub_server.repos == {}


def test_setup_rejects_a_forbidden_repository(hub_server):
    pusher = HubPusher(HubOptions("someone-else/model", max_retries=0))

    with pytest.raises(HubSetupError, match="someone-else/model") as info:
        pusher.setup()

    assert "tester" in str(info.value)


def test_setup_without_any_token(hub_server, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")

    with pytest.raises(HubSetupError, match=r"No Hugging Face token found.*hub_token="):
        HubPusher(fast_options()).setup()


def test_setup_fails_fast_when_the_hub_is_unreachable(hub_server):
    hub_server.down = True

    with pytest.raises(HubSetupError, match=r"after 2 attempt.*HF_ENDPOINT"):
        HubPusher(fast_options(max_retries=1)).setup()


def test_setup_warns_when_the_repository_is_public(hub_server, caplog):
    hub_server.create_repo_state(REPO, private=False)

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.push"):
        HubPusher(fast_options()).setup()

    assert "public" in caplog.text


def test_the_token_is_never_logged(hub_server, tmp_path, caplog):
    hub_server.inject(r"/commit/", status=500, times=1)
    with caplog.at_level(logging.DEBUG):
        pusher = HubPusher(fast_options(token=TOKEN, on_push_error="raise"))
        pusher.setup()
        pusher.submit(make_version(tmp_path, 500), step=500, final=True)
        pusher.close()
        with pytest.raises(HubSetupError):
            HubPusher(fast_options(token="hf_wrong_secret")).setup()

    assert caplog.records
    assert TOKEN not in caplog.text and "hf_wrong_secret" not in caplog.text
    assert all(TOKEN not in str(r.args) for r in caplog.records)


# -------------------------------------------------------------------------------------- resolve_push_dir
def test_resolve_push_dir(tmp_path):
    version = make_version(tmp_path / "root", 500)
    make_version(tmp_path / "root", 200)

    assert resolve_push_dir(version) == version.resolve()
    with pytest.raises(HubError, match="latest"):
        resolve_push_dir(tmp_path / "root")  # no `latest`
    (tmp_path / "root" / "latest").write_text("step_000500\n")
    assert resolve_push_dir(tmp_path / "root") == version.resolve()
    assert resolve_push_dir(tmp_path / "root" / "latest") == version.resolve()

    link_root = tmp_path / "linked"
    linked = make_version(link_root, 700)
    os.symlink("step_000700", link_root / "latest")
    assert resolve_push_dir(link_root) == linked.resolve()

    (tmp_path / "root" / "latest").write_text("step_999999\n")
    with pytest.raises(HubError, match="not a version directory"):
        resolve_push_dir(tmp_path / "root")
    with pytest.raises(HubError, match="does not exist"):
        resolve_push_dir(tmp_path / "missing")


# ------------------------------------------------------------------------------------ the test Hub itself
def test_local_hub_answers_like_the_hub(hub_server, tmp_path):
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    options = ready(hub_server)
    version = make_version(tmp_path, 500, manifest=False)
    result = push_version(version, options, step=500)
    cache = tmp_path / "cache"

    by_commit = hf_hub_download(REPO, "config.json", revision=result.commit_oid, cache_dir=cache)
    assert Path(by_commit).read_bytes() == (version / "config.json").read_bytes()
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.bin", revision="main", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("tester/no-such-repo")
    with pytest.raises(RepositoryNotFoundError):  # private: invisible to another user
        HfApi(token="hf_other_token").model_info(REPO)
    assert sorted(HfApi().list_repo_files(REPO)) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    with pytest.raises(Exception, match="401"):
        HfApi(token="hf_wrong").upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO)
    with pytest.raises(Exception, match="403"):
        HfApi(token="hf_other_token").create_tag(REPO, tag="v1")


# ------------------------------------------------------------------------------------ verification on the Hub
@pytest.mark.parametrize("lfs", [False, True])
def test_a_corrupted_copy_on_the_hub_is_detected_and_sent_again(hub_server, tmp_path, caplog, lfs):
    options = ready(hub_server)
    if lfs:
        hub_server.lfs_min_size = 200  # the weights become an LFS file: checked by its sha256
    hub_server.corrupt(r"model\.safetensors$", times=1)
    version = make_version(tmp_path, 500)

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.push"):
        result = push_version(version, options, step=500)

    assert result.attempts == 2
    assert "does not hold the local files" in caplog.text and "model.safetensors" in caplog.text
    stored = hub_server.repo(REPO).resolve("step_000500").files["model.safetensors"]
    assert stored == (version / "model.safetensors").read_bytes()
    assert PushJournal(tmp_path).versions(REPO, "main")["step_000500"]["commit"] == result.commit_oid


def test_a_push_that_never_lands_intact_fails_and_is_not_tagged(hub_server, tmp_path):
    options = ready(hub_server, max_retries=1)
    hub_server.corrupt(r"config\.json$", times=99)

    with pytest.raises(HubError, match=r"after 2 attempt.*config\.json"):
        push_version(make_version(tmp_path, 500), options, step=500)

    assert HfApi().list_repo_refs(REPO).tags == []
    entry = PushJournal(tmp_path).versions(REPO, "main")["step_000500"]
    assert entry["state"] == "failed" and "config.json" in entry["error"]


def test_the_test_hub_lists_files_as_the_hub_does(hub_server, tmp_path):
    options = ready(hub_server)
    hub_server.lfs_min_size = 200
    version = make_version(tmp_path, 500)
    result = push_version(version, options, step=500)
    api = HfApi()

    tree = {f.path: f for f in api.list_repo_tree(REPO, revision=result.commit_oid, recursive=True)}
    weights, config = tree["model.safetensors"], tree["config.json"]
    data = (version / "model.safetensors").read_bytes()
    assert weights.size == len(data) and weights.lfs.sha256 == hashlib.sha256(data).hexdigest()
    assert weights.lfs.size == len(data) and weights.lfs.pointer_size > 0
    assert config.lfs is None and config.blob_id == git_blob_sha1((version / "config.json").read_bytes())
    info = api.get_paths_info(REPO, ["config.json", "model.safetensors", "missing"], revision=result.commit_oid)
    assert {i.path: (i.size, i.blob_id) for i in info} == {
        p: (tree[p].size, tree[p].blob_id)
        for p in tree
        if p
        in (
            "config.json",
            "model.safetensors",
        )
    }


# ------------------------------------------------------------------------------------------ bounded time
def test_a_hub_that_never_answers_a_commit_fails_within_the_bound(hub_server, tmp_path):
    options = ready(hub_server, max_retries=1, timeout_s=1.0)
    hub_server.inject(r"/commit/", hang=True, times=None)

    started = time.monotonic()
    with pytest.raises(HubError, match="after 2 attempt"):
        push_version(make_version(tmp_path, 500), options, step=500)
    elapsed = time.monotonic() - started

    assert len(hub_server.requests_to(r"/commit/", method="POST")) == 2
    assert 2 * 1.0 <= elapsed < 2 * 1.0 + 3.0  # timeout × attempts, plus the backoff and the other requests


def test_the_set_up_check_is_bounded_when_the_hub_never_answers(hub_server):
    hub_server.inject(r"/api/whoami-v2", hang=True, times=None)

    started = time.monotonic()
    with pytest.raises(HubSetupError, match="after 2 attempt"):
        HubPusher(fast_options(max_retries=1, timeout_s=0.5)).setup()

    assert time.monotonic() - started < 2 * 0.5 + 2.0


def test_requests_made_outside_a_push_keep_no_timeout(hub_server):
    from huggingface_hub.utils import get_session

    from hfexport.hub.push import bounded_requests

    seen = []

    def record(request):
        seen.append(dict(request.extensions.get("timeout") or {}))

    with bounded_requests(2.0):
        session = get_session()
        session.event_hooks = {**session.event_hooks, "request": [*session.event_hooks["request"], record]}
        try:
            HfApi().whoami()
        finally:
            hooks = [h for h in session.event_hooks["request"] if h is not record]
            session.event_hooks = {**session.event_hooks, "request": hooks}
    assert seen and set(seen[0].values()) == {2.0}
    session.event_hooks = {**session.event_hooks, "request": [*session.event_hooks["request"], record]}
    try:
        HfApi().whoami()
    finally:
        session.event_hooks = {
            **session.event_hooks,
            "request": [h for h in session.event_hooks["request"] if h is not record],
        }
    assert set(seen[1].values()) == {None}


def test_repeated_rate_limits_say_the_interval_is_too_fast(hub_server, tmp_path, caplog):
    options = ready(hub_server)
    hub_server.inject(r"/commit/", status=429, times=2, retry_after=0)

    with caplog.at_level(logging.WARNING, logger="hfexport.hub.push"):
        result = push_version(make_version(tmp_path, 500), options, step=500)

    assert result.attempts == 3
    assert "faster than the Hub allows" in caplog.text and "hub_push='latest'" in caplog.text


# ------------------------------------------------------------------------------------ what may be published
def test_only_the_versions_own_files_are_pushed(hub_server, tmp_path, caplog):
    options = ready(hub_server)
    version = make_version(tmp_path, 500, manifest=False)
    (version / "notes-with-secrets.txt").write_text("password=hunter2")
    (version / "sub").mkdir()
    (version / "sub" / "id_rsa").write_text("PRIVATE KEY")

    with caplog.at_level(logging.INFO, logger="hfexport.hub.files"):
        push_version(version, options, step=500)

    assert sorted(HfApi().list_repo_files(REPO)) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert "notes-with-secrets.txt" in caplog.text and "standard model files" in caplog.text


def test_a_manifest_decides_what_is_pushed_and_symlinks_leaving_the_directory_are_refused(hub_server, tmp_path):
    options = ready(hub_server)
    version = make_version(tmp_path / "root", 500)
    secret = tmp_path / "secretdir"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY")
    names = ["README.md", "config.json", "model.safetensors"]
    manifest = {"files": {n: {"size": (version / n).stat().st_size} for n in names}}
    (version / "hfexport.json").write_text(json.dumps(manifest))
    (version / "stray.txt").write_text("not in the manifest")
    assert publishable_files(version) == sorted([*names, "hfexport.json"])

    os.symlink(secret / "id_rsa", version / "tokenizer.json")
    manifest["files"]["tokenizer.json"] = {"size": 11}
    (version / "hfexport.json").write_text(json.dumps(manifest))
    with pytest.raises(HubError, match=r"tokenizer\.json is a symlink.*outside"):
        push_version(version, options, step=500)
    manifest["files"] = {"../secretdir/id_rsa": {"size": 11}}
    (version / "hfexport.json").write_text(json.dumps(manifest))
    with pytest.raises(HubError, match="not a path inside"):
        publishable_files(version)
    assert hub_server.requests_to(r"/commit/") == []


@pytest.mark.parametrize("kind", ["text", "symlink", "symlinked-version"])
def test_a_latest_pointing_outside_the_root_is_refused(tmp_path, kind):
    root = tmp_path / "root"
    make_version(root, 500)
    outside = make_version(tmp_path / "secretdir", 1)
    if kind == "text":
        (root / "latest").write_text("../secretdir/step_000001\n")
    elif kind == "symlink":
        os.symlink(outside, root / "latest")
    else:  # a version-looking name inside the root that is itself a symlink leaving it
        os.symlink(outside, root / "step_000900")
        os.symlink("step_000900", root / "latest")

    with pytest.raises(HubError, match="Refusing to push"):
        resolve_push_dir(root)


def test_a_commit_that_lands_but_is_never_answered_is_not_committed_twice(hub_server, tmp_path):
    options = ready(hub_server, timeout_s=1.0)
    hub_server.inject(r"/commit/", hang_after=True, times=1)  # the commit lands; its answer never comes
    version = make_version(tmp_path, 500)

    result = push_version(version, options, step=500)

    assert result.attempts == 2
    titles = [c.title for c in HfApi().list_repo_commits(REPO)]
    assert titles.count("Export step 500") == 1  # the retry found the files already there: no second commit
    tags = {t.name: t.target_commit for t in HfApi().list_repo_refs(REPO).tags}
    assert tags == {"step_000500": result.commit_oid} and result.commit_oid == hub_server.repo(REPO).branches["main"]
