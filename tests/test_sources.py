"""Finding the weights in every producer's checkpoint layout, safely, and resolving checkpoint paths."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pickle
import re
import sys
import uuid
from pathlib import Path

import pytest
import torch
from nanogpt import make_gpt
from transformers import AutoModelForCausalLM

from hfexport import CheckpointError, ConversionError, UnsafeCheckpointError, convert_checkpoint, load_checkpoint
from hfexport.sources import resolve_checkpoint_path, strip_prefixes, unwrap_model


def parity(model: torch.nn.Module, out: Path) -> float:
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        return float((hf(ids).logits - model(ids)).abs().max())


def assert_same_weights(loaded: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = model.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


# --- layouts ---------------------------------------------------------------------------------------------------


def test_nanogpt_train_py_layout(tmp_path: Path) -> None:
    model = make_gpt(1, n_head=2, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters())
    model.train()
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    model.eval()
    path = tmp_path / "ckpt.pt"
    torch.save(
        {
            "model": torch.compile(model).state_dict(),  # train.py saves the compiled model's keys
            "optimizer": optimizer.state_dict(),
            "model_args": model.model_args(),
            "iter_num": 1500,
            "best_val_loss": torch.tensor(1.25),
            "config": {"out_dir": "out", "compile": True, "learning_rate": 1e-3},
        },
        path,
    )
    ckpt = load_checkpoint(path)
    assert ckpt.layout == "nanogpt"
    assert ckpt.step == 1500
    assert ckpt.facts.n_head == 2
    assert ckpt.facts.dropout == pytest.approx(0.1)
    assert ckpt.facts.bias is True
    assert ckpt.extra["best_val_loss"] == pytest.approx(1.25)
    assert ckpt.activation_hint is None
    assert_same_weights(ckpt.state_dict, model)
    out = convert_checkpoint(path, tmp_path / "hf", dtype="float32")
    assert parity(model, out) <= 1e-5
    config = json.loads((out / "config.json").read_text())
    assert config["n_head"] == 2
    assert config["resid_pdrop"] == pytest.approx(0.1)


BUILD_NANOGPT_MODULE = """
from dataclasses import dataclass
from pathlib import Path

Path({marker!r}).write_text("imported")  # importing this module leaves a trace


