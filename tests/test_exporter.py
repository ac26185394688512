"""export_hf and HFExporter in a plain training loop: contents, schedule, rotation, background writes, errors.

Every export is read back: file tensors against the dtype cast of the weights recorded when the export was
taken, and logits through ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from exportkit import (
    SlowTokenizer,
    assert_file_tensors,
    assert_reproduces,
    hf_logits,
    hidden_temporaries,
    read_safetensors,
    step_dirs,
    tiny_gpt,
    token_ids,
    weights_copy,
)

from hfexport import ConversionError, ExportWorkerError, HFExportError, verify_directory
from hfexport.io import directory as writer
from hfexport.io import versions
from hfexport.io.directory import interrupt_outcome
from hfexport.io.versions import read_latest
from hfexport.training import background
from hfexport.training.exporter import HFExporter, export_hf


def train_step(model: torch.nn.Module, step: int) -> None:
    """A stand-in optimizer step: every parameter changes in place, differently at each step."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(torch.full_like(p, 0.01 * step + 0.001 * i))


# ------------------------------------------------------------------------------------------------ export_hf
def test_export_hf_float32_reproduces_logits_and_writes_manifest(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    state = weights_copy(model)
    path = export_hf(model, 7, tmp_path, dtype="float32", epoch=1, loss=torch.tensor(2.5))

    assert path == tmp_path / "step_000007" and path.is_dir()
    assert read_latest(tmp_path) == "step_000007"
    ids = token_ids()
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(ids)  # float64, like hf_logits
    assert (hf_logits(path, ids) - expected).abs().max().item() <= 1e-5
    assert_file_tensors(path, state, torch.float32)

    manifest = json.loads((path / "hfexport.json").read_text())
    assert manifest["step"] == 7 and manifest["epoch"] == 1 and manifest["loss"] == pytest.approx(2.5)
    assert manifest["dtype"] == "float32" and manifest["hfexport_version"]
    assert {"model.safetensors", "config.json"} <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry["size"] == len(data) and entry["crc32"] == f"{zlib.crc32(data):08x}", name
    report = verify_directory(path)
    assert report.ok, report.problems
    assert hidden_temporaries(tmp_path) == []


def test_export_hf_bfloat16_holds_the_bf16_cast(tmp_path: Path) -> None:
    model = tiny_gpt(1)
    state = weights_copy(model)
    path = export_hf(model, 3, tmp_path)  # bfloat16 is the default

    assert_file_tensors(path, state, torch.bfloat16)
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert json.loads((path / "hfexport.json").read_text())["dtype"] == "bfloat16"
    assert_reproduces(path, state, torch.bfloat16)


def test_export_hf_keep_last_n_rotates_what_export_hf_wrote_there_in_this_process(tmp_path: Path) -> None:
    """keep_last_n works across export_hf calls (each builds a new exporter), and only on versions those calls
    wrote: a version another run left in the directory is never counted or deleted."""
    model = tiny_gpt(1)
    other = export_hf(model, 1, tmp_path / "theirs")
    (tmp_path / "root").mkdir()
    other.rename(tmp_path / "root" / "step_000001")  # written by "another run": not this process's export_hf
    for step in (10, 20, 30, 40):
        train_step(model, step)
        assert export_hf(model, step, tmp_path / "root", keep_last_n=2) == tmp_path / "root" / f"step_{step:06d}"
    assert step_dirs(tmp_path / "root") == ["step_000001", "step_000030", "step_000040"]
    assert read_latest(tmp_path / "root") == "step_000040"
    export_hf(model, 50, tmp_path / "elsewhere", keep_last_n=1)  # another root: its own count
    assert step_dirs(tmp_path / "root") == ["step_000001", "step_000030", "step_000040"]
    assert step_dirs(tmp_path / "elsewhere") == ["step_000050"]


def test_export_hf_with_on_error_warn_returns_none_when_the_write_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_gpt(1)
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float("nan")
    with caplog.at_level(logging.ERROR, logger="hfexport"):
        assert export_hf(model, 7, tmp_path, on_error="warn") is None
    assert not (tmp_path / "step_000007").exists() and "non-finite" in caplog.text
    with pytest.raises(ExportWorkerError, match=r"^The export failed: .*non-finite") as info:
        export_hf(model, 7, tmp_path)  # on_error="raise": a synchronous export says so, not "background"
    assert isinstance(info.value.__cause__, ConversionError)


def test_export_leaves_the_live_model_and_its_config_unchanged(tmp_path: Path) -> None:
    model = tiny_gpt(2).train()
    before = weights_copy(model)
    config_before = dataclasses.asdict(model.config)
    export_hf(model, 1, tmp_path, dtype="float16", vocab_size=60, config={"n_head": 4})

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in before)
    assert dataclasses.asdict(model.config) == config_before
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def test_model_without_config_needs_n_head_through_config(tmp_path: Path) -> None:
    model = tiny_gpt(3)
    del model.config
    with pytest.raises(ConversionError, match=r"n_head.*config="):
        export_hf(model, 1, tmp_path / "a")
    assert step_dirs(tmp_path / "a") == []
    path = export_hf(model, 1, tmp_path / "b", dtype="float32", config={"n_head": 4})
    assert_reproduces(path, weights_copy(model), torch.float32)


