"""The GPT-2 architecture's plan (key map, transposes, zero biases, ties, config) and the registry."""

from __future__ import annotations

import pytest
import torch
from nanogpt import make_gpt

from hfexport import CheckpointError, ConversionError, plan_conversion
from hfexport.families import ACTIVATIONS, ModelFacts, detect, get, register, registered
from hfexport.families.gpt2 import TRANSPOSED

FACTS = ModelFacts(n_head=4)


def sd_of(**overrides: object) -> dict[str, torch.Tensor]:
    return dict(make_gpt(0, **overrides).state_dict())


def by_name(plan) -> dict:  # type: ignore[no-untyped-def]
    return {t.name: t for t in plan.tensors}


@pytest.mark.parametrize("bias", [True, False])
def test_key_map_and_transposes(bias: bool) -> None:
    sd = sd_of(bias=bias, n_layer=3)
    plan = plan_conversion(sd, FACTS)
    tensors = by_name(plan)
    assert len(plan.tensors) == 12 * 3 + 4
    assert "lm_head.weight" not in tensors
    for name, tp in tensors.items():
        transposed = name.endswith(TRANSPOSED)
        assert tp.transpose is transposed, name
        if tp.source is not None:
            assert tp.shape == (tuple(tp.source.shape[::-1]) if transposed else tuple(tp.source.shape)), name
            assert torch.equal(tp.materialize(torch.float32), tp.source.t() if transposed else tp.source), name
        else:
            assert not bias and name.endswith(".bias"), name
            assert torch.equal(tp.materialize(torch.bfloat16), torch.zeros(tp.shape, dtype=torch.bfloat16))
    # Square c_proj: the transpose is decided by name, not by shape.
    c_proj = tensors["transformer.h.0.attn.c_proj.weight"]
    assert c_proj.shape == (32, 32) and c_proj.transpose
    assert tensors["transformer.h.2.mlp.c_fc.weight"].shape == (32, 128)
    assert tensors["transformer.h.2.mlp.c_fc.bias"].shape == (128,)
    assert tensors["transformer.h.1.attn.c_attn.bias"].shape == (96,)
    assert plan.config["n_layer"] == 3
    assert ("bias=False model: zero biases written" in plan.notes) is not bias


def test_materialize_is_an_owned_contiguous_copy() -> None:
    sd = sd_of()
    tensors = by_name(plan_conversion(sd, FACTS, vocab_size=50))
    wte = tensors["transformer.wte.weight"].materialize(torch.float32)
    assert wte.shape == (50, 32) and wte.is_contiguous()
    assert wte.untyped_storage().data_ptr() != sd["transformer.wte.weight"].untyped_storage().data_ptr()
    w = tensors["transformer.h.0.mlp.c_fc.weight"].materialize(torch.float32)
    assert w.is_contiguous()
    w.add_(1)  # writing the copy leaves the model alone
    assert not torch.equal(w, sd["transformer.h.0.mlp.c_fc.weight"].t())


@pytest.mark.parametrize(
    ("trained", "asked", "eos"),
    [(50304, 50257, 50256), (50304, None, 50256), (50257, None, 50256), (65, None, None), (50304, 50000, None)],
)
def test_vocab_and_special_tokens(trained: int, asked: int | None, eos: int | None) -> None:
    plan = plan_conversion(sd_of(vocab_size=trained, n_embd=8, n_head=2), ModelFacts(n_head=2), vocab_size=asked)
    vocab = asked or trained
    assert plan.config["vocab_size"] == vocab
    assert by_name(plan)["transformer.wte.weight"].shape == (vocab, 8)
    assert plan.config["bos_token_id"] == eos
    assert plan.config["eos_token_id"] == eos
    assert plan.generation_config == ({"bos_token_id": eos, "eos_token_id": eos} if eos is not None else {})


def test_config_matches_reference_fields() -> None:
    plan = plan_conversion(sd_of(block_size=24), ModelFacts(n_head=4, dropout=0.1), activation="gelu_pytorch_tanh")
    c = plan.config
    assert c["architectures"] == ["GPT2LMHeadModel"]
    assert c["model_type"] == "gpt2"
    assert c["n_positions"] == c["n_ctx"] == 24
    assert c["n_inner"] is None
    assert c["layer_norm_epsilon"] == 1e-5
    assert c["resid_pdrop"] == c["embd_pdrop"] == c["attn_pdrop"] == 0.1
    assert c["scale_attn_weights"] is True
    assert c["tie_word_embeddings"] is True
    assert c["activation_function"] == "gelu_pytorch_tanh"


