"""HFExportCallback with a real Lightning Trainer on CPU: when it exports, what it writes, resume, logging.

A ``Recorder`` callback copies the weights at every optimizer step, from the same hook the export is taken in,
so each version is compared with the weights of its own step.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from exportkit import assert_file_tensors, assert_reproduces, step_dirs, tiny_gpt, weights_copy
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from hfexport.io.versions import read_latest
from hfexport.lightning import HFExportCallback


class LitGPT(pl.LightningModule):
    def __init__(self, seed: int = 0, batches: int = 4) -> None:
        super().__init__()
        self.model = tiny_gpt(seed).train()
        self.batches = batches

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (ids,) = batch
        logits = self.model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.training_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randint(0, 64, (4 * self.batches, 17), generator=g)), batch_size=4)


class Recorder(pl.Callback):
    """The weights right after each optimizer step (the first batch end that sees the new global_step)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.weights.setdefault(trainer.global_step, weights_copy(pl_module.model))


def trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


_TEST_DIR: list[Path] = []  # the running test's tmp_path


def export_counts(caplog: pytest.LogCaptureFixture) -> dict[int, int]:
    """Exports logged by this test: a background writer another test left behind logs into the same records."""
    counts: dict[int, int] = {}
    for record in caplog.records:
        m = re.match(r"Exported step (\d+) to (.*)", record.getMessage())
        if m and m.group(2).startswith(str(_TEST_DIR[0])):
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    return counts


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="hfexport")
    _TEST_DIR[:] = [tmp_path]


def test_every_n_steps_final_step_once_and_keep_last_n(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    callback = HFExportCallback(tmp_path / "out", every_n_train_steps=3, keep_last_n=2, dtype="float32")
    trainer(tmp_path, [recorder, callback], max_steps=7).fit(LitGPT())

    assert export_counts(caplog) == {3: 1, 6: 1, 7: 1}
    assert step_dirs(tmp_path / "out") == ["step_000006", "step_000007"]
    assert read_latest(tmp_path / "out") == "step_000007"
    for step in (6, 7):
        assert_reproduces(tmp_path / "out" / f"step_{step:06d}", recorder.weights[step], torch.float32)


def test_final_step_already_exported_is_not_written_twice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback = HFExportCallback(tmp_path / "out", every_n_train_steps=2)
    trainer(tmp_path, [callback], max_steps=4).fit(LitGPT())
    assert export_counts(caplog) == {2: 1, 4: 1}
    assert "already exists" not in caplog.text


def test_gradient_accumulation_exports_once_per_optimizer_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    callback = HFExportCallback(tmp_path / "out", every_n_train_steps=1)  # bfloat16
    trainer(tmp_path, [recorder, callback], max_steps=3, accumulate_grad_batches=2).fit(LitGPT())

    assert export_counts(caplog) == {1: 1, 2: 1, 3: 1}
    assert step_dirs(tmp_path / "out") == ["step_000001", "step_000002", "step_000003"]
    for step in (1, 2, 3):
        directory = tmp_path / "out" / f"step_{step:06d}"
        assert_file_tensors(directory, recorder.weights[step], torch.bfloat16)
    assert_reproduces(tmp_path / "out" / "step_000003", recorder.weights[3], torch.bfloat16)


def test_every_n_epochs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    callback = HFExportCallback(tmp_path / "out", every_n_epochs=2, export_on_train_end=False, dtype="float32")
    trainer(tmp_path, [recorder, callback], max_epochs=5).fit(LitGPT(batches=2))  # 2 steps per epoch
    assert export_counts(caplog) == {4: 1, 8: 1}
    assert_file_tensors(tmp_path / "out" / "step_000008", recorder.weights[8], torch.float32)

    caplog.clear()
    callback = HFExportCallback(tmp_path / "out2", every_n_epochs=2)
    trainer(tmp_path, [callback], max_epochs=3).fit(LitGPT(batches=2))
    assert export_counts(caplog) == {4: 1, 6: 1}  # the end of training adds the final step


def test_never_during_sanity_check_or_fast_dev_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback = HFExportCallback(tmp_path / "fast", every_n_train_steps=1)
    trainer(tmp_path, [callback], fast_dev_run=True).fit(LitGPT())
    assert not (tmp_path / "fast").exists() or step_dirs(tmp_path / "fast") == []

    module = LitGPT()
    module.val_dataloader = module.train_dataloader  # type: ignore[method-assign]
    callback = HFExportCallback(tmp_path / "sanity", every_n_train_steps=1)
    trainer(tmp_path, [callback], max_steps=2, num_sanity_val_steps=2, limit_val_batches=1).fit(module)
    assert export_counts(caplog) == {1: 1, 2: 1}
    assert step_dirs(tmp_path / "sanity") == ["step_000001", "step_000002"]


def test_dirpath_defaults_under_default_root_dir(tmp_path: Path) -> None:
    callback = HFExportCallback(every_n_train_steps=2)
    trainer(tmp_path / "run", [callback], max_steps=2).fit(LitGPT())
    assert callback.dirpath == tmp_path / "run" / "hf_exports"
    assert step_dirs(tmp_path / "run" / "hf_exports") == ["step_000002"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"every_n_train_steps": 0},
            ValueError,
            "Invalid value for every_n_train_steps=0: expected a positive int, or None.",
        ),
        ({"every_n_epochs": -1}, ValueError, "Invalid value for every_n_epochs=-1: expected a positive int, or None."),
        (
            {"every_n_train_steps": True},
            ValueError,
            "Invalid value for every_n_train_steps=True: expected a positive int, or None (not a bool).",
        ),
        ({"dtype": "int8"}, ValueError, "Invalid dtype 'int8'. Expected one of"),
        ({"keep_last_n": 0}, ValueError, "Invalid value for keep_last_n=0: expected a positive int, or None."),
        ({"every_n_step": 5}, TypeError, "unexpected keyword argument 'every_n_step'"),
    ],
)
def test_argument_validation(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        HFExportCallback(**kwargs)


def test_stall_is_logged_through_the_trainer_logger(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="logs", version=0)
    callback = HFExportCallback(tmp_path / "out", every_n_train_steps=2)
    trainer(tmp_path, [callback], max_steps=4, logger=logger, log_every_n_steps=1).fit(LitGPT())

    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("hfexport/stall_s")]
    assert sorted(int(r["step"]) for r in rows) == [2, 4]
    assert all(0.0 <= float(r["hfexport/stall_s"]) < 5.0 for r in rows)


