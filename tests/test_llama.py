"""Llama-style sources → ``LlamaForCausalLM``: llama2.c, Meta's ``consolidated.00.pth`` + ``params.json``, litgpt,
live modules (export_hf, HFExporter, a Lightning Trainer) and ``hfexport verify``.

Parity is measured against the reference models of ``llama_ref.py`` (Meta's names and interleaved RoPE; litgpt's
names and halves), in float64 on both sides, through ``AutoModelForCausalLM``. The expected file contents apply the
RoPE permutation written out here, and the wrong permutations at the end show that the parity check catches them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from exportkit import read_safetensors, step_dirs
from llama_ref import LITGPT_CONFIG, ModelArgs, Transformer, llama2c_model_args, make_litllama, make_llama

from hfexport import CheckpointError, ConversionError, HFExporter, convert_checkpoint, export_hf, verify_directory
from hfexport.cli import main
from hfexport.families import ModelFacts, TensorPlan, detect
from hfexport.verify import logits_difference

GQA = dict(n_heads=4, n_kv_heads=2)
MHA = dict(n_heads=4, n_kv_heads=None)


# -- helpers ------------------------------------------------------------------------------------------------------
def ids(vocab: int = 64, length: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(1))


def ref_logits(model: torch.nn.Module, tokens: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference model's logits with its weights rounded to ``dtype``, computed in float64."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype).to(p.dtype))
    ref.double()
    with torch.no_grad():
        return ref(tokens)


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float64).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        return hf(tokens).logits


def assert_parity(directory: Path, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """``directory`` loads as a LlamaForCausalLM with the model's logits (max |diff| <= 1e-4)."""
    tokens = ids(model.tok_embeddings.weight.shape[0] if hasattr(model, "tok_embeddings") else 64)
    diff = (hf_logits(directory, tokens) - ref_logits(model, tokens, dtype)).abs().max().item()
    assert diff <= 1e-4, f"{directory.name}: max |logit diff| {diff}"
    return diff


def interleaved_to_halves(w: torch.Tensor, n: int) -> torch.Tensor:
    """The permutation of transformers' convert_llama_weights_to_hf.py, written out."""
    return w.view(n, w.shape[0] // n // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def expected_tensors(model: Transformer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What a Meta-named model's export must hold, by hand."""
    a = model.params
    n_kv = a.n_kv_heads or a.n_heads
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"]}
    if sd["output.weight"].data_ptr() != sd["tok_embeddings.weight"].data_ptr():
        out["lm_head.weight"] = sd["output.weight"]
    for i in range(a.n_layers):
        p, o = f"layers.{i}.", f"model.layers.{i}."
        out[o + "self_attn.q_proj.weight"] = interleaved_to_halves(sd[p + "attention.wq.weight"], a.n_heads)
        out[o + "self_attn.k_proj.weight"] = interleaved_to_halves(sd[p + "attention.wk.weight"], n_kv)
        out[o + "self_attn.v_proj.weight"] = sd[p + "attention.wv.weight"]
        out[o + "self_attn.o_proj.weight"] = sd[p + "attention.wo.weight"]
        out[o + "mlp.gate_proj.weight"] = sd[p + "feed_forward.w1.weight"]
        out[o + "mlp.up_proj.weight"] = sd[p + "feed_forward.w3.weight"]
        out[o + "mlp.down_proj.weight"] = sd[p + "feed_forward.w2.weight"]
        out[o + "input_layernorm.weight"] = sd[p + "attention_norm.weight"]
        out[o + "post_attention_layernorm.weight"] = sd[p + "ffn_norm.weight"]
    return {k: v.to(dtype) for k, v in out.items()}


def save_llama2c(model: Transformer, path: Path, step: int = 7) -> Path:
    """A checkpoint as llama2.c's train.py writes it."""
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": {},
            "model_args": llama2c_model_args(model.params),
            "iter_num": step,
            "best_val_loss": torch.tensor(2.5),
            "config": {"batch_size": 8, "learning_rate": 5e-4},
        },
        path,
    )
    return path


