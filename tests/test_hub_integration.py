"""Hub pushes driven by the training hooks: ``HFExporter`` and a real Lightning ``Trainer``.

Everything goes through the real ``huggingface_hub`` client to the local Hub of ``conftest.py``.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from nanogpt import make_gpt

from hfexport import HFExporter, HFExportError, HubSetupError, export_hf
from hfexport.hub.journal import PushJournal
from hfexport.lightning import HFExportCallback

REPO = "tester/hooks-run"
FAST = {"hub_max_retries": 2, "hub_backoff_s": 0.01}


def tags(repo: str = REPO) -> set[str]:
    return {t.name for t in HfApi().list_repo_refs(repo).tags}


def assert_same_files(version: Path, revision: str, repo: str = REPO) -> None:
    for file in sorted(p for p in version.iterdir() if p.is_file()):
        remote = hf_hub_download(repo, file.name, revision=revision)
        assert Path(remote).read_bytes() == file.read_bytes(), f"{file.name} differs at {revision}"


def test_exporter_pushes_every_version_tagged_and_byte_identical(hub_server, tmp_path: Path) -> None:
    model = make_gpt()
    exporter = HFExporter(tmp_path, every_n_steps=2, push_to_hub=True, repo_id=REPO, **FAST)
    assert HfApi().model_info(REPO).private is True  # created private, before any export
    for step in range(1, 7):
        exporter.maybe_export(model, step)
    exporter.close()
    assert {"step_000002", "step_000004", "step_000006"} <= tags()
    for name in ("step_000002", "step_000006"):
        assert_same_files(tmp_path / name, name)
    titles = [c.title for c in HfApi().list_repo_commits(REPO)]
    assert "Export step 6" in titles and "Export step 2" in titles
    card = Path(hf_hub_download(REPO, "README.md", revision="step_000006")).read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "hf_test_token" not in card


def test_export_hf_pushes_synchronously(hub_server, tmp_path: Path) -> None:
    path = export_hf(make_gpt(), 10, tmp_path, push_to_hub=True, repo_id=REPO, hub_private=False, **FAST)
    assert "step_000010" in tags()  # pushed by the time export_hf returned
    assert HfApi().model_info(REPO).private is False
    assert_same_files(path, "step_000010")


def test_bad_token_fails_before_training(hub_server, tmp_path: Path) -> None:
    with pytest.raises(HubSetupError, match="token"):
        HFExporter(tmp_path, push_to_hub=True, repo_id=REPO, hub_token="hf_wrong", **FAST)
    with pytest.raises(HFExportError, match=r"someone-else|forbidden|permission|403"):
        HFExportCallback(push_to_hub=True, repo_id="someone-else/x", **FAST).setup(
            L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path), None, "fit"
        )


def test_hub_down_training_goes_on_and_failure_is_reported(hub_server, tmp_path: Path, caplog) -> None:
    model = make_gpt()
    exporter = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, **FAST)
    hub_server.down = True
    start = time.perf_counter()
    for step in range(1, 4):
        exporter.maybe_export(model, step)
    held = time.perf_counter() - start
    exporter.wait()  # versions are written whatever the Hub does
    assert held < 5.0  # the loop was not held by the network (three tiny exports)
    with caplog.at_level("WARNING"):
        exporter.close()  # on_push_error="warn": reported, not raised
    assert exporter.pusher.failures
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000001", "step_000002", "step_000003"]

    # A new run (the Hub is back) resumes with the previous state and pushes what was missed.
    state = exporter.state_dict()
    assert state["pending_pushes"]
    hub_server.down = False
    resumed = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, **FAST)
    resumed.load_state_dict(state)
    resumed.close()
    assert "step_000003" in tags()
    assert_same_files(tmp_path / "step_000003", "step_000003")


def test_on_push_error_raise_stops(hub_server, tmp_path: Path) -> None:
    exporter = HFExporter(tmp_path, push_to_hub=True, repo_id=REPO, on_push_error="raise", **FAST)
    hub_server.down = True
    exporter.export(make_gpt(), 1, final=True)
    with pytest.raises(HFExportError, match="push"):
        exporter.close()


def test_rotation_keeps_versions_whose_push_is_pending(hub_server, tmp_path: Path) -> None:
    model = make_gpt()
    exporter = HFExporter(tmp_path, every_n_steps=1, keep_last_n=1, push_to_hub=True, repo_id=REPO, **FAST)
    hub_server.inject(r"/commit/", status=None, delay_s=1.5, times=1)  # the first push is slow
    exporter.maybe_export(model, 1)
    exporter.wait()
    exporter.maybe_export(model, 2)
    exporter.wait()
    # step 1 is still being pushed: rotation must have kept it although keep_last_n=1.
    assert (tmp_path / "step_000001").is_dir()
    exporter.close()
    assert {"step_000001", "step_000002"} <= tags()


class _LM(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = make_gpt(vocab_size=64)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        logits = self.model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), x[:, 1:].reshape(-1))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    data = torch.randint(0, 64, (32, 17), generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)


def _trainer(tmp_path: Path, callbacks: list, max_steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def test_lightning_callback_pushes_and_resumed_run_pushes_pending(hub_server, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    exports = tmp_path / "exports"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    cb = HFExportCallback(exports, every_n_train_steps=2, push_to_hub=True, repo_id=REPO, **FAST)
    # The Hub accepts the set-up (token, repository) but every push of the first run fails.
    hub_server.inject(r"/commit/", status=500, times=None)
    _trainer(tmp_path, [cb, ckpt], max_steps=4).fit(_LM(), _loader())
    assert (exports / "step_000004").is_dir()
    assert HfApi().repo_exists(REPO)  # created at set-up, before training
    assert tags() == set()
    hub_server.reset(repos=False)

    # The resumed run restores the callback's state from the checkpoint and pushes what the first run missed.
    cb2 = HFExportCallback(exports, every_n_train_steps=2, push_to_hub=True, repo_id=REPO, **FAST)
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    _trainer(tmp_path, [cb2, ckpt2], max_steps=6).fit(_LM(), _loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    # Every version the first run missed is pushed, in order, and so is the resumed run's final version.
    assert tags() == {"step_000002", "step_000004", "step_000006"}
    titles = [c.title for c in HfApi().list_repo_commits(REPO)]
    assert titles[:3] == ["Export step 6", "Export step 4", "Export step 2"]
    assert_same_files(exports / "step_000006", "step_000006")
    assert PushJournal(exports).unpushed(REPO, "main") == []


def test_lightning_state_agrees_with_the_journal(hub_server, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    cb = HFExportCallback(exports, every_n_train_steps=2, push_to_hub=True, repo_id=REPO, **FAST)
    hub_server.inject(r"/commit/", status=500, times=None)
    _trainer(tmp_path, [cb], max_steps=4).fit(_LM(), _loader())

    pending = {Path(path).name for _, path in cb.state_dict()["pending_pushes"]}
    assert pending == {name for _, name in PushJournal(exports).unpushed(REPO, "main")}
    assert pending == {"step_000002", "step_000004"}


# ------------------------------------------------------------------------------------------ hfexport push
def test_cli_push_version_dir_and_export_root(hub_server, tmp_path: Path, capsys) -> None:
    from hfexport.cli import main

    export_hf(make_gpt(), 5, tmp_path)
    version = export_hf(make_gpt(seed=1), 7, tmp_path)  # latest -> step_000007
    assert main(["push", str(tmp_path / "step_000005"), "--repo_id", REPO]) == 0
    assert HfApi().model_info(REPO).private is True  # created private by default
    assert "step_000005" in tags()
    assert main(["push", str(tmp_path), "--repo_id", REPO, "--tag", "release-1"]) == 0  # the root: its latest
    assert "release-1" in tags()
    assert_same_files(version, "release-1")
    assert "pushed" in capsys.readouterr().out


def test_cli_push_errors_are_one_line_with_exit_2(hub_server, tmp_path: Path, capsys) -> None:
    from hfexport.cli import main

    export_hf(make_gpt(), 1, tmp_path)
    assert main(["push", str(tmp_path / "step_000001"), "--repo_id", REPO, "--token", "hf_wrong"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "token" in err[0] and "hf_wrong" not in err[0]
    assert main(["push", str(tmp_path / "nowhere"), "--repo_id", REPO]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["push", str(tmp_path / "step_000001"), "--repo_id", "not-a-repo-id"]) == 2


# ----------------------------------------------------------------------------- no version lost, no hang
def test_failures_while_exporting_every_2_steps_lose_no_version(hub_server, tmp_path: Path) -> None:
    model = make_gpt()
    exporter = HFExporter(
        tmp_path, every_n_steps=2, push_to_hub=True, repo_id=REPO, hub_max_retries=4, hub_backoff_s=0.01
    )
    # The first commits answer 500, 500, 429, slowly: later versions are written while step 2 is retried.
    hub_server.inject(r"/commit/", status=500, times=2, delay_s=0.3)
    hub_server.inject(r"/commit/", status=429, times=1, retry_after=0, delay_s=0.3)
    for step in range(1, 7):
        exporter.maybe_export(model, step)
    exporter.close()

    assert tags() == {"step_000002", "step_000004", "step_000006"}
    titles = [c.title for c in HfApi().list_repo_commits(REPO)][:3]
    assert titles == ["Export step 6", "Export step 4", "Export step 2"]  # in step order
    for name in ("step_000002", "step_000004", "step_000006"):
        assert_same_files(tmp_path / name, name)
    journal = PushJournal(tmp_path).versions(REPO, "main")
    refs = {t.name: t.target_commit for t in HfApi().list_repo_refs(REPO).tags}
    assert {name: e["commit"] for name, e in journal.items()} == refs  # the verified commits


def test_a_hub_that_never_answers_bounds_close_and_pending_push_delivers_later(hub_server, tmp_path: Path) -> None:
    from hfexport.cli import main

    timeout, retries = 1.0, 1
    exporter = HFExporter(
        tmp_path, push_to_hub=True, repo_id=REPO, hub_max_retries=retries, hub_backoff_s=0.01, hub_timeout_s=timeout
    )
    hub_server.inject(r"/commit/", hang=True, times=None)  # accepted, never answered
    exporter.export(make_gpt(), 1, final=True)
    exporter.wait()
    started = time.monotonic()
    exporter.close()
    assert time.monotonic() - started < timeout * (retries + 1) + 2.0
    assert [step for step, _ in exporter.state_dict()["pending_pushes"]] == [1]
    assert PushJournal(tmp_path).versions(REPO, "main")["step_000001"]["state"] == "failed"
    assert tags() == set()

    hub_server.reset(repos=False)  # the Hub answers again
    assert main(["push", str(tmp_path), "--repo_id", REPO, "--pending", "--timeout_s", "5"]) == 0
    assert tags() == {"step_000001"}
    assert_same_files(tmp_path / "step_000001", "step_000001")
    assert PushJournal(tmp_path).unpushed(REPO, "main") == []
    assert main(["push", str(tmp_path), "--repo_id", REPO, "--pending"]) == 0  # nothing left: no new commit
    assert len(hub_server.requests_to(r"/commit/", method="POST")) == 1


def test_a_stuck_push_does_not_stop_later_versions_from_being_written(hub_server, tmp_path: Path) -> None:
    model = make_gpt()
    exporter = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, hub_timeout_s=30, **FAST)
    hub_server.inject(r"/commit/", hang=True, times=1)  # the first push hangs (for up to 30 s)
    exporter.maybe_export(model, 1)
    deadline = time.monotonic() + 10
    while not hub_server.requests_to(r"/commit/") and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    for step in (2, 3, 4):
        exporter.maybe_export(model, step)
    exporter.wait()
    assert time.monotonic() - started < 10  # written while step 1's push hangs
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [f"step_00000{i}" for i in (1, 2, 3, 4)]
    assert exporter.pusher.is_pending(tmp_path / "step_000001")
    hub_server.reset(repos=False)  # the hanging request is dropped: retried, then everything goes through
    exporter.close()
    assert tags() == {f"step_00000{i}" for i in (1, 2, 3, 4)}


_KILLED_RUN = """
import sys, time
sys.path.insert(0, sys.argv[2])
from nanogpt import make_gpt
from hfexport import HFExporter
exporter = HFExporter(sys.argv[1], every_n_steps=1, push_to_hub=True, repo_id=sys.argv[3], hub_timeout_s=60)
model = make_gpt()
for step in (1, 2, 3):
    exporter.maybe_export(model, step)
