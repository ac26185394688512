"""Reference Llamas for the tests, written here (not imported from hfexport) so conversions are checked against
independent models.

* :class:`Transformer`: Meta's / llama2.c's model (their parameter names, ``params`` = a ``ModelArgs`` dataclass),
  RoPE on *interleaved* pairs through complex numbers as Meta's code does, Llama 3.1 RoPE scaling, grouped-query
  attention (``n_kv_heads < n_heads``) and ``output`` tied to ``tok_embeddings`` as llama2.c does (optional).
* :class:`LitLlama`: litgpt's names (fused ``attn.qkv`` split contiguously, ``mlp.fc_1/fc_2/proj``), RoPE on halves.

Weights are random and every RMSNorm weight is perturbed away from 1, so a dropped or swapped norm, a missing or
wrong RoPE permutation, or a wrong epsilon shows in the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelArgs:
    dim: int = 32
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = 2
    vocab_size: int = 64
    hidden_dim: int | None = None
    multiple_of: int = 16
    norm_eps: float = 1e-5
    max_seq_len: int = 16
    dropout: float = 0.0
    rope_theta: float = 10000.0
    use_scaled_rope: bool = False
    rope_scaling_factor: float = 8.0


def apply_scaling(freqs: torch.Tensor, factor: float) -> torch.Tensor:
    """Meta's Llama 3.1 RoPE frequency scaling (low 1, high 4, original context 8192)."""
    low_freq_factor, high_freq_factor, old_context_len = 1.0, 4.0, 8192
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    new = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new.append(freq)
        elif wavelen > low_freq_wavelen:
            new.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            new.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(new, dtype=freqs.dtype)


def rope_freqs(args: ModelArgs, head_dim: int) -> torch.Tensor:
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if args.use_scaled_rope:
        freqs = apply_scaling(freqs, args.rope_scaling_factor)
    return freqs


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rotate_interleaved(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Meta's ``apply_rotary_emb``: consecutive pairs (x0, x1), (x2, x3), ... are complex numbers."""
    b, t, h, d = x.shape
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles).to(torch.complex128)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, t, h, d // 2, 2).contiguous())
    out = torch.view_as_real(xc * rot.view(1, t, 1, d // 2)).flatten(3)
    return out.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over (b, t, heads, hd), k/v with fewer heads repeated per group."""
    groups = q.shape[2] // k.shape[2]
    k, v = (z.repeat_interleave(groups, dim=2) for z in (k, v))
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))
    t = q.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads or args.n_heads
        self.head_dim = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        q, k = rotate_interleaved(q, freqs), rotate_interleaved(k, freqs)
        return self.wo(attention(q, k, v))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        hidden = args.hidden_dim or int(2 * 4 * args.dim / 3)
        hidden = args.multiple_of * ((hidden + args.multiple_of - 1) // args.multiple_of)  # llama2.c's rounding
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, hidden)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """llama2.c's / Meta's ``Transformer`` (the parameter names and the ``params`` attribute)."""

    def __init__(self, params: ModelArgs, tie: bool = True) -> None:
        super().__init__()
        self.params = params
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(params) for _ in range(params.n_layers))
        self.norm = RMSNorm(params.dim, params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        if tie:
            self.tok_embeddings.weight = self.output.weight  # llama2.c ties them (one tensor)
        # llama2.c keeps its RoPE tables as non-persistent buffers: not in the state dict.
        self.register_buffer("freqs", rope_freqs(params, params.dim // params.n_heads), persistent=False)
        perturb(self)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(ids)
        for layer in self.layers:
            h = layer(h, self.freqs)
        return self.output(self.norm(h))


def perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("norm_1.weight", "norm_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)


def make_llama(seed: int = 0, tie: bool = True, **overrides: object) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs(**overrides), tie=tie).eval()  # type: ignore[arg-type]


def llama2c_model_args(args: ModelArgs) -> dict:
    """What llama2.c's train.py records as ``model_args`` (norm_eps and the RoPE base are left to the code)."""
    return dict(
        dim=args.dim,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        vocab_size=args.vocab_size,
        multiple_of=args.multiple_of,
        max_seq_len=args.max_seq_len,
        dropout=args.dropout,
    )


# ------------------------------------------------------------------------------------------------------ litgpt
LITGPT_CONFIG = dict(
    name="tiny-llama-test",
    hf_config={"org": "test", "name": "tiny-llama"},
    block_size=16,
    vocab_size=64,
    padded_vocab_size=64,
    n_layer=2,
    n_head=4,
    n_query_groups=2,
    head_size=8,
    n_embd=32,
    rotary_percentage=1.0,
    parallel_residual=False,
    bias=False,
    norm_class_name="RMSNorm",
    norm_eps=1e-5,
    mlp_class_name="LLaMAMLP",
    intermediate_size=88,
    rope_base=10000,
    rope_adjustments=None,
    shared_attention_norm=False,
    scale_embeddings=False,
    n_expert=0,
)


class LitBlock(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        hs = c["head_size"]
        self.c = c
        self.norm_1 = RMSNorm(c["n_embd"], c["norm_eps"])
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(c["n_embd"], (c["n_head"] + 2 * c["n_query_groups"]) * hs, bias=False)
        self.attn.proj = nn.Linear(c["n_head"] * hs, c["n_embd"], bias=False)
        self.norm_2 = RMSNorm(c["n_embd"], c["norm_eps"])
        self.mlp = nn.Module()
        self.mlp.fc_1 = nn.Linear(c["n_embd"], c["intermediate_size"], bias=False)
        self.mlp.fc_2 = nn.Linear(c["n_embd"], c["intermediate_size"], bias=False)
        self.mlp.proj = nn.Linear(c["intermediate_size"], c["n_embd"], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, hs = self.c, self.c["head_size"]
        b, t, _ = x.shape
        qkv = self.attn.qkv(self.norm_1(x))
        q, k, v = qkv.split((c["n_head"] * hs, c["n_query_groups"] * hs, c["n_query_groups"] * hs), dim=-1)
        q, k, v = (z.view(b, t, -1, hs) for z in (q, k, v))
        q, k = rotate_halves(q, c["rope_base"]), rotate_halves(k, c["rope_base"])
        h = x + self.attn.proj(attention(q, k, v))
        n = self.norm_2(h)
        return h + self.mlp.proj(F.silu(self.mlp.fc_1(n)) * self.mlp.fc_2(n))


def rotate_halves(x: torch.Tensor, base: float) -> torch.Tensor:
    """litgpt's ``apply_rope``: the first half of a head rotates with the second half."""
    t, d = x.shape[1], x.shape[-1]
    freqs = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs).repeat(1, 2)
    cos, sin = angles.cos().to(x.dtype).view(1, t, 1, d), angles.sin().to(x.dtype).view(1, t, 1, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LitLlama(nn.Module):
    """litgpt's ``GPT`` for a Llama-shaped config (names and equations)."""

    def __init__(self, c: dict) -> None:
        super().__init__()
        self.config = c
        self.lm_head = nn.Linear(c["n_embd"], c["padded_vocab_size"], bias=False)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c["padded_vocab_size"], c["n_embd"]),
                h=nn.ModuleList(LitBlock(c) for _ in range(c["n_layer"])),
                ln_f=RMSNorm(c["n_embd"], c["norm_eps"]),
            )
        )
        perturb(self)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(ids)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def make_litllama(seed: int = 0, **overrides: object) -> LitLlama:
    torch.manual_seed(seed)
    return LitLlama({**LITGPT_CONFIG, **overrides}).eval()
