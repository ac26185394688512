"""convert_checkpoint end to end: real nanoGPT models → files → transformers, logits compared.

Every test builds a tiny nanoGPT (tests/nanogpt.py), saves it the way a producer does, converts it, and loads
the result with the real ``transformers``. Refusals must leave nothing behind: no output directory and no
hidden temporary sibling.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from nanogpt import make_gpt
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from hfexport import (
    CheckpointError,
    ConversionError,
    HFExportError,
    OutputExistsError,
    UnsafeCheckpointError,
    convert_checkpoint,
)

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def save_nanogpt(model: torch.nn.Module, path: Path, state_dict: dict | None = None) -> Path:
    """Save as nanoGPT's train.py does."""
    torch.save(
        {
            "model": model.state_dict() if state_dict is None else state_dict,
            "optimizer": {"state": {}, "param_groups": [{"lr": 6e-4, "params": [0]}]},
            "model_args": model.model_args(),
            "iter_num": 2000,
            "best_val_loss": torch.tensor(1.4697),
            "config": {"batch_size": 12, "learning_rate": 6e-4, "dataset": "shakespeare_char"},
        },
        path,
    )
    return path


# Both forward passes run in float64 (the float32 weights are exactly representable): the comparison then measures
# the conversion, not the order in which two different float32 code paths round. In float32 the two usually agree
# exactly, but a run of the suite once differed by 8.8e-5 in a few positions (kernel-level rounding), which is
# noise for what these tests are about.


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float64).eval()
    with torch.no_grad():
        return hf(ids).logits


def ref_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).double()(ids)


def token_ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(seed))


