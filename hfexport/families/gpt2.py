"""nanoGPT-style GPT-2 → Hugging Face ``GPT2LMHeadModel``.

Covers nanoGPT, build-nanogpt, the ``nano-gpt`` package and llm.c ports: they share nanoGPT's parameter
names. The key map is data (below); the four ``nn.Linear`` weights that Hugging Face stores as ``Conv1D``
``(in, out)`` are listed once in :data:`TRANSPOSED`, decided by name and never by shape (``attn.c_proj`` is
square: forgetting its transpose raises nothing and silently ruins the logits).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hfexport._util.validation import Range
from hfexport.errors import ConversionError, MissingFactError
from hfexport.families.base import (
    ConversionPlan,
    ModelFacts,
    TensorPlan,
    TokenizerGuess,
    compare_shapes,
    config_dim,
    is_tied,
    layer_indices,
    out_vocab,
    positive_int,
    range_problems,
    refuse_unexpected,
    require,
)
from hfexport.io.sidecars import Sidecar

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVATIONS",
    "EOS_ID",
    "GPT2",
    "GPT2_RANGES",
    "MAX_PADDED",
    "TRANSPOSED",
    "VOCAB_SIZE",
    "config_problems",
    "nanogpt_forward",
]

#: GELU variants and the trainers that use each (the checkpoint does not record which one was used).
ACTIVATIONS: dict[str, str] = {
    "gelu": "exact erf GELU: nanoGPT since May 2023 (nn.GELU())",
    "gelu_new": "tanh formula: nanoGPT before May 2023, llm.c",
    "gelu_pytorch_tanh": "nn.GELU(approximate='tanh'): build-nanogpt, the nano-gpt package",
}

#: Per-layer parameters (nanoGPT and Hugging Face name them alike) and their shapes in the Hugging Face model, from
#: n_embd (E) and the MLP width (I, 4E unless n_inner says).
LAYER_SHAPES: dict[str, Callable[[int, int], tuple[int, ...]]] = {
    "ln_1.weight": lambda e, i: (e,),
    "ln_1.bias": lambda e, i: (e,),
    "attn.c_attn.weight": lambda e, i: (e, 3 * e),
    "attn.c_attn.bias": lambda e, i: (3 * e,),
    "attn.c_proj.weight": lambda e, i: (e, e),
    "attn.c_proj.bias": lambda e, i: (e,),
    "ln_2.weight": lambda e, i: (e,),
    "ln_2.bias": lambda e, i: (e,),
    "mlp.c_fc.weight": lambda e, i: (e, i),
    "mlp.c_fc.bias": lambda e, i: (i,),
    "mlp.c_proj.weight": lambda e, i: (i, e),
    "mlp.c_proj.bias": lambda e, i: (e,),
}

#: nn.Linear stores (out, in); HF GPT-2 uses Conv1D, which stores (in, out).
TRANSPOSED: tuple[str, ...] = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)

#: The tokens of GPT-2's BPE (the rows of GPT-2's vocabulary).
VOCAB_SIZE = 50257
#: GPT-2's ``<|endoftext|>``, its bos and eos: the last id of its BPE.
EOS_ID = 50256
#: A vocabulary of this many rows or fewer (and at least :data:`VOCAB_SIZE`) is taken for GPT-2's, padded (nanoGPT:
#: 50304); a model with it and no tokenizer named gets GPT-2's BPE (:meth:`GPT2.tokenizer_guess`).
MAX_PADDED = 51200

#: Buffers that are not parameters: nanoGPT's causal mask on old torch, HF's own mask buffers.
IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")


class GPT2:
    """The nanoGPT-style GPT-2 family."""

    name = "gpt2"
    expects = (
        "nanoGPT names: transformer.wte.weight, transformer.wpe.weight, transformer.h.N.attn.c_attn.weight, "
        "transformer.ln_f.weight"
    )
    model_type = "gpt2"
    display_name = "GPT-2"
    sidecar: Sidecar | None = None  # nanoGPT's checkpoints carry their model_args
    tokenizer_beside: tuple[str, ...] = ()  # GPT-2's BPE is inferred from the vocabulary (or nanoGPT's meta.pkl)

    def detect(self, keys: set[str]) -> bool:
        return (
            "transformer.wte.weight" in keys
            and "transformer.wpe.weight" in keys
            and any(k.endswith("attn.c_attn.weight") for k in keys)
        )

    def plan(
        self,
        state_dict: Mapping[str, torch.Tensor],
        facts: ModelFacts,
        *,
        activation: str,
        vocab_size: int | None,
        untie_embeddings: bool,
    ) -> ConversionPlan:
        if activation not in ACTIVATIONS:
            raise ConversionError(
                f"Unknown activation {activation!r}. Expected one of {sorted(ACTIVATIONS)}: "
                + "; ".join(f"{k} = {v}" for k, v in ACTIVATIONS.items())
            )
        sd = {k: v for k, v in state_dict.items() if not IGNORED.search(k)}
        wte = _require_matrix(sd, "transformer.wte.weight", "(vocab_size, n_embd)")
        wpe = _require_matrix(sd, "transformer.wpe.weight", "(block_size, n_embd)")
        trained_vocab, n_embd = wte.shape
        n_positions = wpe.shape[0]

        layers = layer_indices(sd, "transformer.h.")
        n_layer = len(layers)

        n_head = _n_head(facts.n_head, n_embd)

        vocab = out_vocab(vocab_size, trained_vocab)
        rows = vocab if vocab != trained_vocab else None

        # bias=False models have no LayerNorm/Linear biases; HF GPT-2 always has them: write zeros.
        has_bias = "transformer.ln_f.bias" in sd
        if facts.bias is not None and facts.bias != has_bias:
            logger.warning(
                "The checkpoint's config says bias=%s but its tensors say bias=%s; trusting the tensors.",
                facts.bias,
                has_bias,
            )

        tensors: list[TensorPlan] = [
            TensorPlan("transformer.wte.weight", wte, (vocab, n_embd), rows=rows),
            TensorPlan("transformer.wpe.weight", wpe, tuple(wpe.shape)),
        ]
        tensors += _block_tensors(sd, layers, has_bias)
        ln_f = _require(sd, "transformer.ln_f.weight")
        tensors.append(TensorPlan("transformer.ln_f.weight", ln_f, tuple(ln_f.shape)))
        if has_bias:
            tensors.append(TensorPlan("transformer.ln_f.bias", sd["transformer.ln_f.bias"], (n_embd,)))
        else:
            tensors.append(TensorPlan("transformer.ln_f.bias", None, (n_embd,)))

        head = sd.get("lm_head.weight")
        # A model trained with an untied head: its head must be written, or transformers ties wte to it.
        tied = is_tied(head, wte)
        if untie_embeddings or not tied:
            source = head if head is not None else wte
            # Trimmed like wte (never to fit a head of another size: check_plan refuses that).
            tensors.append(TensorPlan("lm_head.weight", source, (vocab, n_embd), rows=rows))
            tied = False
        refuse_unexpected(sd, {t.name for t in tensors} | {"lm_head.weight"}, "GPT-2", "a nanoGPT-style GPT-2")

        eos = self.special_ids(vocab)[1]
        dims = {"vocab_size": vocab, "n_positions": n_positions, "n_embd": n_embd, "n_layer": n_layer}
        config = _hf_config(dims, n_head, facts, activation=activation, tied=tied, eos=eos)
        generation_config = {"bos_token_id": eos, "eos_token_id": eos} if eos is not None else {}
        notes = []
        if vocab != trained_vocab:
            notes.append(f"vocabulary trimmed from {trained_vocab} to {vocab} rows")
        if not has_bias:
            notes.append("bias=False model: zero biases written")
        return ConversionPlan("gpt2", tensors, config, generation_config, notes)

    def config_problems(self, config: Mapping[str, Any]) -> list[str]:
        return config_problems(config)

    def shape_problems(self, config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> list[str]:
        """The vocabulary, head and layer count in one line each, then :func:`compare_shapes`'s lines."""
        problems = []
        wte = shapes.get("transformer.wte.weight")
        if wte and list(wte) != [config.get("vocab_size"), config.get("n_embd")]:
            problems.append(
                f"config.json says vocab_size/n_embd {config.get('vocab_size')}/{config.get('n_embd')}, wte is "
                f"{list(wte)}"
            )
        if not config.get("tie_word_embeddings", True) and "lm_head.weight" not in shapes:
            problems.append(
                "tie_word_embeddings is false but lm_head.weight is missing: transformers would use a random head"
            )
        layers = {k.split(".")[2] for k in shapes if k.startswith("transformer.h.")}
        if layers and len(layers) != config.get("n_layer"):
            problems.append(f"config.json says n_layer={config.get('n_layer')}, the weights have {len(layers)}")
        return problems + compare_shapes(self.display_name, self.expected_shapes, config, shapes)

    def context_length(self, config: Mapping[str, Any]) -> int | None:
        return config.get("n_positions") or None

    def special_ids(self, vocab: int) -> tuple[int | None, int | None]:
        """GPT-2's ``<|endoftext|>`` for bos and eos when the vocabulary holds it, else unknown."""
        eos = EOS_ID if vocab > EOS_ID else None
        return eos, eos

    def tokenizer_guess(self, vocab: int | None) -> TokenizerGuess:
        """GPT-2's BPE (hfexport's built-in ``"gpt2"``) for GPT-2's vocabulary, 50257 rows or padded up to
        :data:`MAX_PADDED`; else none (characters, a BPE of one's own: the vocabulary says which it is not)."""
        if vocab is not None and VOCAB_SIZE <= vocab <= MAX_PADDED:
            padded = f" (GPT-2's {VOCAB_SIZE}, padded)" if vocab > VOCAB_SIZE else ""
            why = f"GPT-2's BPE, inferred from the {vocab}-row vocabulary{padded} of a GPT-2 model"
            return TokenizerGuess("gpt2", why)
        return TokenizerGuess(None, f"the vocabulary ({vocab} rows) is not GPT-2's")

    def reference_difference(
        self,
        exported: Any,
        state_dict: Mapping[str, torch.Tensor],
        facts: ModelFacts,
        *,
        n_head: int,
        activation: str | None,
        tokens: int,
        unchecked: list[str],
    ) -> float:
        """nanoGPT's forward pass (:func:`nanogpt_forward`) against a ``GPT2LMHeadModel``; the GELU is the
        export's when neither the checkpoint nor an option names it (listed in ``unchecked``)."""
        cfg = exported.config
        act = activation
        if act is None:
            act = cfg.activation_function
            unchecked.append(
                f"activation ({act}, from config.json): the checkpoint does not record its GELU (pass --activation)"
            )
        eps = facts.layer_norm_epsilon if facts.layer_norm_epsilon is not None else 1e-5  # as convert
        gen = torch.Generator().manual_seed(0)
        n = min(tokens, cfg.n_positions)
        ids = torch.randint(0, cfg.vocab_size, (2, n), generator=gen)
        with torch.no_grad():
            a = exported(ids).logits.float()
            b = nanogpt_forward(state_dict, ids, n_head=n_head, activation=act, eps=eps)
        return float((a - b[..., : cfg.vocab_size]).abs().max())

    def expected_shapes(self, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shape of every ``GPT2LMHeadModel`` key for ``config`` (Conv1D weights as HF stores them: (in, out))."""
        vocab, positions, embd, n_layer = (
            config_dim(config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer")
        )
        inner = embd * 4 if config.get("n_inner") is None else config_dim(config, "n_inner")
        shapes: dict[str, tuple[int, ...]] = {
            "transformer.wte.weight": (vocab, embd),
            "transformer.wpe.weight": (positions, embd),
        }
        for i in range(n_layer):
            shapes.update({f"transformer.h.{i}.{key}": shape(embd, inner) for key, shape in LAYER_SHAPES.items()})
        shapes["transformer.ln_f.weight"] = (embd,)
        shapes["transformer.ln_f.bias"] = (embd,)
        if not config.get("tie_word_embeddings", True):
            shapes["lm_head.weight"] = (vocab, embd)
        return shapes


#: The range of each number of a GPT-2 ``config.json`` (written by hfexport, checked by ``hfexport verify``), and
#: where a wrong value comes from. A key absent from the config is not checked.
GPT2_RANGES: dict[str, tuple[Range, str]] = {
    "layer_norm_epsilon": (Range(minimum=0.0, maximum=1.0), "--norm_eps, config={'layer_norm_epsilon': ...}"),
    "n_positions": (Range(integer=True, minimum=1), ""),
    "resid_pdrop": (Range(minimum=0.0, maximum=1.0), "config={'dropout': p}"),
    "embd_pdrop": (Range(minimum=0.0, maximum=1.0), "config={'dropout': p}"),
    "attn_pdrop": (Range(minimum=0.0, maximum=1.0), "config={'dropout': p}"),
}


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """What is out of range in a GPT-2 ``config.json``, one line each; ``[]`` when every number is in range."""
    return range_problems(config, GPT2_RANGES)


def _hf_config(
    dims: Mapping[str, int], n_head: int, facts: ModelFacts, *, activation: str, tied: bool, eos: int | None
) -> dict[str, Any]:
    """``GPT2LMHeadModel``'s ``config.json`` for a model of these dimensions (``vocab_size``, ``n_positions``,
    ``n_embd``, ``n_layer``, from the tensors) and heads; the rest from ``facts`` or GPT-2's defaults."""
    dropout = float(facts.dropout) if facts.dropout is not None else 0.0
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": dims["vocab_size"],
        "n_positions": dims["n_positions"],
        "n_ctx": dims["n_positions"],
        "n_embd": dims["n_embd"],
        "n_layer": dims["n_layer"],
        "n_head": n_head,
        "n_inner": None,
        "activation_function": activation,
        "layer_norm_epsilon": facts.layer_norm_epsilon if facts.layer_norm_epsilon is not None else 1e-5,
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "tie_word_embeddings": tied,
        "bos_token_id": eos,
        "eos_token_id": eos,
    }


