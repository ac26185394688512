"""The model card (``README.md``) written into every export, with YAML metadata the Hub understands."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["render_model_card"]

_TEMPLATE = """
# {model_name}

A GPT-2-style causal language model exported by [hfexport](https://pypi.org/project/hfexport/) {when}.

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{load_path}"{revision_arg})
```

## Export facts
| fact | value |
| --- | --- |
{facts_table}
"""


def render_model_card(facts: Mapping[str, Any]) -> str:
    """Render the model card for an export.

    Args:
        facts: Known facts. Recognized keys: ``model_name``, ``step``, ``epoch``, ``dtype``, ``source``,
            ``loss``, ``base_model``, ``repo_id``, ``version``, ``activation``, ``n_params``; others are listed
            in the table as they are. ``None`` values are left out. Never pass secrets.

    Returns:
        The card's text, YAML front matter included (built with huggingface_hub's ``ModelCard``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    known = {k: v for k, v in facts.items() if v is not None}
    model_name = str(known.get("model_name") or "gpt2-export")
    tags = ["gpt2", "text-generation", "hfexport"]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=model_name,
        base_model=known.get("base_model"),
    )
    step = known.get("step")
    when = f"at training step {step}" if step is not None else "from a training checkpoint"
    repo = known.get("repo_id")
    load_path = repo or "path/to/this/directory"
    revision_arg = f', revision="{known["version"]}"' if repo and known.get("version") else ""
    rows = []
    for key, value in known.items():
        if key in ("model_name", "base_model", "repo_id"):
            continue
        if isinstance(value, float):
            value = f"{value:.6g}"
        rows.append(f"| {key} | {value} |")
    content = f"---\n{data.to_yaml()}\n---\n" + _TEMPLATE.format(
        model_name=model_name,
        when=when,
        load_path=load_path,
        revision_arg=revision_arg,
        facts_table="\n".join(rows) or "| (none recorded) | |",
    )
    return str(ModelCard(content).content)
