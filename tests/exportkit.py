"""Helpers shared by the training-hook tests (exporter, snapshot, Lightning, distributed, crash safety).

Expected file contents are computed here from the nanoGPT weights directly (names and transposes written out),
so the tests do not trust hfexport's own mapping.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from nanogpt import GPT, GPTConfig, make_gpt
from safetensors import safe_open

# nn.Linear weights that GPT-2's Conv1D stores transposed.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TINY = dict(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=16)


def tiny_gpt(seed: int = 0, **overrides: Any) -> GPT:
    """A 2-layer, 32-wide nanoGPT with a 64-token vocabulary (the tests' model)."""
    return make_gpt(seed, **{**TINY, **overrides})


def token_ids(vocab: int = 64, seed: int = 1, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, length), generator=g)


def weights_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Owned copies of a module's state dict (the weights at this moment)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expected_hf_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What the export of a (prefix-free) nanoGPT state dict must hold, by hand: Conv1D transposes, tied lm_head."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        t = tensor.t() if name.endswith(TRANSPOSED) else tensor
        out[name] = t.to(dtype).contiguous()
    return out


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[key] = f.get_tensor(key)
    return tensors


def assert_file_tensors(directory: Path, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """The safetensors in ``directory`` equal the ``dtype`` cast of ``state`` bit for bit."""
    got = read_safetensors(directory)
    want = expected_hf_tensors(state, dtype)
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == dtype, name
        assert torch.equal(got[name], tensor), f"{name} differs from the {dtype} cast of the step's weights"


# Logits are compared in float64 on both sides (every exported dtype is exactly representable): the comparison
# then measures the export, not how two different float32 code paths round.


def nanogpt_logits(state: dict[str, torch.Tensor], ids: torch.Tensor, **config: Any) -> torch.Tensor:
    """Logits of a nanoGPT holding ``state`` (float64 compute)."""
    model = GPT(GPTConfig(**{**TINY, **config})).eval()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.double()
    with torch.no_grad():
        return model(ids)


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float64).eval()
    with torch.no_grad():
        return hf(ids).logits


def assert_reproduces(directory: Path, state: dict[str, torch.Tensor], dtype: torch.dtype, **config: Any) -> None:
    """The export loads with AutoModelForCausalLM and gives the logits of the step's weights (rounded to dtype)."""
    ids = token_ids(config.get("vocab_size", TINY["vocab_size"]))
    rounded = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    diff = (hf_logits(directory, ids) - nanogpt_logits(rounded, ids, **config)).abs().max().item()
    assert diff <= 1e-5, f"{directory.name}: max |logit diff| {diff}"


class SlowTokenizer:
    """A real-enough tokenizer object whose ``save_pretrained`` takes ``delay`` seconds (a slow write)."""

    def __init__(self, delay: float = 0.3, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.saved = 0

    def save_pretrained(self, path: str) -> None:
        time.sleep(self.delay)
        if self.fail:
            raise OSError("tokenizer save failed on purpose")
        from tokenizers import Tokenizer, models, pre_tokenizers

        backend = Tokenizer(models.WordLevel(vocab={chr(97 + i): i for i in range(26)}, unk_token="a"))
        backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        backend.save(str(Path(path) / "tokenizer.json"))
        (Path(path) / "tokenizer_config.json").write_text('{"model_max_length": 16}\n')
        self.saved += 1


def step_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in Path(root).iterdir() if p.name.startswith("step_"))


def hidden_temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in Path(root).iterdir() if p.name.startswith(".") and ".tmp-" in p.name)
