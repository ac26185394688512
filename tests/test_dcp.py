"""``hfexport convert DCP_DIR``: ``torch.distributed.checkpoint`` directories (torchtitan's, Lightning's, any
``dcp.save``) converted with each tensor read through DCP's own reader, the metadata unpickled safely.

The checkpoints are written here with ``torch.distributed.checkpoint.save`` (one process, and 2 gloo processes of
``fully_shard`` through ``tests/dcp_workers.py``) and by a real Lightning ``Trainer`` with ``ModelParallelStrategy``.
Each conversion is compared with the conversion of the same weights from a ``.pt`` file (byte for byte) and loaded
with transformers (logits against the source model).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from exportkit import TINY, assert_reproduces, tiny_gpt
from llama_ref import make_llama
from torch.distributed.checkpoint.state_dict import get_state_dict

from hfexport import dcp as hf_dcp
from hfexport.cli import main
from hfexport.convert import convert_checkpoint, default_workers
from hfexport.errors import CheckpointError, UnsafeCheckpointError
from hfexport.sources import load_checkpoint

WORKERS = Path(__file__).parent / "dcp_workers.py"
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


# -- helpers ------------------------------------------------------------------------------------------------------
def save_dcp(state: dict[str, Any], directory: Path) -> Path:
    """``torch.distributed.checkpoint.save`` in this process (``no_dist``)."""
    dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    assert (directory / ".metadata").is_file()
    return directory


def trained_gpt() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tiny nanoGPT after one AdamW step: its optimizer holds state (exp_avg, exp_avg_sq) for every weight."""
    model = tiny_gpt(3).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    logits = model(ids[:, :-1])
    logits = logits[0] if isinstance(logits, tuple) else logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    opt.step()
    return model.eval(), opt


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def convert(source: Path, out: Path, *options: str) -> Path:
    """``hfexport convert`` in this process; asserts it succeeded."""
    assert main(["convert", str(source), "--output_dir", str(out), "--no_progress", *options]) == 0
    return out


def same_files(a: Path, b: Path, names: tuple[str, ...] = ("model.safetensors", "config.json")) -> None:
    """The weights and config of two exports are byte-identical (card and manifest name their sources)."""
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between {a.name} and {b.name}"


def run_worker(mode: str, out: Path, timeout: float = 240) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(WORKERS), mode, str(out)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def llama_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        return ref(tokens)


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float64).eval()
    with torch.no_grad():
        return hf(tokens).logits