def _n_head(n_head: Any, n_embd: int) -> int:
    """The number of attention heads the facts give, checked against ``n_embd``."""
    if n_head is None:
        raise MissingFactError(
            "The checkpoint does not say how many attention heads the model has (n_head): its shapes "
            f"cannot tell. Pass it: --n_head N (CLI) or config={{'n_head': N}} (n_embd is {n_embd}).",
            fact="n_head",
            family=GPT2.name,
        )
    fix = f"It must divide n_embd={n_embd}: pass the right one with --n_head N (config={{'n_head': N}})."
    n_head = positive_int("n_head", n_head, fix)
    if n_embd % n_head:
        raise ConversionError(f"n_head={n_head} does not divide n_embd={n_embd}; pass the right --n_head.")
    return n_head


def _block_tensors(sd: Mapping[str, torch.Tensor], layers: Sequence[int], has_bias: bool) -> list[TensorPlan]:
    """The plans of the transformer blocks' tensors (Conv1D weights transposed; zero biases where a bias=False
    model has none)."""
    tensors: list[TensorPlan] = []
    for i in layers:
        prefix = f"transformer.h.{i}."
        for suffix in LAYER_SHAPES:
            key = prefix + suffix
            if suffix.endswith(".bias") and not has_bias:
                if key in sd:
                    raise ConversionError(f"{key} is present but transformer.ln_f.bias is not.")
                weight = _require(sd, key[: -len("bias")] + "weight")
                out_dim = weight.shape[0]  # nn.Linear (out, in) / LayerNorm (C,)
                tensors.append(TensorPlan(key, None, (out_dim,)))
                continue
            tensor = _require(sd, key)
            transpose = suffix in TRANSPOSED
            shape = tuple(tensor.shape[::-1]) if transpose else tuple(tensor.shape)
            tensors.append(TensorPlan(key, tensor, shape, transpose=transpose))
    return tensors


