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
from .validation import (
    MAX_TIMEOUT_S,
    check_bool,
    check_choice,
    check_config,
    check_float,
    check_int,
    check_text,
    invalid,
    shown,
)
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

        The wording of each option below is the reference: ``export_hf``, ``HFExporter`` and ``HFExportCallback``
        repeat it in their own docstrings, so that ``help()`` and IDEs show it (``tests/test_options.py`` checks
        that every parameter is documented, with its default, in the same words).

        Args:
            dtype: The dtype every tensor is written in (each tensor is cast once): ``"bfloat16"``, ``"float16"`` or
                ``"float32"`` (also ``"bf16"``, ``"fp16"``, ``"half"``, ``"fp32"``, ``"float"``, with or without a
                ``torch.`` prefix), or the ``torch.dtype`` itself. Default: ``"bfloat16"``.
            keep_last_n: Keep only the last N versions this exporter wrote, in write order: an int >= 1, or ``None`` to
                keep all. Rotation deletes only versions this exporter (or the run it resumes) created, never
                ``latest``, never one whose Hub push is queued, in flight or failed, never one you added or changed
                files in. Default: ``None``.
            config: Model facts the weights do not carry (``n_head``, ``dropout``, ...; for a Llama ``n_heads``,
                ``n_kv_heads``, ``norm_eps``, ``rope_theta``, ``rope_scaling_factor``, ...): a dict, a dataclass or an
                object. ``None`` reads them from the model's ``config``, ``params`` or ``args`` attribute.
                Default: ``None``.
            tokenizer: The tokenizer written into every version: ``None`` finds it (GPT-2's for a GPT-2 vocabulary, else
                none, logged once); ``False`` writes none; else ``"gpt2"``, a path (a directory, ``tokenizer.json``,
                nanoGPT ``meta.pkl``, a sentencepiece ``tokenizer.model``), a ``transformers`` tokenizer, a
                ``tiktoken.Encoding`` or a Hub repo id (read from the local cache, else downloaded at the first export
                unless ``HF_HUB_OFFLINE=1``). A path that does not exist fails here; the tokenizer is resolved at the
                first export. Default: ``None``.
            activation: The GELU of a GPT-2 family model (the checkpoint does not record it): ``"gelu"`` (what ``None``
                means: exact erf GELU, nanoGPT since May 2023), ``"gelu_new"`` (tanh formula: nanoGPT before May 2023,
                llm.c) or ``"gelu_pytorch_tanh"`` (build-nanogpt). Default: ``None``.
            vocab_size: Keep only the first N vocabulary rows (e.g. 50257 of a padded 50304): an int >= 1, or ``None``
                to keep all. Default: ``None``.
            untie_embeddings: Also write an independent ``lm_head.weight`` (``tie_word_embeddings=False``) instead of
                tying it to the token embedding. Default: ``False``.
            model_name: Name shown in the model card; ``None`` shows ``<model_type>-export`` (e.g. ``gpt2-export``).
                Default: ``None``.
            max_shard_size: Shard the weights past this size: a byte count or a string such as ``"5GB"``, ``"500MB"``,
                ``"2GiB"`` (at least 1 byte). Default: ``"5GB"``.
            allow_nonfinite: Write NaN/inf weights instead of failing the export with a ``ConversionError`` that names
                the tensor. Default: ``False``.
            async_write: Write each version in a background thread, so that the training loop only pays for the snapshot
                (``HFExporter``, ``HFExportCallback``); ``False`` writes synchronously, in the call. Default: ``True``.
            if_busy: When an export is due while the previous one still waits to be written: ``"wait"`` (block until it
                can be queued; no version lost) or ``"skip"`` (drop the new one, logged). Default: ``"wait"``.
            on_error: A failed background write (logged at once): ``"raise"`` raises it as an ``ExportWorkerError`` from
                the next call on the exporter and from ``close()``, the cause chained; ``"warn"`` only logs it.
                Default: ``"raise"``.
            push_to_hub: Push every version to the Hub once it is written, in a background thread (needs ``repo_id``;
                the token and the repository are checked when the exporter is created, before training).
                Default: ``False``.
            repo_id: ``"namespace/name"`` of the Hub model repository (created if missing); ignored (logged) when
                ``push_to_hub=False``. Default: ``None``.
            hub_token: Hub token with write access; ``None`` uses ``HF_TOKEN`` or the ``hf auth login`` cache. Never
                logged or written. Default: ``None``.
            hub_private: Create the repository private (an existing repository keeps its visibility). Default: ``True``.
            hub_revision: The branch every version is committed to (created from ``main`` if missing).
                Default: ``"main"``.
            hub_tag_versions: Tag each version's commit with its directory name (``step_000500``). Default: ``True``.
            on_push_error: A push that still fails after retries: ``"warn"`` (logged; training goes on, the version
                stays on disk and in the push journal as failed) or ``"raise"`` (a ``HubError`` from the next call and
                from ``close()``). Default: ``"warn"``.
            hub_max_retries: Retries of a failed push, an int >= 0 (at most ``hub_max_retries + 1`` attempts):
                connection errors, timeouts, HTTP 408, 429 and 5xx, and a commit that differs on the Hub from the local
                files are retried; other errors fail at once. Default: ``6``.
            hub_backoff_s: The first retry delay in seconds (>= 0); it doubles on each retry, with jitter, up to 60 s (a
                ``Retry-After`` is honoured, up to 600 s). Default: ``1.0``.
            hub_push: ``"every"`` pushes every version, in step order, none skipped; ``"latest"`` pushes only the newest
                waiting version when pushes fall behind (the skipped ones are logged and journaled as ``skipped``; the
                final version is always pushed). Default: ``"every"``.
            hub_timeout_s: Timeout in seconds (> 0, at most 86400) of every Hub request, the set-up check included:
                connecting, and each read or write (an upload that keeps sending is not cut). A timeout is a failed
                attempt, retried like a 5xx. Default: ``60.0``.

        Returns:
            The validated options.

        Raises:
            OptionError: an invalid value, with the value received and what is expected (a ``ValueError``).
            ConversionError: an unknown ``dtype`` (a ``ValueError``).
            TokenizerError: an unusable ``tokenizer``, e.g. a path that does not exist (a ``ValueError``).

        Example:
            >>> options = ExportOptions.create(dtype="float16", keep_last_n=3)
            >>> options.dtype, options.keep_last_n, options.hub
            (torch.float16, 3, None)
            >>> exporter = HFExporter.from_options("hf_exports", options, every_n_steps=500)  # doctest: +SKIP
        """
        keep_last_n = check_int("keep_last_n", keep_last_n, optional=True)
        config = check_config("config", config)
        activation = check_choice("activation", activation, list(ACTIVATIONS), optional=True)
        vocab_size = check_int("vocab_size", vocab_size, optional=True)
        model_name = check_text("model_name", model_name, optional=True, one_line=True)
        untie_embeddings = check_bool("untie_embeddings", untie_embeddings)
        allow_nonfinite = check_bool("allow_nonfinite", allow_nonfinite)
        async_write = check_bool("async_write", async_write)
        if_busy = check_choice("if_busy", if_busy, ("wait", "skip"))
        on_error = check_choice("on_error", on_error, ("raise", "warn"))
        try:
            parse_size(max_shard_size)
        except ValueError as exc:
            raise OptionError(f"Invalid value for max_shard_size={shown(max_shard_size)}: {exc}") from exc
        # The Hub options are checked whether or not pushing: a wrong value is a mistake either way.
        push_to_hub = check_bool("push_to_hub", push_to_hub)
        if repo_id is not None and not isinstance(repo_id, str):
            raise invalid("repo_id", repo_id, f"a str 'namespace/name', or None (not a {type(repo_id).__name__})")
        if hub_token is not None and (not isinstance(hub_token, str) or not hub_token.strip()):  # never shown
            raise OptionError(
                f"Invalid value for hub_token (a {type(hub_token).__name__}, not shown): expected a non-empty str, or "
                "None to use HF_TOKEN / `hf auth login`."
            )
        hub_private = check_bool("hub_private", hub_private)
        hub_revision = check_text("hub_revision", hub_revision)
        hub_tag_versions = check_bool("hub_tag_versions", hub_tag_versions)
        on_push_error = check_choice("on_push_error", on_push_error, ("warn", "raise"))
        hub_max_retries = check_int("hub_max_retries", hub_max_retries, minimum=0)
        hub_backoff_s = check_float("hub_backoff_s", hub_backoff_s, minimum=0.0, maximum=HubOptions.backoff_max_s)
        hub_push = check_choice("hub_push", hub_push, ("every", "latest"))
        hub_timeout_s = check_float("hub_timeout_s", hub_timeout_s, above=0.0, maximum=MAX_TIMEOUT_S)
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
            tokenizer=TokenizerSource(tokenizer, hub_timeout_s=hub_timeout_s),
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
