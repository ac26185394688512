"""The export options shared by ``export_hf``, ``HFExporter`` and ``HFExportCallback``.

The three entry points take the same keyword-only, typed parameters (listed once more in each signature, so that
IDEs and type checkers see them; ``tests/test_options.py`` checks that the lists, their defaults and the README's
table agree) and hand them to :meth:`ExportOptions.create`, which validates them once and groups the Hub ones
into a :class:`~hfexport.hub.HubOptions`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .architectures import ACTIVATIONS
from .convert import resolve_dtype
from .errors import OptionError
from .hub import HubOptions
from .tokenizer import TokenizerSource
from .writer import parse_size

logger = logging.getLogger(__name__)

__all__ = ["ExportOptions"]


@dataclass(frozen=True)
class ExportOptions:
    """How each version is written, and where it is pushed (validated; build it with :meth:`create`).

    Each attribute holds the validated argument of :meth:`create` of the same name (``dtype`` as a ``torch.dtype``,
    ``tokenizer`` as a :class:`~hfexport.tokenizer.TokenizerSource`), except ``hub``: the Hub arguments grouped as
    a :class:`~hfexport.hub.HubOptions`, or ``None`` when not pushing.
    """

    dtype: torch.dtype = torch.bfloat16
    keep_last_n: int | None = None
    config: Any = None
    tokenizer: TokenizerSource = field(default_factory=TokenizerSource)
    activation: str | None = None
    vocab_size: int | None = None
    untie_embeddings: bool = False
    model_name: str | None = None
    max_shard_size: int | str = "5GB"
    allow_nonfinite: bool = False
    async_write: bool = True
    if_busy: Literal["wait", "skip"] = "wait"
    on_error: Literal["raise", "warn"] = "raise"
    hub: HubOptions | None = None

    @classmethod
    def create(
        cls,
        *,
        dtype: str | torch.dtype = "bfloat16",
        keep_last_n: int | None = None,
        config: Any = None,
        tokenizer: Any = None,
        activation: str | None = None,
        vocab_size: int | None = None,
        untie_embeddings: bool = False,
        model_name: str | None = None,
        max_shard_size: int | str = "5GB",
        allow_nonfinite: bool = False,
        async_write: bool = True,
        if_busy: Literal["wait", "skip"] = "wait",
        on_error: Literal["raise", "warn"] = "raise",
        push_to_hub: bool = False,
        repo_id: str | None = None,
        hub_token: str | None = None,
        hub_private: bool = True,
        hub_revision: str = "main",
        hub_tag_versions: bool = True,
        on_push_error: Literal["warn", "raise"] = "warn",
        hub_max_retries: int = 6,
        hub_backoff_s: float = 1.0,
        hub_push: Literal["every", "latest"] = "every",
        hub_timeout_s: float = 60.0,
    ) -> ExportOptions:
        """Validate the entry points' keyword options and group them.

        Args:
            dtype: ``"bfloat16"`` (default), ``"float16"`` or ``"float32"`` (or the ``torch.dtype``).
            keep_last_n: Keep only the last N versions this exporter wrote, in write order (``None``: keep all).
            config: Model facts the weights do not carry (``n_head``, ...; for a Llama ``n_heads``, ``norm_eps``,
                ``rope_theta``, ...): a dict, a dataclass or an object. Read from the model's ``config``,
                ``params`` or ``args`` attribute when not given.
            tokenizer: The tokenizer written into every version: ``None`` (default) writes GPT-2's for a GPT-2
                vocabulary (else none, logged once); ``False`` none; ``"gpt2"``, a path (directory,
                ``tokenizer.json``, nanoGPT ``meta.pkl``, a sentencepiece ``tokenizer.model``), a transformers
                tokenizer, a ``tiktoken.Encoding`` or a cached Hub repo id.
            activation: GELU of the model: ``gelu`` (default, current nanoGPT), ``gelu_new``,
                ``gelu_pytorch_tanh``.
            vocab_size: Keep only the first N vocabulary rows (e.g. 50257 of a padded 50304).
            untie_embeddings: Also write an independent ``lm_head.weight``.
            model_name: Name shown in the model card.
            max_shard_size: Shard the weights past this size (bytes, or ``"5GB"``, ``"500MB"``, ...).
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

        Returns:
            The validated options.

        Raises:
            OptionError: an invalid value, with the value received and what is expected (a ``ValueError``).
            ConversionError: an unknown ``dtype`` (a ``ValueError``).
            TokenizerError: an unusable ``tokenizer`` (a ``ValueError``).
        """
        if keep_last_n is not None and (not isinstance(keep_last_n, int) or keep_last_n < 1):
            raise OptionError(f"Invalid value for keep_last_n={keep_last_n!r}. Must be >= 1 or None (keep all).")
        if activation is not None and activation not in ACTIVATIONS:
            raise OptionError(f"Invalid value for activation={activation!r}. Expected one of {list(ACTIVATIONS)}.")
        if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
            raise OptionError(f"Invalid value for vocab_size={vocab_size!r}. Must be >= 1.")
        if if_busy not in ("wait", "skip"):
            raise OptionError(f"Invalid value for if_busy={if_busy!r}. Expected 'wait' or 'skip'.")
        if on_error not in ("raise", "warn"):
            raise OptionError(f"Invalid value for on_error={on_error!r}. Expected 'raise' or 'warn'.")
        try:
            parse_size(max_shard_size)
        except ValueError as exc:
            raise OptionError(f"Invalid value for max_shard_size={max_shard_size!r}: {exc}") from exc
        hub = None
        if push_to_hub:
            if not repo_id:
                raise OptionError('push_to_hub=True needs repo_id="namespace/name" (the Hub model repository).')
            hub = HubOptions(
                repo_id=repo_id,
                token=hub_token,
                private=hub_private,
                revision=hub_revision,
                tag_versions=hub_tag_versions,
                on_push_error=on_push_error,
                max_retries=hub_max_retries,
                backoff_base_s=hub_backoff_s,
                push_mode=hub_push,
                timeout_s=hub_timeout_s,
            )
        elif repo_id:
            logger.info("repo_id=%r is set but push_to_hub=False: nothing will be pushed", repo_id)
        return cls(
            dtype=resolve_dtype(dtype),
            keep_last_n=keep_last_n,
            config=config,
            tokenizer=TokenizerSource(tokenizer),
            activation=activation,
            vocab_size=vocab_size,
            untie_embeddings=untie_embeddings,
            model_name=model_name,
            max_shard_size=max_shard_size,
            allow_nonfinite=allow_nonfinite,
            async_write=async_write,
            if_busy=if_busy,
            on_error=on_error,
            hub=hub,
        )
