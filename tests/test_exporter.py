"""export_hf and HFExporter in a plain training loop: contents, schedule, rotation, background writes, errors.

Every export is read back: file tensors against the dtype cast of the weights recorded when the export was
taken, and logits through ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
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
from hfexport.exporter import HFExporter, export_hf
from hfexport.versions import read_latest


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


def test_rotation_respects_a_newer_foreign_latest(tmp_path: Path) -> None:
    export_hf(tiny_gpt(9), 100, tmp_path, dtype="float32")  # another run, further along
    model = tiny_gpt(0)
    with HFExporter(tmp_path, every_n_steps=1, keep_last_n=1, dtype="float32") as exporter:
        for step in (1, 2, 3):
            train_step(model, step)
            exporter.maybe_export(model, step)
    assert step_dirs(tmp_path) == ["step_000003", "step_000100"]
    assert read_latest(tmp_path) == "step_000100"  # never moved back to an older step


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
    with pytest.raises(ValueError, match=r"every_n_steps=0\. Must be >= 1 or None"):
        HFExporter(tmp_path, every_n_steps=0)
    with pytest.raises(TypeError, match=r"Unknown export option\(s\) \['colour'\]"):
        HFExporter(tmp_path, colour="blue")
    with pytest.raises(ValueError, match="Invalid dtype 'int8'"):
        HFExporter(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match=r"keep_last_n=0"):
        HFExporter(tmp_path, keep_last_n=0)
    with pytest.raises(ValueError, match=r"if_busy='later'"):
        HFExporter(tmp_path, if_busy="later")


def test_leftover_temporaries_of_a_killed_run_are_cleaned_at_start(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".step_000004.tmp-{dead.pid}-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    old = tmp_path / f".step_000002.old-{dead.pid}-0badf00d"
    old.mkdir()
    alive = tmp_path / ".step_000006.tmp-1-cafecafe"  # pid 1 is alive: another process is still writing it
    alive.mkdir()
    HFExporter(tmp_path)
    assert not stale.exists() and not old.exists()
    assert alive.exists()
    assert os.listdir(tmp_path) == [alive.name]


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