def leftovers(parent: Path, name: str) -> list[str]:
    """Hidden temporaries (``.NAME.tmp-*`` / ``.NAME.old-*``) next to an output directory."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def wrap_ddp_compile(model: torch.nn.Module, wrappers: str) -> dict[str, torch.Tensor]:
    """State dict with real wrapper prefixes: ``torch.compile`` (lazy: nothing is compiled) and DDP-style."""
    sd_model: torch.nn.Module = model
    if "compile" in wrappers:
        sd_model = torch.compile(sd_model)
    sd = sd_model.state_dict()
    if "ddp" in wrappers:  # DistributedDataParallel.state_dict() adds exactly this prefix
        sd = {f"module.{k}": v for k, v in sd.items()}
    return sd


# --- logits parity ---------------------------------------------------------------------------------------------

PARITY_CASES = {
    # name: (make_gpt overrides, wrappers, convert kwargs)
    "bias": ({"bias": True}, "", {}),
    "no_bias": ({"bias": False}, "", {}),
    "compiled": ({}, "compile", {}),
    "ddp": ({}, "ddp", {}),
    "ddp_compiled_stacked": ({"bias": False}, "ddp+compile", {}),
    "padded_50304_trimmed": ({"vocab_size": 50304}, "", {"vocab_size": 50257}),
    "padded_50304_kept": ({"vocab_size": 50304, "bias": False}, "compile", {}),
    "char_65": ({"vocab_size": 65}, "", {}),
    "trimmed_96_to_80": ({"vocab_size": 96}, "", {"vocab_size": 80}),
    "gelu_new": ({"activation": "gelu_new"}, "", {"activation": "gelu_new"}),
    "gelu_pytorch_tanh": ({"activation": "gelu_pytorch_tanh"}, "", {"activation": "gelu_pytorch_tanh"}),
    "untied": ({}, "", {"untie_embeddings": True}),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_logits_parity(tmp_path: Path, case: str) -> None:
    overrides, wrappers, kwargs = PARITY_CASES[case]
    model = make_gpt(3, **overrides)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt", wrap_ddp_compile(model, wrappers))
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", **kwargs)

    vocab = kwargs.get("vocab_size", model.config.vocab_size)
    ids = token_ids(vocab)
    got = hf_logits(out, ids)
    want = ref_logits(model, ids)[..., :vocab]
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-5

    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert config["vocab_size"] == vocab
    assert config["activation_function"] == kwargs.get("activation", "gelu")
    assert config["tie_word_embeddings"] is not kwargs.get("untie_embeddings", False)
    expected_eos = 50256 if vocab > 50256 else None
    assert config["bos_token_id"] == expected_eos
    assert config["eos_token_id"] == expected_eos
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert ("lm_head.weight" in names) is kwargs.get("untie_embeddings", False)
        assert not any(n.endswith((".attn.bias", ".attn.masked_bias")) for n in names)
        assert len(names) == 12 * model.config.n_layer + 4 + ("lm_head.weight" in names)


def test_wrong_activation_is_visible(tmp_path: Path) -> None:
    """The GELU choice matters: converting a tanh-GELU model as erf-GELU moves the logits."""
    model = make_gpt(3, activation="gelu_pytorch_tanh")
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", activation="gelu")
    ids = token_ids(96)
    assert float((hf_logits(out, ids) - ref_logits(model, ids)).abs().max()) > 1e-5


def test_untied_head_is_independent_copy(tmp_path: Path) -> None:
    model = make_gpt(4)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", untie_embeddings=True)
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    head, wte = hf.lm_head.weight, hf.transformer.wte.weight
    assert torch.equal(head, wte)
    assert head.data_ptr() != wte.data_ptr()  # untied in the loaded model: two parameters
    with torch.no_grad():
        wte.add_(1.0)
    assert not torch.equal(head, wte)


def test_model_trained_with_untied_head_keeps_its_head(tmp_path: Path) -> None:
    """A checkpoint whose lm_head differs from wte must not be silently re-tied."""
    model = make_gpt(5)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.5)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    ids = token_ids(96)
    assert float((hf_logits(out, ids) - ref_logits(model, ids)).abs().max()) <= 1e-5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_files_equal_cast_of_transposed_weights(tmp_path: Path, bias: bool, dtype: str) -> None:
    model = make_gpt(6, bias=bias, vocab_size=120)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt", wrap_ddp_compile(model, "compile"))
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype=dtype, vocab_size=100)
    target = getattr(torch, dtype)
    sd = model.state_dict()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        for name in names:
            got = f.get_tensor(name)
            assert got.dtype == target, name
            if name in sd:
                source = sd[name]
            else:  # bias=False: explicit zero biases
                assert not bias and name.endswith(".bias"), name
                source = torch.zeros(got.shape)
            if name.endswith(TRANSPOSED):
                source = source.t()
            if name == "transformer.wte.weight":
                source = source[:100]
            assert torch.equal(got, source.to(target)), name
        assert names >= {k for k in sd if k != "lm_head.weight"}
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == dtype
    assert config["torch_dtype"] == dtype
    manifest = json.loads((out / "hfexport.json").read_text())
    assert manifest["dtype"] == dtype
    assert manifest["step"] == 2000
    hf = AutoModelForCausalLM.from_pretrained(str(out))
    assert hf.dtype == target


# --- sharding and tokenizer ------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux-only")
def test_checkpoint_pages_are_given_back_as_they_are_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The padded 50304-row embedding (12.9 MB in float32) is mapped, written, then released: the log says how much."""
    model = make_gpt(22, vocab_size=50304, n_embd=64)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    with caplog.at_level(logging.DEBUG, logger="hfexport.convert"):
        out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", untie_embeddings=True)
    released = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Gave back")]
    assert len(released) == 1
    assert float(released[0].split()[2]) >= 12.0, released
    ids = token_ids(50304)
    assert float((hf_logits(out, ids) - ref_logits(model, ids)).abs().max()) <= 1e-5


def test_sharded_output_loads_with_equal_logits(tmp_path: Path) -> None:
    model = make_gpt(7, n_embd=64)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", max_shard_size="60KB")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 3
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    sizes = 0
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                assert index["weight_map"][key] == shard
                sizes += f.get_tensor(key).numel() * 4
    assert index["metadata"]["total_size"] == sizes
    ids = token_ids(96)
    assert float((hf_logits(out, ids) - ref_logits(model, ids)).abs().max()) <= 1e-5


