"""The sentencepiece reader: a ``tokenizer.model`` (llama2.c, Llama 2) as a source kind of
:mod:`hfexport.tokenizers.tokenizer`.

llama2.c and Meta's Llama 2 ship a sentencepiece model (``tokenizer.model``), which neither ``tokenizers`` nor
``AutoTokenizer`` loads alone. :func:`sentencepiece_parts` converts it with transformers' own converter
(``LlamaTokenizerFast``, BOS added as Llama does) into the backend that :mod:`hfexport.tokenizers.tokenizer` writes as
``tokenizer.json``, so the export encodes text to the ids llama2.c's ``Tokenizer.encode(s, bos=True)`` gives. It
is registered there as a directory kind (``tokenizer.model``) and a file kind (``*.model``).
:func:`hfexport.tokenizers.tokenizer.tokenizer_beside`, what a conversion calls when no tokenizer was named, looks
beside a checkpoint for the files its family names (litgpt's tokenizer directory, or a sentencepiece
``tokenizer.model``) with :func:`read_sentencepiece` and :func:`is_sentencepiece`. Below
:mod:`hfexport.tokenizers.tokenizer` (which registers it); it reads through :mod:`hfexport.tokenizers.parts`.

Needs ``transformers``, ``sentencepiece`` and ``protobuf`` (hfexport's ``llama-tokenizer`` extra), imported only
when a sentencepiece model is converted.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from hfexport.errors import TokenizerError
from hfexport.tokenizers.parts import TokenizerParts, fast_parts, read_inside

logger = logging.getLogger(__name__)

__all__ = [
    "is_sentencepiece",
    "matching_sentencepiece",
    "read_sentencepiece",
    "sentencepiece_parts",
]

SENTENCEPIECE_NAME = "tokenizer.model"
#: A sentencepiece model larger than this is not a tokenizer (Llama 2's is 0.5 MB, Gemma's 4 MB).
MAX_SENTENCEPIECE_BYTES = 64 * 1024 * 1024


def is_sentencepiece(data: bytes) -> bool:
    """Whether ``data`` is a sentencepiece model (a ``ModelProto`` with pieces); ``False`` for Llama 3's tiktoken
    file or anything else. Needs ``sentencepiece``'s protobuf module."""
    model = _model_proto(data)
    return model is not None and len(model.pieces) > 0


def sentencepiece_parts(path: Path, root: Path) -> TokenizerParts:
    """A sentencepiece ``tokenizer.model`` (read inside ``root``) as a Llama tokenizer.

    Raises:
        TokenizerError: the file is not a sentencepiece model (e.g. Llama 3's tiktoken ``tokenizer.model``).
        ImportError: ``transformers``, ``sentencepiece`` or ``protobuf`` is missing.
    """
    data = read_sentencepiece(path, root)
    model = _model_proto(data)
    if model is None or not len(model.pieces):
        raise TokenizerError(
            f"{path.name} is not a sentencepiece model (Llama 3's tokenizer.model is a tiktoken file). Pass a "
            "transformers tokenizer directory (tokenizer.json + tokenizer_config.json) or its Hub repo id instead."
        )
    notes = []
    if model.normalizer_spec.remove_extra_whitespaces:
        notes.append(
            f"{path.name} collapses runs of whitespace (sentencepiece's remove_extra_whitespaces, spm_train's and "
            "llama2.c's train_vocab default); the converted tokenizer keeps them, so such texts tokenize differently"
        )
        logger.warning("%s", notes[-1])
    try:
        from transformers import LlamaTokenizerFast
    except ImportError as exc:
        raise ImportError(_EXTRA) from exc
    with tempfile.TemporaryDirectory(prefix="hfexport-spm-") as tmp:
        (Path(tmp) / SENTENCEPIECE_NAME).write_bytes(data)  # alone: no stray config beside it is read
        tokenizer = LlamaTokenizerFast.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
    parts = fast_parts(tokenizer)
    if parts is None:  # LlamaTokenizerFast always has its backend
        raise TokenizerError(f"transformers did not convert {path.name} into a fast tokenizer")
    parts.source = f"{path.name} (sentencepiece)"  # the file's name only: its directory may be a user's
    parts.extra_files[SENTENCEPIECE_NAME] = data  # shipped too: llama.cpp's converter reads its scores
    parts.notes.extend(notes)  # in the card and hfexport.json, not only in the log
    logger.info("Converted the sentencepiece model %s into a Llama tokenizer (%d tokens)", path, len(tokenizer))
    return parts


def read_sentencepiece(path: Path, root: Path) -> bytes:
    """A ``tokenizer.model``'s bytes: a regular file inside ``root`` (no symlink out of it), at most
    :data:`MAX_SENTENCEPIECE_BYTES`, read whole (its size checked against what was read).

    Raises:
        TokenizerError: not a regular file, a symlink leaving ``root``, too large, or changed while read.
    """
    data = read_inside(path, root, limit=MAX_SENTENCEPIECE_BYTES)
    try:
        size = Path(os.path.realpath(path)).stat().st_size
    except OSError as exc:
        raise TokenizerError(f"Cannot read tokenizer file {str(path)!r}: {exc.strerror}.") from None
    if len(data) != size:
        raise TokenizerError(f"{str(path)!r} changed while it was read ({len(data)} of {size} bytes); try again.")
    return data


def matching_sentencepiece(path: Path, root: Path, backend: Any) -> bytes | None:
    """The sentencepiece ``tokenizer.model`` beside a ``tokenizer.json``, to ship with it, when it is the model
    that tokenizer was converted from: every piece at the id ``tokenizer.json`` gives it. ``None`` (logged) when it
    is not a sentencepiece model (Llama 3's tiktoken file), does not match, or cannot be read."""
    try:
        data = read_sentencepiece(path, root)
        model = _model_proto(data)
    except (ImportError, TokenizerError) as exc:
        logger.warning("Not shipping %s beside tokenizer.json: %s", path.name, exc)
        return None
    if model is None or not len(model.pieces):
        logger.info("Not shipping %s beside tokenizer.json: not a sentencepiece model", path.name)
        return None
    mismatch = next((i for i, p in enumerate(model.pieces) if backend.token_to_id(p.piece) != i), None)
    if mismatch is not None:
        logger.warning(
            "Not shipping %s beside tokenizer.json: its piece %d (%r) is not tokenizer.json's token %d, so it is "
            "not the model that tokenizer was made from; llama.cpp's converter will read tokenizer.json alone",
            path.name,
            mismatch,
            model.pieces[mismatch].piece[:40],
            mismatch,
        )
        return None
    return data


_EXTRA = (
    "Converting a sentencepiece tokenizer.model needs transformers, sentencepiece and protobuf: "
    "pip install transformers sentencepiece protobuf (hfexport's llama-tokenizer extra)"
)


def _model_proto(data: bytes) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise ImportError(_EXTRA) from exc
    # protobuf builds the message classes at import time, unseen by type checkers (sentencepiece ships no stub)
    model = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    try:
        model.ParseFromString(data)
    except Exception:  # DecodeError: not a protobuf at all
        return None
    return model
