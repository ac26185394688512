"""Qwen2-style models from litgpt checkpoints → Hugging Face ``Qwen2ForCausalLM``.

A Qwen2 (Qwen2 / Qwen2.5) is a Llama with biases on its query, key and value projections (none on the output
projection or the MLP). litgpt stores it like its Llamas (``lit_model.pth`` + ``model_config.yaml``, fused
``transformer.h.N.attn.qkv``) plus the fused bias ``attn.qkv.bias``, split contiguously like the weight into
``(n_head, n_query_groups, n_query_groups) × head_size`` rows; litgpt rotates halves like transformers (no RoPE
permutation). Everything else is :class:`~hfexport.families.llama.LitGPTLlama`'s.

Which family a litgpt checkpoint belongs to is decided by its tensors (the ``attn.qkv.bias`` of every layer) and
corroborated by its ``model_config.yaml`` where there is one (``attn_bias: true``); a config that says otherwise
is refused, never overridden.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from hfexport._util.brief import brief
from hfexport.errors import ConversionError
from hfexport.families.base import ConversionPlan, ModelFacts, TensorPlan, layer_indices
from hfexport.families.llama import LitGPTLlama
from hfexport.families.llama import expected_shapes as llama_shapes
from hfexport.io.sidecars import Sidecar

logger = logging.getLogger(__name__)

__all__ = ["LitGPTQwen2", "qwen2_forward"]

_QKV_BIAS = "attn.qkv.bias"


class LitGPTQwen2(LitGPTLlama):
    """litgpt's Qwen2-shaped models (a Llama-shaped config with ``attn_bias: true``) → ``Qwen2ForCausalLM``."""

    name = "litgpt-qwen2"
    expects = (
        "litgpt names with q/k/v biases: transformer.wte.weight, transformer.h.N.attn.qkv.weight, "
        "transformer.h.N.attn.qkv.bias, transformer.h.N.mlp.fc_1.weight, transformer.ln_f.weight (Qwen2 / Qwen2.5)"
    )
    model_type = "qwen2"
    display_name = "Qwen2"
    sentencepiece = False
    sidecar: Sidecar | None = Sidecar(
        "model_config.yaml",
        "litgpt",
        "litgpt-qwen2",
        "transformer.wte.weight",
        "transformer.h.",
        {"n_embd": "width", "n_layer": "layers", "padded_vocab_size": "vocab"},
    )
    #: litgpt keeps the Hugging Face tokenizer files it was downloaded with beside ``lit_model.pth``.
    tokenizer_beside: tuple[str, ...] = ("tokenizer.json",)

    def detect(self, keys: set[str]) -> bool:
        return (
            "transformer.wte.weight" in keys
            and "transformer.wpe.weight" not in keys
            and any(k.endswith("attn.qkv.weight") for k in keys)
            and any(k.endswith(_QKV_BIAS) for k in keys)
        )

    def special_ids(self, vocab: int) -> tuple[int | None, int | None]:
        return None, None  # Qwen's tokenizers say theirs (<|endoftext|>); the vocabulary's size does not tell

    def expected_shapes(self, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Every ``Qwen2ForCausalLM`` key for ``config``: a Llama's plus the q/k/v biases."""
        shapes = llama_shapes(config)
        for name, shape in list(shapes.items()):
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                shapes[name.removesuffix("weight") + "bias"] = (shape[0],)
        return shapes

    def plan(
        self,
        state_dict: Mapping[str, torch.Tensor],
        facts: ModelFacts,
        *,
        activation: str,
        vocab_size: int | None,
        untie_embeddings: bool,
    ) -> ConversionPlan:
        raw = dict(facts.raw or {})
        biases = {k: v for k, v in state_dict.items() if k.endswith(_QKV_BIAS)}
        _check_qwen2_config(raw)
        # The rest is a litgpt Llama: its checks (Llama-shaped config, no unknown tensor) apply as they are.
        llama_raw = {**raw, "attn_bias": False} if "attn_bias" in raw else raw
        plan = super().plan(
            {k: v for k, v in state_dict.items() if k not in biases},
            dataclasses.replace(facts, raw=llama_raw),
            activation=activation,
            vocab_size=vocab_size,
            untie_embeddings=untie_embeddings,
        )
        config = plan.config
        head_dim = config["head_dim"]
        q_rows, kv_rows = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
        for i in layer_indices(state_dict, self.layer_prefix):
            key = f"{self.layer_prefix}{i}.{_QKV_BIAS}"
            bias = self._require(biases, key)
            if tuple(bias.shape) != (q_rows + 2 * kv_rows,):
                raise ConversionError(
                    f"{key} has shape {tuple(bias.shape)}, expected ({q_rows + 2 * kv_rows},): one bias per row of "
                    "attn.qkv.weight. The checkpoint is damaged or not a litgpt Qwen2."
                )
            for part, start, rows in (("q", 0, q_rows), ("k", q_rows, kv_rows), ("v", q_rows + kv_rows, kv_rows)):
                name = f"model.layers.{i}.self_attn.{part}_proj.bias"
                plan.tensors.append(TensorPlan(name, bias, (rows,), row_start=start))
        for drop in ("attention_bias", "mlp_bias", "pretraining_tp"):  # Llama's; Qwen2 has q/k/v biases always
            config.pop(drop, None)
        config.update(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=config["num_hidden_layers"],
        )
        return plan

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
        """:func:`qwen2_forward` on the litgpt weights against the export: the checkpoint's facts (its
        ``model_config.yaml``), else the export's (listed in ``unchecked``)."""
        del activation  # SiLU, always
        cfg = exported.config
        rope_cfg: dict[str, Any] = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        eps = facts.layer_norm_epsilon
        if eps is None:
            eps = cfg.rms_norm_eps
            unchecked.append(f"RMSNorm epsilon ({eps:g}, from config.json): not recorded by the checkpoint")
        theta = facts.rope_theta
        if theta is None:
            theta = rope_cfg["rope_theta"] if rope_cfg.get("rope_theta") else getattr(cfg, "rope_theta", 10000.0)
            unchecked.append(f"RoPE base ({theta:g}, from config.json): not recorded by the checkpoint")
        raw = dict(facts.raw or {})
        head_dim = raw.get("head_size") or getattr(cfg, "head_dim", None)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg.vocab_size, (2, min(tokens, cfg.max_position_embeddings)), generator=gen)
        with torch.no_grad():
            a = exported(ids).logits.float()
            b = qwen2_forward(
                state_dict,
                ids,
                n_heads=n_head,
                n_kv_heads=facts.n_kv_heads or cfg.num_key_value_heads,
                head_dim=head_dim,
                eps=float(eps),
                rope_theta=float(theta),
            )
        return float((a - b[..., : cfg.vocab_size]).abs().max())