@pytest.mark.parametrize("io", ["direct", "buffered"])
def test_small_chunks_and_parallel_workers_write_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, io: str
) -> None:
    """Tensors cut into many chunks (transposes by column ranges), three workers, direct I/O on or off: the files
    are byte for byte those of a conversion with the defaults, and load with the model's logits."""
    from hfexport import convert as convert_module
    from hfexport.convert import output_tensors, plan_conversion
    from hfexport.io import safetensors as safetensors_io
    from hfexport.sources import load_checkpoint

    model = make_gpt(21, bias=False, vocab_size=120)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    reference = convert_checkpoint(ckpt, tmp_path / "reference", dtype="float32", vocab_size=100)

    monkeypatch.delenv("HFEXPORT_DIRECT_IO", raising=False)
    monkeypatch.setattr(safetensors_io, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(safetensors_io, "WHOLE_MAX", 3000)
    monkeypatch.setattr(convert_module, "default_workers", lambda: 3)
    loaded = load_checkpoint(ckpt)
    outputs = output_tensors(plan_conversion(loaded.state_dict, loaded.facts, vocab_size=100), torch.float32)
    pieces = {o.name: len(safetensors_io._chunks(o, 0)) for o in outputs}
    assert pieces["transformer.h.0.mlp.c_fc.weight"] > 4 and pieces["transformer.wte.weight"] > 4
    out = convert_checkpoint(ckpt, tmp_path / "chunked", dtype="float32", vocab_size=100, io=io)

    for name in ("model.safetensors", "config.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    files = json.loads((out / "hfexport.json").read_text())["files"]
    assert (
        files["model.safetensors"]
        == json.loads((reference / "hfexport.json").read_text())["files"]["model.safetensors"]
    )
    ids = token_ids(100)
    assert float((hf_logits(out, ids) - ref_logits(model, ids)[..., :100]).abs().max()) <= 1e-5


def make_tokenizer_dir(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # Shakespeare-char, 65
    assert len(chars) == 65
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.save_pretrained(str(path))
    return path


def test_tokenizer_path_is_copied(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok_dir = make_tokenizer_dir(tmp_path / "tok")
    expected = AutoTokenizer.from_pretrained(str(tok_dir))("To be, or not")["input_ids"]
    model = make_gpt(8, vocab_size=65)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", tokenizer=tok_dir)
    assert (out / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(str(out))
    ids = loaded("To be, or not")["input_ids"]
    assert ids == expected
    assert len(ids) == len("To be, or not")
    manifest = json.loads((out / "hfexport.json").read_text())
    assert "tokenizer.json" in manifest["files"]
    # The model files are the model's, not the tokenizer directory's.
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 65
    logits = hf_logits(out, torch.tensor([ids]))
    assert float((logits - ref_logits(model, torch.tensor([ids]))).abs().max()) <= 1e-5


# --- refusals --------------------------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _good(tmp: Path, **over: object) -> Path:
    return save_nanogpt(make_gpt(0, **over), tmp / "ckpt.pt")


def _with_state(tmp: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    model = make_gpt(0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    edit(sd)
    return save_nanogpt(model, tmp / "ckpt.pt", sd)


def _nan(sd: dict) -> None:
    sd["transformer.h.1.mlp.c_fc.weight"][3, 5] = math.nan


def _big(sd: dict) -> None:
    sd["transformer.h.0.attn.c_proj.weight"][0, 0] = 1e6


def _missing(sd: dict) -> None:
    del sd["transformer.h.1.ln_2.weight"]


def _empty(tmp: Path) -> Path:
    (tmp / "ckpt.pt").write_bytes(b"")
    return tmp / "ckpt.pt"


def _random(tmp: Path) -> Path:
    (tmp / "ckpt.pt").write_bytes(os.urandom(4096))  # different bytes each run: any content must be refused cleanly
    return tmp / "ckpt.pt"


def _truncated(tmp: Path) -> Path:
    path = _good(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _code(tmp: Path) -> Path:
    torch.save({"model": make_gpt(0).state_dict(), "evil": _RunsCode(tmp / "MARKER")}, tmp / "ckpt.pt")
    return tmp / "ckpt.pt"


def _not_gpt(tmp: Path) -> Path:
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).state_dict(), tmp / "ckpt.pt")
    return tmp / "ckpt.pt"


REFUSALS = {
    # name: (make checkpoint, convert kwargs, error class, words the message must contain)
    "empty": (_empty, {}, CheckpointError, ["empty"]),
    "random_bytes": (_random, {}, CheckpointError, ["not a readable"]),
    "truncated": (_truncated, {}, CheckpointError, ["truncated"]),
    "code_pickle": (_code, {}, UnsafeCheckpointError, ["system", "nothing"]),
    "not_gpt": (_not_gpt, {}, CheckpointError, ["Not a supported model", "0.weight"]),
    "missing_tensor": (lambda t: _with_state(t, _missing), {}, ConversionError, ["transformer.h.1.ln_2.weight"]),
    "nan": (lambda t: _with_state(t, _nan), {}, ConversionError, ["transformer.h.1.mlp.c_fc.weight", "NaN"]),
    "fp16_overflow": (
        lambda t: _with_state(t, _big),
        {"dtype": "float16"},
        ConversionError,
        ["transformer.h.0.attn.c_proj.weight", "65504", "bfloat16"],
    ),
    "bad_dtype": (_good, {"dtype": "int8"}, ConversionError, ["int8", "bfloat16"]),
    "oversized_vocab": (_good, {"vocab_size": 97}, ConversionError, ["97", "96"]),
    "bad_activation": (_good, {"activation": "relu"}, ConversionError, ["relu", "gelu_new"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_leave_nothing(tmp_path: Path, case: str) -> None:
    make, kwargs, error, words = REFUSALS[case]
    src = tmp_path / "src"
    src.mkdir()
    ckpt = make(src)
    out_parent = tmp_path / "exports"
    out_parent.mkdir()
    with pytest.raises(error) as info:
        convert_checkpoint(ckpt, out_parent / "hf", **{"dtype": "float32", **kwargs})
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert not (out_parent / "hf").exists()
    assert leftovers(out_parent, "hf") == []
    assert list(out_parent.iterdir()) == []
    assert not (src / "MARKER").exists()  # nothing in the file was executed


def test_nan_allowed_when_asked(tmp_path: Path) -> None:
    ckpt = _with_state(tmp_path, _nan)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", allow_nonfinite=True)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        tensor = f.get_tensor("transformer.h.1.mlp.c_fc.weight")
    assert int(torch.isnan(tensor).sum()) == 1
    assert bool(torch.isnan(tensor[5, 3]))  # transposed position


def test_fp16_overflow_is_fine_in_bfloat16(tmp_path: Path) -> None:
    ckpt = _with_state(tmp_path, _big)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="bfloat16")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert float(f.get_tensor("transformer.h.0.attn.c_proj.weight")[0, 0]) == pytest.approx(1e6, rel=1e-2)


def test_busy_output_dir_refused_then_forced(tmp_path: Path) -> None:
    model = make_gpt(9)
    ckpt = save_nanogpt(model, tmp_path / "ckpt.pt")
    out = tmp_path / "exports" / "hf"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous work")
    with pytest.raises(OutputExistsError, match=r"Pass force=True .* or choose another output_dir\."):  # the API's
        convert_checkpoint(ckpt, out, dtype="float32")
    with pytest.raises(OutputExistsError, match=r"only replaces a directory that hfexport wrote.*no hfexport\.json"):
        convert_checkpoint(ckpt, out, dtype="float32", force=True)  # not an export: never replaced
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert leftovers(out.parent, "hf") == []

    (out / "old.txt").unlink()
    convert_checkpoint(save_nanogpt(make_gpt(8), tmp_path / "older.pt"), out, dtype="float32")  # an earlier export
    convert_checkpoint(ckpt, out, dtype="float32", force=True)
    assert (out / "model.safetensors").is_file()
    assert leftovers(out.parent, "hf") == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["hf"]
    ids = token_ids(96)
    assert float((hf_logits(out, ids) - ref_logits(model, ids)).abs().max()) <= 1e-5


def test_empty_existing_output_dir_is_used(tmp_path: Path) -> None:
    ckpt = _good(tmp_path)
    (tmp_path / "hf").mkdir()
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    assert (out / "model.safetensors").is_file()


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    ckpt = _good(tmp_path)
    target = tmp_path / "out"
    target.write_text("not a directory")
    with pytest.raises(OutputExistsError, match="is a file"):
        convert_checkpoint(ckpt, target, dtype="float32", force=True)
    assert target.read_text() == "not a directory"
    assert leftovers(tmp_path, "out") == []


def test_errors_are_hfexport_errors_and_builtins(tmp_path: Path) -> None:
    """Callers can catch the builtin (ValueError / FileExistsError) or HFExportError."""
    with pytest.raises(ValueError):
        convert_checkpoint(_empty(tmp_path), tmp_path / "hf")
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(FileExistsError):
        convert_checkpoint(_good(tmp_path), target)
    with pytest.raises(HFExportError):
        convert_checkpoint(tmp_path / "does_not_exist.pt", tmp_path / "hf")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_finiteness_check_fast_path_is_exact(dtype: torch.dtype) -> None:
    """The check sums first: a sum that overflows from finite values must not be taken for a NaN/inf."""
    from hfexport.convert import check_finite

    big = torch.full((1000,), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not bool(torch.isfinite(big.sum()))  # the sum overflows ...
    assert check_finite("w", big, dtype, False) is big  # ... yet every value is finite
    for bad in (math.nan, math.inf, -math.inf):
        t = big.clone()
        t[500] = bad
        with pytest.raises(ConversionError, match=r"^w (holds|has)"):
            check_finite("w", t, dtype, False)
        small = torch.zeros(10, dtype=dtype)
        small[3] = bad
        with pytest.raises(ConversionError):
            check_finite("w", small, dtype, False)


def test_force_in_python_follows_the_same_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """convert_checkpoint(force=True) never replaces the checkpoint's directory, the working directory or a user's."""
    from hfexport.errors import OutputPathError

    run = tmp_path / "run"
    run.mkdir()
    ckpt = save_nanogpt(make_gpt(9), run / "ckpt.pt")
    (run / "train.log").write_text("step 1000 loss 2.1")
    before = sorted((p.name, p.read_bytes()) for p in run.iterdir())
    with pytest.raises(OutputPathError, match="being read"):
        convert_checkpoint(ckpt, run, dtype="float32", force=True)
    monkeypatch.chdir(run)
    for output_dir in ("", ".", run):
        with pytest.raises(OutputPathError):
            convert_checkpoint(ckpt, output_dir, dtype="float32", force=True)
    assert sorted((p.name, p.read_bytes()) for p in run.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_failed_conversion_removes_only_the_parents_it_created(tmp_path: Path) -> None:
    ckpt = _with_state(tmp_path, _nan)
    (tmp_path / "exports").mkdir()
    with pytest.raises(ConversionError, match="NaN"):
        convert_checkpoint(ckpt, tmp_path / "exports" / "run1" / "step_1" / "hf", dtype="float32")
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_bad_io_mode_is_refused_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="Invalid io 'fast': choose one of auto, buffered, direct"):
        convert_checkpoint(tmp_path / "not-read.pt", tmp_path / "hf", io="fast")
    assert list(tmp_path.iterdir()) == []


def test_write_export_writes_the_tokenizer_its_caller_resolved(tmp_path: Path) -> None:
    """write_export resolves no tokenizer (issue 19 §4): it writes the one it is handed (export_tokenizer's, the
    resolution every entry point uses) or none, and refuses a spec instead of reading it."""
    from hfexport import plan_conversion
    from hfexport.convert import export_tokenizer, write_export
    from hfexport.families import ModelFacts

    plan = plan_conversion(dict(make_gpt(0, vocab_size=50304).state_dict()), ModelFacts(n_head=4))
    tokenizer = export_tokenizer(plan)  # GPT-2's BPE, inferred by the GPT-2 family from 50304 rows
    assert tokenizer is not None and tokenizer.inferred and tokenizer.eos_token_id == 50256
    out = write_export(plan, tmp_path / "with", dtype=torch.float32, tokenizer=tokenizer, progress=False).path
    assert (out / "tokenizer.json").read_bytes() == tokenizer.files["tokenizer.json"]
    assert json.loads((out / "hfexport.json").read_text())["inferred"]["tokenizer"] == tokenizer.inferred
    out = write_export(plan, tmp_path / "without", dtype=torch.float32, progress=False).path
    assert not (out / "tokenizer.json").exists()  # nothing handed, nothing looked for
    assert json.loads((out / "hfexport.json").read_text())["tokenizer"] is None
    with pytest.raises(TypeError, match="export_tokenizer"):
        write_export(plan, tmp_path / "spec", dtype=torch.float32, tokenizer="gpt2", progress=False)
    assert not (tmp_path / "spec").exists()