exporter.wait()
print("written", flush=True)
time.sleep(120)
"""


def test_a_new_exporter_pushes_what_a_killed_process_left_pending(hub_server, tmp_path: Path) -> None:
    hub_server.inject(r"/commit/", hang=True, times=None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(tmp_path), str(Path(__file__).parent), REPO],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    finally:
        proc.kill()
        proc.wait()
    hub_server.reset(repos=False)
    assert PushJournal(tmp_path).unpushed(REPO, "main") == [(1, "step_000001"), (2, "step_000002"), (3, "step_000003")]

    HFExporter(tmp_path, push_to_hub=True, repo_id=REPO, **FAST).close()  # no load_state_dict: the journal suffices

    assert tags() == {"step_000001", "step_000002", "step_000003"}
    titles = [c.title for c in HfApi().list_repo_commits(REPO)][:3]
    assert titles == ["Export step 3", "Export step 2", "Export step 1"]
    for name in ("step_000001", "step_000003"):
        assert_same_files(tmp_path / name, name)


def test_rotation_never_deletes_an_unpushed_version_and_all_arrive_later(hub_server, tmp_path: Path, caplog) -> None:
    model = make_gpt()
    exporter = HFExporter(tmp_path, every_n_steps=1, keep_last_n=2, push_to_hub=True, repo_id=REPO, hub_max_retries=0)
    hub_server.inject(r"/commit/", status=503, times=None)
    with caplog.at_level("INFO", logger="hfexport"):
        for step in range(1, 6):
            exporter.maybe_export(model, step)
        exporter.close()
    names = [f"step_00000{i}" for i in range(1, 6)]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == names  # nothing unpushed was deleted
    assert "Keeping 3 version(s) past keep_last_n=2 until their Hub push succeeds" in caplog.text
    assert [Path(p).name for _, p in exporter.state_dict()["pending_pushes"]] == names
    assert all(Path(p).is_dir() for _, p in exporter.state_dict()["pending_pushes"])

    hub_server.reset(repos=False)  # the Hub is back: a new run on the same root pushes them all
    HFExporter(tmp_path, keep_last_n=2, push_to_hub=True, repo_id=REPO, **FAST).close()
    assert tags() == set(names)
    for name in names:
        assert_same_files(tmp_path / name, name)


# ------------------------------------------------------------------------------------ nothing private leaks
def _private_strings(tmp_path: Path) -> list[str]:
    found = [str(tmp_path), str(Path.home()) + "/", str(Path.cwd())]
    user, host = getpass.getuser(), socket.gethostname()
    found += [s for s in (user, host) if len(s) >= 5]
    return found


def _tokenizer(path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65 characters
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def test_no_local_path_user_or_host_in_any_pushed_file(hub_server, tmp_path: Path) -> None:
    from hfexport.cli import main

    model = make_gpt()
    ckpt = tmp_path / "run" / "ckpt.pt"
    ckpt.parent.mkdir()
    torch.save({"model": model.state_dict(), "model_args": model.model_args(), "iter_num": 300}, ckpt)
    out = tmp_path / "exported"
    assert main(["convert", str(ckpt), "--output_dir", str(out), "--no_progress", "--quiet"]) == 0
    assert main(["push", str(out), "--repo_id", REPO, "--tag", "converted", "--quiet"]) == 0
    tokenizer = _tokenizer(tmp_path / "tok")  # loaded from a local path: its files must not name it
    with HFExporter(tmp_path / "exports", push_to_hub=True, repo_id=REPO, tokenizer=tokenizer, **FAST) as exporter:
        exporter.export(make_gpt(vocab_size=65), 7, final=True, loss=1.5)

    api = HfApi()
    assert "tokenizer_config.json" in api.list_repo_files(REPO, revision="step_000007")
    for revision in ("converted", "step_000007"):
        files = [f for f in api.list_repo_files(REPO, revision=revision) if f != ".gitattributes"]
        assert "hfexport.json" in files
        for name in files:
            data = Path(hf_hub_download(REPO, name, revision=revision)).read_bytes()
            for private in _private_strings(tmp_path):
                assert private.encode() not in data, f"{private!r} in {name} at {revision}"
    manifest = json.loads(Path(hf_hub_download(REPO, "hfexport.json", revision="converted")).read_text())
    assert manifest["source"] == "ckpt.pt"


def test_cli_push_refuses_a_latest_outside_the_root_and_skips_stray_files(hub_server, tmp_path: Path, capsys) -> None:
    from hfexport.cli import main

    root = tmp_path / "exports"
    version = export_hf(make_gpt(), 5, root)
    (version / "notes-with-secrets.txt").write_text("password=hunter2")
    secret = tmp_path / "secretdir"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY")
    (secret / "config.json").write_text("{}")
    os.replace(root / "latest", root / "latest.bak")
    os.symlink("../secretdir", root / "latest")

    assert main(["push", str(root), "--repo_id", REPO]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Refusing to push" in err[0]
    assert hub_server.requests_to(r"/commit/") == []

    os.replace(root / "latest.bak", root / "latest")
    assert main(["push", str(root), "--repo_id", REPO]) == 0
    files = HfApi().list_repo_files(REPO, revision="step_000005")
    assert "notes-with-secrets.txt" not in files and "hfexport.json" in files and "model.safetensors" in files


def test_cli_push_logs_no_http_lines_and_names_the_token_flag(hub_server, tmp_path: Path, capsys, monkeypatch) -> None:
    from hfexport.cli import main

    export_hf(make_gpt(), 1, tmp_path)
    # A real process, so that the CLI's own logging set-up decides what is printed (pytest's handlers do not).
    run = subprocess.run(
        [sys.executable, "-m", "hfexport", "push", str(tmp_path), "--repo_id", REPO],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "INFO hfexport.hub.push: Pushed step_000001" in run.stdout  # progress is logged at INFO...
    assert "HTTP Request" not in run.stdout + run.stderr  # ...but no line per HTTP request
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(tmp_path), "--repo_id", REPO]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and "hub_token" not in err
    assert main(["push", str(tmp_path), "--repo_id", REPO, "--token", "hf_wrong"]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and "hub_token" not in err and "hf_wrong" not in err


def test_cli_list_shows_the_push_state_of_each_version(hub_server, tmp_path: Path, capsys) -> None:
    from hfexport.cli import main

    exporter = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, hub_max_retries=0)
    exporter.maybe_export(make_gpt(), 1)
    exporter.wait()
    exporter.pusher.wait()
    hub_server.inject(r"/commit/", status=503, times=None)
    exporter.maybe_export(make_gpt(), 2)
    exporter.close()
    capsys.readouterr()

    assert main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    commit = PushJournal(tmp_path).versions(REPO, "main")["step_000001"]["commit"]
    assert f"hub {REPO}@main: pushed (commit {commit[:10]})" in out
    assert f"hub {REPO}@main: failed" in out and "503" in out


def test_once_the_hub_is_back_the_failed_versions_arrive_in_the_same_run_in_order(hub_server, tmp_path: Path) -> None:
    model = make_gpt()
    exporter = HFExporter(tmp_path, every_n_steps=1, keep_last_n=1, push_to_hub=True, repo_id=REPO, **FAST)
    hub_server.inject(r"/commit/", status=503, times=None)
    for step in (1, 2, 3):
        exporter.maybe_export(model, step)
    exporter.wait()
    exporter.pusher.wait()
    assert [f.step for f in exporter.pusher.failures] == [1, 2, 3]
    # Once step 1 failed for good (after its retries), the others got one attempt each, not the whole policy.
    first = hub_server.requests_to(r"/commit/", method="POST")[: FAST["hub_max_retries"] + 1]
    assert all(b"Export step 1" in r.body for r in first)
    assert all("after 1 attempt(s)" in str(f.error) for f in exporter.pusher.failures[1:])
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000001", "step_000002", "step_000003"]

    hub_server.reset(repos=False)  # the Hub is back
    exporter.maybe_export(model, 4)
    exporter.close()
    assert tags() == {"step_000001", "step_000002", "step_000003", "step_000004"}
    titles = [c.title for c in HfApi().list_repo_commits(REPO)][:4]
    assert titles == ["Export step 4", "Export step 3", "Export step 2", "Export step 1"]
    assert exporter.pusher.failures == [] and exporter.state_dict()["pending_pushes"] == []
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000004"]  # pushed: now rotated


def test_the_exporter_set_up_is_bounded_when_the_hub_never_answers(hub_server, tmp_path: Path) -> None:
    hub_server.inject(r"/api/whoami-v2", hang=True, times=None)
    started = time.monotonic()
    with pytest.raises(HubSetupError, match="after 2 attempt"):
        HFExporter(tmp_path, push_to_hub=True, repo_id=REPO, hub_timeout_s=0.5, hub_max_retries=1, hub_backoff_s=0.01)
    assert time.monotonic() - started < 2 * 0.5 + 2.0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"hub_push": "sometimes"}, "hub_push"),
        ({"hub_timeout_s": 0}, "hub_timeout_s"),
        ({"hub_timeout_s": "1"}, "hub_timeout_s"),
    ],
)
def test_new_hub_options_are_validated(tmp_path: Path, option, message) -> None:
    with pytest.raises(ValueError, match=message):
        HFExporter(tmp_path, push_to_hub=True, repo_id=REPO, **option)


def test_latest_mode_through_the_exporter_says_what_it_skipped(hub_server, tmp_path: Path, caplog) -> None:
    model = make_gpt()
    exporter = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, hub_push="latest", **FAST)
    hub_server.inject(r"/commit/", status=None, delay_s=2.0, times=1)  # the first push is slow
    with caplog.at_level("INFO", logger="hfexport.hub.push"):
        for step in (1, 2, 3, 4):
            exporter.maybe_export(model, step)
        exporter.close()
    assert "step_000001" in tags() and "step_000004" in tags()
    skipped = [p.name for p in exporter.pusher.skipped]
    assert skipped and set(skipped) == {"step_000002", "step_000003"} - tags()
    assert all(f"Skipping the Hub push of {name}" in caplog.text for name in skipped)
    journal = PushJournal(tmp_path).versions(REPO, "main")
    assert all(journal[name]["state"] == "skipped" for name in skipped)


def test_cli_push_that_fails_after_its_retries_exits_1_while_a_refused_token_exits_2(
    hub_server, tmp_path: Path, capsys, monkeypatch
) -> None:
    from hfexport.cli import main

    export_hf(make_gpt(), 1, tmp_path)
    hub_server.inject(r"/commit/", status=503, times=None)  # the Hub is down: not the user's to fix
    assert main(["push", str(tmp_path), "--repo_id", REPO, "--max_retries", "0", "--timeout_s", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "503" in err[0]
    hub_server.reset()
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(tmp_path), "--repo_id", REPO, "--max_retries", "0"]) == 2  # no token: the user's to fix
    with pytest.raises(SystemExit) as info:
        main(["push", str(tmp_path), "--repo_id", REPO, "--max_retries", "-1"])
    assert info.value.code == 2 and "--max_retries" in capsys.readouterr().err


# ------------------------------------------------------------------------- the branch never goes back
def _main_weights() -> bytes:
    return Path(hf_hub_download(REPO, "model.safetensors", revision="main", force_download=True)).read_bytes()


@pytest.mark.parametrize("later", ["cli_pending", "restarted_exporter"])
def test_a_late_push_of_an_older_version_never_moves_the_branch_back(hub_server, tmp_path: Path, later) -> None:
    from hfexport.cli import main

    hub_server.inject(r"/commit/main$", status=403, times=1)  # step 1's push fails for good, step 2's succeeds
    exporter = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, **FAST)
    exporter.maybe_export(make_gpt(seed=1), 1)
    exporter.wait()
    exporter.maybe_export(make_gpt(seed=2), 2)
    exporter.close()
    assert PushJournal(tmp_path).unpushed(REPO, "main") == [(1, "step_000001")]
    step2 = (tmp_path / "step_000002" / "model.safetensors").read_bytes()
    assert _main_weights() == step2

    if later == "cli_pending":
        assert main(["push", str(tmp_path), "--repo_id", REPO, "--pending"]) == 0
    else:
        HFExporter(
            tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, **FAST
        ).close()  # resumes, exports nothing

    assert _main_weights() == step2  # main still serves the newest step
    assert tags() == {"step_000001", "step_000002"}
    assert_same_files(tmp_path / "step_000001", "step_000001")  # the older one: reachable by its tag
    assert [b.name for b in HfApi().list_repo_refs(REPO).branches] == ["main"]  # no temporary branch left
    assert PushJournal(tmp_path).unpushed(REPO, "main") == []


def test_an_older_untagged_version_is_not_pushed_and_says_why(hub_server, tmp_path: Path, caplog) -> None:
    from hfexport.hub.push import HubOptions, HubPusher, push_version

    export_hf(make_gpt(seed=1), 1, tmp_path)
    export_hf(make_gpt(seed=2), 2, tmp_path)
    options = HubOptions(REPO, tag_versions=False, max_retries=0)
    HubPusher(options).setup()
    push_version(tmp_path / "step_000002", options)
    result = push_version(tmp_path / "step_000001", options)

    assert result.commit_oid is None
    assert "the branch serves step_000002" in caplog.text
    assert _main_weights() == (tmp_path / "step_000002" / "model.safetensors").read_bytes()
    assert PushJournal(tmp_path).versions(REPO, "main")["step_000001"]["state"] == "skipped"


# ------------------------------------------------------------------------ a Hub-id tokenizer is bounded too
def _finishes_within(seconds: float, fn) -> object:
    """Run ``fn`` on a thread; fail (instead of hanging the suite) when it is not done within ``seconds``."""
    import threading

    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")


def test_convert_with_a_hub_id_tokenizer_from_a_hub_that_never_answers_is_bounded(hub_server, tmp_path, capsys) -> None:
    from hfexport.cli import main

    hub_server.inject(r"someone/tok", hang=True, times=None)  # accepts the connection, never answers
    model = make_gpt(seed=3, vocab_size=65)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args(), "iter_num": 1}, checkpoint)
    argv = ["convert", str(checkpoint), "--output_dir", str(tmp_path / "hf"), "--tokenizer", "someone/tok"]

    rc = _finishes_within(20, lambda: main([*argv, "--hub_timeout_s", "1", "--no_progress"]))
    assert rc == 2 and "someone/tok" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_an_exporter_with_a_hub_id_tokenizer_from_a_hub_that_never_answers_is_bounded(hub_server, tmp_path) -> None:
    hub_server.inject(r"someone/tok", hang=True, times=None)  # accepts the connection, never answers
    model = make_gpt(seed=3, vocab_size=65)
    exporter = HFExporter(tmp_path / "exports", tokenizer="someone/tok", hub_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(HFExportError, match="someone/tok"):
        _finishes_within(20, lambda: (exporter.export(model, 1), exporter.close()))
    assert time.monotonic() - started < 20


def test_an_uncached_hub_id_tokenizer_while_offline_is_refused_when_the_exporter_is_built(
    tmp_path: Path, monkeypatch
) -> None:
    import huggingface_hub.constants

    from hfexport.errors import TokenizerError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TokenizerError, match="HF_HUB_OFFLINE"):
        HFExporter(tmp_path, tokenizer="someone/not-cached")
    assert not list(tmp_path.glob("step_*"))


# --------------------------------------------------------------- journal entries, malformed journals, threads
def _write_journal(root: Path, data: object) -> Path:
    path = root / ".hfexport" / "push-journal.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _set_aside(root: Path) -> list[Path]:
    return sorted((root / ".hfexport").glob("push-journal.json.bad-*"))


def _hub_holds(hub, needle: bytes) -> bool:
    """Whether any file of any commit of any repository of the test Hub holds ``needle``."""
    with hub.lock:
        return any(
            needle in data for repo in hub.repos.values() for c in repo.commits.values() for data in c.files.values()
        )


@pytest.mark.parametrize("how", ["cli_pending", "restarted_exporter"])
def test_a_journal_entry_naming_a_directory_outside_the_root_is_never_published(
    hub_server, tmp_path: Path, how
) -> None:
    from hfexport.cli import main

    root = tmp_path / "exports"
    export_hf(make_gpt(), 1, root)
    private = tmp_path / "private_stuff"
    shutil.copytree(root / "step_000001", private)
    (private / "README.md").write_text("password=hunter2\n")
    entry = {"step": 1, "state": "pending", "time": "2026-01-01T00:00:00Z"}
    journal = _write_journal(
        root,
        {
            "format": 1,
            "targets": {f"{REPO}@main": {"repo_id": REPO, "revision": "main", "versions": {"../private_stuff": entry}}},
        },
    )
    before = journal.read_bytes()

    if how == "cli_pending":
        assert main(["push", str(root), "--repo_id", REPO, "--pending"]) == 0
    else:
        HFExporter(root, push_to_hub=True, repo_id=REPO, **FAST).close()

    assert not _hub_holds(hub_server, b"hunter2")
    assert not hub_server.requests_to(r"/commit/", method="POST")
    (aside,) = _set_aside(root)  # set aside, never deleted
    assert aside.read_bytes() == before


@pytest.mark.parametrize(
    "bad", [{"targets": {f"{REPO}@main": "x"}}, [1, 2], {"targets": {f"{REPO}@main": {"versions": []}}}]
)
def test_a_malformed_journal_is_set_aside_and_list_push_and_exports_go_on(
    hub_server, tmp_path: Path, capsys, bad
) -> None:
    from hfexport.cli import main

    export_hf(make_gpt(), 1, tmp_path)
    _write_journal(tmp_path, bad)
    assert main(["list", str(tmp_path)]) == 0
    assert main(["push", str(tmp_path), "--repo_id", REPO, "--pending"]) == 0
    assert "unexpected" not in capsys.readouterr().err
    assert len(_set_aside(tmp_path)) == 1

    _write_journal(tmp_path, bad)  # again, under a training run that pushes
    exporter = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, on_error="raise", **FAST)
    exporter.maybe_export(make_gpt(), 2)
    exporter.close()
    assert "step_000002" in tags()
    assert PushJournal(tmp_path).versions(REPO, "main")["step_000002"]["state"] == "pushed"
    assert len(_set_aside(tmp_path)) == 2


def test_a_journal_that_changes_shape_during_a_push_neither_kills_the_pusher_nor_blocks_close(
    hub_server, tmp_path: Path
) -> None:
    hub_server.inject(r"/commit/", status=403, times=1, delay_s=1.0)  # step 1's push fails, slowly
    exporter = HFExporter(tmp_path, every_n_steps=1, push_to_hub=True, repo_id=REPO, **FAST)
    exporter.maybe_export(make_gpt(), 1)
    deadline = time.monotonic() + 20
    while not hub_server.requests_to(r"/commit/") and time.monotonic() < deadline:
        time.sleep(0.01)
    _write_journal(tmp_path, {"targets": {f"{REPO}@main": "x"}})  # replaced while the push is in flight

    _finishes_within(30, exporter.close)

    assert [f.version_dir.name for f in exporter.pusher.failures] == ["step_000001"]
    assert PushJournal(tmp_path).versions(REPO, "main")["step_000001"]["state"] == "failed"
    assert len(_set_aside(tmp_path)) == 1


def test_a_malformed_version_manifest_fails_its_push_with_a_clear_message(hub_server, tmp_path: Path, capsys) -> None:
    from hfexport.cli import main

    export_hf(make_gpt(), 1, tmp_path)
    (tmp_path / "step_000001" / "hfexport.json").write_text("[1, 2]")
    PushJournal(tmp_path).record(REPO, "main", "step_000001", 1, "pending")

    assert main(["push", str(tmp_path), "--repo_id", REPO, "--pending"]) == 2
    err = capsys.readouterr().err
    assert "not an hfexport manifest" in err and "hfexport verify" in err and "unexpected" not in err


# ------------------------------------------------------------------- one push per root, pruning, names
def test_a_training_run_and_push_pending_on_the_same_root_push_each_version_once(hub_server, tmp_path: Path) -> None:
    import threading

    from hfexport.cli import main

    for step in (1, 2):
        export_hf(make_gpt(seed=step), step, tmp_path)
        PushJournal(tmp_path).record(REPO, "main", f"step_{step:06d}", step, "failed", error="the Hub was down")
    hub_server.inject(r"/commit/", status=None, delay_s=1.0, times=None)  # slow commits: the two overlap
    cli = threading.Thread(target=main, args=(["push", str(tmp_path), "--repo_id", REPO, "--pending"],))
    cli.start()
    HFExporter(tmp_path, push_to_hub=True, repo_id=REPO, **FAST).close()  # resumes the same two versions
    cli.join(60)

    titles = [r.ndjson()[0]["value"]["summary"] for r in hub_server.requests_to(r"/commit/", method="POST")]
    assert sorted(titles) == ["Export step 1", "Export step 2"]
    assert tags() == {"step_000001", "step_000002"}
    assert PushJournal(tmp_path).unpushed(REPO, "main") == []


def test_the_journal_forgets_rotated_versions(hub_server, tmp_path: Path) -> None:
    exporter = HFExporter(tmp_path, every_n_steps=1, keep_last_n=1, push_to_hub=True, repo_id=REPO, **FAST)
    for step in range(1, 7):
        exporter.maybe_export(make_gpt(), step)
        exporter.pusher.wait()
    exporter.close()

    kept = set(PushJournal(tmp_path).versions(REPO, "main"))
    assert len(kept) <= 2 and "step_000006" in kept and "step_000001" not in kept
    assert len(tags()) == 6  # every version was pushed


@pytest.mark.parametrize(("flag", "value"), [("--tag", ""), ("--tag", "bad tag"), ("--revision", "x..y")])
def test_revision_and_tag_names_are_checked_before_anything_is_pushed(hub_server, tmp_path, capsys, flag, value):
    from hfexport.cli import main

    export_hf(make_gpt(), 1, tmp_path)
    assert main(["push", str(tmp_path), "--repo_id", REPO, flag, value]) == 2
    err = capsys.readouterr().err
    assert flag.strip("-") in err and "git ref name" in err
    assert not hub_server.requests_to(r"/commit/")


def test_cli_push_says_once_that_nothing_changed(hub_server, tmp_path: Path) -> None:
    export_hf(make_gpt(), 1, tmp_path)
    command = [sys.executable, "-m", "hfexport", "push", str(tmp_path), "--repo_id", REPO]
    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)  # the same version once more

    assert again.returncode == 0, again.stderr
    assert "No files have been modified" not in again.stdout + again.stderr
    assert (again.stdout + again.stderr).count("no new commit") == 1