def test_every_published_version_is_logged_and_its_figures_reach_the_csv_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = CSVLogger(tmp_path, name="logs", version=0)
    callback = HFExportCallback(tmp_path / "out", every_n_train_steps=2, dtype="float32")
    trainer(tmp_path, [callback], max_steps=4, logger=logger, log_every_n_steps=1).fit(LitGPT())

    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        table = list(csv.DictReader(fh))
    assert any(r.get("train_loss") for r in table)  # next to the loss
    rows = {int(r["step"]): r for r in table if r.get("hfexport/write_s")}
    assert sorted(rows) == [2, 4]  # the final version's figures too, logged once it was written
    for step, row in rows.items():
        version = tmp_path / "out" / f"step_{step:06d}"
        size = sum(f.stat().st_size for f in version.iterdir())
        assert float(row["hfexport/size_mb"]) == pytest.approx(size / 1e6, abs=1e-6)
        assert float(row["hfexport/step"]) == step
        assert 0.0 <= float(row["hfexport/stall_s"]) < 5.0 and 0.0 < float(row["hfexport/write_s"]) < 60.0
        assert float(row["hfexport/verified"]) == 1.0 and float(row["hfexport/push_queued"]) == 0.0

    lines = [
        r.getMessage() for r in caplog.records if r.name == "hfexport.training.exporter" and r.levelno == logging.INFO
    ]
    lines = [line for line in lines if line.startswith("Exported step") and str(tmp_path) in line]
    assert len(lines) == 2  # one per published version
    for step, line in zip((2, 4), lines, strict=True):
        assert line.startswith(f"Exported step {step} to {tmp_path / 'out' / f'step_{step:06d}'}: ")
        assert re.search(r": [\d.]+ kB in \d+ files, verified; training stalled [\d.]+s, written in [\d.]+s; ", line)
        assert line.endswith("not pushed (push_to_hub=False)")
    writer_lines = [
        r for r in caplog.records if r.name == "hfexport.io.directory" and r.getMessage().startswith("Wrote")
    ]
    assert all(r.levelno == logging.DEBUG for r in writer_lines)  # one INFO line per version, not two


