"""Qwen2-style litgpt checkpoints (``lit_model.pth`` + ``model_config.yaml``, q/k/v biases) → ``Qwen2ForCausalLM``.

The reference is litgpt's own model code (the ``litgpt`` package), run in a separate interpreter: litgpt 0.5.13
pins huggingface-hub<1.4, which the suite's venv cannot hold. ``HFEXPORT_LITGPT_PYTHON`` names that interpreter
(default: the checkout's ``.venv-litgpt``, which ``.ci/run`` creates); without it those tests skip, unless
``HFEXPORT_REQUIRE_LITGPT=1`` (CI) makes them fail. The tests without litgpt build the same layout by hand.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from exportkit import read_safetensors

from hfexport import ConversionError, convert_checkpoint, verify_directory
from hfexport.cli import main
from hfexport.families import detect, get
from hfexport.families.qwen2 import qwen2_forward

ROOT = Path(__file__).resolve().parents[1]
LITGPT_PYTHON = Path(os.environ.get("HFEXPORT_LITGPT_PYTHON") or ROOT / ".venv-litgpt" / "bin" / "python")
HEADS, GROUPS, HEAD_SIZE, WIDTH, VOCAB = 4, 2, 8, 32, 64
#: A tiny Qwen2.5-shaped litgpt config: the fields litgpt's Qwen2.5 configs set, at test sizes.
QWEN_CONFIG = {
    "name": "tiny-qwen2.5-test",
    "hf_config": {"org": "Qwen", "name": "Qwen2.5-tiny"},
    "block_size": 32,
    "vocab_size": VOCAB,
    "padded_vocab_size": VOCAB,
    "n_layer": 2,
    "n_head": HEADS,
    "n_query_groups": GROUPS,
    "head_size": HEAD_SIZE,
    "n_embd": WIDTH,
    "intermediate_size": 88,
    "rotary_percentage": 1.0,
    "parallel_residual": False,
    "bias": False,
    "attn_bias": True,
    "norm_class_name": "RMSNorm",
    "mlp_class_name": "LLaMAMLP",
    "norm_eps": 1e-6,
    "rope_base": 1000000,
}
#: litgpt in its own interpreter: build the GPT with a fixed seed, save it as litgpt does (``lit_model.pth`` and
#: ``model_config.yaml`` via ``save_config``) and its float32 logits for fixed ids.
LITGPT_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from litgpt import GPT, Config
from litgpt.utils import save_config
folder, fields = Path(sys.argv[1]), json.loads(sys.argv[2])
config = Config(**fields)
torch.manual_seed(0)
model = GPT(config).eval()
with torch.no_grad():  # litgpt zero-initializes nothing; random biases make the check see them
    for name, p in model.named_parameters():
        if name.endswith("attn.qkv.bias") or "norm" in name:
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
folder.mkdir(parents=True, exist_ok=True)
torch.save(model.state_dict(), folder / "lit_model.pth")
save_config(config, folder)
ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(ids)
torch.save({"ids": ids, "logits": logits.float()}, folder.parent / "reference.pt")
"""