def test_untie_writes_independent_head() -> None:
    plan = plan_conversion(sd_of(), FACTS, untie_embeddings=True, vocab_size=90)
    tensors = by_name(plan)
    assert plan.config["tie_word_embeddings"] is False
    head = tensors["lm_head.weight"]
    assert head.shape == (90, 32) and not head.transpose
    a, b = head.materialize(torch.float32), tensors["transformer.wte.weight"].materialize(torch.float32)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_distinct_head_is_kept_untied() -> None:
    sd = sd_of()
    sd["lm_head.weight"] = sd["lm_head.weight"].clone() * 2
    plan = plan_conversion(sd, FACTS)
    assert plan.config["tie_word_embeddings"] is False
    assert by_name(plan)["lm_head.weight"].source is sd["lm_head.weight"]


def test_equal_but_separate_head_stays_tied() -> None:
    sd = sd_of()
    sd["lm_head.weight"] = sd["lm_head.weight"].clone()  # e.g. a checkpoint that stored the tie twice
    assert plan_conversion(sd, FACTS).config["tie_word_embeddings"] is True


@pytest.mark.parametrize(
    ("edit", "kwargs", "words"),
    [
        (lambda sd: sd, {"facts": ModelFacts()}, "--n_head"),
        (lambda sd: sd, {"facts": ModelFacts(n_head=5)}, "n_head=5 does not divide n_embd=32"),
        (lambda sd: sd, {"vocab_size": 97}, "larger than the trained embedding (96 rows)"),
        (lambda sd: sd, {"vocab_size": 0}, "Invalid vocab_size=0"),
        (lambda sd: sd, {"activation": "relu"}, "Unknown activation 'relu'"),
        (lambda sd: sd.pop("transformer.h.0.mlp.c_proj.bias"), {}, "transformer.h.0.mlp.c_proj.bias"),
        (lambda sd: sd.pop("transformer.ln_f.weight"), {}, "transformer.ln_f.weight"),
        (lambda sd: sd.update(extra=torch.zeros(1)), {}, "extra"),
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("transformer.h.0.")],
            {},
            "not contiguous",
        ),
    ],
)
def test_plan_refusals_name_the_problem(edit, kwargs: dict, words: str) -> None:  # type: ignore[no-untyped-def]
    sd = sd_of()
    edit(sd)
    kwargs = {"facts": FACTS, **kwargs}
    with pytest.raises(ConversionError) as info:
        plan_conversion(sd, **kwargs)
    assert words in str(info.value)


def test_bias_free_model_with_stray_bias_refused() -> None:
    sd = sd_of(bias=False)
    sd["transformer.h.0.attn.c_attn.bias"] = torch.zeros(96)
    with pytest.raises(ConversionError, match=r"transformer\.ln_f\.bias is not"):
        plan_conversion(sd, FACTS)


def test_registry() -> None:
    assert "gpt2" in registered()
    assert get("gpt2").detect(set(sd_of()))
    assert detect(set(sd_of())).name == "gpt2"
    assert registered() == ["gpt2", "llama", "litgpt-llama", "litgpt-qwen2"]
    with pytest.raises(CheckpointError, match="Unknown architecture"):
        get("mamba")
    with pytest.raises(CheckpointError, match="Not a supported model"):
        detect({"encoder.weight", "decoder.weight"})
    assert set(ACTIVATIONS) == {"gelu", "gelu_new", "gelu_pytorch_tanh"}


def test_register_a_new_family() -> None:
    class Toy:
        name = "toy-test-family"

        def detect(self, keys: set[str]) -> bool:
            return keys == {"toy.weight"}

        def plan(self, state_dict, facts, *, activation, vocab_size, untie_embeddings):  # type: ignore[no-untyped-def]
            raise ConversionError("toy plan")

    from hfexport.families import _REGISTRY

    register(Toy())
    try:
        assert detect({"toy.weight"}).name == "toy-test-family"
        with pytest.raises(ConversionError, match="toy plan"):
            plan_conversion({"toy.weight": torch.zeros(1)})
        assert detect(set(sd_of())).name == "gpt2"
    finally:
        _REGISTRY.pop("toy-test-family")


