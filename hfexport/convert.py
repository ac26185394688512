"""The conversion engine shared by every entry point: state dict → plan → verified directory.

``hfexport convert`` (a checkpoint file), ``export_hf``/``HFExporter`` (a live model) and the Lightning
callback differ only in where the state dict comes from and when; all of them go through
:func:`plan_conversion`, :func:`output_tensors` and :func:`write_export` here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hfexport import families
from hfexport._util.jsonio import dumps as json_dumps
from hfexport._util.text import utc_timestamp
from hfexport._util.validation import check_text
from hfexport._version import __version__
from hfexport.card import render_model_card
from hfexport.errors import ConversionError
from hfexport.families import ConversionPlan, ModelFacts, TensorPlan, check_plan
from hfexport.families.base import DeferredTensor
from hfexport.io.chunkio import resolve_io
from hfexport.io.directory import WeightsWriter, WriteResult, check_output_path, parse_size, write_hf_directory
from hfexport.io.pages import MappedCheckpoint
from hfexport.io.safetensors import OutputTensor
from hfexport.sources import LoadedCheckpoint, load_checkpoint, resolve_checkpoint_path
from hfexport.tokenizers.tokenizer import ExportTokenizer, TokenizerSource, as_source, tokenizer_beside

logger = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "check_finite",
    "convert_checkpoint",
    "export_tokenizer",
    "log_missing_tokenizer",
    "output_tensors",
    "plan_conversion",
    "resolve_dtype",
    "write_export",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"bf16"`` / ``torch.bfloat16`` → ``torch.bfloat16`` (float32, float16 likewise).

    Raises:
        ConversionError: any other value.
    """
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str):
        name = dtype.removeprefix("torch.").lower()
        name = _ALIASES.get(name, name)
        if name in DTYPES:
            return DTYPES[name]
    raise ConversionError(f"Invalid dtype {dtype!r}. Expected one of {list(DTYPES)} (default: bfloat16).")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan_conversion(
    state_dict: Mapping[str, torch.Tensor],
    facts: ModelFacts | None = None,
    *,
    activation: str = "gelu",
    vocab_size: int | None = None,
    untie_embeddings: bool = False,
    architecture: str | None = None,
) -> ConversionPlan:
    """Turn a prefix-free training state dict into a lazy conversion plan (HF names + ``config.json``).

    Args:
        state_dict: Training names → tensors (any device, any dtype).
        facts: What shapes do not tell (``n_head``, dropout, ...).
        activation: ``gelu`` (current nanoGPT), ``gelu_new`` (old nanoGPT, llm.c) or ``gelu_pytorch_tanh``
            (build-nanogpt).
        vocab_size: Keep only the first N embedding rows (e.g. 50304 → 50257).
        untie_embeddings: Write an independent ``lm_head.weight``.
        architecture: A registered family name; detected from the keys when ``None``.

    Raises:
        CheckpointError: the state dict is not a supported model.
        ConversionError: a fact is missing or an option is invalid (the message names the fix), or a tensor does
            not have the shape the config implies (the message names the key, its shape and the expected one).
    """
    arch = families.get(architecture) if architecture else families.detect(set(state_dict))
    plan = arch.plan(
        state_dict,
        facts or ModelFacts(),
        activation=activation,
        vocab_size=vocab_size,
        untie_embeddings=untie_embeddings,
    )
    # Every entry point (CLI, export_hf, the callback) goes through here: nothing that transformers would refuse
    # to load is ever written.
    check_plan(plan, arch.expected_shapes(plan.config))
    problems = families.config_problems(plan.config)
    if problems:
        raise ConversionError(
            f"The {plan.architecture} config.json would hold a value out of range: {'; '.join(problems)}. "
            "Pass the right value (with the option named), or fix the config of the source."
        )
    return plan


