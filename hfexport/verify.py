"""Checking any Hugging Face directory: files, shapes, checksums, and optionally logits against a source.

:func:`verify_directory` is what ``hfexport verify DIR`` runs: :func:`hfexport.io.check.check_directory` (every
safetensors header as strictly as ``safetensors`` checks it, the index, the JSON files, names that stay inside the
directory, foreign weight files, the checksums of hfexport's manifest), then ``config.json`` against the tensors.
With a source checkpoint it also loads the directory with ``transformers`` and reports the largest logit difference
against a reference forward pass of the source weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hfexport._util.fs import read_bounded, resolve_inside
from hfexport._util.jsonio import loads as strict_json
from hfexport._util.text import first_line
from hfexport.errors import HFExportError, MissingFactError
from hfexport.families import config_problems, for_model_type, registered
from hfexport.families.base import source_values
from hfexport.families.gpt2 import nanogpt_forward
from hfexport.families.llama import llama_forward
from hfexport.io.check import MAX_JSON_BYTES, check_directory, one_line
from hfexport.io.names import CONFIG_FILE
from hfexport.io.versions import LATEST, resolve_latest
from hfexport.sources import load_checkpoint

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

    Every defect of the directory, however malformed or hostile (see :func:`hfexport.io.check.check_directory`),
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
    """``config.json``'s numbers in range and the tensors it implies there (through its family's
    ``expected_shapes``); a ``model_type`` no registered family writes is not checked."""
    report.problems.extend(f"config.json: {line}" for line in config_problems(config))
    family = for_model_type(config.get("model_type"))
    if family is not None:
        report.problems.extend(family.shape_problems(config, shapes))


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

    The reference is the export's family's (:meth:`~hfexport.families.Architecture.reference_difference`,
    chosen by ``config.json``'s ``model_type``): an independent forward pass of the *source* weights in their
    training layout (e.g. nanoGPT's equations: ``nn.Linear`` weights, no transposes), so a wrong key map,
    transpose, tie or GELU in the export shows up as a difference. The export is loaded as written and run in
    float32. The reference's facts come from the checkpoint, the options, or the producer's known code defaults
    (as ``convert`` derives them), never from the ``config.json`` being checked; where none of these tells (a
    GELU, a RoPE base), the export's value is used and the fact is appended to ``unchecked``.

    Raises:
        MissingFactError: the checkpoint does not record its heads and ``n_head`` is not given (``fact`` is
            ``"n_head"``).
        CheckpointError: the checkpoint cannot be read.
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
        raise MissingFactError(
            f"{ckpt.path.name} does not record its number of attention heads, so its logits cannot check the "
            "export's: pass the number the model was trained with (--n_head N, n_head=N).",
            fact="n_head",
        )
    exported = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    family = for_model_type(exported.config.model_type)
    if family is None:  # reported as a problem of the directory: nothing tells how to check it
        raise ValueError(
            f"no registered family writes model_type {exported.config.model_type!r}, so hfexport has no reference "
            f"forward pass to check it against (known: {', '.join(registered())})"
        )
    # A distributed checkpoint's tensors are read now: the reference forward pass needs the whole model.
    weights = {name: source_values(tensor) for name, tensor in ckpt.state_dict.items()}
    return family.reference_difference(
        exported,
        weights,
        ckpt.facts,
        n_head=heads,
        activation=activation or ckpt.activation_hint,
        tokens=tokens,
        unchecked=unchecked if unchecked is not None else [],
    )


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
