"""Checking any Hugging Face directory: files, shapes, checksums, and optionally logits against a source.

:func:`verify_directory` is what ``hfexport verify DIR`` runs: :func:`hfexport.dircheck.check_directory` (every
safetensors header as strictly as ``safetensors`` checks it, the index, the JSON files, names that stay inside the
directory, foreign weight files, the checksums of hfexport's manifest), then ``config.json`` against the tensors.
With a source checkpoint it also loads the directory with ``transformers`` and reports the largest logit difference
against a reference forward pass of the source weights.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .architectures import config_problems
from .architectures.llama import expected_shapes
from .dircheck import MAX_JSON_BYTES, check_directory, one_line
from .errors import CheckpointError, ConversionError, HFExportError
from .fsutil import read_bounded, resolve_inside
from .jsonio import loads as strict_json
from .names import CONFIG_FILE
from .sources import load_checkpoint
from .text import first_line
from .versions import LATEST, resolve_latest

__all__ = [
    "VerifyReport",
    "check_tokenizer",
    "llama_forward",
    "logits_difference",
    "nanogpt_forward",
    "verify_directory",
]


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_directory`.

    Attributes:
        path: The directory checked.
        tensors: Tensor count.
        files_checked: Files whose checksum was compared with the manifest.
        max_logit_diff: Largest |logit difference| against the source (``None`` when not compared).
        problems: What is wrong; empty when the directory is sound.
        unchecked: Facts the comparison had to take from the export itself (the checkpoint does not record them
            and no option gave them), which it therefore cannot check; each names the option that would.
    """

    path: Path
    tensors: int = 0
    files_checked: int = 0
    max_logit_diff: float | None = None
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_directory(
    path: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    activation: str | None = None,
    n_head: int | None = None,
    tolerance: float | None = None,
) -> VerifyReport:
    """Verify a Hugging Face model directory.

    Every defect of the directory, however malformed or hostile (see :func:`hfexport.dircheck.check_directory`),
    is a problem in the report, never an exception; logits are compared only on a sound directory.

    Args:
        path: The directory (or an export root: its ``latest`` is checked).
        checkpoint: A source checkpoint to compare logits against (needs ``transformers``).
        activation: The GELU of the source (as for ``convert``) for the reference forward pass.
        n_head: Attention heads, when the checkpoint does not record them.
        tolerance: Max allowed logit difference; defaults by the directory's dtype.

    Returns:
        The report; ``report.ok`` is ``False`` with ``report.problems`` listing every defect.

    Raises:
        HFExportError: ``path`` is an export root whose ``latest`` designates nothing, or the checkpoint cannot be
            read or does not record its attention heads and ``n_head`` is not given (bad input, not a defect of the
            directory: the heads are never taken from the export being checked).
        ImportError: ``checkpoint`` is given and ``transformers`` is not installed.
    """
    root = Path(path)
    if os.path.lexists(root / LATEST) and not os.path.lexists(root / CONFIG_FILE):
        root = resolve_latest(root)
    check = check_directory(root)
    report = VerifyReport(root, check.tensors, check.files_checked, problems=check.problems)
    config = check.config
    if config is not None and check.shapes:
        _check_config(config, check.shapes, report)
    if root.is_dir():
        check_tokenizer(root, config, report)
    report.problems[:] = [one_line(p) for p in report.problems]  # config values may hold newlines
    if checkpoint is not None and report.ok:
        try:
            diff = logits_difference(root, checkpoint, activation=activation, n_head=n_head, unchecked=report.unchecked)
        except (HFExportError, ImportError):
            raise
        except Exception as exc:  # transformers or the reference forward refused the directory: it is not sound
            report.problems.append(f"comparing logits failed: {type(exc).__name__}: {exc}")
            return report
        report.max_logit_diff = diff
        float32 = config is None or config.get("dtype", "float32") == "float32"
        limit = tolerance if tolerance is not None else 1e-4 if float32 else 0.5
        if diff > limit:
            report.problems.append(f"max |logit diff| {diff:.3g} against {checkpoint} exceeds {limit:g}")
    return report


def _check_config(config: dict[str, Any], shapes: dict[str, list[int]], report: VerifyReport) -> None:
    report.problems.extend(f"config.json: {line}" for line in config_problems(config))
    if config.get("model_type") == "llama":
        _check_llama_config(config, shapes, report)
    if config.get("model_type") != "gpt2":
        return
    wte = shapes.get("transformer.wte.weight")
    if wte and wte != [config.get("vocab_size"), config.get("n_embd")]:
        report.problems.append(
            f"config.json says vocab_size/n_embd {config.get('vocab_size')}/{config.get('n_embd')}, wte is {wte}"
        )
    if not config.get("tie_word_embeddings", True) and "lm_head.weight" not in shapes:
        report.problems.append(
            "tie_word_embeddings is false but lm_head.weight is missing: transformers would use a random head"
        )
    layers = {k.split(".")[2] for k in shapes if k.startswith("transformer.h.")}
    if layers and len(layers) != config.get("n_layer"):
        report.problems.append(f"config.json says n_layer={config.get('n_layer')}, the weights have {len(layers)}")