def output_tensors(
    plan: ConversionPlan,
    dtype: torch.dtype,
    *,
    allow_nonfinite: bool = False,
    release: Callable[[torch.Tensor], object] | None = None,
    already_cast: bool = False,
) -> list[OutputTensor]:
    """The plan's tensors in ``dtype``, produced lazily chunk by chunk into the writer's buffers, checked for NaN/inf.

    Args:
        plan: The conversion plan (or a snapshot's :meth:`~hfexport.training.snapshot.Snapshot.copies`).
        dtype: The target dtype; every source value is cast exactly once.
        allow_nonfinite: Write NaN/inf values instead of refusing them.
        release: Called with each source tensor once every output made from it has been produced (e.g.
            :meth:`hfexport.io.pages.MappedCheckpoint.release`).
        already_cast: The sources are copies already in ``dtype`` (a snapshot): an inf in a float16 copy may be a
            finite model's overflow, which the copy can no longer tell (the message says so and suggests bf16).

    A :class:`~hfexport.families.base.DeferredTensor` source (a DCP checkpoint's) is read when the first chunk of an
    output made from it is produced, and let go once every output made from it has been: memory holds the sources
    of the few tensors being produced, never the model.
    """
    users: dict[int, int] = {}
    for tp in plan.tensors:
        if tp.source is not None:
            users[id(tp.source)] = users.get(id(tp.source), 0) + 1
    lock = threading.Lock()
    deferred = _DeferredReads()
    outputs = []
    for tp in plan.tensors:

        def fill(out: torch.Tensor, start: int, stop: int, tp: TensorPlan = tp) -> None:
            if isinstance(tp.source, DeferredTensor):
                tp = dataclasses.replace(tp, source=deferred.get(tp.source))
            tp.fill(out, start, stop)
            check_finite(tp.name, out, dtype, allow_nonfinite, source=None if already_cast else tp.source)

        def done(source: torch.Tensor | None = tp.source) -> None:
            if source is None or (release is None and not isinstance(source, DeferredTensor)):
                return
            with lock:
                users[id(source)] -= 1
                last = users[id(source)] == 0
            if last:
                deferred.drop(source)
                if release is not None:
                    release(source)

        outputs.append(OutputTensor(tp.name, dtype, tp.shape, fill=fill, whole=tp.transpose, done=done))
    return outputs