@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 96
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 32
"""


@pytest.mark.parametrize("torch_names_the_global", [True, False])
def test_build_nanogpt_layout_never_imports_the_config_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_names_the_global: bool
) -> None:
    """build-nanogpt pickles its GPTConfig dataclass; loading must read its fields without importing it (also with a
    torch whose refusal message hfexport cannot read: the pickle is then scanned for the global)."""
    import hfexport.sources as sources

    if not torch_names_the_global:
        monkeypatch.setattr(sources, "_REFUSED_GLOBAL", re.compile(r"(?!)"))
    name = f"bn_model_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "IMPORTED"
    module_dir = tmp_path / "mod"
    module_dir.mkdir()
    (module_dir / f"{name}.py").write_text(BUILD_NANOGPT_MODULE.format(marker=str(marker)))
    sys.path.insert(0, str(module_dir))
    try:
        config_cls = importlib.import_module(name).GPTConfig
        cfg = config_cls(n_head=4)
        model = make_gpt(2, activation="gelu_pytorch_tanh")
        path = tmp_path / "model_00500.pt"
        torch.save({"model": model.state_dict(), "config": cfg, "step": 500, "val_loss": 3.25}, path)
    finally:
        sys.path.remove(str(module_dir))
        del sys.modules[name]
    (module_dir / f"{name}.py").unlink()
    marker.unlink()
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError):  # proof that nothing could import it now
        importlib.import_module(name)

    ckpt = load_checkpoint(path)
    assert ckpt.layout == "build-nanogpt"
    assert ckpt.step == 500
    assert ckpt.facts.n_head == 4
    assert ckpt.facts.block_size == 16
    assert ckpt.extra["val_loss"] == pytest.approx(3.25)
    assert ckpt.activation_hint == "gelu_pytorch_tanh"
    assert name not in sys.modules
    assert not marker.exists()

    out = convert_checkpoint(path, tmp_path / "hf", dtype="float32")  # activation picked from the layout
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu_pytorch_tanh"
    assert parity(model, out) <= 1e-5
    assert name not in sys.modules
    assert not marker.exists()


def test_nano_gpt_package_layout(tmp_path: Path) -> None:
    model = make_gpt(3, activation="gelu_pytorch_tanh", bias=False)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": {"state": {}, "param_groups": []},
            "config": dataclasses.asdict(model.config),
            "step": 42,
            "loss": 2.5,
        },
        path,
    )
    ckpt = load_checkpoint(path)
    assert ckpt.layout == "nano-gpt"
    assert ckpt.step == 42
    assert ckpt.activation_hint == "gelu_pytorch_tanh"
    out = convert_checkpoint(path, tmp_path / "hf", dtype="float32")
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu_pytorch_tanh"
    assert parity(model, out) <= 1e-5


def test_real_lightning_checkpoint(tmp_path: Path) -> None:
    import lightning as L

    class LitGPT(L.LightningModule):
        def __init__(self, n_head: int = 4, n_embd: int = 32, vocab_size: int = 96) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = make_gpt(4, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size).train()

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            (ids,) = batch
            logits = self.model(ids[:, :-1])
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    data = torch.utils.data.TensorDataset(torch.randint(0, 96, (8, 17), generator=torch.Generator().manual_seed(0)))
    lit = LitGPT()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(lit, torch.utils.data.DataLoader(data, batch_size=4))
    path = tmp_path / "epoch=0-step=2.ckpt"
    trainer.save_checkpoint(path)
    model = lit.model.eval()

    ckpt = load_checkpoint(path)
    assert ckpt.layout == "lightning"
    assert ckpt.step == 2
    assert ckpt.facts.n_head == 4
    assert_same_weights(ckpt.state_dict, model)
    out = convert_checkpoint(path, tmp_path / "hf", dtype="float32")
    assert parity(model, out) <= 1e-5
    assert json.loads((out / "hfexport.json").read_text())["layout"] == "lightning"


def test_bare_state_dict_needs_n_head(tmp_path: Path) -> None:
    model = make_gpt(5, n_head=8)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    assert load_checkpoint(path).layout == "state_dict"
    with pytest.raises(ConversionError, match="--n_head"):
        convert_checkpoint(path, tmp_path / "hf", dtype="float32")
    assert not (tmp_path / "hf").exists()
    out = convert_checkpoint(path, tmp_path / "hf", dtype="float32", n_head=8)
    assert json.loads((out / "config.json").read_text())["n_head"] == 8
    assert parity(model, out) <= 1e-5


def test_n_head_option_overrides_nothing_when_recorded(tmp_path: Path) -> None:
    """An explicit n_head wins over the checkpoint's (the user knows better, e.g. a wrong config)."""
    model = make_gpt(5, n_head=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": {**model.model_args(), "n_head": 2}}, path)
    out = convert_checkpoint(path, tmp_path / "hf", dtype="float32", n_head=4)
    assert parity(model, out) <= 1e-5


def test_old_torch_causal_mask_buffers_are_dropped(tmp_path: Path) -> None:
    model = make_gpt(6)
    sd = dict(model.state_dict())
    for i in range(2):
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": sd, "model_args": model.model_args()}, path)
    out = convert_checkpoint(path, tmp_path / "hf", dtype="float32")
    assert parity(model, out) <= 1e-5


# --- refusals at load time -------------------------------------------------------------------------------------


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("torch_names_the_global", [True, False])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain_pickle"])
def test_pickle_carrying_code_is_refused_unexecuted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, torch_names_the_global: bool
) -> None:
    import hfexport.sources as sources

    if not torch_names_the_global:
        monkeypatch.setattr(sources, "_REFUSED_GLOBAL", re.compile(r"(?!)"))
    marker = tmp_path / "PWNED"
    payload = {"model": make_gpt(0).state_dict(), "hook": RunsCode(marker)}
    path = tmp_path / "evil.pt"
    if fmt == "plain_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert not marker.exists()
    if fmt != "plain_pickle":  # torch's legacy reader rejects a raw pickle before looking at globals
        assert isinstance(info.value, UnsafeCheckpointError)
        assert "system" in str(info.value)
        assert "weights_only" in str(info.value)