def logits_difference(
    directory: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    activation: str | None = None,
    n_head: int | None = None,
    tokens: int = 16,
    unchecked: list[str] | None = None,
) -> float:
    """Max |logit difference| between ``transformers`` on ``directory`` and the source checkpoint.

    The reference is an independent forward pass of the *source* weights in their training layout
    (nanoGPT's equations: ``nn.Linear`` weights, no transposes), so a wrong key map, transpose, tie or GELU in
    the export shows up as a difference. The export is loaded as written and run in float32. The reference's
    facts come from the checkpoint, the options, or the producer's known code defaults (as ``convert`` derives
    them), never from the ``config.json`` being checked; where none of these tells (a GELU, a RoPE base), the
    export's value is used and the fact is appended to ``unchecked``.

    Raises:
        CheckpointError: the checkpoint does not record its heads and ``n_head`` is not given.
        ImportError: ``transformers`` is not installed (``pip install transformers``).
    """
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise ImportError("Comparing logits needs transformers: pip install transformers") from exc
    ckpt = load_checkpoint(checkpoint)
    heads = n_head or ckpt.facts.n_head
    if heads is None:
        # Taking the heads from the export's config.json would check config.json against itself: a wrong head count
        # (from a stray file, a wrong --n_head) would pass.
        raise CheckpointError(
            f"{ckpt.path.name} does not record its number of attention heads, so its logits cannot check the "
            "export's: pass the number the model was trained with (--n_head N, n_head=N)."
        )
    exported = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    cfg = exported.config
    notes = unchecked if unchecked is not None else []
    if cfg.model_type == "llama":
        return _llama_difference(exported, ckpt.state_dict, ckpt.facts, n_head=heads, tokens=tokens, unchecked=notes)
    act = activation or ckpt.activation_hint
    if act is None:
        act = cfg.activation_function
        notes.append(
            f"activation ({act}, from config.json): the checkpoint does not record its GELU (pass --activation)"
        )
    eps = ckpt.facts.layer_norm_epsilon if ckpt.facts.layer_norm_epsilon is not None else 1e-5  # as convert
    gen = torch.Generator().manual_seed(0)
    n = min(tokens, cfg.n_positions)
    ids = torch.randint(0, cfg.vocab_size, (2, n), generator=gen)
    with torch.no_grad():
        a = exported(ids).logits.float()
        b = nanogpt_forward(ckpt.state_dict, ids, n_head=heads, activation=act, eps=eps)
    return float((a - b[..., : cfg.vocab_size]).abs().max())


