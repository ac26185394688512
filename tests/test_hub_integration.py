"""Hub pushes driven by the training hooks: ``HFExporter`` and a real Lightning ``Trainer``.

Everything goes through the real ``huggingface_hub`` client to the local Hub of ``conftest.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from nanogpt import make_gpt

from hfexport import HFExporter, HFExportError, HubSetupError, export_hf
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
    pushed = tags()
    # The newest version the first run missed is pushed (older missed ones may be coalesced into it, as
    # documented), and so is the resumed run's final version.
    assert {"step_000004", "step_000006"} <= pushed, pushed
    assert_same_files(exports / "step_000006", "step_000006")


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