def _check_qwen2_config(raw: Mapping[str, Any]) -> None:
    """Refuse a ``model_config.yaml`` that contradicts the q/k/v bias tensors (absent fields pass: the tensors
    tell); the rest of the config is checked as a litgpt Llama's."""
    if "attn_bias" in raw and raw["attn_bias"] is not True:
        raise ConversionError(
            f"The checkpoint has attn.qkv.bias tensors but its model_config.yaml ({brief(raw.get('name', '?'))}) "
            f"says attn_bias={brief(raw['attn_bias'])}: the file describes another model. Put this checkpoint's "
            "model_config.yaml beside it."
        )


def qwen2_forward(
    state_dict: Mapping[str, torch.Tensor],
    ids: torch.Tensor,
    *,
    n_heads: int,
    n_kv_heads: int,
    eps: float,
    rope_theta: float,
    head_dim: int | None = None,
) -> torch.Tensor:
    """A Qwen2's forward pass, written from its equations, over a *litgpt-layout* state dict (float32): fused
    ``attn.qkv`` weight and bias, RoPE on halves, RMSNorm, SwiGLU, grouped-query attention."""
    sd = {k: v.float() for k, v in state_dict.items()}
    embed = sd["transformer.wte.weight"]
    hd = head_dim or embed.shape[1] // n_heads
    freqs = 1.0 / (rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    b, t = ids.shape
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs)
    cos = angles.cos().float().repeat(1, 2).view(1, t, 1, hd)
    sin = angles.sin().float().repeat(1, 2).view(1, t, 1, hd)

    def rope(x: torch.Tensor) -> torch.Tensor:  # (b, t, heads, hd)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    x = embed[ids]
    for i in layer_indices(sd, "transformer.h."):
        p = f"transformer.h.{i}."
        h = norm(x, sd[p + "norm_1.weight"])
        qkv = h @ sd[p + "attn.qkv.weight"].t() + sd[p + _QKV_BIAS]
        q, k, v = qkv.split((n_heads * hd, n_kv_heads * hd, n_kv_heads * hd), -1)
        q, k, v = q.view(b, t, n_heads, hd), k.view(b, t, n_kv_heads, hd), v.view(b, t, n_kv_heads, hd)
        q, k = rope(q), rope(k)
        k, v = (z.repeat_interleave(n_heads // n_kv_heads, dim=2) for z in (k, v))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + y.transpose(1, 2).reshape(b, t, -1) @ sd[p + "attn.proj.weight"].t()
        h = norm(x, sd[p + "norm_2.weight"])
        gate, up = h @ sd[p + "mlp.fc_1.weight"].t(), h @ sd[p + "mlp.fc_2.weight"].t()
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.proj.weight"].t()
    x = norm(x, sd["transformer.ln_f.weight"])
    return x @ sd.get("lm_head.weight", embed).t()
