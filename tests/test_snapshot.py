"""Snapshots: host copies of a step's weights in the export dtype, owning their memory, cast once per source."""

from __future__ import annotations

import pytest
import torch
from exportkit import expected_hf_tensors, tiny_gpt, weights_copy

from hfexport import ConversionError
from hfexport.convert import output_tensors
from hfexport.io.safetensors import OutputTensor
from hfexport.training.snapshot import SnapshotBuffers, global_rank, plan_for_model, take_snapshot


def produced(output: OutputTensor) -> torch.Tensor:
    """The whole tensor, as the writer's producer fills it (all rows in one call)."""
    out = torch.empty(output.shape, dtype=output.dtype)
    output.fill(out, 0, output.shape[0] if output.shape else 1)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_snapshot_owns_copies_of_its_steps_weights(dtype: torch.dtype) -> None:
    model = tiny_gpt(0)
    state = weights_copy(model)
    snapshot = take_snapshot(plan_for_model(model), dtype)
    live = {p.untyped_storage().data_ptr() for p in model.parameters()}

    with torch.no_grad():  # the optimizer step that follows the call
        for p in model.parameters():
            p.mul_(-2.0)
    expected = expected_hf_tensors(state, dtype)
    assert set(snapshot.tensors) == set(expected)
    for name, tensor in snapshot.tensors.items():
        assert tensor.untyped_storage().data_ptr() not in live, f"{name} aliases a live parameter"
        assert tensor.dtype == dtype and tensor.device.type == "cpu"
    outputs = output_tensors(snapshot.copies(), dtype, already_cast=True)  # what the writer thread reads
    assert [o.name for o in outputs] == [tp.name for tp in snapshot.plan.tensors]
    for output in outputs:
        tensor = produced(output)
        assert output.shape == tuple(expected[output.name].shape) and output.dtype == dtype
        assert tensor.is_contiguous() and torch.equal(tensor, expected[output.name]), output.name
    assert snapshot.nbytes == sum(t.numel() * t.element_size() for t in expected.values())


def test_tied_embedding_is_cast_once_even_when_untied_on_output() -> None:
    model = tiny_gpt(0)
    snapshot = take_snapshot(plan_for_model(model, untie_embeddings=True), torch.bfloat16)
    wte, head = snapshot.tensors["transformer.wte.weight"], snapshot.tensors["lm_head.weight"]
    assert wte is head  # one cast, one host copy
    assert torch.equal(wte, model.lm_head.weight.detach().to(torch.bfloat16))
    assert snapshot.nbytes == sum(p.numel() * 2 for p in model.parameters())  # parameters() yields tied once


def test_vocab_trim_and_the_live_model_untouched() -> None:
    model = tiny_gpt(0).train()
    before = weights_copy(model)
    snapshot = take_snapshot(plan_for_model(model, vocab_size=50), torch.float32)
    assert snapshot.tensors["transformer.wte.weight"].shape == (50, 32)
    assert torch.equal(snapshot.tensors["transformer.wte.weight"], before["transformer.wte.weight"][:50])
    assert snapshot.plan.config["vocab_size"] == 50 and model.config.vocab_size == 64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_nonfinite_weights_fail_in_the_writer_not_in_the_snapshot() -> None:
    model = tiny_gpt(0)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    snapshot = take_snapshot(plan_for_model(model), torch.bfloat16)  # cheap: no check on the training path
    outputs = {o.name: o for o in output_tensors(snapshot.copies(), snapshot.dtype, already_cast=True)}
    with pytest.raises(ConversionError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight holds 1 non-finite"):
        produced(outputs["transformer.h.0.mlp.c_fc.weight"])
    allowed = {
        o.name: o for o in output_tensors(snapshot.copies(), snapshot.dtype, allow_nonfinite=True, already_cast=True)
    }
    assert produced(allowed["transformer.h.0.mlp.c_fc.weight"]).isnan().sum() == 1


def test_float16_overflow_suggests_bfloat16() -> None:
    model = tiny_gpt(0)
    with torch.no_grad():
        model.transformer.wpe.weight[0, 0] = 1e6
    snapshot = take_snapshot(plan_for_model(model), torch.float16)
    outputs = {o.name: o for o in output_tensors(snapshot.copies(), snapshot.dtype, already_cast=True)}
    with pytest.raises(ConversionError, match="bfloat16"):
        produced(outputs["transformer.wpe.weight"])


def test_missing_n_head_names_config() -> None:
    model = tiny_gpt(0)
    del model.config
    with pytest.raises(ConversionError, match=r"n_head is unknown.*config=\{'n_head': N\}"):
        plan_for_model(model)
    plan = plan_for_model(model, config={"n_head": 4})
    assert plan.config["n_head"] == 4


def test_transformers_plan_copies_the_config_and_writes_tied_weights_once() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=4))
    plan = plan_for_model(model)
    plan.config["n_head"] = 99
    assert model.config.n_head == 4
    names = [tp.name for tp in plan.tensors]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    snapshot = take_snapshot(plan, torch.bfloat16)
    assert torch.equal(snapshot.tensors["transformer.wte.weight"], model.lm_head.weight.detach().bfloat16())


def storages(tensors: dict[str, torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors.values()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_given_back_buffers_take_the_next_steps_weights(dtype: torch.dtype) -> None:
    model = tiny_gpt(0)
    buffers = SnapshotBuffers()
    plan = plan_for_model(model, untie_embeddings=True)  # wte and lm_head: two outputs of one copy
    first = take_snapshot(plan, dtype, buffers)  # nothing held yet: new tensors
    used, nbytes = storages(first.tensors), first.nbytes
    buffers.give_back(first)
    assert first.tensors == {} and buffers.nbytes == nbytes  # one snapshot's worth, each buffer once

    with torch.no_grad():  # the next optimizer steps
        for p in model.parameters():
            p.mul_(-2.0).add_(0.5)
    state = weights_copy(model)
    second = take_snapshot(plan_for_model(model, untie_embeddings=True), dtype, buffers)
    assert storages(second.tensors) == used  # every copy went into a buffer of the first snapshot
    assert buffers.nbytes == 0  # taken, not shared: the next snapshot cannot write into this one
    assert second.tensors["transformer.wte.weight"] is second.tensors["lm_head.weight"]  # tied: still one copy
    assert len(storages(second.tensors)) == len(second.tensors) - 1  # no buffer handed out twice
    expected = expected_hf_tensors(state, dtype)
    expected["lm_head.weight"] = expected["transformer.wte.weight"]
    for output in output_tensors(second.copies(), dtype, already_cast=True):
        assert torch.equal(produced(output), expected[output.name]), output.name
    live = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not storages(second.tensors) & live


def test_buffers_that_fit_no_tensor_are_dropped_not_held() -> None:
    model = tiny_gpt(0)
    buffers = SnapshotBuffers()
    buffers.give_back(take_snapshot(plan_for_model(model), torch.bfloat16))
    wte = buffers.nbytes
    trimmed = take_snapshot(plan_for_model(model, vocab_size=50), torch.bfloat16, buffers)  # wte: (50, 32) now
    assert buffers.nbytes == 0  # the (64, 32) buffer no tensor could use was dropped
    assert trimmed.nbytes == wte - 14 * 32 * 2
    assert torch.equal(trimmed.tensors["transformer.wte.weight"], model.transformer.wte.weight[:50].bfloat16())
    buffers.give_back(trimmed)
    buffers.clear()
    assert buffers.nbytes == 0


def test_global_rank_without_distributed() -> None:
    assert global_rank() == 0