def _require_matrix(sd: Mapping[str, torch.Tensor], key: str, layout: str) -> torch.Tensor:
    tensor = _require(sd, key)
    if tensor.dim() != 2:
        raise ConversionError(
            f"{key} has shape {tuple(tensor.shape)}, expected a matrix {layout}: the checkpoint is not a "
            "nanoGPT-style GPT-2 or is corrupt."
        )
    return tensor


def _require(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    return require(sd, key, "a nanoGPT-style GPT-2")


def nanogpt_forward(
    state_dict: Mapping[str, torch.Tensor],
    ids: torch.Tensor,
    *,
    n_head: int,
    activation: str = "gelu",
    eps: float = 1e-5,
) -> torch.Tensor:
    """nanoGPT's forward pass, written from its equations, over a training-layout state dict (float32)."""
    sd = {k: v.float() for k, v in state_dict.items()}

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd.get(name + ".bias"), eps)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    def gelu(x: torch.Tensor) -> torch.Tensor:
        if activation == "gelu":
            return F.gelu(x)
        if activation == "gelu_pytorch_tanh":
            return F.gelu(x, approximate="tanh")
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0))))

    b, t = ids.shape
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:t]
    n_layer = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        q, k, v = linear(ln(x, p + "ln_1"), p + "attn.c_attn").split(x.shape[-1], dim=2)
        q, k, v = (z.view(b, t, n_head, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + linear(y, p + "attn.c_proj")
        x = x + linear(gelu(linear(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    head = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    return x @ head.t()
