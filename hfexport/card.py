"""The model card (``README.md``) written into every export, with YAML metadata the Hub understands.

The metadata block is written here rather than through ``huggingface_hub.ModelCard``: it is a handful of keys,
and importing ``huggingface_hub`` costs ~0.15 s of CPU on every conversion. Strings are written as JSON strings,
which YAML reads as double-quoted scalars, so any name is safe; the test-suite checks that ``huggingface_hub``
reads back exactly the metadata meant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hfexport._util.brief import brief
from hfexport.families import display_name

__all__ = ["render_model_card"]

_MAX_CELL = 400  # characters of one fact in the card's table

_TEMPLATE = """
# {model_name}

A {family}-style causal language model exported by hfexport {when}.

{usage}

## Export facts
| fact | value |
| --- | --- |
{facts_table}
"""


_WITH_TOKENIZER = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

tokenizer = AutoTokenizer.from_pretrained("{load_path}"{revision_arg})
model = AutoModelForCausalLM.from_pretrained("{load_path}"{revision_arg})
generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
print(generator("{prompt}", max_new_tokens=40)[0]["generated_text"])
```"""

_WITHOUT_TOKENIZER = """```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{load_path}"{revision_arg})
```

No tokenizer: this export carries none, so text cannot be encoded with it alone. Export it again with
`--tokenizer PATH` (`tokenizer=...`) naming the tokenizer the model was trained with."""


def render_model_card(facts: Mapping[str, Any]) -> str:
    """Render the model card for an export.

    Args:
        facts: Known facts. Recognized keys: ``model_name``, ``step``, ``epoch``, ``dtype``, ``source``,
            ``loss``, ``base_model``, ``repo_id``, ``version``, ``activation``, ``n_params``, ``tokenizer`` (where
            the tokenizer came from; ``None`` or absent: no tokenizer, and the card says how to add one),
            ``model_type`` (the first tag and the family named: ``gpt2`` by default, ``llama``); others are listed
            in the table as they are. ``None`` values are left out. Never pass secrets.

    Returns:
        The card's text, YAML front matter included.
    """
    known = {k: v for k, v in facts.items() if v is not None}
    model_type = str(known.pop("model_type", None) or "gpt2")
    model_name = str(known.get("model_name") or f"{model_type}-export")
    metadata: dict[str, str | list[str]] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": [model_type, "hfexport"],  # the pipeline_tag is not repeated here
        "model_name": model_name,
    }
    if known.get("base_model") is not None:
        metadata["base_model"] = str(known["base_model"])
    step = known.get("step")
    when = f"at training step {step}" if step is not None else "from a training checkpoint"
    repo = known.get("repo_id")
    load_path = repo or "path/to/this/directory"
    revision_arg = f', revision="{known["version"]}"' if repo and known.get("version") else ""
    template = _WITH_TOKENIZER if known.get("tokenizer") else _WITHOUT_TOKENIZER
    usage = template.format(load_path=load_path, revision_arg=revision_arg, prompt=str(known.get("prompt", "Hello")))
    if not known.get("tokenizer"):
        known["tokenizer"] = "none (no tokenizer: pass --tokenizer)"
    rows = []
    for key, value in known.items():
        if key in ("model_name", "base_model", "repo_id", "prompt"):
            continue
        # Values may come from files (a config's name, a metric): rendered with bounded work and length.
        shown = f"{value:.6g}" if isinstance(value, float) else brief(value, quote=False, limit=_MAX_CELL)
        rows.append(f"| {_one_line(str(key))} | {_one_line(shown)} |")
    return f"---\n{_yaml(metadata)}---\n" + _TEMPLATE.format(
        model_name=_one_line(model_name),  # the metadata holds it exactly (a JSON string); the heading one line
        family=display_name(model_type),  # the registered family's name in the card
        when=when,
        usage=usage,
        facts_table="\n".join(rows) or "| (none recorded) | |",
    )


def _one_line(text: str) -> str:
    """``text`` as one printable line: a newline or another control character (a name from a config, a path) is
    written escaped (``\\n``), never raw, so that it cannot add lines to the heading or the table. The entry points
    refuse such a ``model_name`` already; this keeps every other fact in its line too."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _yaml(metadata: Mapping[str, str | list[str]]) -> str:
    """A flat YAML mapping of strings and lists of strings, keys sorted (as ``ModelCardData.to_yaml`` does)."""
    lines = []
    for key in sorted(metadata):
        value = metadata[key]
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {_scalar(item)}" for item in value)
        else:
            lines.append(f"{key}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/-]*")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when unambiguous (``transformers``), else a JSON (double-quoted) string."""
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)
