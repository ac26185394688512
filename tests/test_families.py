"""The family contract: every fact about a model family is the family's, and the rest of hfexport asks for it.

A new family is one module plus one ``register`` line; these tests check that every registered family states every
fact of :class:`~hfexport.families.base.Architecture`, and that ``verify``, the model card, the tokenizer's
context length, the sidecar files and the refusals of a missing fact go through the family (a toy family
registered here is picked up without any other module knowing it).
"""

from __future__ import annotations

import ast
import json
import logging
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
from hfexport.families.base import Architecture, ConversionPlan, TensorPlan, TokenizerGuess, compare_shapes
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
        "tokenizer_guess",
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
        return 7, 9  # not GPT-2's, not sentencepiece's

    def tokenizer_guess(self, vocab: int | None) -> TokenizerGuess:
        """ToyLM is trained with GPT-2's BPE padded to 60000 rows (nothing in tokenizers/ knows it)."""
        if vocab == 60000:
            return TokenizerGuess("gpt2", "GPT-2's BPE, which every 60000-row ToyLM uses")
        return TokenizerGuess(None, f"ToyLM's {vocab}-row vocabulary is not the one it ships with")

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


def _toy_export(out: Path, vocab: int, tokenizer: Any = None) -> dict[str, Any]:
    """A ToyLM plan as its family would make it (its special ids in config.json), written by ``write_export``."""
    from hfexport.convert import export_tokenizer, write_export

    bos, eos = _Toy().special_ids(vocab)
    config = {"model_type": "toy-lm", "vocab_size": vocab, "width": 2, "bos_token_id": bos, "eos_token_id": eos}
    tensor = torch.ones(2, 2)
    plan = ConversionPlan("toy-family", [TensorPlan("toy.weight", tensor, (2, 2))], config, {"eos_token_id": eos}, [])
    write_export(plan, out, dtype=torch.float32, tokenizer=export_tokenizer(plan, tokenizer), progress=False)
    return {name: json.loads((out / name).read_text()) for name in ("config.json", "hfexport.json")}


def test_a_familys_tokenizer_guess_is_handed_to_the_tokenizer_code(
    toy: _Toy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A family that is not GPT-2 but uses GPT-2's BPE says so in its own module: the export carries the tokenizer
    (tokenizers/ builds it by name and never learns the family), with the family's reason in hfexport.json, and
    config.json's special ids become the tokenizer's; where the family's guess is none, its special ids stay and the
    log says the family's reason."""
    exported = _toy_export(tmp_path / "guessed", 60000)
    assert (tmp_path / "guessed" / "tokenizer.json").is_file()
    inferred = exported["hfexport.json"]["inferred"]["tokenizer"]
    assert inferred.startswith("GPT-2's BPE, which every 60000-row ToyLM uses: no tokenizer was named")
    tokenizer_config = json.loads((tmp_path / "guessed" / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|endoftext|>"
    assert (exported["config.json"]["bos_token_id"], exported["config.json"]["eos_token_id"]) == (50256, 50256)
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        exported = _toy_export(tmp_path / "none", 50304)  # GPT-2's padded size, but not a GPT-2: no guess
    assert not (tmp_path / "none" / "tokenizer.json").exists()
    assert (exported["config.json"]["bos_token_id"], exported["config.json"]["eos_token_id"]) == (7, 9)
    assert "No tokenizer written: ToyLM's 50304-row vocabulary is not the one it ships with" in caplog.text


def test_gpt2s_tokenizer_guess_is_its_familys() -> None:
    assert get("gpt2").tokenizer_guess(50304) == TokenizerGuess(
        "gpt2", "GPT-2's BPE, inferred from the 50304-row vocabulary (GPT-2's 50257, padded) of a GPT-2 model"
    )
    assert get("gpt2").tokenizer_guess(50257).builtin == "gpt2"
    assert get("gpt2").tokenizer_guess(51201).builtin is None  # past the padding GPT-2's vocabulary gets
    assert get("gpt2").tokenizer_guess(65) == TokenizerGuess(None, "the vocabulary (65 rows) is not GPT-2's")
    assert get("llama").tokenizer_guess(50304) == TokenizerGuess(
        None, "a llama model's vocabulary (50304 rows) says nothing of its tokenizer"
    )
    assert get("litgpt-qwen2").tokenizer_guess(50304).builtin is None
    from hfexport.families import tokenizer_guess

    assert tokenizer_guess({"model_type": "gpt2", "vocab_size": 50257}).builtin == "gpt2"
    assert tokenizer_guess({"model_type": "mistral", "vocab_size": 50257}).why.startswith("a mistral model's")


def test_gpt2s_numbers_are_named_only_by_its_family() -> None:
    """50256 / 50257 / 51200 (GPT-2's end-of-text id, vocabulary, padded limit) appear as numbers only in
    families/gpt2.py, and no module outside families/ compares a model type or family name with "gpt2"."""
    package = Path(__file__).resolve().parents[1] / "hfexport"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "families" / "gpt2.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in (50256, 50257, 51200):
                found.append(f"{path.relative_to(package)}:{node.lineno}: {node.value}")
            if isinstance(node, ast.Compare) and "families" not in path.parts:
                text = ast.unparse(node)
                if '"gpt2"' in text.replace("'", '"') and ("model_type" in text or "family" in text):
                    found.append(f"{path.relative_to(package)}:{node.lineno}: {text}")
    assert found == []
