"""The registry of source architectures.

A source family is one module exposing a class that satisfies :class:`~hfexport.architectures.base.Architecture`;
:func:`register` adds it and :func:`detect` picks the first that recognizes a state dict's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from . import gpt2, llama
from .base import Architecture, ConversionPlan, ModelFacts, TensorPlan, check_plan, transpose_into
from .gpt2 import ACTIVATIONS, GPT2
from .llama import LitGPTLlama, MetaLlama

__all__ = [
    "ACTIVATIONS",
    "Architecture",
    "ConversionPlan",
    "ModelFacts",
    "TensorPlan",
    "check_plan",
    "config_problems",
    "detect",
    "get",
    "register",
    "registered",
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


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """The numbers of a ``config.json`` out of their family's range (``model_type`` ``gpt2`` or ``llama``), one line
    each; ``[]`` for another family, whose ranges hfexport does not know."""
    model_type = config.get("model_type")  # any JSON value: a list is not hashable
    checks = {"gpt2": gpt2.config_problems, "llama": llama.config_problems}
    check = checks.get(model_type) if isinstance(model_type, str) else None
    return check(config) if check is not None else []


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