# -- nanoGPT, one process -----------------------------------------------------------------------------------------
def test_nanogpt_dcp_converts_like_its_pt_checkpoint(tmp_path: Path) -> None:
    model, opt = trained_gpt()
    model_sd, optim_sd = get_state_dict(model, opt)
    ckpt = save_dcp({"model": model_sd, "optimizer": optim_sd, "step": 3}, tmp_path / "dcp")
    torch.save({"model": weights(model)}, tmp_path / "ckpt.pt")

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = ["--n_head", "4", "--dtype", "float32", "--no_tokenizer", "--no_progress"]
    done = subprocess.run(
        [sys.executable, "-m", "hfexport", "convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    convert(tmp_path / "ckpt.pt", tmp_path / "hf_pt", *args)
    same_files(tmp_path / "hf", tmp_path / "hf_pt")
    assert_reproduces(tmp_path / "hf", weights(model), torch.float32)
    manifest = json.loads((tmp_path / "hf" / "hfexport.json").read_text())
    assert manifest["layout"] == "dcp" and manifest["source"] == "dcp"

    # bfloat16, and the .metadata file naming its directory: the same bytes as from the .pt file.
    convert(ckpt / ".metadata", tmp_path / "bf16", "--n_head", "4", "--no_tokenizer")
    convert(tmp_path / "ckpt.pt", tmp_path / "bf16_pt", "--n_head", "4", "--no_tokenizer")
    same_files(tmp_path / "bf16", tmp_path / "bf16_pt")
    assert_reproduces(tmp_path / "bf16", weights(model), torch.bfloat16)


def test_each_model_tensor_is_read_on_demand_and_the_optimizer_never(tmp_path: Path, monkeypatch: Any) -> None:
    """Structural memory check: the reader is called per model tensor, only while the writer needs it (a few at a
    time, not the model), and never for the optimizer's state."""
    model, opt = trained_gpt()
    model_sd, optim_sd = get_state_dict(model, opt)
    ckpt = save_dcp({"model": model_sd, "optimizer": optim_sd}, tmp_path / "dcp")
    reads: list[str] = []
    live: set[int] = set()
    most = [0]
    real_read = hf_dcp.DCPCheckpoint.read

    def read(self: hf_dcp.DCPCheckpoint, key: str) -> torch.Tensor:
        tensor = real_read(self, key)
        reads.append(key)
        live.add(id(tensor))
        most[0] = max(most[0], len(live))
        weakref.finalize(tensor, live.discard, id(tensor))
        return tensor

    monkeypatch.setattr(hf_dcp.DCPCheckpoint, "read", read)
    loaded = load_checkpoint(ckpt)
    assert reads == [] and all(v.device.type == "meta" for v in loaded.state_dict.values())  # metadata only so far
    del loaded
    convert_checkpoint(ckpt, tmp_path / "hf", n_head=4, dtype="float32", tokenizer=False, progress=False)

    model_keys = {f"model.{k}" for k in model.state_dict()}
    assert not [k for k in reads if not k.startswith("model.")], "optimizer state was read"
    # Every weight once; the tied pair (wte, lm_head) is compared once more while planning.
    assert set(reads) == model_keys
    counts = {k: reads.count(k) for k in model_keys if reads.count(k) != 1}
    assert counts == {"model.transformer.wte.weight": 2, "model.lm_head.weight": 1} or counts == {
        "model.transformer.wte.weight": 2
    }
    # At most one tensor per producing thread (+ one whose last chunk is being written) was held at once, of 29:
    # the tie comparison too reads one tensor at a time.
    assert 1 <= most[0] <= default_workers() + 1 < len(model_keys)
    assert not live
    assert_reproduces(tmp_path / "hf", weights(model), torch.float32)


# -- multi-process and Lightning ----------------------------------------------------------------------------------
def test_fsdp2_checkpoint_of_two_ranks(tmp_path: Path) -> None:
    """2 gloo ranks under fully_shard each save their shards (a 65-row vocabulary: uneven); the conversion
    assembles each tensor from both ranks' chunks."""
    run_worker("fsdp2", tmp_path)
    ckpt = tmp_path / "dcp"
    tensors = hf_dcp.DCPCheckpoint(ckpt).tensors
    assert tensors["model.transformer.wte.weight"].chunks == 2  # saved sharded, one chunk per rank
    assert any(key.startswith("optimizer.") for key in tensors)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    torch.save(expected, tmp_path / "full.pt")
    convert(ckpt, tmp_path / "hf", "--n_head", "4", "--dtype", "float32", "--no_tokenizer")
    convert(tmp_path / "full.pt", tmp_path / "hf_pt", "--n_head", "4", "--dtype", "float32", "--no_tokenizer")
    same_files(tmp_path / "hf", tmp_path / "hf_pt")
    assert_reproduces(tmp_path / "hf", expected, torch.float32, vocab_size=65)


def test_lightning_model_parallel_checkpoint(tmp_path: Path) -> None:
    """A real Trainer with ModelParallelStrategy: weights under state_dict.model.*, optimizer_0, and meta.pt (the
    hyper-parameters give n_head, the step is recorded)."""
    run_worker("lightning", tmp_path)
    ckpt = tmp_path / "dcp"
    assert (ckpt / "meta.pt").is_file()
    assert any(key.startswith("optimizer_0.") for key in hf_dcp.DCPCheckpoint(ckpt).tensors)
    convert(ckpt, tmp_path / "hf", "--dtype", "float32", "--no_tokenizer")  # no --n_head: meta.pt has it
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    assert_reproduces(tmp_path / "hf", expected, torch.float32, vocab_size=65)
    manifest = json.loads((tmp_path / "hf" / "hfexport.json").read_text())
    assert manifest["step"] == 2 and manifest["layout"] == "lightning-dcp"
    torch.save({"model": expected}, tmp_path / "full.pt")
    convert(tmp_path / "full.pt", tmp_path / "hf_pt", "--n_head", "4", "--dtype", "float32", "--no_tokenizer")
    same_files(tmp_path / "hf", tmp_path / "hf_pt")


# -- torchtitan's Llama -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["top-level", "model-entry"])
def test_torchtitan_llama(tmp_path: Path, layout: str) -> None:
    """torchtitan's names (tok_embeddings, layers.N.attention.wq, feed_forward.w1, norm, output; its freqs_cis
    buffer), the model's tensors at the top level (torchtitan today) or under ``model`` (earlier releases), with the
    optimizer and train_state beside them. Facts from the options, or from params.json beside the directory."""
    model = make_llama(5, tie=False, n_heads=4, n_kv_heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    model_sd, optim_sd = get_state_dict(model, opt)
    model_sd = {k: v.detach().clone() for k, v in model_sd.items()}
    freqs_cis = torch.polar(torch.ones(16, 4), torch.arange(64.0).reshape(16, 4))  # a complex RoPE table
    extra = {"optimizer": optim_sd, "train_state": {"step": torch.tensor(40)}}
    if layout == "top-level":
        state = {**model_sd, "freqs_cis": freqs_cis, **extra}
        options = ["--n_head", "4", "--rope_theta", "10000", "--norm_eps", "1e-5"]
    else:
        state = {"model": {**model_sd, "freqs_cis": freqs_cis}, **extra}
        params = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, norm_eps=1e-5)
        (tmp_path / "params.json").write_text(json.dumps({**params, "rope_theta": 10000.0}))
        options = []
    ckpt = save_dcp(state, tmp_path / "step-40")
    convert(ckpt, tmp_path / "hf", "--dtype", "float32", "--no_tokenizer", *options)
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    diff = (hf_logits(tmp_path / "hf", tokens) - llama_logits(model.eval(), tokens)).abs().max().item()
    assert diff <= 1e-4, diff

    # The same weights saved as Meta's consolidated .pth convert to the same bytes.
    (tmp_path / "pt").mkdir()
    torch.save(weights(model), tmp_path / "pt" / "consolidated.00.pth")
    opts = options or ["--n_head", "4", "--rope_theta", "10000", "--norm_eps", "1e-5"]
    convert(tmp_path / "pt" / "consolidated.00.pth", tmp_path / "hf_pt", "--dtype", "float32", "--no_tokenizer", *opts)
    same_files(tmp_path / "hf", tmp_path / "hf_pt", ("model.safetensors",))


# -- refusals -----------------------------------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, call: Any, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", [os.system, eval], ids=["os.system", "eval"])
def test_malicious_metadata_is_refused_unexecuted(tmp_path: Path, capsys: Any, call: Any) -> None:
    model, _ = trained_gpt()
    ckpt = save_dcp({"model": weights(model)}, tmp_path / "dcp")
    marker = tmp_path / "ran"
    code = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w').close()"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_RunsCode(call, code)))
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "--n_head", "4"]) == 2
    err = capsys.readouterr().err
    assert "refers to" in err and ("system" in err or "eval" in err) and "nothing in it was executed" in err
    assert not marker.exists() and not (tmp_path / "hf").exists()
    with pytest.raises(UnsafeCheckpointError):
        hf_dcp.read_metadata(ckpt)

    # The same inside real metadata (a tensor's dtype replaced by the payload): refused all the same.
    ckpt2 = save_dcp({"model": weights(model)}, tmp_path / "dcp2")
    metadata = hf_dcp.read_metadata(ckpt2)
    next(iter(metadata.state_dict_metadata.values())).properties.dtype = _RunsCode(call, code)
    (ckpt2 / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(ckpt2)
    assert not marker.exists()


def test_bad_directories_are_refused_by_name(tmp_path: Path, capsys: Any) -> None:
    model, opt = trained_gpt()
    ckpt = save_dcp({"model": weights(model)}, tmp_path / "dcp")
    out = tmp_path / "hf"

    # No --n_head: the option is named, as for a .pt file.
    assert main(["convert", str(ckpt), "--output_dir", str(out)]) == 2
    assert "--n_head" in capsys.readouterr().err and not out.exists()

    # A data file missing: the tensor is named; nothing is published.
    for data in ckpt.glob("*.distcp"):
        data.rename(data.with_suffix(".gone"))
    assert main(["convert", str(ckpt), "--output_dir", str(out), "--n_head", "4"]) == 2
    err = capsys.readouterr().err
    assert "Cannot read model." in err and "distcp" in err and not out.exists()

    # Metadata pointing outside its directory.
    ckpt2 = save_dcp({"model": weights(model)}, tmp_path / "dcp2")
    metadata = hf_dcp.read_metadata(ckpt2)
    for info in metadata.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"
    (ckpt2 / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_checkpoint(ckpt2)

    # A tensor entry without a dtype (allowed classes, wrong contents).
    ckpt5 = save_dcp({"model": weights(model)}, tmp_path / "dcp5")
    metadata = hf_dcp.read_metadata(ckpt5)
    next(iter(metadata.state_dict_metadata.values())).properties.dtype = "float32"
    (ckpt5 / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="without a valid dtype"):
        load_checkpoint(ckpt5)

    # Truncated metadata.
    ckpt3 = save_dcp({"model": weights(model)}, tmp_path / "dcp3")
    raw = (ckpt3 / ".metadata").read_bytes()
    (ckpt3 / ".metadata").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(ckpt3)

    # The folder of several step directories (torchtitan's checkpoint/): they are named.
    (tmp_path / "runs").mkdir()
    save_dcp({"model": weights(model)}, tmp_path / "runs" / "step-10")
    save_dcp({"model": weights(model)}, tmp_path / "runs" / "step-20")
    with pytest.raises(CheckpointError, match=r"step-10, step-20.*pass one of them"):
        load_checkpoint(tmp_path / "runs")

    # Only optimizer state and unknown tensors: the entries are listed.
    ckpt4 = save_dcp({"optimizer": get_state_dict(model, opt)[1], "ema": {"w": torch.ones(3)}}, tmp_path / "dcp4")
    with pytest.raises(CheckpointError, match=r"No model weights found.*'ema'"):
        load_checkpoint(ckpt4)


def test_verify_compares_logits_with_the_dcp_checkpoint(tmp_path: Path, capsys: Any) -> None:
    model, _ = trained_gpt()
    ckpt = save_dcp({"model": weights(model)}, tmp_path / "dcp")
    convert(ckpt, tmp_path / "hf", "--n_head", "4", "--dtype", "float32", "--no_tokenizer")
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "hf"), "--checkpoint", str(ckpt), "--n_head", "4"]) == 0
    assert "max |logit diff|" in capsys.readouterr().out


def test_deferred_tensors_are_tied_only_when_equal() -> None:
    """Placeholders share no storage (meta tensors' data_ptr() is 0 for all); ties are told by the values."""
    from hfexport.families.base import DeferredTensor, is_tied, same_storage

    reads: list[str] = []

    def deferred(name: str, value: torch.Tensor) -> DeferredTensor:
        return DeferredTensor(value.shape, value.dtype, lambda: reads.append(name) or value.clone())

    w = torch.randn(40, 8)
    other = w.clone()
    other[39, 7] += 1
    a, b, c = deferred("a", w), deferred("b", w.clone()), deferred("c", other)
    assert not same_storage(a, b) and same_storage(a, a)
    assert is_tied(a, b) and not is_tied(a, c) and is_tied(a, a)
    assert not is_tied(a, deferred("d", w[:20])) and reads == ["a", "b", "a", "c"]  # shapes first: nothing read