def litgpt_reference(folder: Path, **overrides: object) -> dict[str, torch.Tensor]:
    """Have litgpt make, save and run a tiny Qwen2 in ``folder``; its ids and logits."""
    if not LITGPT_PYTHON.is_file():
        if os.environ.get("HFEXPORT_REQUIRE_LITGPT"):
            pytest.fail(f"HFEXPORT_REQUIRE_LITGPT is set but {LITGPT_PYTHON} does not exist (.ci/run creates it)")
        pytest.skip(f"no litgpt interpreter at {LITGPT_PYTHON} (set HFEXPORT_LITGPT_PYTHON; .ci/run makes one)")
    fields = {**QWEN_CONFIG, **overrides}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # litgpt's venv, not this checkout
    done = subprocess.run(
        [str(LITGPT_PYTHON), "-c", LITGPT_SCRIPT, str(folder), json.dumps(fields)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(folder.parent / "reference.pt")


def hand_built(folder: Path, seed: int = 0, **config: object) -> Path:
    """A litgpt Qwen2 checkpoint in litgpt's layout, built without litgpt (names and shapes as its GPT has them)."""
    gen = torch.Generator().manual_seed(seed)
    rows = (HEADS + 2 * GROUPS) * HEAD_SIZE

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.2

    sd = {"transformer.wte.weight": rand(VOCAB, WIDTH)}
    for i in range(2):
        p = f"transformer.h.{i}."
        sd |= {
            p + "norm_1.weight": 1 + rand(WIDTH),
            p + "attn.qkv.weight": rand(rows, WIDTH),
            p + "attn.qkv.bias": rand(rows) * 5,
            p + "attn.proj.weight": rand(WIDTH, HEADS * HEAD_SIZE),
            p + "norm_2.weight": 1 + rand(WIDTH),
            p + "mlp.fc_1.weight": rand(88, WIDTH),
            p + "mlp.fc_2.weight": rand(88, WIDTH),
            p + "mlp.proj.weight": rand(WIDTH, 88),
        }
    sd |= {"transformer.ln_f.weight": 1 + rand(WIDTH), "lm_head.weight": rand(VOCAB, WIDTH)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "lit_model.pth")
    (folder / "model_config.yaml").write_text(yaml.safe_dump({**QWEN_CONFIG, **config}))
    return folder / "lit_model.pth"


def hf_logits(directory: Path, ids: torch.Tensor, *, without_biases: bool = False) -> torch.Tensor:
    """The export's float32 logits through ``AutoModelForCausalLM`` (with ``without_biases``, its q/k/v biases
    zeroed: what a Llama-shaped conversion would give, to show that the comparison sees them)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad():
        if without_biases:
            for name, p in hf.named_parameters():
                if name.endswith("_proj.bias"):
                    p.zero_()
        return hf(ids).logits


# -- without litgpt ---------------------------------------------------------------------------------------------
def test_detection_is_by_the_qkv_biases(tmp_path: Path) -> None:
    keys = set(torch.load(hand_built(tmp_path / "final")))
    assert detect(keys).name == "litgpt-qwen2"
    assert not get("litgpt-llama").detect(keys)  # a litgpt Llama has no attn.qkv.bias
    assert detect({k for k in keys if not k.endswith("attn.qkv.bias")}).name == "litgpt-llama"


def test_hand_built_litgpt_qwen2_converts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = hand_built(tmp_path / "final")
    with caplog.at_level(logging.WARNING):
        out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    assert "Ignoring model_config.yaml" not in caplog.text  # read once, as the Qwen2 family's
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 8)
    assert config["rope_theta"] == 1000000 and config["rms_norm_eps"] == 1e-6
    assert config["max_position_embeddings"] == 32 and config["tie_word_embeddings"] is False
    assert "attention_bias" not in config
    sd = torch.load(ckpt)
    files = read_safetensors(out)
    bias, qkv = sd["transformer.h.1.attn.qkv.bias"], sd["transformer.h.1.attn.qkv.weight"]
    assert torch.equal(files["model.layers.1.self_attn.q_proj.bias"], bias[:32])
    assert torch.equal(files["model.layers.1.self_attn.k_proj.bias"], bias[32:48])
    assert torch.equal(files["model.layers.1.self_attn.v_proj.bias"], bias[48:])
    assert torch.equal(files["model.layers.1.self_attn.k_proj.weight"], qkv[32:48])
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    ref = qwen2_forward(sd, ids, n_heads=4, n_kv_heads=2, eps=1e-6, rope_theta=1e6)
    assert (hf_logits(out, ids) - ref).abs().max().item() <= 1e-4
    card = (out / "README.md").read_text()
    assert "Qwen2-style" in card and "tiny-qwen2.5-test" in card


def test_a_config_without_attn_bias_is_refused(tmp_path: Path) -> None:
    ckpt = hand_built(tmp_path / "final", attn_bias=False)
    with pytest.raises(ConversionError, match=r"attn\.qkv\.bias tensors but its model_config\.yaml .* attn_bias=False"):
        convert_checkpoint(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_non_llama_shaped_qwen_config_is_refused(tmp_path: Path) -> None:
    ckpt = hand_built(tmp_path / "final", norm_class_name="LayerNorm")
    with pytest.raises(ConversionError, match="norm_class_name='LayerNorm'"):
        convert_checkpoint(ckpt, tmp_path / "hf")


def test_expected_shapes_include_the_biases() -> None:
    config = {
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "intermediate_size": 88,
        "num_hidden_layers": 1,
        "vocab_size": 64,
        "tie_word_embeddings": True,
    }
    shapes = get("litgpt-qwen2").expected_shapes(config)
    assert shapes["model.layers.0.self_attn.q_proj.bias"] == (32,)
    assert shapes["model.layers.0.self_attn.k_proj.bias"] == (16,)
    assert "model.layers.0.self_attn.o_proj.bias" not in shapes and "lm_head.weight" not in shapes


def test_verify_checkpoint_compares_qwen2_logits(tmp_path: Path) -> None:
    ckpt = hand_built(tmp_path / "final")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    report = verify_directory(out, checkpoint=ckpt)
    assert report.ok, report.problems
    assert report.max_logit_diff is not None and report.max_logit_diff <= 1e-4
    assert main(["verify", str(out), "--checkpoint", str(ckpt), "-q"]) == 0
    # A wrong split of the biases is caught by the reference forward.
    from safetensors.torch import load_file, save_file

    weights = load_file(out / "model.safetensors")
    q = weights["model.layers.0.self_attn.q_proj.bias"]
    weights["model.layers.0.self_attn.q_proj.bias"] = q.flip(0).contiguous()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    (out / "hfexport.json").unlink()  # its checksum would report the edit before the logits
    report = verify_directory(out, checkpoint=ckpt)
    assert not report.ok and report.max_logit_diff is not None and report.max_logit_diff > 1e-3


# -- against litgpt ---------------------------------------------------------------------------------------------
def test_litgpt_qwen2_parity_with_litgpts_own_model(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    ref = litgpt_reference(tmp_path / "final", vocab_size=300, padded_vocab_size=320)
    saved = yaml.safe_load((tmp_path / "final" / "model_config.yaml").read_text())
    assert saved["attn_bias"] is True and saved["hf_config"]["org"] == "Qwen"  # litgpt's own file
    # A byte-level BPE as Qwen's (transformers 5 loads a qwen2 export's tokenizer as Qwen2Tokenizer, byte-level BPE).
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["the cat sat on a mat", "the dog sat on the cat"] * 20, trainer)
    backend.save(str(tmp_path / "final" / "tokenizer.json"))
    (tmp_path / "final" / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
    out = convert_checkpoint(tmp_path / "final" / "lit_model.pth", tmp_path / "hf", dtype="float32")
    diff = (hf_logits(out, ref["ids"]) - ref["logits"]).abs().max().item()
    print(f"litgpt Qwen2 vs transformers Qwen2ForCausalLM: max |logit diff| = {diff:.3g}", file=sys.stderr)
    assert diff <= 1e-4
    assert ref["logits"].abs().max().item() > 0.1  # not a degenerate model
    assert (hf_logits(out, ref["ids"], without_biases=True) - ref["logits"]).abs().max().item() > 1e-2
    tok = AutoTokenizer.from_pretrained(str(out))  # the tokenizer from litgpt's checkpoint directory
    assert tok("the cat sat on a mat").input_ids == backend.encode("the cat sat on a mat").ids
    report = verify_directory(out, checkpoint=tmp_path / "final" / "lit_model.pth")
    assert report.ok and report.max_logit_diff is not None and report.max_logit_diff <= 1e-4, report.problems


def test_litgpt_qwen2_parity_multi_head_attention(tmp_path: Path) -> None:
    ref = litgpt_reference(tmp_path / "final", n_query_groups=HEADS, n_embd=64, head_size=16)
    out = convert_checkpoint(tmp_path / "final" / "lit_model.pth", tmp_path / "hf", dtype="float32")
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == HEADS
    assert (hf_logits(out, ref["ids"]) - ref["logits"]).abs().max().item() <= 1e-4
