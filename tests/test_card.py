"""The model card: its YAML metadata reads back, through huggingface_hub, exactly as meant, whatever the names."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import ModelCard

from hfexport.card import render_model_card

NAMES = ["gpt2-run", 'x: y "q"', "yes", "123", "null", "héllo wörld", "line\nbreak", "- dash", "#hash", "a\tb", ""]


@pytest.mark.parametrize("name", NAMES)
def test_metadata_reads_back_exactly(name: str) -> None:
    card = render_model_card({"model_name": name or None, "base_model": name or None, "step": 7, "loss": 1.5})
    expected = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["gpt2", "hfexport"],  # not repeating the pipeline_tag
        "model_name": name or "gpt2-export",
    }
    if name:
        expected["base_model"] = name
    assert ModelCard(card).data.to_dict() == expected
    assert yaml.safe_load(card.split("---\n")[1]) == expected


def test_plain_words_stay_plain_and_facts_are_listed() -> None:
    card = render_model_card({"model_name": "my-gpt", "step": 500, "dtype": "bfloat16", "loss": 2.3456789, "x": None})
    assert "library_name: transformers\n" in card and "model_name: my-gpt\n" in card
    assert "at training step 500" in card
    assert "| dtype | bfloat16 |" in card and "| loss | 2.34568 |" in card and "| x |" not in card


def test_a_newline_in_a_name_or_fact_stays_on_its_line() -> None:
    """The entry points refuse such a model_name; the card writes any control character escaped all the same."""
    text = render_model_card({"model_name": "mine\n# Injected heading", "step": 3, "source": "a\nb.pt (nanogpt)"})
    assert "\n# Injected heading" not in text and "# mine\\n# Injected heading" in text
    assert "| source | a\\nb.pt (nanogpt) |" in text
    card = ModelCard(text)
    assert card.data.model_name == "mine\n# Injected heading"  # the metadata, a JSON string, holds it exactly
