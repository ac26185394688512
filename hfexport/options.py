"""The export options shared by ``export_hf``, ``HFExporter`` and ``HFExportCallback``.

One dataclass, validated once, so the three entry points accept the same keywords with the same defaults
(``dtype="bfloat16"`` everywhere, as in the CLI) and the same error messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch

from .architectures import ACTIVATIONS
from .convert import resolve_dtype
from .hub import HubOptions
from .tokenizer import TokenizerSource
from .writer import parse_size

logger = logging.getLogger(__name__)

__all__ = ["ExportOptions"]


@dataclass
class ExportOptions:
    """How each version is written (and pushed).

    Args:
        dtype: ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``.
        keep_last_n: Keep only the last N versions this exporter wrote, in write order (``None``: keep all).
        config: Model facts the weights do not carry (``n_head``, ...; for a Llama ``n_heads``, ``norm_eps``,
            ``rope_theta``, ...): a dict, a dataclass or an object. Read from the model's ``config``, ``params`` or
            ``args`` attribute when not given.
        tokenizer: The tokenizer written into every version: ``None`` (default) writes GPT-2's for a GPT-2
            vocabulary (else none, logged once); ``False`` none; ``"gpt2"``, a path (directory, ``tokenizer.json``,
            nanoGPT ``meta.pkl``, a sentencepiece ``tokenizer.model``), a transformers tokenizer, a
            ``tiktoken.Encoding`` or a cached Hub repo id.
        activation: GELU of the model: ``gelu`` (default, current nanoGPT), ``gelu_new``, ``gelu_pytorch_tanh``.
        vocab_size: Keep only the first N vocabulary rows (e.g. 50257 of a padded 50304).
        untie_embeddings: Also write an independent ``lm_head.weight``.
        model_name: Name shown in the model card.
        max_shard_size: Shard the weights past this size.
        allow_nonfinite: Write NaN/inf weights instead of failing the export.
        async_write: Write in a background thread (``HFExporter``/callback); ``False`` writes synchronously.
        if_busy: When an export is due while one still waits to be written: ``"wait"`` (no version lost) or
            ``"skip"`` (drop the new one, logged).
        on_error: A failed background write: ``"raise"`` it from the next call, or only ``"warn"``.
        push_to_hub: Push every version to the Hub (needs ``repo_id``).
        repo_id: ``"namespace/name"`` of the Hub model repository.
        hub_token: Hub token (default: ``HF_TOKEN`` or the ``hf auth login`` cache). Never logged or written.
        hub_private: Create the repository private (default).
        hub_revision: Branch to commit to.
        hub_tag_versions: Tag each pushed version with its directory name.
        on_push_error: A push that still fails after retries: ``"warn"`` (training goes on) or ``"raise"``.
        hub_max_retries: Retries of a failed push (connection errors, timeouts, HTTP 5xx/429).
        hub_backoff_s: First retry delay in seconds; it doubles on each retry, with jitter.
        hub_push: ``"every"`` pushes every version in step order; ``"latest"`` pushes only the newest waiting
            version when pushes fall behind (the final one always).
        hub_timeout_s: Timeout of every Hub request (connect, and each read or write), set-up check included.

    Raises:
        ValueError: an invalid option, with the value received and what is expected.
    """

    dtype: str | torch.dtype = "bfloat16"
    keep_last_n: int | None = None
    config: Any = None
    tokenizer: Any = None
    activation: str | None = None
    vocab_size: int | None = None
    untie_embeddings: bool = False
    model_name: str | None = None
    max_shard_size: int | str = "5GB"
    allow_nonfinite: bool = False
    async_write: bool = True
    if_busy: Literal["wait", "skip"] = "wait"
    on_error: Literal["raise", "warn"] = "raise"
    push_to_hub: bool = False
    repo_id: str | None = None
    hub_token: str | None = field(default=None, repr=False)
    hub_private: bool = True
    hub_revision: str = "main"
    hub_tag_versions: bool = True
    on_push_error: Literal["warn", "raise"] = "warn"
    hub_max_retries: int = 6
    hub_backoff_s: float = 1.0
    hub_push: Literal["every", "latest"] = "every"
    hub_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.torch_dtype = resolve_dtype(self.dtype)
        self.tokenizer_source = TokenizerSource(self.tokenizer)  # checked now; resolved (once) at the first export
        if self.keep_last_n is not None and (not isinstance(self.keep_last_n, int) or self.keep_last_n < 1):
            raise ValueError(f"Invalid value for keep_last_n={self.keep_last_n!r}. Must be >= 1 or None (keep all).")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"Invalid value for activation={self.activation!r}. Expected one of {list(ACTIVATIONS)}.")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size < 1):
            raise ValueError(f"Invalid value for vocab_size={self.vocab_size!r}. Must be >= 1.")
        if self.if_busy not in ("wait", "skip"):
            raise ValueError(f"Invalid value for if_busy={self.if_busy!r}. Expected 'wait' or 'skip'.")
        if self.on_error not in ("raise", "warn"):
            raise ValueError(f"Invalid value for on_error={self.on_error!r}. Expected 'raise' or 'warn'.")
        if self.on_push_error not in ("raise", "warn"):
            raise ValueError(f"Invalid value for on_push_error={self.on_push_error!r}. Expected 'raise' or 'warn'.")
        if self.hub_push not in ("every", "latest"):
            raise ValueError(f"Invalid value for hub_push={self.hub_push!r}. Expected 'every' or 'latest'.")
        if (
            isinstance(self.hub_timeout_s, bool)
            or not isinstance(self.hub_timeout_s, (int, float))
            or not self.hub_timeout_s > 0
        ):
            raise ValueError(
                f"Invalid value for hub_timeout_s={self.hub_timeout_s!r}. Must be a number of seconds > 0."
            )
        parse_size(self.max_shard_size)
        if self.push_to_hub and not self.repo_id:
            raise ValueError('push_to_hub=True needs repo_id="namespace/name" (the Hub model repository).')
        if self.repo_id and not self.push_to_hub:
            logger.info("repo_id=%r is set but push_to_hub=False: nothing will be pushed", self.repo_id)

    @classmethod
    def names(cls) -> list[str]:
        """The keyword names every entry point accepts."""
        return [f.name for f in fields(cls)]

    def hub_options(self) -> HubOptions | None:
        """The :class:`~hfexport.hub.HubOptions` for these options (``None`` when not pushing)."""
        if not self.push_to_hub:
            return None
        return HubOptions(
            repo_id=str(self.repo_id),
            token=self.hub_token,
            private=self.hub_private,
            revision=self.hub_revision,
            tag_versions=self.hub_tag_versions,
            on_push_error=self.on_push_error,
            max_retries=self.hub_max_retries,
            backoff_base_s=self.hub_backoff_s,
            push_mode=self.hub_push,
            timeout_s=self.hub_timeout_s,
        )