def nanogpt_forward(
    state_dict: dict[str, torch.Tensor],
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


#: Files a tokenizer may be made of; the first four hold the vocabulary itself.
_TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
_TOKENIZER_FILES = (*_TOKENIZER_VOCAB_FILES, "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def check_tokenizer(root: Path, config: dict[str, Any] | None, report: VerifyReport) -> None:
    """The directory's tokenizer loads (with ``transformers`` when installed), is not empty, fits the model's
    vocabulary, and its bos/eos ids are those of ``config.json``. A directory without tokenizer files passes
    (hfexport's model card says it has none).

    Problems are appended to ``report``: a ``tokenizer_config.json`` without a vocabulary (it loads as an empty
    tokenizer), transformers 5's ``TokenizersBackend`` class (transformers 4.x, llama.cpp and optimum cannot load
    it), ``PreTrainedTokenizerFast`` without ``model_input_names`` (transformers 4.x adds ``token_type_ids``), a
    tokenizer file that is a symlink leaving the directory, a tokenizer larger than the vocabulary, special
    ids that disagree with ``config.json``.
    """
    present = [name for name in _TOKENIZER_FILES if (root / name).is_file() or (root / name).is_symlink()]
    if not present:
        return
    real_root = root.resolve()
    for name in present:
        real, inside = resolve_inside(root / name, real_root)
        if not inside or not real.is_file():
            report.problems.append(f"{name} is a symlink to {str(real)!r}, outside the directory (or not a file)")
            return
    settings: Any = {}
    if "tokenizer_config.json" in present:
        file = root / "tokenizer_config.json"
        try:
            settings = strict_json(read_bounded(file, MAX_JSON_BYTES))
        except (OSError, ValueError, RecursionError) as exc:
            report.problems.append(f"tokenizer_config.json cannot be read as JSON: {exc}")
            return
    if not isinstance(settings, dict):
        report.problems.append("tokenizer_config.json is not a JSON object")
        return
    if settings.get("tokenizer_class") == "TokenizersBackend":
        report.problems.append(
            "tokenizer_config.json names TokenizersBackend (transformers 5 only): transformers 4.x, llama.cpp's "
            "converter and optimum cannot load it; name PreTrainedTokenizerFast (re-export with hfexport)"
        )
    names = settings.get("model_input_names")
    if settings.get("tokenizer_class") == "PreTrainedTokenizerFast" and (
        not isinstance(names, list) or "token_type_ids" in names
    ):
        report.problems.append(
            "tokenizer_config.json names PreTrainedTokenizerFast without model_input_names "
            '["input_ids", "attention_mask"]: under transformers 4.x tok(text) also returns token_type_ids, '
            "which shift a GPT-2's logits and make a Llama's generate(**enc) raise (re-export with hfexport)"
        )
    if not any(name in present for name in _TOKENIZER_VOCAB_FILES):
        report.problems.append(
            "tokenizer_config.json without tokenizer.json (or another vocabulary file): it loads as an empty tokenizer"
        )
        return
    try:
        vocab, special = _load_tokenizer(root, settings)
    except Exception as exc:
        first = first_line(exc)
        report.problems.append(f"the tokenizer does not load: {first}")
        return
    if not vocab:
        report.problems.append("the tokenizer is empty (no tokens)")
        return
    size = max(vocab.values()) + 1
    rows = (config or {}).get("vocab_size")
    if isinstance(rows, int) and size > rows:
        report.problems.append(
            f"the tokenizer has {size} token ids but config.json's vocab_size is {rows}: ids past {rows - 1} "
            "have no embedding row"
        )
    for key, token_id in special.items():
        expected = (config or {}).get(key)
        if config is not None and expected != token_id:
            report.problems.append(f"config.json says {key}={expected}, the tokenizer's is {token_id}")


def _load_tokenizer(root: Path, settings: dict[str, Any]) -> tuple[dict[str, int], dict[str, int | None]]:
    """The tokenizer's vocabulary (with added tokens) and bos/eos ids, loaded as users load it (without
    transformers: ``tokenizer.json`` with the special tokens of ``settings``, its ``tokenizer_config.json``)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        pass
    else:
        tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        return dict(tok.get_vocab()), {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(root / "tokenizer.json"))
    ids = {}
    for key in ("bos", "eos"):
        text = settings.get(f"{key}_token")
        ids[f"{key}_token_id"] = backend.token_to_id(text) if isinstance(text, str) else None
    return backend.get_vocab(with_added_tokens=True), ids


def _check_llama_config(config: dict[str, Any], shapes: dict[str, list[int]], report: VerifyReport) -> None:
    """Every tensor a ``LlamaForCausalLM`` with this config loads is there, with the shape the config implies."""
    try:
        expected = expected_shapes(config)
    except (ConversionError, KeyError, TypeError, ZeroDivisionError) as exc:
        report.problems.append(f"config.json lacks what a Llama needs ({type(exc).__name__}: {exc})")
        return
    for name, shape in expected.items():
        if name not in shapes:
            report.problems.append(f"{name} is missing (config.json implies it)")
        elif tuple(shapes[name]) != shape:
            report.problems.append(f"{name} has shape {shapes[name]}, config.json implies {list(shape)}")


def _llama_difference(
    exported: Any,
    state_dict: dict[str, torch.Tensor],
    facts: Any,
    *,
    n_head: int,
    tokens: int,
    unchecked: list[str],
) -> float:
    """:func:`logits_difference` for a ``LlamaForCausalLM`` export: the source's facts where it records them, the
    llama2.c / Meta code defaults where ``convert`` uses them, else the export's (listed in ``unchecked``)."""
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
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    with torch.no_grad():
        a = exported(ids).logits.float()
        b = llama_forward(
            state_dict,
            ids,
            n_heads=n_head or facts.n_head,
            n_kv_heads=facts.n_kv_heads or cfg.num_key_value_heads,
            head_dim=getattr(cfg, "head_dim", None),
            eps=eps,
            rope_theta=theta,
            rope_scaling=rope if rope.get("rope_type") == "llama3" else None,
        )
    return float((a - b[..., : cfg.vocab_size]).abs().max())


def llama_forward(
    state_dict: dict[str, torch.Tensor],
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