def test_facts_from_mapping_aliases() -> None:
    facts = ModelFacts.from_mapping({"num_attention_heads": 12, "n_positions": 1024, "eps": 1e-6, "other": 1})
    assert (facts.n_head, facts.block_size, facts.layer_norm_epsilon) == (12, 1024, 1e-6)
    assert ModelFacts(n_head=2, bias=True).merged(ModelFacts(n_head=3)) == ModelFacts(n_head=3, bias=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_single_row_never_aliases_its_source(dtype: torch.dtype) -> None:
    """A (1, N) weight is already contiguous once transposed: materialize must still copy it."""
    from hfexport.families import TensorPlan

    source = torch.randn(1, 8, dtype=dtype)
    out = TensorPlan("w", source, (8, 1), transpose=True).materialize(dtype)
    assert torch.equal(out, source.t())
    assert out.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fill_of_any_row_range_equals_the_materialized_rows(dtype: torch.dtype) -> None:
    """The writer fills chunks of rows: every range, transposed or not, trimmed or zero, equals those rows."""
    plan = plan_conversion(sd_of(), ModelFacts(n_head=4, bias=False), vocab_size=50)
    for tp in plan.tensors:
        whole = tp.materialize(dtype)
        rows = tp.shape[0]
        for start, stop in [(0, rows), (0, 1), (rows - 1, rows), (1, max(2, rows // 3)), (rows // 2, rows)]:
            out = torch.full((stop - start, *tp.shape[1:]), 7.0, dtype=dtype)
            tp.fill(out, start, stop)
            assert torch.equal(out, whole[start:stop]), (tp.name, start, stop)


def test_transpose_into_casts_and_transposes_whole_or_by_column_range() -> None:
    from hfexport.families import transpose_into

    src = torch.randn(200, 96)  # more rows than one band, not a multiple of it
    out = torch.empty(96, 200, dtype=torch.bfloat16)
    transpose_into(out, src)
    assert torch.equal(out, src.t().to(torch.bfloat16))
    part = torch.empty(10, 200, dtype=torch.bfloat16)
    transpose_into(part, src, 40, 50)
    assert torch.equal(part, src[:, 40:50].t().to(torch.bfloat16))


# --- every tensor's shape is checked against the config, before anything is written ---------------------------


def _narrow_mlp(sd: dict[str, torch.Tensor]) -> None:
    """Layer 1 is half as wide in its MLP as layer 0 (and as the config says: 4 * n_embd)."""
    sd["transformer.h.1.mlp.c_fc.weight"] = torch.randn(64, 32)
    sd["transformer.h.1.mlp.c_fc.bias"] = torch.randn(64)
    sd["transformer.h.1.mlp.c_proj.weight"] = torch.randn(32, 64)


def _narrow_wpe(sd: dict[str, torch.Tensor]) -> None:
    sd["transformer.wpe.weight"] = torch.randn(16, 16)


def _empty_vocab(sd: dict[str, torch.Tensor]) -> None:
    sd["transformer.wte.weight"] = torch.zeros(0, 32)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]


def _tall_head(sd: dict[str, torch.Tensor]) -> None:
    sd["lm_head.weight"] = torch.randn(100, 32)  # wte has 96 rows


def _complex(sd: dict[str, torch.Tensor]) -> None:
    sd["transformer.h.0.attn.c_attn.weight"] = torch.randn(96, 32, dtype=torch.complex64)


def _integer(sd: dict[str, torch.Tensor]) -> None:
    sd["transformer.h.0.ln_1.weight"] = torch.ones(32, dtype=torch.int64)


def _wide_c_proj(sd: dict[str, torch.Tensor]) -> None:
    sd["transformer.h.0.attn.c_proj.weight"] = torch.randn(32, 40)


SHAPE_REFUSALS = {
    "inconsistent_layer_widths": (
        _narrow_mlp,
        {},
        "transformer.h.1.mlp.c_fc.weight has shape (64, 32), expected (128, 32)",
    ),
    "wpe_narrower_than_wte": (_narrow_wpe, {}, "transformer.wpe.weight has shape (16, 16), expected (16, 32)"),
    "zero_row_vocabulary": (_empty_vocab, {}, "transformer.wte.weight has shape (0, 32)"),
    "lm_head_taller_than_wte": (_tall_head, {}, "lm_head.weight has shape (100, 32), expected (96, 32)"),
    "lm_head_taller_when_trimmed": (
        _tall_head,
        {"vocab_size": 50},
        "transformer.wte.weight has 96, lm_head.weight has 100",
    ),
    "complex_weights": (_complex, {}, "transformer.h.0.attn.c_attn.weight is complex64"),
    "integer_weights": (_integer, {}, "transformer.h.0.ln_1.weight is int64"),
    "square_looking_c_proj": (
        _wide_c_proj,
        {},
        "transformer.h.0.attn.c_proj.weight has shape (32, 40), expected (32, 32)",
    ),
    "n_head_negative": (lambda sd: None, {"facts": ModelFacts(n_head=-4)}, "n_head=-4 (int) is not a positive integer"),
    "n_head_float": (lambda sd: None, {"facts": ModelFacts(n_head=4.0)}, "n_head=4.0 (float)"),  # type: ignore[arg-type]
    "n_head_string": (lambda sd: None, {"facts": ModelFacts(n_head="4")}, "n_head='4' (str)"),  # type: ignore[arg-type]
    "n_head_zero": (lambda sd: None, {"facts": ModelFacts(n_head=0)}, "n_head=0"),
    "n_head_bool": (lambda sd: None, {"facts": ModelFacts(n_head=True)}, "n_head=True (bool)"),
}


@pytest.mark.parametrize("case", list(SHAPE_REFUSALS))
def test_tensors_that_do_not_fit_the_config_are_refused(case: str) -> None:
    edit, kwargs, words = SHAPE_REFUSALS[case]
    sd = sd_of()
    edit(sd)
    with pytest.raises(ConversionError) as info:
        plan_conversion(sd, **{"facts": FACTS, **kwargs})
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_expected_shapes_follow_the_config() -> None:
    plan = plan_conversion(sd_of(n_layer=3), FACTS, untie_embeddings=True)
    shapes = get("gpt2").expected_shapes(plan.config)
    assert shapes == {t.name: t.shape for t in plan.tensors}
    assert shapes["transformer.h.2.mlp.c_fc.weight"] == (32, 128)
    assert shapes["lm_head.weight"] == (96, 32)
    with pytest.raises(ConversionError, match=r"config n_embd='32' \(str\) is not a size"):
        get("gpt2").expected_shapes({**plan.config, "n_embd": "32"})


def test_check_plan_is_generic() -> None:
    """Another family reuses the same check with the shapes its config implies."""
    from hfexport.families import ConversionPlan, TensorPlan, check_plan

    weight = torch.randn(4, 3)
    plan = ConversionPlan("toy", [TensorPlan("w", weight, (3, 4), transpose=True)], {})
    check_plan(plan, {"w": (3, 4)})
    with pytest.raises(ConversionError, match=r"w has shape \(4, 3\), expected \(5, 3\)"):
        check_plan(ConversionPlan("toy", [TensorPlan("w", weight, (3, 5), transpose=True)], {}), {"w": (3, 5)})
    with pytest.raises(ConversionError, match=r"missing \['b'\]"):
        check_plan(plan, {"w": (3, 4), "b": (4,)})


def test_live_model_with_a_mismatched_layer_is_never_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """export_hf (the training path) goes through the same check as the CLI."""
    from hfexport import export_hf

    model = make_gpt(0)
    model.transformer.h[1].mlp.c_fc = torch.nn.Linear(32, 64)
    model.transformer.h[1].mlp.c_proj = torch.nn.Linear(64, 32)
    with pytest.raises(ConversionError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight has shape \(64, 32\)"):
        export_hf(model, 1, output_dir=tmp_path / "exports", dtype="float32")
    assert not (tmp_path / "exports").exists() or not any(
        p.name.startswith("step_") for p in (tmp_path / "exports").iterdir()
    )