def test_legacy_format_checkpoint_loads(tmp_path: Path) -> None:
    model = make_gpt(7)
    path = tmp_path / "old.pt"
    torch.save(
        {"model": model.state_dict(), "model_args": model.model_args()}, path, _use_new_zipfile_serialization=False
    )
    ckpt = load_checkpoint(path)
    assert_same_weights(ckpt.state_dict, model)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        (b"\x00" * 100, "not a readable"),
        (b"PK\x03\x04" + os.urandom(200), "not a readable"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)


def test_truncated_zip_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": make_gpt(0).state_dict()}, path)
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 3, 30):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(path)


def test_non_dict_and_weightless_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="Tensor"):
        load_checkpoint(path)
    torch.save({"optimizer": {"lr": 1.0}, "step": 3}, path)
    with pytest.raises(CheckpointError, match="optimizer"):
        load_checkpoint(path)


# --- paths -----------------------------------------------------------------------------------------------------


def _touch_ckpt(path: Path, mtime: float) -> Path:
    torch.save({"x": torch.zeros(1)}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_directory_resolution_order(tmp_path: Path) -> None:
    _touch_ckpt(tmp_path / "a.pt", 1000)
    newest = _touch_ckpt(tmp_path / "b.pt", 3000)
    _touch_ckpt(tmp_path / "c.pt", 2000)
    (tmp_path / "notes.txt").write_text("newer but not a checkpoint")
    assert resolve_checkpoint_path(tmp_path) == newest
    ckpt = _touch_ckpt(tmp_path / "ckpt.pt", 10)
    assert resolve_checkpoint_path(tmp_path) == ckpt
    latest = _touch_ckpt(tmp_path / "latest.pt", 5)
    assert resolve_checkpoint_path(tmp_path) == latest
    assert resolve_checkpoint_path(tmp_path / "a.pt") == tmp_path / "a.pt"


def test_step_name_resolution(tmp_path: Path) -> None:
    for step in (1000, 2000, 20000):
        _touch_ckpt(tmp_path / f"step_{step:06d}.pt", 1000)
    assert resolve_checkpoint_path(tmp_path / "step_002000") == tmp_path / "step_002000.pt"
    assert resolve_checkpoint_path(tmp_path / "step_020000") == tmp_path / "step_020000.pt"
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint_path(tmp_path / "step_003000")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="No checkpoint"):
        resolve_checkpoint_path(empty)


def test_convert_from_directory_and_step_name(tmp_path: Path) -> None:
    ckpts = tmp_path / "out"
    ckpts.mkdir()
    models = {}
    for i, step in enumerate((1000, 2000)):
        models[step] = make_gpt(10 + i)
        torch.save(
            {"model": models[step].state_dict(), "model_args": models[step].model_args(), "iter_num": step},
            ckpts / f"step_{step:06d}.pt",
        )
        os.utime(ckpts / f"step_{step:06d}.pt", (1000 + step, 1000 + step))
    out = convert_checkpoint(ckpts / "step_001000", tmp_path / "hf1", dtype="float32")
    assert parity(models[1000], out) <= 1e-5
    out = convert_checkpoint(ckpts, tmp_path / "hf2", dtype="float32")  # the newest
    assert parity(models[2000], out) <= 1e-5
    assert json.loads((out / "hfexport.json").read_text())["step"] == 2000


# --- prefixes and live models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "_orig_mod.", "module.", "module._orig_mod.", "_orig_mod.module."])
def test_strip_prefixes(prefix: str) -> None:
    sd = {f"{prefix}transformer.wte.weight": torch.zeros(1), f"{prefix}lm_head.weight": torch.ones(1)}
    assert set(strip_prefixes(sd)) == {"transformer.wte.weight", "lm_head.weight"}


def test_strip_prefixes_refuses_collisions() -> None:
    with pytest.raises(CheckpointError, match=r"transformer\.wte\.weight"):
        strip_prefixes({"module.transformer.wte.weight": torch.zeros(1), "transformer.wte.weight": torch.zeros(1)})


def test_unwrap_model_compiled() -> None:
    model = make_gpt(0)
    assert unwrap_model(torch.compile(model)) is model
    with pytest.raises(CheckpointError, match=r"nn\.Module"):
        unwrap_model("not a model")


