"""The family contract: every fact about a model family is the family's, and the rest of hfexport asks for it.

A new family is one module plus one ``register`` line; these tests check that every registered family states every
fact of :class:`~hfexport.families.base.Architecture`, and that ``verify``, the model card, the tokenizer's
context length, the sidecar files and the refusals of a missing fact go through the family (a toy family
registered here is picked up without any other module knowing it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from llama_ref import make_llama
from nanogpt import make_gpt

from hfexport import ConversionError, convert_checkpoint, plan_conversion, verify_directory
from hfexport.card import render_model_card
from hfexport.errors import MissingFactError
from hfexport.families import (
    ModelFacts,
    context_length,
    display_name,
    for_model_type,
    get,
    register,
    registered,
    sidecars,
)
from hfexport.families.base import Architecture, ConversionPlan, compare_shapes
from hfexport.io.sidecars import Sidecar
from hfexport.tokenizers.tokenizer import TokenizerSource, tokenizer_beside

#: What the contract declares: its attributes and its methods (a fact added to it is checked here at once).
CONTRACT_ATTRIBUTES = sorted(Architecture.__annotations__)
CONTRACT_METHODS = sorted(
    name for name, value in vars(Architecture).items() if callable(value) and not name.startswith("_")
)


def test_the_contract_names_every_fact() -> None:
    assert {"name", "expects", "model_type", "display_name", "sidecar", "tokenizer_beside"} <= set(CONTRACT_ATTRIBUTES)
    assert {
        "detect",
        "plan",
        "expected_shapes",
        "shape_problems",
        "config_problems",
        "context_length",
        "special_ids",
        "reference_difference",
    } <= set(CONTRACT_METHODS)


@pytest.mark.parametrize("name", registered())
def test_every_family_provides_every_fact(name: str) -> None:
    family = get(name)
    for attribute in CONTRACT_ATTRIBUTES:
        assert hasattr(family, attribute), f"{name} lacks {attribute}"
    for method in CONTRACT_METHODS:
        assert callable(getattr(family, method, None)), f"{name} lacks {method}()"
    assert family.name == name
    assert isinstance(family.model_type, str) and family.model_type
    assert isinstance(family.display_name, str) and family.display_name
    assert family.sidecar is None or (isinstance(family.sidecar, Sidecar) and family.sidecar.family == name)
    assert isinstance(family.tokenizer_beside, tuple)
    assert for_model_type(family.model_type) is not None
    assert display_name(family.model_type) == family.display_name


def test_special_ids_are_the_families() -> None:
    assert get("gpt2").special_ids(50304) == (50256, 50256)  # nanoGPT's padded GPT-2 vocabulary
    assert get("gpt2").special_ids(65) == (None, None)  # characters: no <|endoftext|>
    assert get("llama").special_ids(64) == (1, 2)  # llama2.c's sentencepiece models
    assert get("litgpt-llama").special_ids(64) == (None, None)
    assert get("litgpt-llama").special_ids(128256) == (128000, 128001)  # Llama 3's vocabulary
    plan = plan_conversion(dict(make_gpt(0).state_dict()), ModelFacts(n_head=4))
    assert (plan.config["bos_token_id"], plan.config["eos_token_id"]) == get("gpt2").special_ids(64)


def test_context_length_is_read_as_the_family_states_it() -> None:
    assert context_length({"model_type": "gpt2", "n_positions": 64, "max_position_embeddings": 9}) == 64
    assert context_length({"model_type": "llama", "n_positions": 9, "max_position_embeddings": 128}) == 128
    assert context_length({"model_type": "mistral", "max_position_embeddings": 32}) == 32  # no family: the usual
    assert context_length({"model_type": ["list"], "n_positions": 16}) == 16


def test_sidecars_are_the_families() -> None:
    assert {(s.name, s.family) for s in sidecars()} == {
        ("params.json", "llama"),
        ("model_config.yaml", "litgpt-llama"),
        ("model_config.yaml", "litgpt-qwen2"),  # the same file: read by the family its tensors belong to
    }
    assert get("gpt2").sidecar is None
    meta = get("llama").sidecar
    assert meta is not None and meta.model_parallel and meta.unset == {"vocab_size": -1}  # Meta's, said by its family


def test_tokenizer_files_beside_the_checkpoint_are_the_familys(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    checkpoint = tmp_path / "ckpt.pt"
    automatic = TokenizerSource(None)
    assert get("gpt2").tokenizer_beside == ()
    assert tokenizer_beside(automatic, checkpoint, get("gpt2").tokenizer_beside) is automatic
    found = tokenizer_beside(automatic, checkpoint, get("litgpt-llama").tokenizer_beside)
    assert found is not automatic and found.inferred is not None and "tokenizer.json" in found.inferred


def test_a_missing_fact_is_an_exception_naming_it() -> None:
    with pytest.raises(MissingFactError) as info:
        plan_conversion(dict(make_gpt(0).state_dict()), ModelFacts())
    assert isinstance(info.value, ConversionError)  # callers catching ConversionError still do
    assert (info.value.fact, info.value.facts, info.value.family) == ("n_head", ("n_head",), "gpt2")
    assert str(info.value).startswith("The checkpoint does not say how many attention heads")  # message unchanged
    with pytest.raises(MissingFactError) as info:
        plan_conversion(dict(make_llama(0).state_dict()), ModelFacts())
    assert info.value.facts == ("n_head", "layer_norm_epsilon", "rope_theta") and info.value.fact == "n_head"
    assert info.value.family == "llama"
    with pytest.raises(MissingFactError) as info:
        plan_conversion(dict(make_llama(0).state_dict()), ModelFacts(n_head=4, rope_theta=1e4))
    assert info.value.facts == ("layer_norm_epsilon",)


def test_verify_checks_a_gpt2_config_through_its_expected_shapes(tmp_path: Path) -> None:
    """A GPT-2 MLP width that config.json does not imply (n_inner) was not checked before: now every tensor is."""
    model = make_gpt(3, vocab_size=80)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    (out / "hfexport.json").unlink()  # the manifest's checksum would report the edited config first
    config = json.loads((out / "config.json").read_text())
    config["n_inner"] = 64  # the weights have 4 * 32 = 128
    (out / "config.json").write_text(json.dumps(config))
    report = verify_directory(out)
    assert "transformer.h.0.mlp.c_fc.weight has shape [32, 128], config.json implies [32, 64]" in report.problems
    assert "transformer.h.1.mlp.c_proj.weight has shape [128, 32], config.json implies [64, 32]" in report.problems


class _Toy:
    """A family that no module but the registry knows: what the rest of hfexport does with it comes from here."""

    name = "toy-family"
    expects = "toy.weight"
    model_type = "toy-lm"
    display_name = "ToyLM"
    sidecar: Sidecar | None = None
    tokenizer_beside: tuple[str, ...] = ()

    def detect(self, keys: set[str]) -> bool:
        return keys == {"toy.weight"}

    def plan(self, state_dict: Mapping[str, torch.Tensor], facts: ModelFacts, **_: Any) -> ConversionPlan:
        raise ConversionError("not used")

    def expected_shapes(self, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return {"toy.weight": (config["width"], 2)}

    def shape_problems(self, config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> list[str]:
        return compare_shapes(self.display_name, self.expected_shapes, config, shapes)

    def config_problems(self, config: Mapping[str, Any]) -> list[str]:
        return [] if config.get("width", 1) > 0 else [f"width={config['width']}: expected >= 1"]

    def context_length(self, config: Mapping[str, Any]) -> int | None:
        return config.get("window")

    def special_ids(self, vocab: int) -> tuple[int | None, int | None]:
        return None, None

    def reference_difference(self, exported: Any, state_dict: Any, facts: ModelFacts, **_: Any) -> float:
        return 0.0


@pytest.fixture
def toy() -> Iterator[_Toy]:
    from hfexport.families import _REGISTRY

    family = _Toy()
    register(family)
    try:
        yield family
    finally:
        _REGISTRY.pop(family.name)


def test_a_new_family_is_asked_by_the_card_verify_and_the_tokenizer(toy: _Toy) -> None:
    from hfexport.families import config_problems
    from hfexport.verify import VerifyReport, _check_config

    assert "A ToyLM-style causal language model" in render_model_card({"model_type": "toy-lm"})
    assert context_length({"model_type": "toy-lm", "window": 77, "n_positions": 5}) == 77
    assert config_problems({"model_type": "toy-lm", "width": 0}) == ["width=0: expected >= 1"]
    report = VerifyReport(Path("."))
    _check_config({"model_type": "toy-lm", "width": 3}, {"toy.weight": [4, 2]}, report)
    assert report.problems == ["toy.weight has shape [4, 2], config.json implies [3, 2]"]
    report = VerifyReport(Path("."))
    _check_config({"model_type": "toy-lm"}, {"toy.weight": [4, 2]}, report)
    assert report.problems == ["config.json lacks what a ToyLM needs (KeyError: 'width')"]
