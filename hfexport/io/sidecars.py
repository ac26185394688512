"""Model configs kept in a file beside a bare-state-dict checkpoint.

Meta's releases put ``params.json`` beside ``consolidated.00.pth``; litgpt puts ``model_config.yaml`` beside
``lit_model.pth``. Neither checkpoint file records the model's heads, RMSNorm epsilon or RoPE base, so
:func:`read_sidecar_config` finds them there. Nothing in these files is executed: JSON, and YAML read with
``yaml.safe_load``.

A file beside a checkpoint is a fact *inferred* from where it sits, so it is read only when it can be corroborated:

* only the sidecar of the layout the tensors have is read (``params.json`` for Meta's names, ``model_config.yaml``
  for litgpt's; a nanoGPT state dict reads neither, whatever lies beside it: a stray file is ignored with a
  warning, never read);
* every shape fact it states (width, layers, vocabulary rows) must equal what the tensors have, or the checkpoint
  is refused naming the field, both values and the file.

Reading one is bounded work: a file over :data:`MAX_SIDECAR_BYTES` is refused unread, YAML anchors/aliases (an
"alias bomb" expands a few hundred bytes into billions of nodes) and nesting deeper than :data:`MAX_DEPTH` are
refused before any object is built, and values are rendered into messages and the card with
:func:`hfexport._util.brief.brief` only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfexport._util.brief import brief
from hfexport._util.fs import FileTooLargeError, read_bounded
from hfexport._util.text import first_line
from hfexport.errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["Sidecar", "read_sidecar_config"]


@dataclass(frozen=True)
class Sidecar:
    """A config file that a layout keeps beside its checkpoint; each family states its own (its ``sidecar``), and
    :func:`hfexport.families.sidecars` lists the registered ones.

    Attributes:
        name: The file name (``params.json``).
        layout: The layout it means (``"meta"``, ``"litgpt"``).
        family: The registered architecture whose state dicts it describes.
        embedding: The tensor whose shape its width and vocabulary facts are checked against.
        layer_prefix: Layers are ``{layer_prefix}N.*``.
        shape_facts: Config field → what it counts: ``"width"`` (the embedding's columns), ``"vocab"`` (its rows)
            or ``"layers"``.
        unset: Shape fact → the value by which the file says it does not state it (Llama 2's ``params.json``:
            ``vocab_size`` -1, "defined by the tokenizer").
        model_parallel: The layout's releases may be model-parallel shards (Meta's ``consolidated.NN.pth``),
            refused when more than one lies beside the checkpoint.
    """

    name: str
    layout: str
    family: str
    embedding: str
    layer_prefix: str
    shape_facts: Mapping[str, str]
    unset: Mapping[str, Any] = field(default_factory=dict)
    model_parallel: bool = False


_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")
#: A model config is a few hundred bytes (Meta's ``params.json``) to a few kB (litgpt's ``model_config.yaml``).
MAX_SIDECAR_BYTES = 256 * 1024
#: A config is a flat mapping with a few small nested mappings (``rope_adjustments``, ``hf_config``).
MAX_DEPTH = 16


def read_sidecar_config(
    checkpoint: Path, family: str | None, state_dict: Mapping[str, Any], sidecars: Sequence[Sidecar]
) -> tuple[str, dict[str, Any], str] | None:
    """The layout, config and file name of the sidecar beside ``checkpoint`` that belongs to ``family``.

    Args:
        checkpoint: The checkpoint file.
        family: The architecture its tensors were recognized as (``None``: none known).
        state_dict: Its tensors (prefixes stripped), which every shape fact of the file must match.
        sidecars: Every sidecar a registered family reads (:func:`hfexport.families.sidecars`): the one of
            ``family`` is read, any other found beside the checkpoint is ignored with a warning.

    Returns:
        ``(layout, config, file name)``, or ``None`` when the family has no sidecar or it is not there (a sidecar
        of another layout found beside the checkpoint is ignored with a warning).

    Raises:
        CheckpointError: the file is unreadable, states a shape the tensors do not have, or the checkpoint is one
            shard of a model-parallel release.
    """
    folder = checkpoint.parent
    for sidecar in sidecars:
        file = folder / sidecar.name
        if not file.is_file():
            continue
        if sidecar.family != family:
            if any(other.name == sidecar.name and other.family == family for other in sidecars):
                continue  # the same file is this family's too (litgpt's model_config.yaml): read as its own
            logger.warning(
                "Ignoring %s beside %s: it describes %s checkpoints, and this one's tensors are not (%s); "
                "pass what the checkpoint does not record as options",
                sidecar.name,
                checkpoint.name,
                sidecar.layout,
                family or "an unknown layout",
            )
            continue
        config = _read(file)
        _check_shapes(sidecar, config, checkpoint, state_dict)
        if sidecar.model_parallel:
            _refuse_model_parallel(checkpoint)
        logger.info("Read the model config from %s", file)
        return sidecar.layout, config, sidecar.name
    return None


def _read(file: Path) -> dict[str, Any]:
    """The mapping in ``file`` (JSON, or YAML without aliases), read within :data:`MAX_SIDECAR_BYTES`.

    Raises:
        CheckpointError: too large, unreadable, nested too deeply, or not a mapping.
    """
    where = f"{str(file)!r} (the config beside the checkpoint)"
    try:
        data = read_bounded(file, MAX_SIDECAR_BYTES)
    except FileTooLargeError as exc:
        raise CheckpointError(
            f"{where} is refused unread: {exc.size} bytes is not a model config (at most "
            f"{MAX_SIDECAR_BYTES} bytes are read). Put the model's own config there."
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{where} is unreadable: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
        config = json.loads(text) if file.name.endswith(".json") else _yaml(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where} is unreadable: {exc}") from exc
    except RecursionError:  # JSON nested thousands deep: no config is
        raise CheckpointError(
            f"{where} is refused: it is nested too deeply to be a model config (a config is a flat mapping of fields)."
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} holds a {type(config).__name__}, not a mapping of config fields.")
    return config


def _check_shapes(sidecar: Sidecar, config: Mapping[str, Any], checkpoint: Path, sd: Mapping[str, Any]) -> None:
    """Every shape fact of ``config`` equals the tensors' (the file describes this model, not another)."""
    embedding = sd.get(sidecar.embedding)
    pattern = re.compile("^" + re.escape(sidecar.layer_prefix) + r"(\d+)\.")
    layers = len({m.group(1) for k in sd if (m := pattern.match(k))})
    actual = {"layers": layers}
    if embedding is not None and getattr(embedding, "dim", lambda: 0)() == 2:
        actual.update(vocab=int(embedding.shape[0]), width=int(embedding.shape[1]))
    what = {"width": f"{sidecar.embedding} columns", "vocab": f"{sidecar.embedding} rows", "layers": "layers"}
    for key, kind in sidecar.shape_facts.items():
        value = config.get(key)
        if value is None or kind not in actual:
            continue
        if key in sidecar.unset and value == sidecar.unset[key] and not isinstance(value, bool):
            continue  # e.g. Llama 2's params.json: vocab_size -1, "defined by the tokenizer"
        if isinstance(value, bool) or not isinstance(value, int) or value != actual[kind]:
            raise CheckpointError(
                f"{sidecar.name} beside {checkpoint.name} says {key}={brief(value)}, but the checkpoint has "
                f"{actual[kind]} {what[kind]}: the file describes another model. Put the {sidecar.name} of this "
                "checkpoint beside it (or move the stray one away and pass the facts as options: --n_head, "
                "--norm_eps, --rope_theta)."
            )


def _yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ImportError("Reading litgpt's model_config.yaml needs PyYAML: pip install pyyaml") from exc
    try:
        _check_events(yaml.parse(text, Loader=yaml.SafeLoader))
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(first_line(exc)) from exc


def _check_events(events: Any) -> None:
    """Refuse aliases and deep nesting from the parser's events, before any object is built (no recursion)."""
    import yaml

    depth = 0
    for event in events:
        if isinstance(event, yaml.AliasEvent):
            raise ValueError(
                f"it uses a YAML alias (*{brief(event.anchor, quote=False)}): a model config has none, and aliases "
                "can expand a small file into billions of values"
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep, which no model config is")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _refuse_model_parallel(checkpoint: Path) -> None:
    shards = sorted(p.name for p in checkpoint.parent.iterdir() if _SHARD.match(p.name))
    if len(shards) > 1:
        raise CheckpointError(
            f"{str(checkpoint.parent)!r} holds {len(shards)} model-parallel shards ({', '.join(shards[:3])} ...): "
            "each holds a slice of every weight. hfexport converts a single consolidated.00.pth (models up to "
            "8B); merge the shards into one state dict first."
        )
