"""Model configs kept in a file beside a bare-state-dict checkpoint.

Meta's releases put ``params.json`` beside ``consolidated.00.pth``; litgpt puts ``model_config.yaml`` beside
``lit_model.pth``. Neither checkpoint file records the model's heads, RMSNorm epsilon or RoPE base, so
:func:`read_sidecar_config` finds them there. Nothing in these files is executed: JSON, and YAML read with
``yaml.safe_load``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from .errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["SIDECARS", "read_sidecar_config"]

#: File name beside the checkpoint → the layout it means.
SIDECARS: dict[str, str] = {"params.json": "meta", "model_config.yaml": "litgpt"}
_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")


def read_sidecar_config(checkpoint: Path) -> tuple[str, dict[str, Any]] | None:
    """The layout and config found beside ``checkpoint``, or ``None`` when there is none.

    Raises:
        CheckpointError: the file is unreadable, or the checkpoint is one shard of a model-parallel release.
    """
    folder = checkpoint.parent
    for name, layout in SIDECARS.items():
        file = folder / name
        if not file.is_file():
            continue
        try:
            text = file.read_text(encoding="utf-8")
            config = json.loads(text) if name.endswith(".json") else _yaml(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{str(file)!r} (the config beside the checkpoint) is unreadable: {exc}") from exc
        if not isinstance(config, dict):
            raise CheckpointError(f"{str(file)!r} holds a {type(config).__name__}, not a mapping of config fields.")
        if layout == "meta":
            _refuse_model_parallel(checkpoint)
        logger.info("Read the model config from %s", file)
        return layout, config
    return None


def _yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ImportError("Reading litgpt's model_config.yaml needs PyYAML: pip install pyyaml") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).splitlines()[0]) from exc


def _refuse_model_parallel(checkpoint: Path) -> None:
    shards = sorted(p.name for p in checkpoint.parent.iterdir() if _SHARD.match(p.name))
    if len(shards) > 1:
        raise CheckpointError(
            f"{str(checkpoint.parent)!r} holds {len(shards)} model-parallel shards ({', '.join(shards[:3])} ...): "
            "each holds a slice of every weight. hfexport converts a single consolidated.00.pth (models up to "
            "8B); merge the shards into one state dict first."
        )
