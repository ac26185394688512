"""The export options shared by ``export_hf``, ``HFExporter`` and ``HFExportCallback``, declared once.

:class:`ExportArguments` is the one declaration of each option: its type, its default, the check its values pass
(one validator per kind of value, from :mod:`hfexport._util.validation`) and its documentation. The entry points take
the options as explicit keyword-only parameters, so that IDEs, type checkers, ``inspect.signature`` and ``help()``
show them (``tests/test_options.py`` checks every signature, and README's table, against the declaration); their
docstrings get each option's entry from it (:func:`document_options`), and they hand the values to
:meth:`ExportOptions.create`, which validates them, every one the same way whichever entry point received it, and
groups the Hub ones into a :class:`~hfexport.hub.push.HubOptions`.
"""

from __future__ import annotations

import inspect
import logging
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal, TypeVar

import torch

from hfexport._util.validation import (
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
from hfexport.convert import resolve_dtype
from hfexport.errors import OptionError
from hfexport.families import ACTIVATIONS
from hfexport.hub.push import HubOptions
from hfexport.io.directory import parse_size
from hfexport.tokenizers.tokenizer import TokenizerSource

logger = logging.getLogger(__name__)

__all__ = ["ExportArguments", "ExportOptions", "document_options"]

T = TypeVar("T")
D = TypeVar("D", bound=Callable[..., Any])
Check = Callable[[str, Any], Any]  # (option name, value received) -> the value kept; raises OptionError


def _option(default: T, check: Check, doc: str) -> T:
    """A field of :class:`ExportArguments`: its default, its check and its documentation (without the default,
    which :func:`document_options` appends); a ``dataclasses.field``."""
    return field(default=default, metadata={"check": check, "doc": doc})


def _optional_int(name: str, value: Any) -> int | None:
    return check_int(name, value, optional=True)


def _one_of(*choices: str, optional: bool = False) -> Check:
    return lambda name, value: check_choice(name, value, choices, optional=optional)


def _shard_size(name: str, value: Any) -> Any:
    try:
        parse_size(value)
    except ValueError as exc:
        raise OptionError(f"Invalid value for {name}={shown(value)}: {exc}") from exc
    return value


def _repo_id(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise invalid(name, value, f"a str 'namespace/name', or None (not a {type(value).__name__})")
    return value


def _token(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):  # never shown
        raise OptionError(
            f"Invalid value for {name} (a {type(value).__name__}, not shown): expected a non-empty str, or "
            "None to use HF_TOKEN / `hf auth login`."
        )
    return value


@dataclass(frozen=True)
class ExportArguments:
    """The export options as the entry points take them: each one's type, default, check and documentation.

    This is the one declaration of the options (:func:`dataclasses.fields` lists them, in the entry points'
    order; each field's ``metadata`` holds its ``check`` and ``doc``). :meth:`ExportOptions.create` validates
    values against it; ``export_hf``, ``HFExporter`` and ``HFExportCallback`` take the same names, types and
    defaults as keyword-only parameters (``export_hf`` all but ``async_write`` and ``if_busy``).
    """

    dtype: str | torch.dtype = _option(
        "bfloat16",
        lambda name, value: resolve_dtype(value),
        'The dtype every tensor is written in (each tensor is cast once): ``"bfloat16"``, ``"float16"`` or '
        '``"float32"`` (also ``"bf16"``, ``"fp16"``, ``"half"``, ``"fp32"``, ``"float"``, with or without '
        "a ``torch.`` prefix), or the ``torch.dtype`` itself.",
    )
    keep_last_n: int | None = _option(
        None,
        _optional_int,
        "Keep only the last N versions this exporter wrote, in write order: an int >= 1, or ``None`` to keep all. "
        "Rotation deletes only versions this exporter (or the run it resumes) created, never ``latest``, never one "
        "whose Hub push is queued, in flight or failed, never one you added or changed files in.",
    )
    config: Any = _option(
        None,
        check_config,
        "Model facts the weights do not carry (``n_head``, ``dropout``, ...; for a Llama ``n_heads``, "
        "``n_kv_heads``, ``norm_eps``, ``rope_theta``, ``rope_scaling_factor``, ...): a dict, a dataclass or an "
        "object. ``None`` reads them from the model's ``config``, ``params`` or ``args`` attribute.",
    )
    tokenizer: Any = _option(
        None,
        lambda name, value: value,  # made a TokenizerSource by ExportOptions.create: it needs hub_timeout_s
        "The tokenizer written into every version: ``None`` finds it (GPT-2's for a GPT-2 vocabulary, else none, "
        'logged once); ``False`` writes none; else ``"gpt2"``, a path (a directory, ``tokenizer.json``, nanoGPT '
        "``meta.pkl``, a sentencepiece ``tokenizer.model``), a ``transformers`` tokenizer, a ``tiktoken.Encoding`` "
        "or a Hub repo id (read from the local cache, else downloaded at the first export unless "
        "``HF_HUB_OFFLINE=1``). A path that does not exist fails here; the tokenizer is resolved at the first export.",
    )
    activation: str | None = _option(
        None,
        _one_of(*ACTIVATIONS, optional=True),
        'The GELU of a GPT-2 family model (the checkpoint does not record it): ``"gelu"`` (what ``None`` means: '
        'exact erf GELU, nanoGPT since May 2023), ``"gelu_new"`` (tanh formula: nanoGPT before May 2023, llm.c) or '
        '``"gelu_pytorch_tanh"`` (build-nanogpt).',
    )
    vocab_size: int | None = _option(
        None,
        _optional_int,
        "Keep only the first N vocabulary rows (e.g. 50257 of a padded 50304): an int >= 1, or ``None`` to keep all.",
    )
    untie_embeddings: bool = _option(
        False,
        check_bool,
        "Also write an independent ``lm_head.weight`` (``tie_word_embeddings=False``) instead of tying it to the "
        "token embedding.",
    )
    model_name: str | None = _option(
        None,
        lambda name, value: check_text(name, value, optional=True, one_line=True),
        "Name shown in the model card; ``None`` shows ``<model_type>-export`` (e.g. ``gpt2-export``).",
    )
    max_shard_size: int | str = _option(
        "5GB",
        _shard_size,
        'Shard the weights past this size: a byte count or a string such as ``"5GB"``, ``"500MB"``, '
        '``"2GiB"`` (at least 1 byte).',
    )
    allow_nonfinite: bool = _option(
        False,
        check_bool,
        "Write NaN/inf weights instead of failing the export with a ``ConversionError`` that names the tensor.",
    )
    async_write: bool = _option(
        True,
        check_bool,
        "Write each version in a background thread, so that the training loop only pays for the snapshot "
        "(``HFExporter``, ``HFExportCallback``); ``False`` writes synchronously, in the call.",
    )
    if_busy: Literal["wait", "skip"] = _option(
        "wait",
        _one_of("wait", "skip"),
        'When an export is due while the previous one still waits to be written: ``"wait"`` (block until it can '
        'be queued; no version lost) or ``"skip"`` (drop the new one, logged).',
    )
    on_error: Literal["raise", "warn"] = _option(
        "raise",
        _one_of("raise", "warn"),
        'A failed background write (logged at once): ``"raise"`` raises it as an ``ExportWorkerError`` from the '
        'next call on the exporter and from ``close()``, the cause chained; ``"warn"`` only logs it.',
    )
    push_to_hub: bool = _option(
        False,
        check_bool,
        "Push every version to the Hub once it is written, in a background thread (needs ``repo_id``; the token "
        "and the repository are checked when the exporter is created, before training).",
    )
    repo_id: str | None = _option(
        None,
        _repo_id,
        '``"namespace/name"`` of the Hub model repository (created if missing); ignored (logged) when '
        "``push_to_hub=False``.",
    )
    hub_token: str | None = _option(
        None,
        _token,
        "Hub token with write access; ``None`` uses ``HF_TOKEN`` or the ``hf auth login`` cache. Never logged or "
        "written.",
    )
    hub_private: bool = _option(
        True, check_bool, "Create the repository private (an existing repository keeps its visibility)."
    )
    hub_revision: str = _option(
        "main", check_text, "The branch every version is committed to (created from ``main`` if missing)."
    )
    hub_tag_versions: bool = _option(
        True, check_bool, "Tag each version's commit with its directory name (``step_000500``)."
    )
    on_push_error: Literal["warn", "raise"] = _option(
        "warn",
        _one_of("warn", "raise"),
        'A push that still fails after retries: ``"warn"`` (logged; training goes on, the version stays on disk '
        'and in the push journal as failed) or ``"raise"`` (a ``HubError`` from the next call and from '
        "``close()``).",
    )
    hub_max_retries: int = _option(
        6,
        lambda name, value: check_int(name, value, minimum=0),
        "Retries of a failed push, an int >= 0 (at most ``hub_max_retries + 1`` attempts): connection errors, "
        "timeouts, HTTP 408, 429 and 5xx, and a commit that differs on the Hub from the local files are retried; "
        "other errors fail at once.",
    )
    hub_backoff_s: float = _option(
        1.0,
        lambda name, value: check_float(name, value, minimum=0.0, maximum=HubOptions.backoff_max_s),
        "The first retry delay in seconds (>= 0); it doubles on each retry, with jitter, up to 60 s (a "
        "``Retry-After`` is honoured, up to 600 s).",
    )
    hub_push: Literal["every", "latest"] = _option(
        "every",
        _one_of("every", "latest"),
        '``"every"`` pushes every version, in step order, none skipped; ``"latest"`` pushes only the newest '
        "waiting version when pushes fall behind (the skipped ones are logged and journaled as ``skipped``; the "
        "final version is always pushed).",
    )
    hub_timeout_s: float = _option(
        60.0,
        lambda name, value: check_float(name, value, above=0.0, maximum=MAX_TIMEOUT_S),
        "Timeout in seconds (> 0, at most 86400) of every Hub request, the set-up check included: connecting, and "
        "each read or write (an upload that keeps sending is not cut). A timeout is a failed attempt, retried like "
        "a 5xx.",
    )


#: The declared options by name, in the entry points' order.
DECLARED: dict[str, Field[Any]] = {f.name: f for f in fields(ExportArguments)}


def option_values(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The export options among an entry point's arguments (its ``locals()``), by name."""
    return {name: value for name, value in arguments.items() if name in DECLARED}


# The Hub options, as HubOptions names them.
_HUB_FIELDS = {
    "repo_id": "repo_id",
    "hub_token": "token",
    "hub_private": "private",
    "hub_revision": "revision",
    "hub_tag_versions": "tag_versions",
    "on_push_error": "on_push_error",
    "hub_max_retries": "max_retries",
    "hub_backoff_s": "backoff_base_s",
    "hub_push": "push_mode",
    "hub_timeout_s": "timeout_s",
}


@dataclass(frozen=True)
class ExportOptions:
    """How each version is written, and where it is pushed (validated; build it with :meth:`create`).

    Each attribute holds the validated option of the same name (:class:`ExportArguments`; ``dtype`` as a
    ``torch.dtype``, ``tokenizer`` as a :class:`~hfexport.tokenizers.tokenizer.TokenizerSource`), except ``hub``: the
    Hub
    options grouped as a :class:`~hfexport.hub.push.HubOptions`, or ``None`` when not pushing.
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
    def create(cls, **options: Any) -> ExportOptions:
        """Validate the entry points' keyword options (:class:`ExportArguments`) and group them.

        Every option is checked by its own validator, whichever entry point received it, and the Hub ones whether
        or not pushing (a wrong value is a mistake either way).

        Returns:
            The validated options.

        Raises:
            TypeError: an unknown option name.
            OptionError: an invalid value, with the value received and what is expected (a ``ValueError``).
            ConversionError: an unknown ``dtype`` (a ``ValueError``).
            TokenizerError: an unusable ``tokenizer``, e.g. a path that does not exist (a ``ValueError``).

        Example:
            >>> options = ExportOptions.create(dtype="float16", keep_last_n=3)
            >>> options.dtype, options.keep_last_n, options.hub
            (torch.float16, 3, None)
            >>> exporter = HFExporter.from_options("hf_exports", options, every_n_steps=500)  # doctest: +SKIP
        """
        unknown = [name for name in options if name not in DECLARED]
        if unknown:
            raise TypeError(f"ExportOptions.create() got an unexpected keyword argument {unknown[0]!r}")
        value = {name: f.metadata["check"](name, options.get(name, f.default)) for name, f in DECLARED.items()}
        hub = None
        if value["push_to_hub"]:
            if not value["repo_id"]:
                raise OptionError('push_to_hub=True needs repo_id="namespace/name" (the Hub model repository).')
            hub = HubOptions(**{own: value[name] for name, own in _HUB_FIELDS.items()})
        elif value["repo_id"]:
            logger.info("repo_id=%r is set but push_to_hub=False: nothing will be pushed", value["repo_id"])
        kept = {f.name: value[f.name] for f in fields(cls) if f.name in value}
        kept["tokenizer"] = TokenizerSource(value["tokenizer"], hub_timeout_s=value["hub_timeout_s"])
        return cls(**kept, hub=hub)


# --------------------------------------------------------------------------------------------- documentation
def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _shown_default(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _with_option_entries(doc: str, names: list[str]) -> str:
    """``doc`` whose ``Args:`` section (added before ``Returns:`` or ``Raises:`` if missing) describes, in the order
    of ``names``, each parameter as the docstring does or else, for a declared option, as declared."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        start = next(i for i, line in enumerate(lines) if line.strip() in ("Returns:", "Raises:"))
        lines[start:start] = [lines[start][: _indent(lines[start])] + "Args:", ""]
    end, entries = start + 1, {}
    pad = " " * (_indent(lines[start]) + 4)
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(lines[start])):
        if lines[end].strip():
            if _indent(lines[end]) == len(pad):
                entries[lines[end].split(":")[0].split("(")[0].strip().lstrip("*")] = [lines[end]]
            else:
                entries[list(entries)[-1]].append(lines[end])
        end += 1
    for name in names:
        if name not in entries and name in DECLARED:
            f = DECLARED[name]
            text = f"{name}: {f.metadata['doc']} Default: ``{_shown_default(f.default)}``."
            entries[name] = textwrap.wrap(text, 116, initial_indent=pad, subsequent_indent=pad + "    ")
    ordered = [name for name in names if name in entries] + [name for name in entries if name not in names]
    return "\n".join([*lines[: start + 1], *(line for name in ordered for line in entries[name]), "", *lines[end:]])


def document_options(documented: D) -> D:
    """Complete the ``Args:`` of ``documented`` (a class, for its ``__init__``, or a function) with the declared
    entry of each export option its signature takes and its docstring does not describe in its own words, so that
    ``help()`` shows every option; returns ``documented``."""
    if not documented.__doc__:  # python -OO
        return documented
    names = [name for name in inspect.signature(documented).parameters if name not in ("self", "cls")]
    documented.__doc__ = _with_option_entries(documented.__doc__, names)
    return documented


# ExportOptions.create takes the declared options: its signature and help() say which.
vars(ExportOptions)["create"].__func__.__signature__ = inspect.Signature(
    [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_ONLY)]
    + [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for n, f in DECLARED.items()
    ],
    return_annotation="ExportOptions",
)
document_options(vars(ExportOptions)["create"].__func__)
