"""The registry of source architectures.

A source family is one module exposing a class that satisfies :class:`~hfexport.families.base.Architecture`
(every fact about the family: its tensors, config, context length, special ids, the tokenizer a vocabulary implies,
card name, sidecar and tokenizer files, reference forward pass); :func:`register` adds it and :func:`detect` picks
the first that recognizes a state dict's keys. Adding a family is one module plus one ``register`` line at the end
of this file: the rest of hfexport asks the registry (:func:`for_model_type`, :func:`sidecars`, ...) and never
names a family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hfexport.errors import CheckpointError
from hfexport.families.base import (
    Architecture,
    ConversionPlan,
    ModelFacts,
    TensorPlan,
    TokenizerGuess,
    check_plan,
    transpose_into,
    unknown_tokenizer,
)
from hfexport.families.gpt2 import ACTIVATIONS, GPT2
from hfexport.families.llama import LitGPTLlama, MetaLlama
from hfexport.families.qwen2 import LitGPTQwen2
from hfexport.io.sidecars import Sidecar

__all__ = [
    "ACTIVATIONS",
    "Architecture",
    "ConversionPlan",
    "ModelFacts",
    "TensorPlan",
    "TokenizerGuess",
    "check_plan",
    "config_problems",
    "context_length",
    "detect",
    "display_name",
    "for_model_type",
    "get",
    "register",
    "registered",
    "sidecars",
    "tokenizer_guess",
    "transpose_into",
]

_REGISTRY: dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    """Add a source family to the registry (by its ``name``) and return it."""
    _REGISTRY[architecture.name] = architecture
    return architecture


def registered() -> list[str]:
    """Names of the registered source families."""
    return list(_REGISTRY)


def get(name: str) -> Architecture:
    """The registered family called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CheckpointError(f"Unknown architecture {name!r}. Registered: {registered()}.") from None


def for_model_type(model_type: Any) -> Architecture | None:
    """The first registered family that writes ``config.json``'s ``model_type`` (any JSON value), or ``None``."""
    if not isinstance(model_type, str):  # a list is not hashable, a number names nothing
        return None
    return next((arch for arch in _REGISTRY.values() if arch.model_type == model_type), None)


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """The numbers of a ``config.json`` out of their family's range (by its ``model_type``), one line each; ``[]``
    for a ``model_type`` no registered family writes, whose ranges hfexport does not know."""
    family = for_model_type(config.get("model_type"))
    return family.config_problems(config) if family is not None else []


def context_length(config: Mapping[str, Any]) -> int | None:
    """The context length a ``config.json`` states, read as its family reads it; for a ``model_type`` no registered
    family writes, ``n_positions`` or ``max_position_embeddings`` (the names most families use)."""
    family = for_model_type(config.get("model_type"))
    if family is not None:
        return family.context_length(config)
    return config.get("n_positions") or config.get("max_position_embeddings")


def tokenizer_guess(config: Mapping[str, Any]) -> TokenizerGuess:
    """What a ``config.json``'s vocabulary tells of the model's tokenizer, as its family says
    (:meth:`~hfexport.families.base.Architecture.tokenizer_guess`); for a ``model_type`` no registered family
    writes, nothing (:func:`~hfexport.families.base.unknown_tokenizer`)."""
    model_type, vocab = config.get("model_type"), config.get("vocab_size")
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
    family = for_model_type(model_type)
    if family is not None:
        return family.tokenizer_guess(vocab)
    return unknown_tokenizer(model_type if isinstance(model_type, str) else None, vocab)


def display_name(model_type: str) -> str:
    """A ``model_type``'s name in the model card (``"GPT-2"``); the ``model_type`` itself for an unknown one."""
    family = for_model_type(model_type)
    return family.display_name if family is not None else model_type


def sidecars() -> list[Sidecar]:
    """The config files the registered families' checkpoints keep beside them, one per family that has one."""
    return [arch.sidecar for arch in _REGISTRY.values() if arch.sidecar is not None]


def detect(keys: set[str]) -> Architecture:
    """The registered family whose ``detect`` accepts these (prefix-stripped) keys.

    Raises:
        CheckpointError: when none does; the message shows a few keys to help tell what the file holds.
    """
    for architecture in _REGISTRY.values():
        if architecture.detect(keys):
            return architecture
    sample = ", ".join(sorted(keys)[:6]) + (" ..." if len(keys) > 6 else "")
    known = "; ".join(f"{name}: {getattr(arch, 'expects', '(not described)')}" for name, arch in _REGISTRY.items())
    raise CheckpointError(
        f"Not a supported model: none of the known architectures matches a state dict with {len(keys)} tensors "
        f"({sample or 'no tensors'}). Known families and the names each expects: {known}."
    )


register(GPT2())
register(MetaLlama())
register(LitGPTLlama())
register(LitGPTQwen2())