def test_transformers_model_is_exported_with_its_own_config_and_tied_weights_once(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, activation_function="gelu")
    model = GPT2LMHeadModel(config).eval()
    config_before = model.config.to_dict()
    path = export_hf(model, 5, tmp_path, dtype="float32")

    tensors = read_safetensors(path)
    assert "lm_head.weight" not in tensors and "transformer.wte.weight" in tensors
    written = json.loads((path / "config.json").read_text())
    assert (written["n_layer"], written["n_head"], written["activation_function"]) == (2, 4, "gelu")
    ids = token_ids()
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(ids).logits  # float64, like hf_logits
    assert (hf_logits(path, ids) - expected).abs().max().item() <= 1e-5
    assert model.config.to_dict() == config_before
    assert model.lm_head.weight is model.transformer.wte.weight


def test_compiled_model_and_lightning_module_are_unwrapped(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    model = tiny_gpt(4)
    compiled = torch.compile(model)  # never run: the wrapper alone (``_orig_mod``) is what matters
    path = export_hf(compiled, 1, tmp_path / "compiled", dtype="float32")
    assert_file_tensors(path, weights_copy(model), torch.float32)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_gpt(5)

    module = Module()
    path = export_hf(module, 1, tmp_path / "lightning", dtype="float32")
    assert_reproduces(path, weights_copy(module.model), torch.float32)


# -------------------------------------------------------------------------------------------- HFExporter
def test_every_n_steps_with_rotation_keeps_foreign_versions(tmp_path: Path) -> None:
    foreign = export_hf(tiny_gpt(9), 1, tmp_path, dtype="float32")  # "another run" in the same root
    foreign_bytes = (foreign / "model.safetensors").read_bytes()
    model = tiny_gpt(0)
    recorded = {}
    with HFExporter(tmp_path, every_n_steps=3, keep_last_n=2, dtype="float32") as exporter:
        for step in range(1, 11):
            train_step(model, step)
            if exporter.should_export(step):
                recorded[step] = weights_copy(model)
            result = exporter.maybe_export(model, step)
            assert (result is not None) == (step % 3 == 0)
            assert read_latest(tmp_path) is None or (tmp_path / read_latest(tmp_path)).is_dir()
    assert sorted(recorded) == [3, 6, 9]
    assert step_dirs(tmp_path) == ["step_000001", "step_000006", "step_000009"]
    assert (foreign / "model.safetensors").read_bytes() == foreign_bytes
    assert read_latest(tmp_path) == "step_000009"
    for step in (6, 9):
        assert_file_tensors(tmp_path / f"step_{step:06d}", recorded[step], torch.float32)
    assert_reproduces(tmp_path / "step_000009", recorded[9], torch.float32)
    assert [v.step for v in exporter.versions()] == [1, 6, 9]


def test_latest_follows_the_current_run_even_below_a_foreign_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    export_hf(tiny_gpt(9), 100, tmp_path, dtype="float32")  # another run, further along (an abandoned future)
    model = tiny_gpt(0)
    with HFExporter(tmp_path, every_n_steps=1, keep_last_n=1, dtype="float32") as exporter:
        for step in (1, 2, 3):
            train_step(model, step)
            exporter.maybe_export(model, step)
            exporter.wait()
            assert read_latest(tmp_path) == f"step_{step:06d}"  # the current run's newest version
    assert step_dirs(tmp_path) == ["step_000003", "step_000100"]  # the foreign one is kept, never rotated
    assert caplog.text.count("training went back") == 1  # warned once
    assert "step_000100" in caplog.text


def test_steps_going_backwards_never_rotate_the_version_just_written(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    with HFExporter(tmp_path, keep_last_n=2, dtype="float32", async_write=False) as exporter:
        for step in (50, 40, 30):
            train_step(model, step)
            state = weights_copy(model)
            path = exporter.export(model, step)
            assert path == tmp_path / f"step_{step:06d}" and path.is_dir()
            assert read_latest(tmp_path) == path.name
            assert_file_tensors(path, state, torch.float32)
    # keep_last_n removes this run's versions in write order: 50 was written first
    assert step_dirs(tmp_path) == ["step_000030", "step_000040"]
    assert exporter.state_dict()["created"] == ["step_000040", "step_000030"]


def test_a_resumed_run_moves_latest_and_keeps_the_abandoned_future(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_gpt(0)
    with HFExporter(tmp_path, every_n_steps=10, keep_last_n=4, dtype="float32") as first:
        for step in range(10, 41, 10):
            first.maybe_export(model, step)
            if step == 10:
                first.wait()
                checkpoint = first.state_dict()  # the training checkpoint the run is resumed from
    assert read_latest(tmp_path) == "step_000040"
    abandoned = (tmp_path / "step_000040" / "model.safetensors").read_bytes()

    resumed = HFExporter(tmp_path, every_n_steps=10, keep_last_n=3, dtype="float32")
    resumed.load_state_dict(checkpoint)
    states = {}
    for step in (20, 30):
        train_step(model, step)
        states[step] = weights_copy(model)
        resumed.maybe_export(model, step)
        resumed.wait()
        assert read_latest(tmp_path) == f"step_{step:06d}"
    resumed.close()
    assert step_dirs(tmp_path) == ["step_000010", "step_000020", "step_000030", "step_000040"]
    assert (tmp_path / "step_000040" / "model.safetensors").read_bytes() == abandoned  # kept as it was
    for step, state in states.items():
        assert_file_tensors(tmp_path / f"step_{step:06d}", state, torch.float32)
    assert caplog.text.count("training went back") == 1 and "step_000040" in caplog.text


@pytest.mark.parametrize("bad", [2.5, 1.5, float("nan"), True, "10", -1])
def test_a_step_that_is_not_a_whole_number_is_refused(tmp_path: Path, bad: object) -> None:
    model = tiny_gpt(0)
    with pytest.raises(ConversionError, match=r"Invalid step .*whole number >= 0.*int\(step\)"):
        export_hf(model, bad, tmp_path / "a")  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()
    exporter = HFExporter(tmp_path / "b", every_n_steps=1)
    with pytest.raises(ConversionError, match=r"Invalid step"):
        exporter.maybe_export(model, bad)  # type: ignore[arg-type]
    with pytest.raises(HFExportError, match=r"Invalid step"):
        exporter.export(model, bad)  # type: ignore[arg-type]
    exporter.close()
    assert step_dirs(tmp_path / "b") == []


def test_whole_steps_of_other_types_are_accepted(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    assert export_hf(model, 2.0, tmp_path) == tmp_path / "step_000002"  # type: ignore[arg-type]
    assert export_hf(model, torch.tensor(3), tmp_path) == tmp_path / "step_000003"  # type: ignore[arg-type]
    assert step_dirs(tmp_path) == ["step_000002", "step_000003"]


def test_background_export_keeps_its_steps_weights(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    tokenizer = SlowTokenizer(delay=0.3)
    exporter = HFExporter(tmp_path, every_n_steps=1, dtype="float32", tokenizer=tokenizer)
    state = weights_copy(model)
    start = time.perf_counter()
    path = exporter.maybe_export(model, 1)
    stall = time.perf_counter() - start
    with torch.no_grad():  # the optimizer changes the weights right away, in place
        for p in model.parameters():
            p.mul_(-3.0).add_(1.0)
    assert not path.exists()  # still being written in the background
    exporter.close()
    assert stall < 0.3
    assert exporter.last_stats is not None and exporter.last_stats.write_s is not None
    assert_file_tensors(path, state, torch.float32)
    assert_reproduces(path, state, torch.float32)
    assert (path / "tokenizer_config.json").is_file() and tokenizer.saved == 1


def test_if_busy_wait_keeps_every_version(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    recorded = {}
    with HFExporter(tmp_path, every_n_steps=1, dtype="float32", tokenizer=SlowTokenizer(0.15)) as exporter:
        for step in range(1, 5):
            train_step(model, step)
            recorded[step] = weights_copy(model)
            assert exporter.maybe_export(model, step) is not None
    assert step_dirs(tmp_path) == [f"step_{s:06d}" for s in range(1, 5)]
    for step, state in recorded.items():
        assert_file_tensors(tmp_path / f"step_{step:06d}", state, torch.float32)


def storages(tensors: dict[str, torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors.values()}


def test_a_snapshot_reuses_only_the_host_copies_of_a_version_already_written(tmp_path: Path) -> None:
    # Private state read on purpose: what the exporter holds between versions (_buffers) and what is in flight.
    model = tiny_gpt(0)
    recorded = {}
    exporter = HFExporter(tmp_path, every_n_steps=1, dtype="float32", tokenizer=SlowTokenizer(0.3))
    held = exporter._buffers
    assert held is not None and exporter._writer is not None
    for step in (1, 2):  # step 2's snapshot is taken while step 1 is written (its writer sleeps, then reads)
        train_step(model, step)
        recorded[step] = weights_copy(model)
        exporter.maybe_export(model, step)
        assert held.nbytes == 0
    exporter.wait()
    one_version = sum(p.numel() * 4 for p in model.parameters())  # float32, the tied embedding once
    assert held.nbytes == one_version  # the last version's copies, kept for the next snapshot
    spare = {t.untyped_storage().data_ptr() for t in held._spare}

    train_step(model, 3)
    recorded[3] = weights_copy(model)
    exporter.maybe_export(model, 3)  # the writer is idle: the snapshot goes into the kept copies
    (job,) = exporter._writer.pending()  # being written for 0.3 s more
    assert storages(job.snapshot.tensors) == spare and held.nbytes == 0
    train_step(model, 4)  # training goes on while step 3 is written from those buffers
    recorded[4] = weights_copy(model)
    exporter.maybe_export(model, 4)  # taken while step 3 is written: new tensors, not step 3's buffers
    written, waiting = exporter._writer.pending()
    assert written is job and not storages(waiting.snapshot.tensors) & spare
    exporter.close()
    assert held.nbytes == 0  # close() lets the kept copies go
    for step, state in recorded.items():
        assert_file_tensors(tmp_path / f"step_{step:06d}", state, torch.float32)


def test_if_busy_skip_drops_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_gpt(0)
    caplog.set_level(logging.INFO, logger="hfexport")
    returned = {}
    with HFExporter(tmp_path, every_n_steps=1, if_busy="skip", tokenizer=SlowTokenizer(0.3)) as exporter:
        for step in range(1, 6):
            returned[step] = exporter.maybe_export(model, step)
    skipped = [s for s, r in returned.items() if r is None]
    written = [s for s, r in returned.items() if r is not None]
    # At most one snapshot waits behind the one being written; with a 0.3 s write the others are dropped.
    assert written[0] == 1 and len(written) <= 2 and skipped
    assert step_dirs(tmp_path) == [f"step_{s:06d}" for s in written]
    for step in skipped:
        assert f"Skipped the export of step {step}" in caplog.text


def test_background_failure_is_raised_from_the_next_call(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    due = 1_000_000  # the steps after it are not due: only the delivered failure can make a call raise
    exporter = HFExporter(tmp_path, every_n_steps=due, tokenizer=SlowTokenizer(0.0, fail=True))
    assert exporter.maybe_export(model, due) is not None  # fails later, in the writer thread
    deadline = time.monotonic() + 20
    with pytest.raises(ExportWorkerError, match="tokenizer save failed on purpose"):
        step = due
        while time.monotonic() < deadline:
            step += 1
            exporter.maybe_export(model, step)
            time.sleep(0.01)
    exporter.close()  # the error was delivered once
    assert step_dirs(tmp_path) == [] and hidden_temporaries(tmp_path) == []
    assert read_latest(tmp_path) is None
    assert exporter.state_dict()["created"] == []  # a resumed run is not told about a version that never was


def test_background_failure_is_raised_from_close(tmp_path: Path) -> None:
    exporter = HFExporter(tmp_path, every_n_steps=1, tokenizer=SlowTokenizer(0.05, fail=True))
    exporter.maybe_export(tiny_gpt(0), 1)
    with pytest.raises(ExportWorkerError, match="tokenizer save failed on purpose"):
        exporter.close()
    with pytest.raises(HFExportError, match="closed"):
        exporter.export(tiny_gpt(0), 2)


def test_on_error_warn_logs_and_training_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_gpt(0)
    tokenizer = SlowTokenizer(0.0, fail=True)
    with HFExporter(tmp_path, every_n_steps=1, on_error="warn", tokenizer=tokenizer) as exporter:
        exporter.maybe_export(model, 1)
        exporter.wait()  # does not raise
        tokenizer.fail = False
        exporter.maybe_export(model, 2)
    assert "Export of step 1" in caplog.text and "failed" in caplog.text
    assert step_dirs(tmp_path) == ["step_000002"] and read_latest(tmp_path) == "step_000002"


def test_sync_write_is_on_disk_when_the_call_returns(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    exporter = HFExporter(tmp_path, every_n_steps=2, async_write=False, dtype="float32")
    assert exporter.maybe_export(model, 1) is None
    state = weights_copy(model)
    path = exporter.maybe_export(model, 2)
    assert path is not None and path.is_dir() and read_latest(tmp_path) == "step_000002"
    train_step(model, 3)
    assert_file_tensors(path, state, torch.float32)
    assert exporter.maybe_export(model, 2) is None  # same step twice: not again
    exporter.close()

    failing = HFExporter(tmp_path / "f", every_n_steps=1, async_write=False, tokenizer=SlowTokenizer(0, fail=True))
    with pytest.raises(ExportWorkerError, match="on purpose"):
        failing.maybe_export(model, 1)
    failing.close()


def test_invalid_arguments_are_refused_with_the_value(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=re.escape("Invalid value for every_n_steps=0: expected a positive int, or None.")
    ):
        HFExporter(tmp_path, every_n_steps=0)
    with pytest.raises(TypeError, match="colour"):
        HFExporter(tmp_path, colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="Invalid dtype 'int8'"):
        HFExporter(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match=r"keep_last_n=0"):
        HFExporter(tmp_path, keep_last_n=0)
    with pytest.raises(ValueError, match=r"if_busy='later'"):
        HFExporter(tmp_path, if_busy="later")


def test_leftover_temporaries_of_a_killed_run_are_cleaned_at_start(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from hfexport.io.directory import make_temporary\n"
        "for name, tag in (('step_000004', '.tmp-'), ('step_000002', '.old-')):\n"
        "    path = make_temporary(Path(sys.argv[1]), name, tag)\n"
        "    (path / 'payload').mkdir(); (path / 'payload' / 'model.safetensors').write_bytes(b'half a file')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)  # a run killed mid-write
    stale = sorted(p.name for p in tmp_path.iterdir())
    assert len(stale) == 2 and all(".tmp-" in n or ".old-" in n for n in stale)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    others = [".data.old-2024", ".venv.tmp-build", f".step_000006.tmp-{int(dead.stdout)}-cafecafe"]  # not ours
    for name in others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "precious.txt").write_text(name)
    HFExporter(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(others)
    for name in others:
        assert (tmp_path / name / "precious.txt").read_text() == name


def test_special_token_ids_come_from_the_tokenizer_for_a_small_vocabulary(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0, "a": 1, "b": 2}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    path = export_hf(tiny_gpt(), 1, tmp_path, tokenizer=tok)
    config = json.loads((path / "config.json").read_text())
    generation = json.loads((path / "generation_config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == 0  # not GPT-2's 50256, not null
    assert generation["eos_token_id"] == 0
    plain = export_hf(tiny_gpt(), 2, tmp_path)  # no tokenizer: unknown stays unknown
    assert json.loads((plain / "config.json").read_text())["eos_token_id"] is None


# ------------------------------------------------------------------------------------ interpreter exit
EXIT_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from exportkit import SlowTokenizer, tiny_gpt
from hfexport import HFExporter

root, mode = sys.argv[1], sys.argv[2]
exporter = HFExporter(root, every_n_steps=1, dtype="float32", tokenizer=SlowTokenizer(0.3, fail=mode == "fail"))
model = tiny_gpt(0)
if mode == "thread":  # a non-daemon training thread that exports after the main thread has ended
    threading.Thread(target=lambda: (time.sleep(0.3), exporter.maybe_export(model, 1))).start()
else:
    exporter.maybe_export(model, 1)
if mode == "crash":
    raise RuntimeError("training crashed")
"""  # no close(): the script just ends


def run_script_without_close(root: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = EXIT_SCRIPT.format(tests=str(Path(__file__).parent))
    return subprocess.run([sys.executable, "-c", script, str(root), mode], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["end", "crash", "thread"])
def test_a_script_ending_without_close_still_writes_its_export(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "root"
    proc = run_script_without_close(root, mode)
    assert proc.returncode == (1 if mode == "crash" else 0), proc.stderr
    assert step_dirs(root) == ["step_000001"], proc.stderr
    assert read_latest(root) == "step_000001" and hidden_temporaries(root) == []
    report = verify_directory(root / "step_000001")
    assert report.ok, report.problems
    assert_file_tensors(root / "step_000001", weights_copy(tiny_gpt(0)), torch.float32)
    assert (
        "hfexport: finishing 1 pending export before exit (call exporter.close() to do this explicitly)" in proc.stderr
    )
    if mode == "crash":
        assert "RuntimeError: training crashed" in proc.stderr


def test_an_export_that_fails_at_exit_is_reported_on_stderr(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = run_script_without_close(root, "fail")
    assert "hfexport: finishing 1 pending export before exit" in proc.stderr
    assert f"hfexport: error: the export of step 1 to {root / 'step_000001'} could not be written" in proc.stderr
    assert "tokenizer save failed on purpose" in proc.stderr
    assert step_dirs(root) == [] and hidden_temporaries(root) == []


NO_THREAD_LEFT_SCRIPT = """
import atexit, sys, threading
import torch
sys.path.insert(0, {tests!r})
from exportkit import tiny_gpt, token_ids


def at_finalization():  # registered before hfexport's hooks, so it runs after them, as the interpreter finalizes
    names = sorted(t.name for t in threading.enumerate() if t.name.startswith("hfexport"))
    print("hfexport threads left:", names, flush=True)


atexit.register(at_finalization)
from hfexport import HFExporter

if sys.argv[2] != "default":
    torch.set_num_threads(int(sys.argv[2]))
model = tiny_gpt(0)
exporter = HFExporter(sys.argv[1], every_n_steps=1, dtype="float32", tokenizer=False)
for step in (1, 2):
    model(token_ids())  # training uses torch's threads too
    exporter.maybe_export(model, step)
"""  # no close()


@pytest.mark.parametrize(("threads", "omp"), [("default", None), ("1", None), ("4", None), ("default", "1")])
def test_a_script_ending_without_close_leaves_no_writer_thread_at_finalization_and_exits_0(
    tmp_path: Path, threads: str, omp: str | None
) -> None:
    """A thread of hfexport still alive when the interpreter finalizes is killed by ``pthread_exit`` if it is
    inside torch then, which aborts the process (``terminate called without an active exception``, status 134)."""
    root = tmp_path / "root"
    env = dict(os.environ)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    script = NO_THREAD_LEFT_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(root), threads], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "terminate called" not in proc.stderr
    assert "hfexport threads left: []" in proc.stdout, proc.stdout
    assert step_dirs(root) == ["step_000001", "step_000002"] and read_latest(root) == "step_000002"
    assert all(verify_directory(root / name).ok for name in step_dirs(root)) and hidden_temporaries(root) == []


CTRL_C_AT_EXIT_SCRIPT = """
import sys, time
import torch
sys.path.insert(0, {tests!r})
from exportkit import SlowTokenizer, tiny_gpt
from hfexport import HFExporter


class BusyTokenizer(SlowTokenizer):  # its write keeps the writer thread inside torch for a while
    def save_pretrained(self, path):
        a, end = torch.randn(256, 256), time.monotonic() + 60
        while time.monotonic() < end:
            a = torch.tanh(a @ a)
        super().save_pretrained(path)


exporter = HFExporter(sys.argv[1], every_n_steps=1, dtype="float32", tokenizer=BusyTokenizer(0))
exporter.maybe_export(tiny_gpt(0), 1)
"""  # no close(): the exit hook waits for the export; Ctrl-C arrives meanwhile


def test_ctrl_c_while_exit_waits_for_an_export_stops_it_without_an_abort(tmp_path: Path) -> None:
    root = tmp_path / "root"
    script = CTRL_C_AT_EXIT_SCRIPT.format(tests=str(Path(__file__).parent))
    with subprocess.Popen(
        [sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        seen = []
        while not seen or "finishing 1 pending export" not in seen[-1]:
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        time.sleep(0.5)  # inside torch now
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode != -signal.SIGABRT and "terminate called" not in err, err
    assert f"hfexport: interrupted at exit; not written: step 1 to {root / 'step_000001'}" in err, err
    assert step_dirs(root) == [] and hidden_temporaries(root) == []


def test_pending_exports_are_written_in_the_exiting_thread_when_the_worker_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = HFExporter(tmp_path, every_n_steps=1, dtype="float32")
    monkeypatch.setattr(exporter._writer, "_start", lambda: None)  # the writer thread cannot run any more
    model = tiny_gpt(0)
    state = weights_copy(model)
    exporter.maybe_export(model, 1)
    assert step_dirs(tmp_path) == []
    if hasattr(os, "fork"):  # a forked child inherits the queue; its exit must not write the parent's version
        child = os.fork()
        if child == 0:
            background._finish_all_at_exit()
            os._exit(3 if step_dirs(tmp_path) else 0)
        assert os.waitpid(child, 0)[1] == 0
    background._finish_all_at_exit()
    assert "hfexport: finishing 1 pending export before exit" in capsys.readouterr().err
    assert_file_tensors(tmp_path / "step_000001", state, torch.float32)
    assert read_latest(tmp_path) == "step_000001"
    exporter.close()


# ---------------------------------------------------------------------------------------- interrupts
@pytest.mark.parametrize("on_error", ["raise", "warn"])
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_during_a_synchronous_export_goes_through_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_error: str, interrupt: type[BaseException]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:  # Ctrl-C while the version is verified
        raise interrupt

    monkeypatch.setattr(writer, "_verify", interrupted)
    model = tiny_gpt(0)
    with pytest.raises(interrupt) as info:
        export_hf(model, 1, tmp_path, on_error=on_error)
    assert type(info.value) is interrupt
    assert step_dirs(tmp_path) == [] and hidden_temporaries(tmp_path) == [] and read_latest(tmp_path) is None
    assert interrupt_outcome(info.value) == "nothing was published"

    exporter = HFExporter(tmp_path, async_write=False, on_error=on_error, dtype="float32")
    with pytest.raises(interrupt):
        exporter.export(model, 2)
    assert exporter.state_dict()["created"] == []
    monkeypatch.undo()
    assert exporter.export(model, 3) == tmp_path / "step_000003"  # the interrupt left nothing pending
    exporter.close()
    assert step_dirs(tmp_path) == ["step_000003"]


def test_an_interrupt_after_the_rename_says_the_version_was_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:  # Ctrl-C while `latest` moves
        raise KeyboardInterrupt

    monkeypatch.setattr(versions, "set_latest", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        export_hf(tiny_gpt(0), 5, tmp_path, dtype="float32")
    assert verify_directory(tmp_path / "step_000005").ok
    outcome = interrupt_outcome(info.value)
    assert "step_000005 was published (complete) before the interrupt" in outcome and "nothing" not in outcome


def test_an_interrupt_in_the_writer_thread_is_delivered_as_itself(tmp_path: Path) -> None:
    class Interrupting(SlowTokenizer):
        def save_pretrained(self, path: str) -> None:
            raise KeyboardInterrupt

    exporter = HFExporter(tmp_path, every_n_steps=1, on_error="warn", tokenizer=Interrupting())
    exporter.maybe_export(tiny_gpt(0), 1)
    with pytest.raises(KeyboardInterrupt):
        exporter.wait()
    exporter.close()
    assert step_dirs(tmp_path) == [] and hidden_temporaries(tmp_path) == []


# -- the export root and the options, checked when the exporter is built (issue 18 item 10) -------------------------
def _unwritable_dir(tmp_path: Path) -> Path:
    """An existing directory this process cannot create anything in: chmod 555 for a user; for root (who ignores
    permissions) a sysfs directory, which refuses new entries to everyone."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return locked
    candidate = Path("/sys/kernel")
    try:
        (candidate / "hfexport-probe").mkdir()
    except OSError:
        return candidate
    (candidate / "hfexport-probe").rmdir()
    pytest.skip("no directory this root process cannot write to")


def test_an_empty_output_dir_is_refused_instead_of_exporting_into_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(writer.OutputPathError, match=re.escape("The output directory (output_dir) is an empty str")):
        HFExporter("")
    with pytest.raises(writer.OutputPathError, match=re.escape("output_dir='hf_exports'")):
        export_hf(tiny_gpt(0), 1, "")
    assert list(tmp_path.iterdir()) == []


def test_a_home_of_no_known_user_is_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(
        writer.OutputPathError,
        match=re.escape("output_dir='~nouser-hfexport/x' starts with '~nouser-hfexport', which names no known user"),
    ):
        HFExporter("~nouser-hfexport/x")


def test_an_unwritable_root_is_refused_when_the_exporter_is_built(tmp_path: Path) -> None:
    root = _unwritable_dir(tmp_path)
    with pytest.raises(writer.OutputPathError, match=re.escape(f"output_dir={str(root)!r} cannot be written")):
        HFExporter(root, every_n_steps=1)
    with pytest.raises(writer.OutputPathError, match="cannot be written"):
        export_hf(tiny_gpt(0), 1, root)


def test_a_root_under_a_file_or_with_a_too_long_name_is_refused_when_built(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("mine")
    with pytest.raises(
        writer.OutputPathError, match=r"'.*file' is a file, not a directory\. Choose another output_dir\."
    ):
        HFExporter(tmp_path / "file" / "exports")
    with pytest.raises(writer.OutputPathError, match="is 300 bytes long"):
        HFExporter(tmp_path / ("r" * 300))
    with pytest.raises(writer.OutputPathError, match=re.escape("expected a path (a str or os.PathLike), not a int")):
        HFExporter(123)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("config", ["abc", 123, [1, 2], 2.5])
def test_a_config_facts_cannot_be_read_from_is_refused(tmp_path: Path, config: object) -> None:
    words = "expected a dict (or another mapping), a dataclass instance or an object with attributes"
    with pytest.raises(HFExportError, match=re.escape(f"Invalid value for config={config!r}: {words}")):
        HFExporter(tmp_path, config=config)
    with pytest.raises(HFExportError, match=re.escape(words)):
        export_hf(tiny_gpt(0), 1, tmp_path / "x", config=config)
    assert not (tmp_path / "x").exists()
    HFExporter(tmp_path, config=argparse.Namespace(n_head=4)).close()  # an object with attributes is read


def test_python_api_errors_name_output_dir_not_the_cli_option(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "step_000001").write_text("a file where the version goes")
    with pytest.raises(ExportWorkerError) as info:
        export_hf(tiny_gpt(0), 1, root)
    assert "Choose another output_dir." in str(info.value) and "--output_dir" not in str(info.value)


def test_a_model_name_with_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HFExportError, match=re.escape("model_name='a\\n# b': expected one line of printable text")):
        HFExporter(tmp_path, model_name="a\n# b")


# -------------------------------------------------------------------------------------- context manager
def test_with_block_failing_keeps_its_exception_and_logs_the_background_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_gpt(0)
    failing = SlowTokenizer(0.2, fail=True)
    with (
        pytest.raises(RuntimeError, match="training crashed") as raised,
        HFExporter(tmp_path, every_n_steps=1, dtype="float32", tokenizer=failing) as ex,
    ):
        ex.maybe_export(model, 1)  # fails in the background while training goes on
        raise RuntimeError("training crashed")
    assert not isinstance(raised.value.__context__, ExportWorkerError)
    assert "pending exports failed while the training loop was failing" in caplog.text
    assert "tokenizer save failed on purpose" in caplog.text
    assert ex._closed and step_dirs(tmp_path) == [] and hidden_temporaries(tmp_path) == []


def test_with_block_ending_normally_still_raises_the_background_failure(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    failing = SlowTokenizer(0.2, fail=True)
    with (
        pytest.raises(ExportWorkerError, match="tokenizer save failed on purpose"),
        HFExporter(tmp_path, every_n_steps=1, dtype="float32", tokenizer=failing) as ex,
    ):
        ex.maybe_export(model, 1)


def test_with_block_failing_still_writes_the_pending_version(tmp_path: Path) -> None:
    model = tiny_gpt(0)
    state = weights_copy(model)
    with (
        pytest.raises(RuntimeError, match="training crashed"),
        HFExporter(tmp_path, every_n_steps=1, dtype="float32", tokenizer=SlowTokenizer(0.2)) as ex,
    ):
        ex.maybe_export(model, 1)
        raise RuntimeError("training crashed")
    assert_file_tensors(tmp_path / "step_000001", state, torch.float32)
    assert read_latest(tmp_path) == "step_000001"


def test_the_published_line_and_figures_say_the_push_was_queued(
    hub_server: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfexport")
    with HFExporter(
        tmp_path, every_n_steps=1, dtype="float32", push_to_hub=True, repo_id="tester/published-line",
        hub_max_retries=1, hub_backoff_s=0.01,
    ) as exporter:  # fmt: skip
        exporter.maybe_export(tiny_gpt(0), 1)
        exporter.wait()
        (stats,) = exporter.take_published()
    assert exporter.take_published() == []  # each version once
    target = tmp_path / "step_000001"
    assert stats.step == 1 and stats.path == target and stats.verified and stats.push == "queued"
    assert stats.size_bytes == sum(f.stat().st_size for f in target.iterdir() if f.is_file())
    assert stats.metrics()["hfexport/push_queued"] == 1.0
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"Exported step 1 to {target}")]
    assert line.endswith("; push to tester/published-line@main queued"), line
    assert any(r.getMessage().startswith("Pushed step_000001 to tester/published-line@main") for r in caplog.records)
