"""Llama-style models → Hugging Face ``LlamaForCausalLM`` (RMSNorm, RoPE, SwiGLU, grouped-query attention).

Two source families, one registry entry each:

* :class:`MetaLlama`: Meta's reference code, karpathy's llama2.c and torchtitan's llama3, which share parameter
  names (``tok_embeddings``, ``layers.N.attention.wq``, ``layers.N.feed_forward.w1``, ...). They apply RoPE to
  *interleaved* pairs of a head's dimensions, transformers' Llama to its two *halves*: the rows of ``wq`` and
  ``wk`` are permuted per head (:data:`ROPE_PERMUTED`, with ``n_heads`` for q and ``n_kv_heads`` for k). Getting it
  wrong loads fine and gives plausible text for a few dozen tokens, so the test-suite checks it on logits.
* :class:`LitGPTLlama`: litgpt's Llama-shaped configs (``transformer.h.N.attn.qkv``, ``mlp.fc_1``, ...). The
  fused ``qkv`` rows are split contiguously into q, k and v; litgpt rotates halves already (no permutation).

What the weights do not say (heads, RMSNorm epsilon, RoPE base and scaling) comes from the checkpoint's config
(llama2.c ``model_args``, Meta ``params.json``, litgpt ``model_config.yaml``, a live module's ``params``/``args``)
or from options; a missing one is refused with the option that provides it, never guessed.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hfexport._util.brief import brief
from hfexport._util.validation import Range, shown
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
    unknown_tokenizer,
)
from hfexport.io.sidecars import Sidecar

logger = logging.getLogger(__name__)

__all__ = [
    "LLAMA_LAYER_SHAPES",
    "LLAMA_RANGES",
    "ROPE_TYPES",
    "LitGPTLlama",
    "MetaLlama",
    "config_problems",
    "expected_shapes",
    "llama_forward",
]

#: Meta / llama2.c / torchtitan per-layer suffix → transformers suffix.
META_LAYER_KEYS: dict[str, str] = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",  # SiLU's input
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
#: Interleaved-pair RoPE weights and whose head count their permutation uses.
ROPE_PERMUTED: dict[str, str] = {"attention.wq.weight": "n_heads", "attention.wk.weight": "n_kv_heads"}
#: RoPE tables some Meta-style modules keep in their state dict (Llama 2's ``rope.freqs``, torchtitan's
#: ``freqs_cis``, old llama2.c ``freqs_cos``/``freqs_sin``): recomputed by transformers, not weights.
META_IGNORED = re.compile(r"^(rope\.freqs|freqs_cis|freqs_cos|freqs_sin)$")

#: litgpt per-layer suffix → transformers suffix, after ``norm_1`` and the split ``attn.qkv`` (see
#: :class:`LitGPTLlama`).
LITGPT_LAYER_KEYS: dict[str, str] = {
    "attn.proj.weight": "self_attn.o_proj.weight",
    "norm_2.weight": "post_attention_layernorm.weight",
    "mlp.fc_1.weight": "mlp.gate_proj.weight",
    "mlp.fc_2.weight": "mlp.up_proj.weight",
    "mlp.proj.weight": "mlp.down_proj.weight",
}
#: litgpt config fields and the values a ``LlamaForCausalLM`` can represent (fields absent from the file pass).
LITGPT_LLAMA_SHAPED: dict[str, Any] = {
    "norm_class_name": "RMSNorm",
    "mlp_class_name": "LLaMAMLP",
    "rotary_percentage": 1.0,
    "parallel_residual": False,
    "shared_attention_norm": False,
    "bias": False,
    "attn_bias": False,
    "lm_head_bias": False,
    "scale_embeddings": False,
    "rope_condense_ratio": 1,
    "post_attention_norm": False,
    "post_mlp_norm": False,
    "norm_qk": False,
    "rmsnorm_add_unit_offset": False,
    "attention_logit_softcapping": None,
    "final_logit_softcapping": None,
    "sliding_window_size": None,
    "n_expert": 0,
}
LITGPT_IGNORED = re.compile(r"(^|\.)(cos|sin|mask_cache|attn\.kv_cache\..*)$")

#: transformers' per-layer weights and their shapes, from the config (``h`` hidden, ``q``/``kv`` projection rows,
#: ``i`` intermediate): the expected shape of every target key follows from ``config.json``.
LLAMA_LAYER_SHAPES: dict[str, tuple[str, ...]] = {
    "input_layernorm.weight": ("h",),
    "self_attn.q_proj.weight": ("q", "h"),
    "self_attn.k_proj.weight": ("kv", "h"),
    "self_attn.v_proj.weight": ("kv", "h"),
    "self_attn.o_proj.weight": ("h", "q"),
    "post_attention_layernorm.weight": ("h",),
    "mlp.gate_proj.weight": ("i", "h"),
    "mlp.up_proj.weight": ("i", "h"),
    "mlp.down_proj.weight": ("h", "i"),
}


#: The range of each number of a Llama ``config.json`` (written by hfexport, checked by ``hfexport verify``), and
#: where a wrong value comes from. A key absent from the config is not checked.
LLAMA_RANGES: dict[str, tuple[Range, str]] = {
    "rope_theta": (Range(above=0.0), "--rope_theta, config={'rope_theta': ...}"),
    "rms_norm_eps": (Range(minimum=0.0, maximum=1.0), "--norm_eps, config={'norm_eps': ...}"),
    "max_position_embeddings": (Range(integer=True, minimum=1), "the context length: config={'max_seq_len': N}"),
    "attention_dropout": (Range(minimum=0.0, maximum=1.0), ""),
}
#: The RoPE kinds transformers' Llama implements (``rope_scaling.rope_type``), and the range of their numbers.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
ROPE_RANGES: dict[str, tuple[Range, str]] = {
    "rope_theta": (Range(above=0.0), "--rope_theta"),
    "factor": (Range(above=0.0), "--rope_scaling_factor, config={'rope_scaling_factor': ...}"),
    "low_freq_factor": (Range(above=0.0), ""),
    "high_freq_factor": (Range(above=0.0), ""),
    "original_max_position_embeddings": (Range(integer=True, minimum=1), ""),
}


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """What is out of range in a Llama ``config.json``, one line each (each naming the key, the value, what is
    expected and, where hfexport takes it from an option, the option): RoPE base, RMSNorm epsilon, context length,
    the RoPE scaling's kind and numbers. ``[]`` when every number is in range."""
    problems = range_problems(config, LLAMA_RANGES)
    for section in ("rope_scaling", "rope_parameters"):  # transformers 4.x writes the first, 5.x the second
        rope = config.get(section)
        if rope is None:
            continue
        if not isinstance(rope, Mapping):
            problems.append(f"{section} is a {type(rope).__name__}, not an object or null")
            continue
        kind = rope.get("rope_type", rope.get("type"))
        if kind not in ROPE_TYPES:
            problems.append(
                f"{section}.rope_type={shown(kind)} is not a RoPE kind transformers' Llama implements "
                f"({', '.join(ROPE_TYPES)})"
            )
        problems.extend(range_problems(rope, ROPE_RANGES, f"{section}."))
        low, high = rope.get("low_freq_factor"), rope.get("high_freq_factor")
        in_range = all(Range(above=0.0).problem(v) is None for v in (low, high))  # None is out of range too
        if kind == "llama3" and in_range and low is not None and high is not None and not high > low:
            problems.append(
                f"{section}.high_freq_factor={high!r} is not above low_freq_factor={low!r}, which Llama 3.1's RoPE "
                "divides by their difference"
            )
    return problems


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a ``LlamaForCausalLM`` with this ``config.json`` loads, by name.

    Raises:
        ConversionError: a config value is not a size (see :func:`~hfexport.families.base.config_dim`).
    """
    hidden, heads = config_dim(config, "hidden_size"), config_dim(config, "num_attention_heads")
    head_dim = config_dim(config, "head_dim") if config.get("head_dim") is not None else hidden // max(heads, 1)
    dims = {
        "h": hidden,
        "q": heads * head_dim,
        "kv": config_dim(config, "num_key_value_heads") * head_dim,
        "i": config_dim(config, "intermediate_size"),
    }
    shapes = {
        "model.embed_tokens.weight": (config_dim(config, "vocab_size"), hidden),
        "model.norm.weight": (hidden,),
    }
    for i in range(config_dim(config, "num_hidden_layers")):
        for suffix, dim_names in LLAMA_LAYER_SHAPES.items():
            shapes[f"model.layers.{i}.{suffix}"] = tuple(dims[d] for d in dim_names)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config_dim(config, "vocab_size"), hidden)
    return shapes


@dataclass(frozen=True)
class _Dims:
    """A Llama's dimensions once the facts are resolved."""

    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_positions: int


