"""Where the weights come from: checkpoint files and live models → a prefix-free state dict + facts.

Files are read with ``torch.load(weights_only=True, mmap=True)`` always: nothing in the file is executed, and
tensors stay on disk until they are touched, so a checkpoint is never held twice in RAM. A config object
pickled as a plain class (build-nanogpt's ``GPTConfig`` dataclass) is read through an inert stand-in class
that only receives its fields; any other global (a function, ``os.system``, ...) is refused.

Live models are unwrapped from DDP (``module.``), ``torch.compile`` (``_orig_mod.``) and LightningModules
(``pl_module.model``), and FSDP2 (``fully_shard``) parameters are gathered with every rank taking part.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.serialization

from hfexport import dcp, families
from hfexport._util.text import first_line
from hfexport.errors import CheckpointError, UnsafeCheckpointError
from hfexport.families import ModelFacts
from hfexport.families.base import DeferredTensor
from hfexport.io.sidecars import read_sidecar_config

logger = logging.getLogger(__name__)

__all__ = [
    "LoadedCheckpoint",
    "load_checkpoint",
    "model_facts",
    "resolve_checkpoint_path",
    "strip_prefixes",
    "unwrap_model",
]

#: Prefixes that wrappers (``torch.compile``, DDP) add to parameter names, in any combination and order.
_WRAPPERS = re.compile(r"(^|\.)(?:_orig_mod\.|module\.)+")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".bin")
#: Globals that may be stood in for: plain config holders (read as attribute bags, never executed).
_CONFIG_GLOBAL = re.compile(r"(Config|Args|ModelArgs|Hyperparameters|HParams)$")
_DICT_GLOBAL = re.compile(r"(AttributeDict|OrderedDict|DictConfig)$")


@dataclass
class LoadedCheckpoint:
    """A checkpoint's weights (prefixes stripped) and what else it says about the model.

    Attributes:
        path: The file read.
        layout: Which producer's layout was recognized (``"nanogpt"``, ``"build-nanogpt"``, ``"nano-gpt"``,
            ``"llama2.c"``, ``"meta"`` (``params.json`` beside), ``"litgpt"`` (``model_config.yaml`` beside),
            ``"lightning"``, ``"state_dict"``).
        state_dict: Tensor name → tensor (mmap'd when the file format allows).
        facts: Model facts read from the checkpoint's config, when it has one.
        step: The training step when recorded, as recorded (an int, unless the training script saved a float or a
            string).
        activation_hint: The GELU the producer is known to use, when the layout tells.
        extra: Other scalar facts (e.g. ``val_loss``) for the model card.
        dataset: nanoGPT's ``config['dataset']`` (where ``data/<dataset>/meta.pkl`` holds a char-level vocabulary).
        config_file: The name of the file beside the checkpoint the config was read from (``params.json``,
            ``model_config.yaml``), when it was; a file name only, never a path (it goes into the card).
    """

    path: Path
    layout: str
    state_dict: dict[str, torch.Tensor]
    facts: ModelFacts = field(default_factory=ModelFacts)
    step: int | float | str | None = None
    activation_hint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    config_file: str | None = None


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """Resolve a checkpoint argument to a file.

    A file is returned as is. A ``torch.distributed.checkpoint`` directory (holding ``.metadata``) is returned as
    is (its ``.metadata`` file names it too). Another directory means its newest checkpoint: ``latest.pt``, else
    ``ckpt.pt``, else the newest ``*.pt``/``*.ckpt`` by modification time. ``dir/step_002000`` (no such file)
    resolves to the file in ``dir`` whose name starts with ``step_002000``.

    Raises:
        CheckpointError: nothing matching exists.
    """
    p = Path(path).expanduser()
    if p.name == dcp.METADATA_NAME and p.is_file():
        p = p.parent  # a torch.distributed.checkpoint's metadata names its directory
    if dcp.is_dcp_directory(p):
        return p
    if p.is_file():
        return p
    if p.exists() and not p.is_dir():
        raise CheckpointError(
            f"{str(p)!r} is {_file_kind(p)}, not a checkpoint file: pass a .pt/.ckpt file saved with torch.save "
            "(or a directory holding one)."
        )
    if p.is_dir():
        for name in ("latest.pt", "ckpt.pt", "last.ckpt"):
            if (p / name).is_file():
                return p / name
        candidates = [c for c in p.iterdir() if c.is_file() and c.suffix in CHECKPOINT_SUFFIXES]
        distributed = sorted(c.name for c in p.iterdir() if dcp.is_dcp_directory(c))
        if not candidates and distributed:
            shown = ", ".join(distributed[:5]) + (" ..." if len(distributed) > 5 else "")
            raise CheckpointError(
                f"{str(p)!r} holds distributed checkpoints (torch.distributed.checkpoint directories: {shown}), not "
                "a checkpoint file: pass one of them."
            )
        if not candidates:
            raise CheckpointError(
                f"No checkpoint in directory {str(p)!r}: expected latest.pt, ckpt.pt or a *.pt/*.ckpt file in it. "
                "Pass the checkpoint file itself."
            )
        return max(candidates, key=lambda c: (c.stat().st_mtime, c.name))
    parent = p.parent
    if parent.is_dir():
        matches = sorted(c for c in parent.iterdir() if c.is_file() and c.stem == p.name)
        matches = matches or sorted(
            c for c in parent.iterdir() if c.is_file() and c.name.startswith(p.name) and c.suffix in CHECKPOINT_SUFFIXES
        )
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CheckpointError(f"{str(p)!r} matches several files: {[m.name for m in matches]}; name one.")
    raise CheckpointError(f"Checkpoint not found: {str(p)!r} does not exist.")


def _file_kind(path: Path) -> str:
    """``"a FIFO"``, ``"a character device"``, ... for a path that exists but is not a regular file."""
    mode = path.stat().st_mode
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Load a checkpoint safely and find the model's weights and facts in it.

    Args:
        path: A checkpoint file, a ``torch.distributed.checkpoint`` directory, or a directory / step name (see
            :func:`resolve_checkpoint_path`).

    Returns:
        The recognized layout, state dict (prefixes stripped) and facts. A DCP directory's tensors are
        :class:`~hfexport.families.base.DeferredTensor` (read one at a time when written; see :func:`_load_dcp`).

    Raises:
        UnsafeCheckpointError: the file would need arbitrary code to load.
        CheckpointError: the file is empty, truncated, not a checkpoint, or holds no state dict.
    """
    file = resolve_checkpoint_path(path)
    if file.is_dir():
        return _load_dcp(file)
    obj = _safe_load(file)
    layout, sd, config, step, extra = _find_weights(obj, file)
    sd = strip_prefixes(sd)
    config_file = None
    if not config:
        # Meta's params.json, litgpt's model_config.yaml: each read only for its own layout, checked against the shapes
        sidecar = read_sidecar_config(file, _family(sd), sd, families.sidecars())
        if sidecar is not None:
            layout, config, config_file = sidecar
    elif layout == "nanogpt" and "dim" in config and "multiple_of" in config:
        layout = "llama2.c"  # train.py saves nanoGPT's dict keys, with a Llama's model_args
    facts = ModelFacts.from_mapping(config)
    hint = "gelu_pytorch_tanh" if layout in ("build-nanogpt", "nano-gpt") else None
    logger.info("Read %s (%s layout, %d tensors%s)", file, layout, len(sd), f", step {step}" if step else "")
    train_config = obj.get("config") if isinstance(obj, Mapping) else None
    dataset = train_config.get("dataset") if isinstance(train_config, Mapping) else None
    dataset = dataset if isinstance(dataset, str) else None
    return LoadedCheckpoint(file, layout, sd, facts, step, hint, extra, dataset, config_file)


#: Top-level entries of a DCP checkpoint that hold training state, never the model: never read.
_DCP_NOT_MODEL = re.compile(r"^(optim(izer)?s?(_\d+)?|lr_schedulers?|schedulers?|dataloader|train_state|rng_state)$")
#: The top-level entries a DCP checkpoint keeps the model's weights in, in the order they are looked at: torchtitan
#: flattens the model's tensors to the top level (``""``); Fabric and older torchtitan save ``model``; the Trainer's
#: ``ModelParallelStrategy`` saves the LightningModule's ``state_dict``.
_DCP_MODEL_ENTRIES = ("", "model", "state_dict", "module")
#: Lightning keeps what is not a module or optimizer beside the DCP files (``lightning.fabric.utilities.load``).
_LIGHTNING_META = "meta.pt"


def _load_dcp(directory: Path) -> LoadedCheckpoint:
    """A ``torch.distributed.checkpoint`` directory as a state dict of deferred tensors, and its facts.

    The metadata is read safely (:func:`hfexport.dcp.read_metadata`); each model tensor becomes a
    :class:`~hfexport.families.base.DeferredTensor` of its global shape and dtype, whose values DCP's reader reads
    when the writer needs them. The model's entry is the first of :data:`_DCP_MODEL_ENTRIES` whose tensors a
    registered family recognizes; optimizer state and the rest of the training state are never read. Facts come
    from Lightning's ``meta.pt`` (read like any checkpoint, ``weights_only``), else from a sidecar config beside the
    directory (``params.json``, ``model_config.yaml``), else from the options.
    """
    checkpoint = dcp.DCPCheckpoint(directory)
    groups: dict[str, dict[str, dcp.DCPTensor]] = {}
    for info in checkpoint.tensors.values():
        head = info.path[0] if len(info.path) > 1 else info.key.split(".", 1)[0]
        if _DCP_NOT_MODEL.match(head):
            continue
        group, name = (info.path[0], ".".join(info.path[1:])) if len(info.path) > 1 else ("", info.key)
        groups.setdefault(group, {})[name] = info
    order = [g for g in _DCP_MODEL_ENTRIES if g in groups] + sorted(g for g in groups if g not in _DCP_MODEL_ENTRIES)
    sd: dict[str, torch.Tensor] = {}
    family = None
    for group in order:
        candidate = _strip_module_attribute(
            {
                name: DeferredTensor(t.shape, t.dtype, functools.partial(checkpoint.read, t.key))
                for name, t in groups[group].items()
            }
        )
        family = _family(candidate)
        if family is not None:
            sd = candidate
            logger.info("Model weights of %s: entry %r (%d tensors)", directory, group or "(top level)", len(sd))
            break
    if family is None:
        shown = ", ".join(repr(g or "(top level)") for g in order) or "none"
        raise CheckpointError(
            f"No model weights found in the distributed checkpoint {str(directory)!r}: no entry holds the tensors of "
            f"a supported model (entries with tensors: {shown}; optimizer and training state are not looked at). "
            "Save the model's state_dict() under 'model' (or at the top level)."
        )
    layout, config, step, extra = "dcp", None, None, {}
    meta_file = directory / _LIGHTNING_META
    if meta_file.is_file():
        layout = "lightning-dcp"
        try:
            meta = _safe_load(meta_file)
        except CheckpointError as exc:
            logger.warning("Not reading %s (the model's config and step): %s", meta_file, exc)
            meta = None
        if isinstance(meta, Mapping):
            hparams = _as_mapping(meta.get("hyper_parameters")) or {}
            config = _as_mapping(hparams.get("config")) or hparams or _as_mapping(meta.get("model_args"))
            config = config or _as_mapping(meta.get("config"))
            step = scalar_value(meta.get("global_step", meta.get("iter_num", meta.get("step"))))
            found = {k: scalar_value(meta.get(k)) for k in ("val_loss", "best_val_loss", "loss")}
            extra = {k: v for k, v in found.items() if v is not None}
    config_file = None
    if not config:
        sidecar = read_sidecar_config(directory, family, sd, families.sidecars())
        if sidecar is not None:
            _, config, config_file = sidecar
    logger.info("Read %s (%s layout, %d tensors%s)", directory, layout, len(sd), f", step {step}" if step else "")
    return LoadedCheckpoint(
        directory, layout, sd, ModelFacts.from_mapping(config), step, None, extra, None, config_file
    )


def _family(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The registered architecture these tensors belong to, or ``None`` (the conversion names the problem)."""
    try:
        return families.detect(set(sd)).name
    except CheckpointError:
        return None


class _ConfigStandIn:
    """Receives the fields of a pickled config object (read back with ``vars``). Defines nothing that could run."""


class _DictStandIn(dict):
    """Receives a pickled dict subclass (Lightning's AttributeDict, ...) as a plain dict."""


#: A checkpoint's pickle holds only its structure (tensor data lies in separate entries): past this it is refused.
MAX_PICKLE_BYTES = 256 * 2**20
#: ``torch.save`` stores every entry uncompressed; an entry expanding more than this is a decompression bomb.
MAX_EXPANSION = 100
_SMALL_ENTRY = 2**20  # entries up to this size may compress as they like
_MAX_STAND_INS = 16
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


def check_archive(file: Path) -> None:
    """Refuse a zip checkpoint whose entries would expand far beyond any real checkpoint, before reading them.

    Only the zip's directory is read (declared sizes, which bound what the reader allocates): a pickle entry
    larger than :data:`MAX_PICKLE_BYTES`, or any entry larger than 1 MiB that expands more than
    :data:`MAX_EXPANSION` times its compressed size, is refused.

    Raises:
        CheckpointError: one line naming the entry, its sizes and what to do.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"{str(file)!r} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}). It may be truncated "
            "or corrupted; re-save or re-copy it."
        ) from None
    for entry in entries:
        expands = entry.file_size > _SMALL_ENTRY and entry.file_size > MAX_EXPANSION * max(entry.compress_size, 1)
        if entry.compress_type != zipfile.ZIP_STORED and expands:
            raise CheckpointError(
                f"{str(file)!r} is refused: its entry {entry.filename!r} expands from {entry.compress_size} to "
                f"{entry.file_size} bytes ({entry.file_size // max(entry.compress_size, 1)}x), and torch.save "
                "stores entries uncompressed (a decompression bomb?). Re-save the weights with torch.save."
            )
        if entry.filename.endswith(".pkl") and entry.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{str(file)!r} is refused: its pickle {entry.filename!r} is {entry.file_size} bytes (at most "
                f"{MAX_PICKLE_BYTES} expected; tensors are stored apart from it). Re-save the weights alone: "
                "torch.save(model.state_dict(), 'weights.pt')."
            )


def _safe_load(file: Path) -> Any:
    """``torch.load(weights_only=True)``, parsing the pickle once in the common case.

    A global that weights-only loading refuses stops the parse where it appears. A plain config holder (a name
    matching :data:`_CONFIG_GLOBAL` / :data:`_DICT_GLOBAL`) then gets an inert stand-in and the file is parsed
    again, so only files that pickle such a class pay a second parse; any other global is refused, unexecuted.
    """
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"{str(file)!r} is empty (0 bytes): the file was not written completely.")
    is_zip = zipfile.is_zipfile(file)
    if is_zip:
        check_archive(file)
    stand_ins: list[Any] = []
    while True:
        try:
            with torch.serialization.safe_globals(stand_ins):
                return torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError as exc:
            match = _REFUSED_GLOBAL.search(str(exc))
            names = [match.group(1)] if match else _scanned_globals(file, exc) if is_zip and not stand_ins else []
            known = {n for _, n in stand_ins}
            new = [n for n in names if n not in known]
            refused = [n for n in new if not (_CONFIG_GLOBAL.search(n) or _DICT_GLOBAL.search(n))]
            if new and not refused and len(stand_ins) + len(new) <= _MAX_STAND_INS:
                stand_ins.extend((_DictStandIn if _DICT_GLOBAL.search(n) else _ConfigStandIn, n) for n in new)
                continue
            raise _unpickling_error(file, exc, ", ".join(refused or names) or None) from exc
        except Exception as exc:  # a corrupt file can make the unpickler raise almost anything
            first = first_line(exc)
            raise CheckpointError(
                f"{str(file)!r} is not a readable PyTorch checkpoint ({first}). It may be truncated or corrupted "
                "(an interrupted save or copy), or not a checkpoint at all."
            ) from exc


def _scanned_globals(file: Path, exc: pickle.UnpicklingError) -> list[str]:
    """The refused globals of a zip checkpoint, by a scan of its pickle: only when torch's message did not name
    one (a torch version that words it differently)."""
    if "GLOBAL" not in str(exc) and "global" not in str(exc):
        return []
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
    except Exception:  # the file is unreadable: the original error says so
        return []


def _unpickling_error(file: Path, exc: pickle.UnpicklingError, name: str | None) -> CheckpointError:
    # torch's message is several paragraphs; the one naming the refused global is the useful one.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = next((line for line in lines if "GLOBAL" in line or "global" in line), lines[-1] if lines else "")
    if name is not None or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
        what = f"refers to {name}, which loading would have to import and run" if name else f"needs code ({message})"
        return UnsafeCheckpointError(
            f"{str(file)!r} {what}; hfexport only loads plain tensors and config data (torch.load "
            "weights_only=True), so nothing in this file was executed. If you trust the file, re-save the weights "
            "alone: torch.save(model.state_dict(), 'weights.pt')."
        )
    return CheckpointError(
        f"{str(file)!r} is not a readable PyTorch checkpoint ({message or exc}). It may be truncated or "
        "corrupted, or not a checkpoint at all."
    )


def _as_mapping(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "__dict__"):
        return dict(vars(config))
    return None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def scalar_value(value: Any) -> int | float | str | bool | None:
    """``value`` as a plain scalar for a card or manifest (a one-element tensor's item), or ``None`` if it is not
    one (a list, a dict, a multi-element tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float, str)) else None


def _find_weights(
    obj: Any, file: Path
) -> tuple[str, dict[str, torch.Tensor], dict[str, Any] | None, int | float | str | None, dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(file)!r} holds a {type(obj).__name__}, not a state dict or a checkpoint dict. Save "
            "model.state_dict() or a dict with a 'model' / 'state_dict' entry."
        )
    found = {k: scalar_value(obj.get(k)) for k in ("val_loss", "best_val_loss", "loss")}
    extra = {k: v for k, v in found.items() if v is not None}
    if "model" in obj and _is_state_dict(obj["model"]):
        config = obj.get("model_args")
        layout = "nanogpt"
        if config is None:
            config = obj.get("config")
            layout = "build-nanogpt" if isinstance(config, _ConfigStandIn) else "nanogpt"
        step = scalar_value(obj.get("iter_num", obj.get("step")))
        return layout, dict(obj["model"]), _as_mapping(config), step, extra
    if "model_state_dict" in obj and _is_state_dict(obj["model_state_dict"]):
        step = scalar_value(obj.get("step", obj.get("iter_num")))
        return "nano-gpt", dict(obj["model_state_dict"]), _as_mapping(obj.get("config")), step, extra
    if "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        hparams = _as_mapping(obj.get("hyper_parameters")) or {}
        config = _as_mapping(hparams.get("config")) or hparams
        sd = _strip_module_attribute(dict(obj["state_dict"]))
        return "lightning", sd, config, scalar_value(obj.get("global_step")), extra
    if _is_state_dict(obj):
        return "state_dict", dict(obj), None, None, extra
    keys = ", ".join(map(str, list(obj)[:8]))
    raise CheckpointError(
        f"No model weights found in {str(file)!r}: expected a state dict, or a dict with 'model', "
        f"'model_state_dict' or 'state_dict'; found keys: {keys or '(none)'}."
    )


def _strip_module_attribute(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a LightningModule attribute prefix (``model.``, ``gpt.``, ...) before the model's own names."""
    stripped = strip_prefixes(sd)
    anchor = "tok_embeddings." if any(k.endswith("tok_embeddings.weight") for k in stripped) else "transformer."
    prefixes = {k.split(anchor, 1)[0] for k in stripped if anchor in k}
    if len(prefixes) == 1:
        (prefix,) = prefixes
        if prefix:
            return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in stripped.items()}
    return stripped


def strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``_orig_mod.``, ``module.``, stacked in any order) from every key, also inside an
    attribute path (``model._orig_mod.transformer...``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = _WRAPPERS.sub(r"\1", key)
        if name in out:
            raise CheckpointError(f"Two tensors map to {name!r} once prefixes are stripped ({key!r}).")
        out[name] = value
    return out


def unwrap_model(model: Any) -> torch.nn.Module:
    """Find the network inside DDP / ``torch.compile`` / LightningModule wrappers.

    A LightningModule with a ``model`` attribute that is an ``nn.Module`` is unwrapped to it; otherwise the
    module itself is used.
    """
    seen = 0
    while seen < 16:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
            continue
        if type(model).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            model = model.module
            continue
        if _is_lightning_module(model):
            inner = getattr(model, "model", None)
            if isinstance(inner, torch.nn.Module):
                model = inner
                continue
        break
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"Expected a torch.nn.Module to export, got {type(model).__name__}.")
    return model


def _is_lightning_module(model: Any) -> bool:
    return any(cls.__name__ == "LightningModule" for cls in type(model).__mro__)


#: Attributes where training code keeps a model's config: nanoGPT/litgpt ``config``, Meta's and llama2.c's
#: ``params`` (a ``ModelArgs`` dataclass), other ``args``/``model_args``.
CONFIG_ATTRIBUTES: tuple[str, ...] = ("config", "params", "args", "model_args")


def model_facts(model: torch.nn.Module, config: Any = None) -> ModelFacts:
    """Facts from an explicit ``config`` (dict, dataclass, object), else from the model's config attribute."""
    explicit = ModelFacts.from_mapping(_as_mapping(config))
    for attribute in CONFIG_ATTRIBUTES:
        value = getattr(model, attribute, None)
        if value is not None and not isinstance(value, (torch.Tensor, torch.nn.Module)) and _as_mapping(value):
            return ModelFacts.from_mapping(_as_mapping(value)).merged(explicit)
    return explicit