class _DeferredReads:
    """The values of deferred sources (:class:`~hfexport.families.base.DeferredTensor`) while outputs use them: each
    read once, by the first thread that needs it (the others wait for it), until :meth:`drop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[int, torch.Tensor] = {}
        self._reading: dict[int, threading.Lock] = {}

    def get(self, source: DeferredTensor) -> torch.Tensor:
        key = id(source)
        with self._lock:
            value = self._values.get(key)
            reading = self._reading.setdefault(key, threading.Lock())
        if value is not None:
            return value
        with reading:
            with self._lock:
                value = self._values.get(key)
            if value is None:
                value = source.read()
                with self._lock:
                    self._values[key] = value
        return value

    def drop(self, source: torch.Tensor) -> None:
        with self._lock:
            self._values.pop(id(source), None)
            self._reading.pop(id(source), None)


def check_finite(
    name: str,
    tensor: torch.Tensor,
    dtype: torch.dtype,
    allow_nonfinite: bool,
    *,
    source: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return ``tensor`` (on CPU) if it holds no NaN/inf, else raise a message that says what to do.

    Args:
        name: The tensor's name, for the message.
        tensor: The output tensor (already cast).
        dtype: The output dtype.
        allow_nonfinite: Skip the check.
        source: The tensor before the cast, to tell a float16 overflow from a diverged model.

    Raises:
        ConversionError: non-finite values (the message suggests bfloat16 for a float16 overflow).
    """
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if allow_nonfinite or not tensor.is_floating_point() or _all_finite(tensor):
        return tensor
    if dtype == torch.float16 and (source is None or bool(torch.isfinite(source).all())):
        peak = f" up to {float(source.detach().abs().max()):.4g}" if source is not None else ""
        raise ConversionError(
            f"{name} has values{peak} beyond float16's range (max 65504): a float16 export would hold inf. "
            "Use dtype bfloat16 (--dtype bfloat16; same range as float32) or float32."
        )
    bad = int((~torch.isfinite(tensor)).sum())
    raise ConversionError(
        f"{name} holds {bad} non-finite value(s) (NaN or inf): the model diverged or the checkpoint is corrupt. "
        "Export an earlier checkpoint, or pass --allow_nonfinite (allow_nonfinite=True) to write it anyway."
    )


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite, usually at the cost of one vectorized sum.

    A NaN or inf anywhere makes the sum NaN or inf (IEEE arithmetic never turns them back into a finite value),
    so a finite sum proves every element finite; only a non-finite sum (a real NaN/inf, or finite values whose
    sum overflows) needs the exact, ~10x slower ``isfinite`` pass (measured on CPU, bfloat16 and float32).
    """
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def export_tokenizer(
    plan: ConversionPlan,
    tokenizer: Any = None,
    *,
    dataset: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    log_missing: bool = True,
) -> ExportTokenizer | None:
    """The tokenizer an export of ``plan`` carries, for :func:`write_export`.

    ``tokenizer`` is resolved against the plan's ``config.json``: its vocabulary (the tokenizer must fit it), its
    context length as its family reads it (``model_max_length``) and, when ``tokenizer`` asks hfexport to find it,
    the tokenizer its family infers from the vocabulary (:func:`hfexport.families.tokenizer_guess`: GPT-2's BPE for
    a GPT-2 vocabulary). When such a search finds none, that is logged once per source, with the family's reason
    (:func:`log_missing_tokenizer`).

    Args:
        plan: From :func:`plan_conversion` (or a snapshot's plan).
        tokenizer: A spec (see :func:`hfexport.tokenizers.tokenizer.resolve_tokenizer`) or a
            :class:`~hfexport.tokenizers.tokenizer.TokenizerSource` (memoized between exports): ``None`` finds it,
            ``False`` means none.
        dataset: nanoGPT's ``config['dataset']`` of the checkpoint, to find ``data/<dataset>/meta.pkl``.
        checkpoint: The checkpoint file, to look for ``data/`` next to its directory.
        log_missing: ``False``: the caller logs a search that found none itself, once the export is written (the
            CLI's standard error then holds only its error line when the export fails).

    Raises:
        TokenizerError: the tokenizer is not usable or does not fit the model (the message names the fix).
    """
    source = as_source(tokenizer)
    config = plan.config
    guess = families.tokenizer_guess(config)  # the tokenizer its vocabulary implies, as its family says
    hints = {key: value for key, value in (("dataset", dataset), ("checkpoint", checkpoint)) if value is not None}
    tok = source.resolve(
        vocab_size=config.get("vocab_size"),
        model_max_length=families.context_length(config),  # as the config's family states it
        guess=guess.builtin,
        guess_why=guess.why,
        **hints,
    )
    if tok is None and log_missing:
        log_missing_tokenizer(plan, source)
    return tok


def log_missing_tokenizer(plan: ConversionPlan, tokenizer: TokenizerSource) -> None:
    """Log, once per source, that an automatic search (``tokenizer.automatic``) found no tokenizer for ``plan``,
    with its family's reason; nothing when the spec asked for none."""
    if tokenizer.automatic:
        tokenizer.report_missing(families.tokenizer_guess(plan.config).why)


def write_export(
    plan: ConversionPlan,
    output_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype,
    tensors: list[OutputTensor] | None = None,
    card_facts: Mapping[str, Any] | None = None,
    manifest_facts: Mapping[str, Any] | None = None,
    tokenizer: ExportTokenizer | None = None,
    max_shard_size: int | str = "5GB",
    force: bool = False,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
    workers: int | None = 1,
    io: str = "buffered",
    protected: Sequence[str | os.PathLike[str]] = (),
    output_option: str = "output_dir",
    log_level: int = logging.INFO,
    weights: WeightsWriter | None = None,
) -> WriteResult:
    """Write a plan as a complete, verified Hugging Face directory (atomically).

    Args:
        plan: From :func:`plan_conversion`.
        output_dir: Where to publish the directory.
        dtype: Target dtype (stated in ``config.json``).
        tensors: Already prepared output tensors (e.g. a snapshot); made lazily from the plan when ``None``.
        card_facts: Facts for the model card (step, source, loss, ...).
        manifest_facts: Facts for ``hfexport.json`` (step, epoch, ...).
        tokenizer: The tokenizer to write, resolved by the caller (:func:`export_tokenizer`); ``None`` writes none.
            Its bos/eos ids replace the plan's in ``config.json`` and ``generation_config.json``.
        max_shard_size: Shard past this size (``"5GB"`` by default).
        force: Replace an earlier export of hfexport at ``output_dir`` (never a directory it did not write).
        allow_nonfinite: Write NaN/inf instead of refusing.
        progress: Progress bar (``None``: only on a terminal).
        workers: Threads producing and writing the weights (``None``: one per CPU, at most 4; ``1``: the calling
            thread only, what the exporter uses so that a background export leaves the cores to training).
        io: How the weights reach the disk (:func:`hfexport.io.chunkio.write_shard`): ``"buffered"`` (default,
            what the exporter uses), ``"auto"`` or ``"direct"``.
        protected: Paths the output directory must not hold (the checkpoint being read).
        output_option: How the caller names ``output_dir`` in messages (``"--output_dir"`` from the CLI,
            ``"dirpath"`` from the Lightning callback).
        log_level: The level of the writer's "Wrote ..." line.
        weights: Who writes the weights' files, when not the writer itself (the ranks of a distributed export:
            see :func:`~hfexport.io.directory.write_hf_directory`).

    Raises:
        TypeError: ``tokenizer`` is a spec, not a resolved tokenizer (pass it through :func:`export_tokenizer`).
    """
    if tokenizer is not None and not isinstance(tokenizer, ExportTokenizer):
        raise TypeError(
            f"write_export takes a resolved tokenizer (an ExportTokenizer or None), got {type(tokenizer).__name__}: "
            "pass tokenizer=export_tokenizer(plan, spec)."
        )
    if tensors is None:
        tensors = output_tensors(plan, dtype, allow_nonfinite=allow_nonfinite)
    config = dict(plan.config)
    config["dtype"] = dtype_name(dtype)
    config["torch_dtype"] = dtype_name(dtype)  # transformers < 4.56 reads this name
    config["transformers_version"] = _transformers_version()
    generation = dict(plan.generation_config)
    _special_ids_from_tokenizer(tokenizer, config, generation)
    generation["_from_model_config"] = True
    card, manifest = _card_and_manifest(plan, dtype, config, tensors, tokenizer, card_facts, manifest_facts)
    files = {
        "config.json": json_dumps(config, name="config.json", indent=2) + "\n",
        "generation_config.json": json_dumps(generation, name="generation_config.json", indent=2) + "\n",
        "README.md": render_model_card(card),
    }
    result = write_hf_directory(
        output_dir,
        tensors,
        files,
        manifest=manifest,
        tokenizer_files=tokenizer.files if tokenizer is not None else None,
        max_shard_size=max_shard_size,
        force=force,
        protected=protected,
        log_level=log_level,
        progress=progress,
        workers=default_workers() if workers is None else workers,
        io=io,
        option=output_option,
        weights=weights,
    )
    return result


def _card_and_manifest(
    plan: ConversionPlan,
    dtype: torch.dtype,
    config: Mapping[str, Any],
    tensors: list[OutputTensor],
    tok: ExportTokenizer | None,
    card_facts: Mapping[str, Any] | None,
    manifest_facts: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model card's facts and ``hfexport.json``'s content of an export (what was inferred in both)."""
    n_params = sum(math.prod(t.shape) for t in tensors)
    activation = config.get("activation_function") or config.get("hidden_act")
    card = {"dtype": dtype_name(dtype), "n_params": n_params, "activation": activation, **plan.card_facts}
    card["model_type"] = config.get("model_type")
    card.update(dict(card_facts or {}))
    card["tokenizer"] = tok.source if tok is not None else None
    if tok is not None and tok.notes:
        card["tokenizer_note"] = "; ".join(tok.notes)
    manifest: dict[str, Any] = {
        "hfexport_version": __version__,
        "created": utc_timestamp(),
        "architecture": plan.architecture,
        "dtype": dtype_name(dtype),
        "tensors": len(tensors),
        "parameters": n_params,
        "notes": plan.notes,
        "tokenizer": tok.source if tok is not None else None,
    }
    if tok is not None and tok.notes:
        manifest["tokenizer_notes"] = list(tok.notes)
    # A fact such as loss=nan (a diverged run) is recorded as text: strict JSON has no NaN.
    manifest.update({key: _json_number(value) for key, value in dict(manifest_facts or {}).items()})
    # What was inferred, and from where (file names only): in the manifest and in the card.
    inferred = {str(k): str(v) for k, v in dict(manifest.pop("inferred", None) or {}).items()}
    if tok is not None and tok.inferred:
        inferred["tokenizer"] = tok.inferred
    if inferred:
        manifest["inferred"] = inferred
        card.update({f"inferred {fact}": where for fact, where in inferred.items()})
    return card, manifest


def _json_number(value: Any) -> Any:
    """``value``, or its text (``"nan"``, ``"inf"``) when it is a float strict JSON cannot hold."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector, as it was before afterwards.

    A conversion makes many short-lived tensor views; the collector's passes over everything torch and
    transformers created would cost ~0.15 s of CPU on a 774M conversion (measured). Nothing in a conversion makes
    reference cycles.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def default_workers() -> int:
    """Writer threads for a conversion that has the machine to itself: one per CPU, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _special_ids_from_tokenizer(
    tokenizer: ExportTokenizer | None, config: dict[str, Any], generation: dict[str, Any]
) -> None:
    """bos/eos ids come from the tokenizer when there is one, so generation stops at its end-of-text.

    The family's default (:meth:`~hfexport.families.Architecture.special_ids`: GPT-2's ``<|endoftext|>`` for a
    GPT-2-sized vocabulary) is a guess; a model trained with its
    own tokenizer (e.g. a small BPE with ``<|endoftext|>`` = 0, or characters with no end-of-text at all) gets the
    tokenizer's ids. The tokenizer fits the vocabulary (checked when it was resolved), so its ids are rows.
    """
    if tokenizer is None:
        return
    for key, value in (("bos_token_id", tokenizer.bos_token_id), ("eos_token_id", tokenizer.eos_token_id)):
        config[key] = value
        if value is None or (key == "eos_token_id" and not tokenizer.eos_stops_generation):
            generation.pop(key, None)  # nanoGPT's character level: its newline "eos" never stopped sampling
        else:
            generation[key] = value


def _transformers_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # not installed: the field is informational
        return None


def convert_checkpoint(
    path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "bfloat16",
    activation: str | None = None,
    vocab_size: int | None = None,
    n_head: int | None = None,
    rope_theta: float | None = None,
    norm_eps: float | None = None,
    rope_scaling_factor: float | None = None,
    untie_embeddings: bool = False,
    model_name: str | None = None,
    base_model: str | None = None,
    tokenizer: Any = None,
    max_shard_size: int | str = "5GB",
    force: bool = False,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
    io: str = "auto",
    hub_timeout_s: float = 60.0,
    output_option: str = "output_dir",
) -> Path:
    """Convert a nanoGPT-family or Llama-style checkpoint file into a verified Hugging Face directory.

    Args:
        path: A checkpoint file (nanoGPT, build-nanogpt, nano-gpt package, llama2.c, Meta ``consolidated.00.pth``
            + ``params.json``, litgpt ``lit_model.pth`` + ``model_config.yaml``, Lightning ``.ckpt``, a bare state
            dict), a directory holding checkpoints (the newest is used) or ``dir/step_002000``, or a
            ``torch.distributed.checkpoint`` directory (torchtitan, Lightning; each tensor read when it is written).
        output_dir: The directory to create.
        dtype: ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``.
        activation: The GELU the model was trained with; ``None`` picks the producer's known one
            (tanh for build-nanogpt / nano-gpt) and otherwise ``"gelu"`` (current nanoGPT).
        vocab_size: Keep only the first N vocabulary rows (e.g. 50257 of a padded 50304).
        n_head: Number of attention heads, when the checkpoint does not record it.
        rope_theta: RoPE base of a Llama-style model, when its checkpoint does not record it.
        norm_eps: RMSNorm (LayerNorm) epsilon, when the checkpoint does not record it.
        rope_scaling_factor: Llama 3.1-style RoPE scaling factor, when the config says ``use_scaled_rope`` only.
        untie_embeddings: Also write an independent ``lm_head.weight``.
        model_name: Name for the model card.
        base_model: The Hub id the model was fine-tuned from (the card's ``base_model``), when there is one.
        tokenizer: The tokenizer to write: ``None`` (default) finds it (nanoGPT's ``data/<dataset>/meta.pkl``,
            else GPT-2's for a GPT-2 model, else none, logged); ``False`` writes none; or ``"gpt2"``, a path
            (directory, ``tokenizer.json``, ``meta.pkl``), a transformers tokenizer, a ``tiktoken.Encoding``, a
            Hub repo id in the local cache. See :mod:`hfexport.tokenizers.tokenizer`.
        max_shard_size: Shard the weights past this size.
        force: Replace ``output_dir`` atomically if it is an earlier export of hfexport (its ``hfexport.json``
            lists every file in it). Never replaced, whatever ``force`` says: a directory hfexport did not write,
            one holding the checkpoint, the working directory or its ancestors, the home directory, a
            file-system root.
        allow_nonfinite: Write NaN/inf values instead of refusing.
        progress: Progress bar; ``None`` shows it on a terminal only.
        io: How the weights reach the disk: ``"auto"`` (default: direct I/O for shards of 64 MB or more, the page
            cache for smaller ones), ``"buffered"`` (the page cache only) or ``"direct"`` (direct I/O where the file
            system allows it). The environment variable ``HFEXPORT_DIRECT_IO`` (``0``, ``1``, ``auto``) overrides it.
        hub_timeout_s: The timeout of every Hub request when ``tokenizer`` is a Hub repo id that is not cached.
        output_option: How messages name ``output_dir`` (the CLI passes ``"--output_dir"``).

    Returns:
        The output directory.

    Raises:
        CheckpointError: the checkpoint cannot be read or is not a supported model.
        ConversionError: an option is invalid, or a tensor does not have the shape the config implies.
        OutputPathError: ``output_dir`` must not or cannot be used (checked before the checkpoint is read).
        OutputExistsError: ``output_dir`` is occupied, or was filled while the export was written.

    Example:
        >>> convert_checkpoint("out/ckpt.pt", "hf_model", dtype="float32")  # doctest: +SKIP
        PosixPath('hf_model')
    """
    torch_dtype = resolve_dtype(dtype)
    check_text("model_name", model_name, optional=True, one_line=True)
    parse_size(max_shard_size)
    resolve_io(io)  # a bad value fails before the (possibly long) load
    source = resolve_checkpoint_path(path)
    protected = [source] + ([Path(tokenizer)] if isinstance(tokenizer, (str, os.PathLike)) else [])
    out = check_output_path(output_dir, force=force, protected=protected, option=output_option)  # before the load
    # A missing path, an unsupported kind, an uncached Hub id while offline: refused before the load.
    tokenizer = TokenizerSource(tokenizer, hub_timeout_s=hub_timeout_s)
    with _collection_paused():
        start = time.perf_counter()
        ckpt = load_checkpoint(source)
        options = ModelFacts(
            n_head=n_head,
            rope_theta=rope_theta,
            layer_norm_epsilon=norm_eps,
            raw={"rope_scaling_factor": rope_scaling_factor} if rope_scaling_factor is not None else None,
        )
        plan = _plan_checkpoint(
            ckpt, options, activation=activation, vocab_size=vocab_size, untie_embeddings=untie_embeddings
        )
        # None named: its family says which tokenizer files may sit beside it (litgpt's, a sentencepiece model).
        tokenizer = tokenizer_beside(tokenizer, ckpt.path, families.get(plan.architecture).tokenizer_beside)
        # The checkpoint's pages are given back as its tensors are written: peak memory stays a few chunks, not the
        # whole mapped checkpoint (the file stays in the page cache).
        mapped = MappedCheckpoint(ckpt.path)
        tensors = output_tensors(
            plan, torch_dtype, allow_nonfinite=allow_nonfinite, release=mapped.release if mapped else None
        )
        card, manifest = _checkpoint_facts(ckpt, model_name=model_name, base_model=base_model)
        tok = export_tokenizer(plan, tokenizer, dataset=ckpt.dataset, checkpoint=ckpt.path, log_missing=False)
        result = write_export(
            plan,
            out,
            dtype=torch_dtype,
            tensors=tensors,
            card_facts=card,
            manifest_facts=manifest,
            tokenizer=tok,
            max_shard_size=max_shard_size,
            force=force,
            allow_nonfinite=allow_nonfinite,
            progress=progress,
            workers=None,
            io=io,
            protected=protected,
            output_option=output_option,
        )
        if tok is None:
            log_missing_tokenizer(plan, tokenizer)  # once written: a failed conversion's only message is its error
        if mapped:
            logger.debug(
                "Gave back %.1f MB of the checkpoint's mapped pages as they were written", mapped.released / 1e6
            )
        logger.info("Converted %s → %s in %.2fs", ckpt.path, result.path, time.perf_counter() - start)
        return Path(output_dir)


def _plan_checkpoint(
    ckpt: LoadedCheckpoint,
    options: ModelFacts,
    *,
    activation: str | None,
    vocab_size: int | None,
    untie_embeddings: bool,
) -> ConversionPlan:
    """The conversion plan of a loaded checkpoint: its facts completed by the options (``n_head``, ...), its
    producer's GELU when none is given (logged); a refused fact says which config file beside it was read."""
    facts = ckpt.facts.merged(options)
    chosen = activation or ckpt.activation_hint or "gelu"
    if activation is None and ckpt.activation_hint:
        logger.info("Using activation %r, the GELU of %s checkpoints (override with --activation)", chosen, ckpt.layout)
    try:
        return plan_conversion(
            ckpt.state_dict, facts, activation=chosen, vocab_size=vocab_size, untie_embeddings=untie_embeddings
        )
    except ConversionError as exc:
        if not ckpt.config_file:
            raise
        # The message names the field; say which file it was read from.
        raise ConversionError(
            f"{exc} (The model's config was read from {ckpt.config_file} beside the checkpoint.)"
        ) from exc


def _checkpoint_facts(
    ckpt: LoadedCheckpoint, *, model_name: str | None, base_model: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the model card and ``hfexport.json`` say of a converted checkpoint (file names, never paths)."""
    card = {
        "model_name": model_name,
        "base_model": base_model,
        "step": ckpt.step,
        "source": f"{ckpt.path.name} ({ckpt.layout})",
    }
    card.update(ckpt.extra)
    manifest: dict[str, Any] = {"step": ckpt.step, "source": ckpt.path.name, "layout": ckpt.layout}  # no path
    if ckpt.config_file:
        manifest["inferred"] = {
            "config": f"{ckpt.config_file} beside the checkpoint (its shape facts agree with the weights)"
        }
    return card, manifest