class _LlamaFamily:
    """What both Llama sources share: facts → dimensions, the embedding/head/tie logic, the config."""

    name = "llama"
    expects = ""
    embed_key = ""
    norm_key = ""
    head_key = ""
    layer_prefix = ""
    sentencepiece = False  # the family's tokenizers are sentencepiece models (their bos/eos ids are known)
    model_type = "llama"
    display_name = "Llama"
    sidecar: Sidecar | None = None
    #: litgpt keeps its tokenizer directory beside ``lit_model.pth``; llama2.c and Llama 2 a sentencepiece model.
    tokenizer_beside: tuple[str, ...] = ("tokenizer.json", "tokenizer.model")

    def config_problems(self, config: Mapping[str, Any]) -> list[str]:
        return config_problems(config)

    def shape_problems(self, config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> list[str]:
        return compare_shapes(self.display_name, self.expected_shapes, config, shapes)

    def context_length(self, config: Mapping[str, Any]) -> int | None:
        return config.get("max_position_embeddings") or None

    def special_ids(self, vocab: int) -> tuple[int | None, int | None]:
        return _special_ids(vocab, self.sentencepiece)

    def tokenizer_guess(self, vocab: int | None) -> TokenizerGuess:
        # Its tokenizers are found beside the checkpoint (tokenizer_beside), never inferred from the rows alone.
        return unknown_tokenizer(self.model_type, vocab)

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
        """:func:`llama_forward` against a ``LlamaForCausalLM``: the source's facts where it records them, the
        llama2.c / Meta code defaults where ``convert`` uses them, else the export's (listed in ``unchecked``)."""
        del activation  # SiLU, always
        cfg = exported.config
        raw = dict(facts.raw or {})
        meta_config = "dim" in raw or "n_layers" in raw  # a Meta / llama2.c ModelArgs: the code defaults are known
        rope_cfg: dict[str, Any] = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        eps = facts.layer_norm_epsilon if facts.layer_norm_epsilon is not None else 1e-5 if meta_config else None
        if eps is None:
            eps = cfg.rms_norm_eps
            unchecked.append(f"RMSNorm epsilon ({eps:g}, from config.json): not recorded by the checkpoint")
        theta = facts.rope_theta if facts.rope_theta is not None else 10000.0 if meta_config else None
        if theta is None:
            theta = rope_cfg["rope_theta"] if rope_cfg.get("rope_theta") else getattr(cfg, "rope_theta", 10000.0)
            unchecked.append(f"RoPE base ({theta:g}, from config.json): not recorded by the checkpoint")
        scaling_recorded = raw.get("rope_scaling") or raw.get("rope_adjustments") or raw.get("rope_scaling_factor")
        if rope_cfg.get("rope_type") == "llama3" and not (scaling_recorded or raw.get("scale_factor")):
            unchecked.append("RoPE scaling factor (from config.json): not recorded by the checkpoint")
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg.vocab_size, (2, min(tokens, cfg.max_position_embeddings)), generator=gen)
        with torch.no_grad():
            a = exported(ids).logits.float()
            b = llama_forward(
                state_dict,
                ids,
                n_heads=n_head,
                n_kv_heads=facts.n_kv_heads or cfg.num_key_value_heads,
                head_dim=getattr(cfg, "head_dim", None),
                eps=eps,
                rope_theta=theta,
                rope_scaling=rope_cfg if rope_cfg.get("rope_type") == "llama3" else None,
            )
        return float((a - b[..., : cfg.vocab_size]).abs().max())

    # -- facts --------------------------------------------------------------------------------------------------
    def _resolve(
        self, facts: ModelFacts, hidden: int, n_layers: int, kv_rows: int | None, qkv_rows: int | None
    ) -> _Dims:
        raw = dict(facts.raw or {})
        meta_config = "dim" in raw or "n_layers" in raw  # a Meta/llama2.c ModelArgs: its code defaults are known
        missing: dict[str, str] = {}  # ModelFacts field → how the message names it and its option
        n_heads = facts.n_head
        if n_heads is None:
            missing["n_head"] = "n_heads (--n_head N, or config={'n_heads': N})"
        eps = facts.layer_norm_epsilon
        if eps is None and meta_config:
            eps = 1e-5  # ModelArgs.norm_eps's default in llama2.c and Meta's Llama 2 / 3 code
        if eps is None:
            missing["layer_norm_epsilon"] = (
                "the RMSNorm epsilon (--norm_eps; 1e-5 for llama2.c and Llama 3, 1e-5 or 1e-6 for Llama 2)"
            )
        theta = facts.rope_theta
        if theta is None and meta_config:
            theta = 10000.0  # llama2.c and Llama 2 hard-code it; Llama 3's configs record theirs
        if theta is None:
            missing["rope_theta"] = "the RoPE base (--rope_theta; 10000 for llama2.c and Llama 2, 500000 for Llama 3)"
        if missing or n_heads is None or eps is None or theta is None:
            raise MissingFactError(
                f"The checkpoint does not record {', '.join(missing.values())}; its weights cannot tell. Pass "
                + ("it" if len(missing) == 1 else "them")
                + " (CLI options, or config={...} for export_hf / HFExporter / HFExportCallback).",
                fact=next(iter(missing)),
                facts=tuple(missing),
                family=self.name,
            )
        n_heads = positive_int("n_heads", n_heads, f"Pass the right one with --n_head N (dim is {hidden}).")
        head_key = next((k for k in ("head_size", "head_dim") if raw.get(k) is not None), None)
        if head_key is not None:
            head_dim = positive_int(head_key, raw[head_key], f"Fix {head_key} in the model's config.")
        else:
            head_dim = hidden // n_heads
        if head_key is None and hidden % n_heads:
            raise ConversionError(f"n_heads={n_heads} does not divide dim={hidden}; pass the right --n_head.")
        if head_dim % 2:
            raise ConversionError(f"head_dim={head_dim} is odd: RoPE rotates pairs; check n_heads={n_heads}.")
        n_kv = facts.n_kv_heads
        if n_kv is not None:
            n_kv = positive_int("n_kv_heads", n_kv, "Fix n_kv_heads (n_query_groups) in the model's config.")
        if n_kv is None and kv_rows is not None:
            n_kv = kv_rows // head_dim
        if n_kv is None and qkv_rows is not None:
            n_kv = (qkv_rows // head_dim - n_heads) // 2
        n_kv = n_kv or n_heads
        if n_kv < 1 or n_heads % n_kv:
            raise ConversionError(
                f"n_kv_heads={n_kv} does not divide n_heads={n_heads}: grouped-query attention needs whole groups."
            )
        return _Dims(
            hidden=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            eps=float(eps),
            rope_theta=float(theta),
            rope_scaling=_rope_scaling(raw),
            max_positions=_max_positions(facts, float(theta), raw),
        )

    def expected_shapes(self, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Every ``LlamaForCausalLM`` key for ``config`` and its shape (``plan_conversion`` checks the plan)."""
        return expected_shapes(config)

    # -- the plan -----------------------------------------------------------------------------------------------
    def _require(self, sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        return require(sd, key, f"a {self.name} model")

    def _finish(
        self,
        sd: Mapping[str, torch.Tensor],
        tensors: list[TensorPlan],
        sources: dict[str, str],
        dims: _Dims,
        intermediate: int,
        *,
        vocab_size: int | None,
        untie_embeddings: bool,
    ) -> ConversionPlan:
        """Add embeddings, final norm and head; check every shape against the config; build the plan."""
        embed = self._require(sd, self.embed_key)
        trained_vocab = embed.shape[0]
        vocab = out_vocab(vocab_size, trained_vocab)
        rows = vocab if vocab != trained_vocab else None
        tensors.insert(0, TensorPlan("model.embed_tokens.weight", embed, (vocab, dims.hidden), rows=rows))
        sources["model.embed_tokens.weight"] = self.embed_key
        norm = self._require(sd, self.norm_key)
        tensors.append(TensorPlan("model.norm.weight", norm, tuple(norm.shape)))
        sources["model.norm.weight"] = self.norm_key
        head = sd.get(self.head_key)
        tied = is_tied(head, embed)  # llama2.c ties output to tok_embeddings (one tensor)
        if untie_embeddings or not tied:
            source = head if head is not None else embed
            key = self.head_key if head is not None else self.embed_key
            tensors.append(
                TensorPlan(
                    "lm_head.weight",
                    source,
                    (vocab, source.shape[1]),
                    rows=vocab if vocab != source.shape[0] else None,
                )
            )
            sources["lm_head.weight"] = key
            tied = False
        known = set(sources.values()) | {self.head_key}
        refuse_unexpected(sd, known, f"{self.name} model", "a Llama-shaped model", self.expects)

        bos, eos = self.special_ids(vocab)
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": dims.hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": dims.n_layers,
            "num_attention_heads": dims.n_heads,
            "num_key_value_heads": dims.n_kv_heads,
            "head_dim": dims.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": dims.max_positions,
            "rms_norm_eps": dims.eps,
            "rope_theta": dims.rope_theta,
            "rope_scaling": dims.rope_scaling,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "initializer_range": 0.02,
            "use_cache": True,
            "tie_word_embeddings": tied,
            "bos_token_id": bos,
            "eos_token_id": eos,
        }
        generation = {k: v for k, v in (("bos_token_id", bos), ("eos_token_id", eos)) if v is not None}
        notes = [f"{self.name} source; RoPE base {dims.rope_theta:g}, RMSNorm eps {dims.eps:g}"]
        if vocab != trained_vocab:
            notes.append(f"vocabulary trimmed from {trained_vocab} to {vocab} rows")
        return ConversionPlan(self.name, tensors, config, generation, notes)


class MetaLlama(_LlamaFamily):
    """Meta's reference Llama, llama2.c and torchtitan's llama3 (the same parameter names)."""

    name = "llama"
    expects = (
        "Meta / llama2.c / torchtitan names: tok_embeddings.weight, layers.N.attention.wq.weight, "
        "layers.N.feed_forward.w1.weight, norm.weight, output.weight"
    )
    embed_key = "tok_embeddings.weight"
    norm_key = "norm.weight"
    head_key = "output.weight"
    layer_prefix = "layers."
    sentencepiece = True
    sidecar: Sidecar | None = Sidecar(
        "params.json",
        "meta",
        "llama",
        "tok_embeddings.weight",
        "layers.",
        {"dim": "width", "n_layers": "layers", "vocab_size": "vocab"},
        unset={"vocab_size": -1},  # Llama 2's params.json: "defined by the tokenizer"
        model_parallel=True,  # consolidated.00.pth, .01, ...
    )

    def detect(self, keys: set[str]) -> bool:
        return "tok_embeddings.weight" in keys and any(k.endswith("attention.wq.weight") for k in keys)

    def plan(
        self,
        state_dict: Mapping[str, torch.Tensor],
        facts: ModelFacts,
        *,
        activation: str,
        vocab_size: int | None,
        untie_embeddings: bool,
    ) -> ConversionPlan:
        del activation  # SiLU, always
        sd = {k: v for k, v in state_dict.items() if not META_IGNORED.match(k)}
        layers = layer_indices(sd, self.layer_prefix)
        embed = self._require(sd, self.embed_key)
        wk = self._require(sd, "layers.0.attention.wk.weight")
        dims = self._resolve(facts, embed.shape[1], len(layers), kv_rows=wk.shape[0], qkv_rows=None)
        heads = {"n_heads": dims.n_heads, "n_kv_heads": dims.n_kv_heads}
        tensors: list[TensorPlan] = []
        sources: dict[str, str] = {}
        for i in layers:
            for src_suffix, hf_suffix in META_LAYER_KEYS.items():
                key, name = f"layers.{i}.{src_suffix}", f"model.layers.{i}.{hf_suffix}"
                tensor = self._require(sd, key)
                permute = ROPE_PERMUTED.get(src_suffix)
                rope_heads = heads[permute] if permute else None
                if rope_heads is not None and tensor.shape[0] != rope_heads * dims.head_dim:
                    raise ConversionError(
                        f"{key} has shape {tuple(tensor.shape)}, expected ({rope_heads * dims.head_dim}, "
                        f"{dims.hidden}) for {permute}={rope_heads} heads of {dims.head_dim}: check --n_head "
                        "(and n_kv_heads in the config)."
                    )
                tensors.append(TensorPlan(name, tensor, tuple(tensor.shape), rope_heads=rope_heads))
                sources[name] = key
        intermediate = self._require(sd, "layers.0.feed_forward.w1.weight").shape[0]
        return self._finish(
            sd, tensors, sources, dims, intermediate, vocab_size=vocab_size, untie_embeddings=untie_embeddings
        )


class LitGPTLlama(_LlamaFamily):
    """litgpt's Llama-shaped models (RMSNorm + LLaMAMLP + full rotary), ``lit_model.pth`` + ``model_config.yaml``."""

    name = "litgpt-llama"
    expects = (
        "litgpt names: transformer.wte.weight, transformer.h.N.attn.qkv.weight, transformer.h.N.mlp.fc_1.weight, "
        "transformer.ln_f.weight, lm_head.weight (Llama-shaped configs)"
    )
    embed_key = "transformer.wte.weight"
    norm_key = "transformer.ln_f.weight"
    head_key = "lm_head.weight"
    layer_prefix = "transformer.h."
    sidecar: Sidecar | None = Sidecar(
        "model_config.yaml",
        "litgpt",
        "litgpt-llama",
        "transformer.wte.weight",
        "transformer.h.",
        {"n_embd": "width", "n_layer": "layers", "padded_vocab_size": "vocab"},
    )

    def detect(self, keys: set[str]) -> bool:
        return (
            "transformer.wte.weight" in keys
            and "transformer.wpe.weight" not in keys
            and any(k.endswith(("attn.qkv.weight", "attn.attn.weight")) for k in keys)
            and not any(k.endswith("attn.qkv.bias") for k in keys)  # q/k/v biases: a Qwen2 (qwen2.py)
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
        del activation
        raw = dict(facts.raw or {})
        _check_litgpt_config(raw)
        sd = {k: v for k, v in state_dict.items() if not LITGPT_IGNORED.search(k)}
        if any(k.endswith("attn.attn.weight") for k in sd):
            raise ConversionError(
                "This litgpt checkpoint stores attention as the older fused `attn.attn` weight (q, k, v interleaved "
                "per query group), which hfexport does not convert. Load it into a current litgpt GPT (it "
                "reassembles attn.attn into attn.qkv on load) and save model.state_dict() again, then convert that."
            )
        not_llama = sorted({k.split(".", 3)[-1] for k in sd if k.endswith(("mlp.fc.weight", "norm_1.bias"))})
        if not_llama:
            raise ConversionError(
                f"This litgpt model has {', '.join(not_llama)}: it is not Llama-shaped (GptNeoxMLP / LayerNorm "
                "with bias). hfexport converts litgpt's Llama-shaped models only (RMSNorm + LLaMAMLP)."
            )
        layers = layer_indices(sd, self.layer_prefix)
        embed = self._require(sd, self.embed_key)
        qkv0 = self._require(sd, "transformer.h.0.attn.qkv.weight")
        dims = self._resolve(facts, embed.shape[1], len(layers), kv_rows=None, qkv_rows=qkv0.shape[0])
        q_rows, kv_rows = dims.n_heads * dims.head_dim, dims.n_kv_heads * dims.head_dim
        tensors: list[TensorPlan] = []
        sources: dict[str, str] = {}
        for i in layers:
            prefix, out = f"transformer.h.{i}.", f"model.layers.{i}."
            norm_1 = self._require(sd, prefix + "norm_1.weight")
            tensors.append(TensorPlan(out + "input_layernorm.weight", norm_1, tuple(norm_1.shape)))
            sources[out + "input_layernorm.weight"] = prefix + "norm_1.weight"
            qkv = self._require(sd, prefix + "attn.qkv.weight")
            if qkv.shape[0] != q_rows + 2 * kv_rows:
                raise ConversionError(
                    f"{prefix}attn.qkv.weight has {qkv.shape[0]} rows, expected {q_rows + 2 * kv_rows} = "
                    f"(n_head {dims.n_heads} + 2 × n_query_groups {dims.n_kv_heads}) × head_size {dims.head_dim}: "
                    "check n_head / n_query_groups / head_size in model_config.yaml."
                )
            # Current litgpt splits qkv contiguously: (n_head, n_query_groups, n_query_groups) × head_size rows.
            for part, start, rows in (("q", 0, q_rows), ("k", q_rows, kv_rows), ("v", q_rows + kv_rows, kv_rows)):
                name = f"{out}self_attn.{part}_proj.weight"
                tensors.append(TensorPlan(name, qkv, (rows, qkv.shape[1]), row_start=start))
                sources[name] = prefix + "attn.qkv.weight"
            for src_suffix, hf_suffix in LITGPT_LAYER_KEYS.items():
                tensor = self._require(sd, prefix + src_suffix)
                tensors.append(TensorPlan(out + hf_suffix, tensor, tuple(tensor.shape)))
                sources[out + hf_suffix] = prefix + src_suffix
        intermediate = self._require(sd, "transformer.h.0.mlp.fc_1.weight").shape[0]
        plan = self._finish(
            sd, tensors, sources, dims, intermediate, vocab_size=vocab_size, untie_embeddings=untie_embeddings
        )
        if raw.get("name"):
            plan.card_facts["litgpt_config"] = brief(raw["name"], quote=False)
        return plan


# -- helpers ----------------------------------------------------------------------------------------------------
def _check_litgpt_config(raw: Mapping[str, Any]) -> None:
    wrong = []
    for key, wanted in LITGPT_LLAMA_SHAPED.items():
        if key not in raw:
            continue
        value = raw[key]
        if key == "n_expert":
            ok = value is None or (isinstance(value, (int, float)) and not value)
        elif key == "rotary_percentage":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1.0
        else:
            ok = value == wanted if isinstance(value, (str, int, float)) or value is None else False
            ok = ok or (wanted is False and value in (None, 0, False))
        if not ok:
            wrong.append(f"{key}={brief(value)} (needs {wanted!r})")
    if wrong:
        raise ConversionError(
            f"litgpt config {brief(raw.get('name', '?'))} is not Llama-shaped: {', '.join(wrong)}. hfexport converts "
            "litgpt's Llama-shaped models only (RMSNorm + LLaMAMLP, full rotary, no biases) to LlamaForCausalLM."
        )


def _rope_scaling(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """transformers' ``rope_scaling`` for Llama 3.1-style scaled RoPE, when the source's config records it."""
    if isinstance(raw.get("rope_scaling"), Mapping):  # already transformers-shaped (torchtitan, HF-like configs)
        return dict(raw["rope_scaling"])
    adjust = raw.get("rope_adjustments")  # litgpt
    if isinstance(adjust, Mapping) and adjust:
        needed = ("factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len")
        missing = [key for key in needed if adjust.get(key) is None]
        if missing:
            raise ConversionError(
                f"rope_adjustments lacks {', '.join(missing)}: Llama 3.1-style RoPE scaling needs all of "
                f"{', '.join(needed)}, and none has a default a model could be trusted with. Fix rope_adjustments "
                "in the model's config (litgpt's model_config.yaml)."
            )
        return {
            "rope_type": "llama3",
            "factor": float(adjust["factor"]),
            "low_freq_factor": float(adjust["low_freq_factor"]),
            "high_freq_factor": float(adjust["high_freq_factor"]),
            "original_max_position_embeddings": int(adjust["original_max_seq_len"]),
        }
    if raw.get("use_scaled_rope"):  # Meta's params.json / ModelArgs
        factor = raw.get("rope_scaling_factor") or raw.get("scale_factor")
        if factor is None:
            raise ConversionError(
                "The config says use_scaled_rope=true but not the scaling factor, which differs between releases "
                "(8 for Llama 3.1, 32 for Llama 3.2 1B/3B); a wrong one silently changes every logit. Pass it: "
                "--rope_scaling_factor F (CLI) or config={'rope_scaling_factor': F}."
            )
        return {
            "rope_type": "llama3",
            "factor": float(factor),
            "low_freq_factor": float(raw.get("low_freq_factor") or 1.0),
            "high_freq_factor": float(raw.get("high_freq_factor") or 4.0),
            "original_max_position_embeddings": int(raw.get("original_max_position_embeddings") or 8192),
        }
    return None


def _max_positions(facts: ModelFacts, theta: float, raw: Mapping[str, Any]) -> int:
    """The context length recorded, else transformers' own choice for Meta releases (convert_llama_weights_to_hf)."""
    if facts.block_size:
        return int(facts.block_size)
    if raw.get("use_scaled_rope") or raw.get("rope_adjustments"):
        return 131072  # Llama 3.1 / 3.2
    if theta >= 500000:
        return 8192  # Llama 3
    logger.warning("The checkpoint does not record its context length; writing max_position_embeddings=4096")
    return 4096


def _special_ids(vocab: int, sentencepiece: bool) -> tuple[int | None, int | None]:
    """bos/eos ids of the tokenizers these families use; ``None`` when unknown (a tokenizer may fill them)."""
    if vocab == 128256:
        return 128000, 128001  # Llama 3's tiktoken vocabulary
    if sentencepiece or vocab == 32000:
        return 1, 2  # sentencepiece's defaults: Llama 2's tokenizer and llama2.c's trained ones
    return None, None


def llama_forward(
    state_dict: Mapping[str, torch.Tensor],
    ids: torch.Tensor,
    *,
    n_heads: int,
    n_kv_heads: int,
    eps: float,
    rope_theta: float,
    head_dim: int | None = None,
    rope_scaling: dict[str, Any] | None = None,
) -> torch.Tensor:
    """A Llama's forward pass, written from its equations, over a *source-layout* state dict (float32).

    Meta / llama2.c / torchtitan names rotate interleaved pairs (as complex numbers, like Meta's code); litgpt
    names (fused ``attn.qkv``) rotate halves. No weight is permuted here, so a wrong permutation in the export
    shows up as a difference.
    """
    sd = {k: v.float() for k, v in state_dict.items()}
    meta = "tok_embeddings.weight" in sd
    embed = sd["tok_embeddings.weight" if meta else "transformer.wte.weight"]
    dim = embed.shape[1]
    hd = head_dim or dim // n_heads
    freqs = 1.0 / (rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    if rope_scaling:
        factor, low, high = rope_scaling["factor"], rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        old = rope_scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / freqs
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * freqs / factor + smooth * freqs
        freqs = torch.where(wavelen < old / high, freqs, torch.where(wavelen > old / low, freqs / factor, blended))
    b, t = ids.shape
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs)
    cos, sin = angles.cos().float(), angles.sin().float()

    def rope(x: torch.Tensor) -> torch.Tensor:  # (b, t, heads, hd)
        if meta:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            c, s = cos.view(1, t, 1, -1), sin.view(1, t, 1, -1)
            return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(3)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        c, s = cos.repeat(1, 2).view(1, t, 1, -1), sin.repeat(1, 2).view(1, t, 1, -1)
        return x * c + torch.cat((-x2, x1), dim=-1) * s

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    x = embed[ids]
    prefix = "layers." if meta else "transformer.h."
    n_layers = len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})
    for i in range(n_layers):
        p = f"{prefix}{i}."
        if meta:
            h = norm(x, sd[p + "attention_norm.weight"])
            q, k, v = (h @ sd[p + f"attention.{w}.weight"].t() for w in ("wq", "wk", "wv"))
            wo, n2 = sd[p + "attention.wo.weight"], sd[p + "ffn_norm.weight"]
            w1, w3, w2 = (sd[p + f"feed_forward.{w}.weight"] for w in ("w1", "w3", "w2"))
        else:
            h = norm(x, sd[p + "norm_1.weight"])
            q, k, v = (h @ sd[p + "attn.qkv.weight"].t()).split((n_heads * hd, n_kv_heads * hd, n_kv_heads * hd), -1)
            wo, n2 = sd[p + "attn.proj.weight"], sd[p + "norm_2.weight"]
            w1, w3, w2 = (sd[p + f"mlp.{w}.weight"] for w in ("fc_1", "fc_2", "proj"))
        q, k, v = q.view(b, t, n_heads, hd), k.view(b, t, n_kv_heads, hd), v.view(b, t, n_kv_heads, hd)
        q, k = rope(q), rope(k)
        k, v = (z.repeat_interleave(n_heads // n_kv_heads, dim=2) for z in (k, v))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + y.transpose(1, 2).reshape(b, t, -1) @ wo.t()
        h = norm(x, n2)
        x = x + (F.silu(h @ w1.t()) * (h @ w3.t())) @ w2.t()
    x = norm(x, sd["norm.weight" if meta else "transformer.ln_f.weight"])
    head = sd.get("output.weight" if meta else "lm_head.weight", embed)
    return x @ head.t()