# --- archives that expand far beyond their size, and files that are not checkpoints -------------------------------


def _write_zip(path: Path, entries: list[tuple[str, int, bytes, int, int]]) -> None:
    """A zip written by hand: (name, method, data as stored, uncompressed size, CRC-32) per entry."""
    import struct

    local, central = b"", b""
    for name, method, data, size, crc in entries:
        fname = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(data), size, len(fname), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(local))
        central += fname
        local += b"PK\x03\x04" + fields + fname + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(local + central + end)


def deflate_bomb(path: Path, expanded: int) -> None:
    """A torch-zip-shaped checkpoint whose ``data.pkl`` is a pickled string of ``expanded`` bytes, deflated.

    Each 1 MiB of the string deflates (with a full flush, so every block compresses to the same bytes) to about
    1 KB: the file is ~1000x smaller than what its pickle expands to. Built in well under a second.
    """
    import struct
    import zlib

    block = b"a" * 2**20
    head = b"\x80\x02X" + struct.pack("<I", expanded)  # protocol 2, BINUNICODE of `expanded` bytes
    tail = b"q\x00."
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = [deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)]
    chunk = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(expanded // len(block)):
        stream.append(chunk)
        crc = zlib.crc32(block, crc)
    stream.append(deflate.compress(tail) + deflate.flush())
    crc = zlib.crc32(tail, crc)
    pickle_size = len(head) + expanded + len(tail)
    _write_zip(
        path,
        [
            ("archive/data.pkl", 8, b"".join(stream), pickle_size, crc),
            ("archive/byteorder", 0, b"little", 6, zlib.crc32(b"little")),
            ("archive/version", 0, b"3\n", 2, zlib.crc32(b"3\n")),
        ],
    )


_PEAK_PROBE = """
import resource, sys, time
import hfexport.sources as sources
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    sources.load_checkpoint(sys.argv[1])
    message = "loaded"
except Exception as exc:
    message = f"{type(exc).__name__}: {exc}"
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown // 1024, time.perf_counter() - start)
print(message)
"""


def test_deflated_pickle_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    """A 1 MB file whose pickle expands to 1 GiB: refused from the zip's directory, in one line, in little memory."""
    import subprocess

    path = tmp_path / "bomb.pt"
    deflate_bomb(path, 2**30)
    assert path.stat().st_size < 2 * 10**6
    done = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures, message = done.stdout.strip().split("\n", 1)
    grown_mb, seconds = figures.split()
    assert int(grown_mb) < 64, f"peak memory grew by {grown_mb} MB while refusing a 1 MB file"
    assert float(seconds) < 5
    assert message.startswith("CheckpointError: "), message
    assert "\n" not in message and "data.pkl" in message and "expands" in message


def test_oversized_stored_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hfexport.sources as sources

    path = tmp_path / "ckpt.pt"
    torch.save({"model": make_gpt(0).state_dict(), "notes": "x" * 5000}, path)
    monkeypatch.setattr(sources, "MAX_PICKLE_BYTES", 4096)  # the real bound is 256 MiB: too big for a test file
    with pytest.raises(CheckpointError, match=r"pickle '.*data\.pkl' is \d+ bytes"):
        load_checkpoint(path)


def test_a_plain_checkpoint_is_unpickled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain nanoGPT checkpoint is unpickled once (no separate scan of its pickle before loading it)."""
    model = make_gpt(3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, path)
    calls = []
    real_load = torch.load

    def counting_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(
        torch.serialization,
        "get_unsafe_globals_in_checkpoint",
        lambda *a, **k: pytest.fail("the pickle was scanned before being loaded"),
    )
    assert_same_weights(load_checkpoint(path).state_dict, model)
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["fifo", "char_device", "directory_named_pt"])
def test_non_files_given_as_the_checkpoint_are_named(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "ckpt.pt"
        os.mkfifo(path)
        words = "is a FIFO"
    elif kind == "char_device":
        path = Path("/dev/zero")
        words = "is a character device"
    else:
        path = tmp_path / "ckpt.pt"
        path.mkdir()
        words = "No checkpoint in directory"
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(path)  # never opened: a FIFO would block, /dev/zero never ends
    assert "does not exist" not in str(info.value)