def save_meta(model: Transformer, folder: Path, **params: Any) -> Path:
    """Meta's release layout: consolidated.00.pth (a bare state dict, with Llama 2's rope.freqs) + params.json."""
    folder.mkdir(parents=True, exist_ok=True)
    a = model.params
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["rope.freqs"] = model.freqs.float()
    torch.save(sd, folder / "consolidated.00.pth")
    record = dict(
        dim=a.dim,
        n_layers=a.n_layers,
        n_heads=a.n_heads,
        n_kv_heads=a.n_kv_heads,
        vocab_size=a.vocab_size,
        multiple_of=a.multiple_of,
        ffn_dim_multiplier=None,
        norm_eps=a.norm_eps,
        rope_theta=a.rope_theta,
    )
    record.update(params)
    (folder / "params.json").write_text(json.dumps(record))
    return folder / "consolidated.00.pth"


def save_litgpt(model: torch.nn.Module, folder: Path, *, training_state: bool = False, **config: Any) -> Path:
    """litgpt's ``lit_model.pth`` (a bare state dict, or pretrain's ``fabric.save`` state) + ``model_config.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    state = {"model": sd, "optimizer": {}, "iter_num": 40, "step_count": 10} if training_state else sd
    torch.save(state, folder / "lit_model.pth")
    (folder / "model_config.yaml").write_text(yaml.safe_dump({**model.config, **config}))
    return folder / "lit_model.pth"


# -- llama2.c and Meta checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [GQA, MHA], ids=["gqa", "mha"])
def test_llama2c_checkpoint_converts_with_parity(tmp_path: Path, heads: dict) -> None:
    model = make_llama(0, **heads)
    out = convert_checkpoint(save_llama2c(model, tmp_path / "ckpt.pt"), tmp_path / "hf", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == (heads["n_kv_heads"] or 4)
    assert config["hidden_act"] == "silu" and config["attention_bias"] is False
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 10000.0  # llama2.c's code defaults
    assert config["tie_word_embeddings"] is True and config["max_position_embeddings"] == 16
    assert config["intermediate_size"] == 96  # from w1's shape
    files = read_safetensors(out)
    assert "lm_head.weight" not in files  # tied, as llama2.c trains it
    want = expected_tensors(model, torch.float32)
    assert set(files) == set(want) and all(torch.equal(files[k], want[k]) for k in want)
    assert_parity(out, model)
    card = (out / "README.md").read_text()
    assert "- llama\n" in card and "Llama-style" in card and "llama2.c" in card
    assert json.loads((out / "hfexport.json").read_text())["architecture"] == "llama"


def test_bf16_files_are_the_exact_cast(tmp_path: Path) -> None:
    model = make_llama(1, **GQA)
    out = convert_checkpoint(save_llama2c(model, tmp_path / "ckpt.pt"), tmp_path / "hf")  # bfloat16 by default
    files = read_safetensors(out)
    want = expected_tensors(model, torch.bfloat16)
    assert set(files) == set(want)
    for name, tensor in want.items():
        assert files[name].dtype == torch.bfloat16 and torch.equal(files[name], tensor), name
    assert_parity(out, model, torch.bfloat16)


@pytest.mark.parametrize("heads", [GQA, MHA], ids=["gqa", "mha"])
def test_meta_consolidated_with_params_json(tmp_path: Path, heads: dict) -> None:
    model = make_llama(2, tie=False, rope_theta=500000.0, norm_eps=1e-6, **heads)
    ckpt = save_meta(model, tmp_path / "Llama-tiny")
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "--dtype", "float32", "-q"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_theta"] == 500000.0 and config["rms_norm_eps"] == 1e-6
    assert config["tie_word_embeddings"] is False and config["rope_scaling"] is None
    assert config["max_position_embeddings"] == 8192  # Llama 3 (theta 500000) without a recorded length
    assert "lm_head.weight" in read_safetensors(tmp_path / "hf")
    assert_parity(tmp_path / "hf", model)


@pytest.mark.parametrize("recorded", [True, False], ids=["in-params-json", "from-option"])
def test_meta_llama31_scaled_rope(tmp_path: Path, recorded: bool) -> None:
    model = make_llama(3, tie=False, rope_theta=500000.0, use_scaled_rope=True, rope_scaling_factor=32.0, **GQA)
    extra = {"rope_scaling_factor": 32.0} if recorded else {}
    ckpt = save_meta(model, tmp_path / "m", use_scaled_rope=True, **extra)
    if not recorded:
        with pytest.raises(ConversionError, match="--rope_scaling_factor"):
            convert_checkpoint(ckpt, tmp_path / "refused", dtype="float32")
        assert not (tmp_path / "refused").exists()
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", rope_scaling_factor=None if recorded else 32)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert_parity(out, model)
    # The scaling matters: the same weights without it do not reproduce the model.
    plain = make_llama(3, tie=False, rope_theta=500000.0, **GQA)
    with pytest.raises(AssertionError, match="logit diff"):
        assert_parity(out, plain)


def test_model_card_tags_llama_and_names_the_base_model(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    ckpt = save_meta(make_llama(2, tie=False, **GQA), tmp_path / "m")
    args = ["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "--base_model", "meta-llama/Llama-3.2-1B"]
    assert main([*args, "--model_name", "my-llama", "-q"]) == 0
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.tags[0] == "llama" and card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert "| activation | silu |" in card.text and "consolidated.00.pth (meta)" in card.text
    plain = ModelCard.load(convert_checkpoint(ckpt, tmp_path / "plain") / "README.md")
    assert plain.data.base_model is None  # never guessed


def test_missing_facts_are_refused_naming_the_options(tmp_path: Path) -> None:
    model = make_llama(4, **GQA)
    torch.save(model.state_dict(), tmp_path / "weights.pt")  # no config anywhere
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(tmp_path / "weights.pt", tmp_path / "hf")
    message = str(info.value)
    assert "--n_head" in message and "--rope_theta" in message and "--norm_eps" in message
    assert main(["convert", str(tmp_path / "weights.pt"), "--output_dir", str(tmp_path / "x"), "--n_head", "4"]) == 2
    out = convert_checkpoint(
        tmp_path / "weights.pt", tmp_path / "hf", dtype="float32", n_head=4, rope_theta=10000, norm_eps=1e-5
    )
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 2  # from wk's shape
    assert_parity(out, model)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path: Path, prefix: str) -> None:
    model = make_llama(4, **GQA)
    sd = {prefix + k: v for k, v in model.state_dict().items()}  # saved from a DDP / compiled module
    torch.save({"model": sd, "model_args": llama2c_model_args(model.params), "iter_num": 3}, tmp_path / "c.pt")
    assert_parity(convert_checkpoint(tmp_path / "c.pt", tmp_path / "hf", dtype="float32"), model)


def test_dtype_rules_as_for_gpt2(tmp_path: Path) -> None:
    model = make_llama(5, **GQA)
    with torch.no_grad():
        model.layers[1].feed_forward.w2.weight[0, 0] = 1e6
    ckpt = save_llama2c(model, tmp_path / "big.pt")
    with pytest.raises(ConversionError, match=r"beyond float16.s range.*bfloat16"):
        convert_checkpoint(ckpt, tmp_path / "fp16", dtype="float16")
    with torch.no_grad():
        model.layers[0].attention.wq.weight[3, 1] = float("nan")
    with pytest.raises(ConversionError, match="non-finite"):
        convert_checkpoint(save_llama2c(model, tmp_path / "nan.pt"), tmp_path / "nan")
    assert not (tmp_path / "fp16").exists() and not (tmp_path / "nan").exists()


def test_sharded_export_and_vocab_trim(tmp_path: Path) -> None:
    model = make_llama(6, **GQA)
    out = convert_checkpoint(
        save_llama2c(model, tmp_path / "c.pt"), tmp_path / "hf", dtype="float32", max_shard_size="20KB", vocab_size=60
    )
    assert len(list(out.glob("model-*.safetensors"))) > 1 and verify_directory(out).ok
    tokens = ids(60)
    diff = (hf_logits(out, tokens) - ref_logits(model, tokens)[..., :60]).abs().max().item()
    assert diff <= 1e-4


FACTS = dict(n_head=4, rope_theta=1e4, layer_norm_epsilon=1e-5)


@pytest.mark.parametrize(
    ("edit", "facts", "words"),
    [
        (
            lambda sd: sd.update({"layers.1.feed_forward.w2.weight": torch.zeros(32, 90)}),
            FACTS,
            "model.layers.1.mlp.down_proj.weight has shape (32, 90), expected (32, 96)",  # check_plan, per key
        ),
        (
            lambda sd: sd.update({"layers.0.attention.wk.weight": torch.zeros(8, 32)}),
            {**FACTS, "n_kv_heads": 2},
            "layers.0.attention.wk.weight has shape (8, 32), expected (16, 32) for n_kv_heads=2",
        ),
        (lambda sd: None, {**FACTS, "n_kv_heads": 3}, "n_kv_heads=3 does not divide n_heads=4"),
        (lambda sd: None, {**FACTS, "n_head": 5}, "n_heads=5 does not divide dim=32"),
        (lambda sd: None, {**FACTS, "n_head": 4.0}, "n_heads=4.0 (float) is not a positive integer"),
        (lambda sd: None, {**FACTS, "n_kv_heads": "2"}, "n_kv_heads='2' (str) is not a positive integer"),
        (lambda sd: sd.pop("layers.1.ffn_norm.weight"), FACTS, "Missing tensor 'layers.1.ffn_norm.weight'"),
        (lambda sd: sd.update({"layers.0.attention.wq.bias": torch.zeros(32)}), FACTS, "layers.0.attention.wq.bias"),
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("layers.0.")],
            FACTS,
            "Layer indices are not contiguous: found [1]",
        ),
    ],
)
def test_bad_llama_state_dicts_are_refused_by_name(edit: Any, facts: dict, words: str) -> None:
    from hfexport import plan_conversion

    sd = dict(make_llama(0, **GQA).state_dict())
    edit(sd)
    with pytest.raises(ConversionError) as info:
        plan_conversion(sd, ModelFacts(**facts), architecture="llama")
    assert words in str(info.value)


def test_expected_shapes_follow_the_config() -> None:
    from hfexport import plan_conversion
    from hfexport.families import get

    plan = plan_conversion(make_llama(0, **GQA).state_dict(), ModelFacts(**FACTS))
    shapes = get("llama").expected_shapes(plan.config)
    assert shapes == {tp.name: tuple(tp.shape) for tp in plan.tensors}
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (16, 32)  # 2 KV heads of 8
    assert "lm_head.weight" not in shapes  # tied
    assert get("llama").expected_shapes({**plan.config, "tie_word_embeddings": False})["lm_head.weight"] == (64, 32)
    with pytest.raises(ConversionError, match="num_key_value_heads='2'"):
        get("llama").expected_shapes({**plan.config, "num_key_value_heads": "2"})


def test_unknown_layout_lists_the_families() -> None:
    with pytest.raises(CheckpointError) as info:
        detect({"embed.weight", "blocks.0.attn.weight"})
    message = str(info.value)
    for words in ("gpt2:", "transformer.wpe.weight", "llama:", "attention.wq.weight", "litgpt-llama:", "attn.qkv"):
        assert words in message


def test_model_parallel_shards_are_refused(tmp_path: Path) -> None:
    ckpt = save_meta(make_llama(0, **GQA), tmp_path / "m")
    torch.save({}, tmp_path / "m" / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match="2 model-parallel shards"):
        convert_checkpoint(ckpt, tmp_path / "hf")


@pytest.mark.parametrize(("start", "stop"), [(0, 32), (0, 5), (3, 17), (16, 32), (31, 32), (7, 7)])
def test_rope_permutation_by_row_ranges(start: int, stop: int) -> None:
    w = torch.randn(32, 6)
    plan = TensorPlan("k", w, (32, 6), rope_heads=4)
    out = torch.empty(stop - start, 6, dtype=torch.bfloat16)
    plan.fill(out, start, stop)
    assert torch.equal(out, interleaved_to_halves(w, 4)[start:stop].to(torch.bfloat16))
    assert torch.equal(plan.materialize(torch.float32), interleaved_to_halves(w, 4))


# -- litgpt -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training_state", [False, True], ids=["state-dict", "pretrain-state"])
def test_litgpt_checkpoint_converts_with_parity(tmp_path: Path, training_state: bool) -> None:
    model = make_litllama(0)
    ckpt = save_litgpt(model, tmp_path / "final", training_state=training_state)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2 and config["head_dim"] == 8
    assert config["tie_word_embeddings"] is False and config["intermediate_size"] == 88
    files = read_safetensors(out)
    qkv = model.state_dict()["transformer.h.1.attn.qkv.weight"]
    assert torch.equal(files["model.layers.1.self_attn.q_proj.weight"], qkv[:32])  # no permutation: halves already
    assert torch.equal(files["model.layers.1.self_attn.k_proj.weight"], qkv[32:48])
    assert torch.equal(files["model.layers.1.self_attn.v_proj.weight"], qkv[48:])
    tokens = ids()
    diff = (hf_logits(out, tokens) - ref_logits(model, tokens)).abs().max().item()
    assert diff <= 1e-4
    assert "tiny-llama-test" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"norm_class_name": "LayerNorm"}, "norm_class_name='LayerNorm'"),
        ({"mlp_class_name": "GptNeoxMLP"}, "mlp_class_name='GptNeoxMLP'"),
        ({"rotary_percentage": 0.25}, "rotary_percentage=0.25"),
        ({"parallel_residual": True}, "parallel_residual=True"),
    ],
)
def test_litgpt_non_llama_configs_are_refused_by_name(tmp_path: Path, config: dict, words: str) -> None:
    ckpt = save_litgpt(make_litllama(0), tmp_path / "final", name="pythia-ish", **config)
    with pytest.raises(ConversionError, match="not Llama-shaped") as info:
        convert_checkpoint(ckpt, tmp_path / "hf")
    assert words in str(info.value) and "pythia-ish" in str(info.value)


def test_litgpt_legacy_fused_attn_is_refused_by_name(tmp_path: Path) -> None:
    model = make_litllama(0)
    sd = {k.replace("attn.qkv.", "attn.attn."): v for k, v in model.state_dict().items()}
    (tmp_path / "old").mkdir()
    torch.save(sd, tmp_path / "old" / "lit_model.pth")
    (tmp_path / "old" / "model_config.yaml").write_text(yaml.safe_dump(LITGPT_CONFIG))
    with pytest.raises(ConversionError, match=r"older fused `attn\.attn`"):
        convert_checkpoint(tmp_path / "old" / "lit_model.pth", tmp_path / "hf")


# -- live models --------------------------------------------------------------------------------------------------
def test_export_hf_live_module_params_and_compile(tmp_path: Path) -> None:
    model = make_llama(7, **GQA)
    path = export_hf(torch.compile(model), 3, tmp_path / "exports", dtype="float32")  # `_orig_mod.` names
    assert path == tmp_path / "exports" / "step_000003"
    assert_parity(path, model)
    assert verify_directory(path).ok


def test_export_hf_live_litgpt_module(tmp_path: Path) -> None:
    model = make_litllama(3)  # litgpt's GPT keeps its Config as `config`
    path = export_hf(model, 5, tmp_path / "exports", dtype="float32")
    tokens = ids()
    assert (hf_logits(path, tokens) - ref_logits(model, tokens)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("attribute", ["args", "model_args"])
def test_live_module_with_args_instead_of_params(tmp_path: Path, attribute: str) -> None:
    model = make_llama(8, **GQA)
    setattr(model, attribute, model.params)  # torchtitan keeps its ModelArgs as `model_args`
    del model.params
    # torchtitan's RoPE table is a persistent complex buffer: in the state dict, not a weight.
    model.register_buffer("freqs_cis", torch.polar(torch.ones(16, 4), torch.rand(16, 4)), persistent=True)
    assert "freqs_cis" in model.state_dict()
    assert_parity(export_hf(model, 1, tmp_path / "e", dtype="float32"), make_llama(8, **GQA))


def test_live_module_without_params_needs_config(tmp_path: Path) -> None:
    model = make_llama(8, **GQA)
    del model.params
    with pytest.raises(ConversionError, match="config="):
        export_hf(model, 1, tmp_path / "a")
    path = export_hf(
        model, 1, tmp_path / "b", dtype="float32", config={"n_heads": 4, "norm_eps": 1e-5, "rope_theta": 1e4}
    )
    assert_parity(path, make_llama(8, **GQA))


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    batch = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(step))
    logits = model(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), batch[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_hfexporter_exports_each_steps_weights(tmp_path: Path) -> None:
    model = make_llama(9, **GQA).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    snapshots: dict[int, Transformer] = {}
    with HFExporter(tmp_path / "exports", every_n_steps=2, dtype="float32") as exporter:
        for step in range(1, 6):
            _train_step(model, opt, step)
            if exporter.maybe_export(model, step) is not None:
                import copy

                snapshots[step] = copy.deepcopy(model).eval()
    assert step_dirs(tmp_path / "exports") == ["step_000002", "step_000004"]
    for step, weights in snapshots.items():
        assert_parity(tmp_path / "exports" / f"step_{step:06d}", weights)
    assert not torch.equal(snapshots[2].layers[0].attention.wq.weight, snapshots[4].layers[0].attention.wq.weight)


def test_lightning_trainer_exports_a_llama_every_n_steps(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from hfexport.lightning import HFExportCallback

    class LitLlamaModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_llama(10, **GQA).train()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            tokens = batch[0]
            logits = self.model(tokens[:, :-1])
            return torch.nn.functional.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    data = torch.randint(0, 64, (8, 9), generator=torch.Generator().manual_seed(0))
    module = LitLlamaModule()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[HFExportCallback(every_n_train_steps=2, dtype="float32")],
    )
    trainer.fit(module, DataLoader(TensorDataset(data), batch_size=2))
    root = tmp_path / "hf_exports"
    assert step_dirs(root) == ["step_000002", "step_000004"]
    assert_parity(root / "step_000004", module.model.eval())
    # The Trainer's own checkpoint (`model.` attribute prefix on Meta's names) converts from the CLI too.
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    args = ["convert", str(tmp_path / "last.ckpt"), "--output_dir", str(tmp_path / "cli"), "--dtype", "float32"]
    assert main([*args, "--n_head", "4", "--rope_theta", "10000", "--norm_eps", "1e-5", "-q"]) == 0
    assert_parity(tmp_path / "cli", module.model)


# -- hfexport verify --checkpoint -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["llama2.c", "meta", "litgpt"])
def test_verify_checkpoint_compares_llama_logits(tmp_path: Path, source: str) -> None:
    if source == "llama2.c":
        ckpt = save_llama2c(make_llama(11, **GQA), tmp_path / "ckpt.pt")
    elif source == "meta":
        ckpt = save_meta(make_llama(11, tie=False, use_scaled_rope=True, **GQA), tmp_path / "m", use_scaled_rope=True)
    else:
        ckpt = save_litgpt(make_litllama(11), tmp_path / "lit")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", rope_scaling_factor=8)
    report = verify_directory(out, checkpoint=ckpt)
    assert report.ok, report.problems
    assert report.max_logit_diff is not None and report.max_logit_diff <= 1e-4
    assert main(["verify", str(out), "--checkpoint", str(ckpt), "-q"]) == 0


def test_verify_checks_llama_shapes_against_the_config(tmp_path: Path) -> None:
    out = convert_checkpoint(save_llama2c(make_llama(0, **GQA), tmp_path / "c.pt"), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    config["num_key_value_heads"] = 4  # k_proj/v_proj were written for 2
    (out / "config.json").write_text(json.dumps(config))
    report = verify_directory(out)
    assert "model.layers.0.self_attn.k_proj.weight has shape [16, 32], config.json implies [32, 32]" in report.problems
    config["num_key_value_heads"], config["tie_word_embeddings"] = 2, False  # transformers would use a random head
    (out / "config.json").write_text(json.dumps(config))
    problems = verify_directory(out).problems
    assert "lm_head.weight is missing (config.json implies it)" in problems
    assert not any("k_proj" in p for p in problems)  # config.json itself differs from the manifest, reported too


# -- wrong permutations fail the parity check ---------------------------------------------------------------------
def _export_with(tmp_path: Path, model: Transformer, q_k: Any) -> Path:
    """The correct export of ``model``, with q_proj/k_proj rewritten by ``q_k(wq, wk, n_heads, n_kv)``."""
    from safetensors.torch import save_file

    good = convert_checkpoint(save_llama2c(model, tmp_path / "c.pt"), tmp_path / "good", dtype="float32")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((good / "config.json").read_text())
    files = read_safetensors(good)
    a, sd = model.params, model.state_dict()
    for i in range(a.n_layers):
        q, k = q_k(sd[f"layers.{i}.attention.wq.weight"], sd[f"layers.{i}.attention.wk.weight"], a.n_heads, 2)
        files[f"model.layers.{i}.self_attn.q_proj.weight"] = q.contiguous()
        files[f"model.layers.{i}.self_attn.k_proj.weight"] = k.contiguous()
    save_file(files, str(bad / "model.safetensors"), metadata={"format": "pt"})
    return bad


WRONG_PERMUTATIONS = {
    "none": lambda wq, wk, n, n_kv: (wq, wk),
    # transformers' old bug: k permuted with q's head count (blocks of the wrong size within k's rows)
    "q_count_for_k": lambda wq, wk, n, n_kv: (interleaved_to_halves(wq, n), interleaved_to_halves(wk, n)),
    "q_only": lambda wq, wk, n, n_kv: (interleaved_to_halves(wq, n), wk),
}


@pytest.mark.parametrize("wrong", list(WRONG_PERMUTATIONS))
def test_a_wrong_permutation_fails_the_parity_check(tmp_path: Path, wrong: str) -> None:
    model = make_llama(12, **GQA)
    bad = _export_with(tmp_path, model, WRONG_PERMUTATIONS[wrong])
    with pytest.raises(AssertionError, match="max \\|logit diff\\|"):
        assert_parity(bad, model)
    assert logits_difference(bad, tmp_path / "c.pt") > 1e-2  # hfexport verify's own forward sees it too
    (tmp_path / "r").mkdir()
    right = _export_with(
        tmp_path / "r", model, lambda wq, wk, n, n_kv: (interleaved_to_halves(wq, n), interleaved_to_halves(wk, n_kv))
    )
    assert_parity(right, model)  # the same rewriting with the right permutation passes


def test_facts_read_from_llama_configs() -> None:
    facts = ModelFacts.from_mapping({"dim": 32, "n_heads": 4, "n_kv_heads": 2, "norm_eps": 1e-6, "rope_theta": 5e5})
    assert (facts.n_head, facts.n_kv_heads, facts.layer_norm_epsilon, facts.rope_theta) == (4, 2, 1e-6, 5e5)
    lit = ModelFacts.from_mapping(LITGPT_CONFIG)
    assert (lit.n_head, lit.n_kv_heads, lit.rope_theta, lit.block_size) == (4, 2, 10000, 16)
    assert ModelArgs().n_kv_heads == 2  # the reference default is GQA


# -- facts out of range: refused, never written; verify checks the same ranges and strict JSON ----------------------
CLI_FACTS = {"--n_head": "4", "--rope_theta": "10000", "--norm_eps": "1e-5"}


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--rope_theta", "nan"),
        ("--rope_theta", "0"),
        ("--rope_theta", "-1"),
        ("--rope_theta", "1e400"),
        ("--norm_eps", "-1"),
        ("--norm_eps", "inf"),
    ],
)
def test_out_of_range_llama_options_are_refused_by_the_cli(
    tmp_path: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(make_llama(4, **GQA).state_dict(), tmp_path / "weights.pt")
    args = [x for kv in {**CLI_FACTS, flag: value}.items() for x in kv]
    with pytest.raises(SystemExit) as info:
        main(["convert", str(tmp_path / "weights.pt"), "--output_dir", str(tmp_path / "hf"), *args, "-q"])
    assert info.value.code == 2 and not (tmp_path / "hf").exists()
    err = capsys.readouterr().err
    assert flag in err and "expected a finite number" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        ({"rope_theta": float("nan")}, "rope_theta=nan: expected a finite number > 0 (--rope_theta"),
        ({"rope_theta": 0}, "rope_theta=0.0: expected a finite number > 0"),
        ({"rope_theta": -1.0}, "rope_theta=-1.0"),
        ({"rope_theta": float("inf")}, "rope_theta=inf"),
        ({"norm_eps": -1.0}, "rms_norm_eps=-1.0: expected a finite number >= 0 and <= 1 (--norm_eps"),
        ({"norm_eps": float("inf")}, "rms_norm_eps=inf"),
    ],
)
def test_out_of_range_llama_facts_are_refused_by_the_api(tmp_path: Path, facts: dict, words: str) -> None:
    torch.save(make_llama(4, **GQA).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ConversionError, match=re.escape(words)):
        convert_checkpoint(
            tmp_path / "weights.pt", tmp_path / "hf", n_head=4, **{"rope_theta": 1e4, "norm_eps": 1e-5, **facts}
        )
    assert not (tmp_path / "hf").exists()


def test_a_negative_rope_scaling_factor_is_refused(tmp_path: Path) -> None:
    model = make_llama(6, tie=False, rope_theta=500000.0, use_scaled_rope=True, rope_scaling_factor=8.0, **GQA)
    ckpt = save_meta(model, tmp_path / "m", use_scaled_rope=True)
    with pytest.raises(SystemExit) as info:
        main(["convert", str(ckpt), "--output_dir", str(tmp_path / "cli"), "--rope_scaling_factor", "-8", "-q"])
    assert info.value.code == 2 and not (tmp_path / "cli").exists()
    with pytest.raises(ConversionError, match=re.escape("rope_scaling.factor=-8.0: expected a finite number > 0")):
        convert_checkpoint(ckpt, tmp_path / "api", rope_scaling_factor=-8)
    save_meta(model, tmp_path / "m", use_scaled_rope=True, rope_scaling_factor=-8.0)  # recorded in params.json
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "rec"), "-q"]) == 2
    assert not (tmp_path / "rec").exists()


def test_a_negative_context_length_is_refused(tmp_path: Path) -> None:
    ckpt = save_llama2c(make_llama(5, **GQA), tmp_path / "c.pt")
    state = torch.load(ckpt, weights_only=True)
    state["model_args"]["max_seq_len"] = -5
    torch.save(state, ckpt)
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"]) == 2
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ConversionError, match=re.escape("max_position_embeddings=-5: expected a positive int")):
        convert_checkpoint(ckpt, tmp_path / "hf")


def test_an_unknown_rope_type_is_refused(tmp_path: Path) -> None:
    config = {"n_heads": 4, "n_kv_heads": 2, "norm_eps": 1e-5, "rope_theta": 1e4, "max_seq_len": 64}
    model = make_llama(7, **GQA)
    with pytest.raises(ConversionError, match=re.escape("rope_scaling.rope_type='superrope' is not a RoPE kind")):
        export_hf(
            model, 1, tmp_path / "x", config={**config, "rope_scaling": {"rope_type": "superrope", "factor": 2.0}}
        )
    assert not (tmp_path / "x" / "step_000001").exists()
    scaling = {"rope_type": "linear", "factor": 2.0}  # a kind transformers implements passes
    out = export_hf(model, 1, tmp_path / "ok", config={**config, "rope_scaling": scaling}, dtype="float32")
    assert json.loads((out / "config.json").read_text())["rope_scaling"] == scaling


def _strict(path: Path) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{path.name} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_json_file_written_is_strict_json(tmp_path: Path) -> None:
    """A loss of NaN (a diverged run) is recorded as text, and every file parses without NaN/Infinity."""
    out = export_hf(make_llama(8, **GQA), 3, tmp_path / "root", loss=float("nan"), epoch=1)
    assert out is not None
    files = sorted(out.glob("*.json"))
    assert {"config.json", "generation_config.json", "hfexport.json"} <= {f.name for f in files}
    parsed = {f.name: _strict(f) for f in files}
    assert parsed["hfexport.json"]["loss"] == "nan"
    assert verify_directory(out).ok


@pytest.mark.parametrize(
    ("file", "edit", "words"),
    [
        ("config.json", {"rope_theta": float("nan")}, "config.json is not valid JSON (NaN is not a JSON number"),
        ("config.json", {"rms_norm_eps": float("inf")}, "config.json is not valid JSON (Infinity"),
        ("config.json", {"rope_theta": -1.0}, "config.json: rope_theta=-1.0: expected a finite number > 0"),
        ("config.json", {"rms_norm_eps": -1}, "config.json: rms_norm_eps=-1: expected a finite number >= 0"),
        ("config.json", {"max_position_embeddings": -5}, "config.json: max_position_embeddings=-5"),
        ("config.json", {"rope_scaling": {"rope_type": "superrope"}}, "rope_scaling.rope_type='superrope'"),
        ("generation_config.json", {"temperature": float("nan")}, "generation_config.json is not valid JSON"),
    ],
)
def test_verify_refuses_out_of_range_llama_configs_and_lax_json(
    tmp_path: Path, file: str, edit: dict, words: str
) -> None:
    out = convert_checkpoint(save_llama2c(make_llama(0, **GQA), tmp_path / "c.pt"), tmp_path / "hf")
    assert verify_directory(out).ok
    content = json.loads((out / file).read_text())
    content.update(edit)
    (out / file).write_text(json.dumps(content))  # Python writes NaN / Infinity unless told not to
    problems = verify_directory(out).problems
    assert any(words in p for p in problems), problems
    assert main(["verify", str(out), "-q"]) == 1