def test_resume_from_a_lightning_checkpoint_neither_repeats_nor_loses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = Recorder()
    options = dict(every_n_train_steps=2, keep_last_n=3, dtype="float32")
    trainer(tmp_path, [first, HFExportCallback(out, **options), ckpt], max_steps=4, enable_checkpointing=True).fit(
        LitGPT(batches=8)
    )
    assert export_counts(caplog) == {2: 1, 4: 1}
    (path,) = (tmp_path / "ckpt").glob("*.ckpt")
    state = torch.load(path, weights_only=False)["callbacks"]
    (hf_state,) = [v for k, v in state.items() if k.startswith("HFExportCallback")]
    assert hf_state["last_step"] == 4

    caplog.clear()
    second = Recorder()
    callback = HFExportCallback(out, **options)
    trainer(tmp_path, [second, callback], max_steps=8).fit(LitGPT(batches=8), ckpt_path=path)

    assert export_counts(caplog) == {6: 1, 8: 1}  # step 4 not repeated, nothing lost
    assert "already exists" not in caplog.text
    # keep_last_n counts the versions of the run it resumes: step 2 rotated out.
    assert step_dirs(out) == ["step_000004", "step_000006", "step_000008"]
    assert read_latest(out) == "step_000008"
    assert_file_tensors(out / "step_000004", first.weights[4], torch.float32)
    for step in (6, 8):
        assert_reproduces(out / f"step_{step:06d}", second.weights[step], torch.float32)


def test_checkpoint_saved_after_fit_keeps_the_callback_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    options = dict(every_n_train_steps=2, keep_last_n=2)
    first = trainer(tmp_path, [HFExportCallback(out, **options)], max_steps=4)
    first.fit(LitGPT(batches=8))
    first.save_checkpoint(tmp_path / "final.ckpt")  # the usual "save after training"
    state = torch.load(tmp_path / "final.ckpt", weights_only=False)["callbacks"]
    (hf_state,) = [v for k, v in state.items() if k.startswith("HFExportCallback")]
    assert hf_state["last_step"] == 4 and hf_state["created"] == ["step_000002", "step_000004"]

    caplog.clear()
    second = trainer(tmp_path, [HFExportCallback(out, **options)], max_steps=6)
    second.fit(LitGPT(batches=8), ckpt_path=tmp_path / "final.ckpt")
    assert export_counts(caplog) == {6: 1}
    assert step_dirs(out) == ["step_000004", "step_000006"]  # the resumed run rotates the first run's versions


def test_the_dirpath_is_checked_when_the_callback_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hfexport.errors import OutputPathError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputPathError, match=re.escape("The output directory (dirpath) is an empty string")):
        HFExportCallback(dirpath="")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputPathError, match=re.escape("is a file, not a directory. Choose another dirpath.")):
        HFExportCallback(dirpath=tmp_path / "file" / "exports")
    with pytest.raises(OutputPathError, match="dirpath='~nouser-hfexport/x' starts with"):
        HFExportCallback(dirpath="~nouser-hfexport/x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert HFExportCallback(dirpath=tmp_path / "new" / "exports").dirpath == tmp_path / "new" / "exports"
    assert not (tmp_path / "new").exists()  # checked, not created


SIGTERM_UNDER_LIGHTNING = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import lightning.pytorch as pl
from exportkit import SlowTokenizer
from test_lightning import LitGPT, trainer
from hfexport.lightning import HFExportCallback


class Preempt(pl.Callback):  # SIGTERM while step 2's export is being written
    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


root = Path(sys.argv[1])
callback = HFExportCallback(root / "out", every_n_train_steps=2, dtype="float32", tokenizer=SlowTokenizer(1.0))
try:
    trainer(root, [callback, Preempt()], max_steps=100).fit(LitGPT(batches=50))
finally:
    print("fit ended at step", callback._final_state and callback._final_state["last_step"], flush=True)
"""


def test_sigterm_under_lightning_finishes_the_export_then_lightning_stops_the_run(tmp_path: Path) -> None:
    """Lightning's signal connector installs its SIGTERM handler over hfexport's and calls it: the export in
    progress is finished, then Lightning ends the run (``SIGTERMException``) as it does without hfexport."""
    import os
    import subprocess
    import sys

    script = SIGTERM_UNDER_LIGHTNING.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "HFEXPORT_SIGTERM_GRACE_S": "60"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    target = tmp_path / "out" / "step_000002"
    assert f"hfexport: SIGTERM: finished the export of step 2 to {target}" in proc.stderr, proc.stderr
    assert "fit ended at step 2" in proc.stdout, proc.stdout + proc.stderr  # Lightning stopped the run early
    assert step_dirs(tmp_path / "out") == ["step_000002"] and read_latest(tmp_path / "out") == "step_000002"
    assert "terminate called" not in proc.stderr
