"""Each rank's rows written in place (``hfexport.training.sharded``), in one process: the ranks are simulated by
splitting every source tensor's rows as FSDP2 does (``torch.chunk``: the last ranks may get fewer rows, or none),
and every byte, every CRC-32 and the manifest must equal a single-process write of the same plan. The
multi-process runs (DTensors, gloo, a rank killed, a non-shared path) are in ``tests/test_distributed.py``.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from exportkit import tiny_gpt
from llama_ref import make_llama
from test_qwen2 import hand_built

from hfexport._util.checksum import crc32_of_sparse
from hfexport.convert import output_tensors, plan_conversion
from hfexport.errors import ConversionError
from hfexport.families import ConversionPlan, ModelFacts
from hfexport.io.directory import write_hf_directory
from hfexport.io.layout import Layout, plan_layout
from hfexport.sources import load_checkpoint, model_facts, strip_prefixes
from hfexport.training.sharded import (
    HostPool,
    LocalSnapshot,
    create_files,
    header_contribution,
    take_local_snapshot,
    write_local,
)


def chunk_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``torch.chunk`` (FSDP2's split) gives ``rank``: ceil(n / world) each, the last ones fewer or none."""
    size = math.ceil(n / world)
    return min(n, rank * size), min(n, (rank + 1) * size)


def snapshots(plan: ConversionPlan, dtype: torch.dtype, world: int) -> list[LocalSnapshot]:
    def held(rank: int):
        def rows(src: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
            lo, hi = chunk_rows(src.shape[0], rank, world)
            return (lo, hi), src[lo:hi]

        return rows

    return [take_local_snapshot(plan, dtype, rank, held=held(rank)) for rank in range(world)]


def write_by_ranks(plan: ConversionPlan, dtype: torch.dtype, world: int, out: Path, max_shard: str) -> Path:
    parts = snapshots(plan, dtype, world)

    def weights(tmp: Path, layout: Layout) -> dict[str, int]:
        create_files(tmp, layout)
        written = [write_local(tmp, layout, part) for part in reversed(parts)]  # any order: ranks run at once
        return {
            f.name: crc32_of_sparse([header_contribution(f)] + [w[f.name] for w in written if f.name in w], f.size)
            for f in layout.files
        }

    files = {"config.json": json.dumps(plan.config)}
    write_hf_directory(
        out, parts[0].outputs(), files, manifest={"step": 1}, max_shard_size=max_shard, progress=False, weights=weights
    )
    return out


def write_single(plan: ConversionPlan, dtype: torch.dtype, out: Path, max_shard: str) -> Path:
    files = {"config.json": json.dumps(plan.config)}
    tensors = output_tensors(plan, dtype)
    write_hf_directory(out, tensors, files, manifest={"step": 1}, max_shard_size=max_shard, progress=False)
    return out


def assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name == "hfexport.json":  # the same CRC-32s, sizes and facts; only the creation time may differ
            left, right = json.loads((a / name).read_text()), json.loads((b / name).read_text())
            left.pop("created", None), right.pop("created", None)
            assert left == right
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def gpt2_plan(**overrides: object) -> ConversionPlan:
    model = tiny_gpt(3, vocab_size=65, **overrides)  # 65 rows: no world size divides them
    sd = strip_prefixes(model.state_dict())
    return plan_conversion(sd, model_facts(model), vocab_size=61, untie_embeddings=True)


def llama_plan() -> ConversionPlan:
    model = make_llama(4, dim=48, n_heads=4, n_kv_heads=2, vocab_size=65)  # wk: 24 rows, half a head at 4 ranks
    return plan_conversion(strip_prefixes(model.state_dict()), model_facts(model))


def qwen2_plan(tmp_path: Path) -> ConversionPlan:
    ckpt = load_checkpoint(hand_built(tmp_path / "lit"))
    return plan_conversion(ckpt.state_dict, ckpt.facts)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("family", ["gpt2", "gpt2-no-bias", "llama", "qwen2"])
def test_ranks_write_the_bytes_of_a_single_process_write(tmp_path: Path, family: str, world: int) -> None:
    """Transposes (GPT-2's Conv1D), a trimmed vocabulary and an untied copy of it, zeros for absent biases, the RoPE
    permutation of GQA heads split mid-head, litgpt's fused qkv split into q/k/v with biases; uneven shards, ranks
    with no row of a tensor, several shard files."""
    plan = {
        "gpt2": gpt2_plan,
        "gpt2-no-bias": lambda: gpt2_plan(bias=False),
        "llama": llama_plan,
        "qwen2": lambda: qwen2_plan(tmp_path),
    }[family]()
    if family == "gpt2-no-bias":
        assert any(tp.source is None for tp in plan.tensors)  # written as zeros, by rank 0 alone
    for dtype in (torch.float32, torch.bfloat16):
        single = write_single(plan, dtype, tmp_path / f"single-{dtype}", "30KB")
        ranks = write_by_ranks(plan, dtype, world, tmp_path / f"ranks-{dtype}", "30KB")
        assert len(list(single.glob("*.safetensors"))) > 1
        assert_same_files(single, ranks)


def test_each_rank_holds_only_its_rows() -> None:
    plan = llama_plan()
    parts = snapshots(plan, torch.bfloat16, 4)
    total = sum(math.prod(tp.shape) * 2 for tp in plan.tensors)
    held = [part.nbytes for part in parts]
    assert sum(held) == total  # every byte once, no rank holds a copy of another's rows
    assert max(held) <= total / 4 + 65 * 48 * 2  # uneven: at most a row band more than its share


def test_a_nonfinite_row_fails_the_rank_that_holds_it(tmp_path: Path) -> None:
    model = tiny_gpt(3, vocab_size=65)
    sd = strip_prefixes(model.state_dict())
    sd["transformer.h.1.mlp.c_fc.weight"][-1, 0] = float("nan")  # the last rows: rank 1 of 2
    plan = plan_conversion(sd, model_facts(model))
    parts = snapshots(plan, torch.float32, 2)
    layout = plan_layout([(t.name, t.dtype, t.shape) for t in parts[0].outputs()], 1 << 30)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    create_files(tmp, layout)
    write_local(tmp, layout, parts[0])
    with pytest.raises(ConversionError, match=r"h\.1\.mlp\.c_fc\.weight holds 1 non-finite"):
        write_local(tmp, layout, parts[1])
    write_local(tmp, layout, parts[1], allow_nonfinite=True)


def test_buffers_are_reused_by_the_next_snapshot() -> None:
    plan = gpt2_plan()
    pool = HostPool()
    first = take_local_snapshot(plan, torch.bfloat16, 0, pool)
    buffers = {id(b) for b in first.buffers}
    pool.give_back(first)
    assert not first.buffers and not first.pieces
    second = take_local_snapshot(plan, torch.bfloat16, 0, pool)
    assert {id(b) for b in second.buffers} == buffers  # the same host memory, no new allocation
    pool.clear()


def test_the_layout_is_the_writers(tmp_path: Path) -> None:
    """The single-process writer and the ranks take the same layout: shard files, offsets, index."""
    plan = llama_plan()
    outputs = output_tensors(plan, torch.float32)
    layout = plan_layout([(t.name, t.dtype, t.shape) for t in outputs], 30_000)
    written = write_single(plan, torch.float32, tmp_path / "single", "30000")
    assert sorted(f.name for f in layout.files) == sorted(p.name for p in written.glob("*.safetensors"))
    assert len(layout.files) > 2
    assert layout.index == (written / "model.safetensors.index.json").read_bytes()
    for file in layout.files:
        assert (written / file.name).read_bytes()[: len(file.header)] == file.header
    for file in layout.files:
        end = len(file.header)
        for rec in file.records:
            slot = layout.slots[rec.name]
            assert slot.start == end and slot.file == file.name
            end += slot.nbytes
        assert end == file.size
    with pytest.raises(ValueError, match="duplicate"):
        plan_layout([("a", torch.float32, (1,)), ("a", torch.float32, (1,))], 100)


def test_facts_are_not_needed_to_split(tmp_path: Path) -> None:
    """A plan over a model's own facts (ModelFacts) splits the same way: no fact is read from the shards."""
    model = tiny_gpt(5, vocab_size=65)
    plan = plan_conversion(strip_prefixes(model.state_dict()), ModelFacts(n_head=4))
    assert_same_files(
        write_single(plan, torch.float32, tmp_path / "a", "1GB"),
        write_by_ranks(plan, torch.float32, 3, tmp_path / "b", "1GB"),
    )


def test_the_environment_switches_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A misspelt HFEXPORT_DISTRIBUTED_WRITE or HFEXPORT_DIST_TIMEOUT_S is refused by name, never ignored."""
    from hfexport import export_hf
    from hfexport.errors import OptionError
    from hfexport.training import coordinator

    for value, mode in (("", "auto"), ("GATHER", "gather"), (" split ", "split")):
        monkeypatch.setenv("HFEXPORT_DISTRIBUTED_WRITE", value)
        assert coordinator.write_mode() == mode
    monkeypatch.setenv("HFEXPORT_DISTRIBUTED_WRITE", "sharded")
    with pytest.raises(OptionError, match="HFEXPORT_DISTRIBUTED_WRITE='sharded': set it to auto, gather or split"):
        export_hf(tiny_gpt(0), 1, tmp_path / "out", tokenizer=False)
    assert not (tmp_path / "out" / "step_000001").exists()
    for bad in ("0", "-5", "soon", "nan"):
        monkeypatch.setenv("HFEXPORT_DIST_TIMEOUT_S", bad)
        with pytest.raises(OptionError, match="HFEXPORT_DIST_TIMEOUT_S"):
            coordinator._timeout_s()
    monkeypatch.setenv("HFEXPORT_DIST_TIMEOUT_S", "90")
    assert coordinator._timeout_s() == 90.0


def test_a_read_back_finds_a_lost_or_clobbered_write(tmp_path: Path) -> None:
    """What the ranks read back (an equal slice of every file each, whoever wrote it) combines to the CRC-32 of what
    they wrote; a byte that changed between the write and the read (a lost write, a clobbered page) does not."""
    from hfexport.training.sharded import read_back

    plan = llama_plan()
    parts = snapshots(plan, torch.bfloat16, 3)
    layout = plan_layout([(t.name, t.dtype, t.shape) for t in parts[0].outputs()], 30_000)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    create_files(tmp, layout)
    written = [write_local(tmp, layout, part) for part in parts]
    for file in layout.files:
        crc = crc32_of_sparse(
            [header_contribution(file)] + [w[file.name] for w in written if file.name in w], file.size
        )
        assert crc == zlib.crc32((tmp / file.name).read_bytes())
        assert crc32_of_sparse([read_back(tmp, layout, r, 3)[file.name] for r in range(3)], file.size) == crc
    victim = layout.files[1]
    with open(tmp / victim.name, "r+b") as fh:  # one byte of rank 1's rows, as another writer's page would leave it
        fh.seek(victim.size // 2)
        byte = fh.read(1)
        fh.seek(victim.size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    seen = crc32_of_sparse([read_back(tmp, layout, r, 3)[victim.name] for r in range(3)], victim.size)
    assert (
        seen
        == zlib.crc32((tmp / victim.name).read_bytes())
        != crc32_of_sparse(
            [header_contribution(victim)] + [w[victim.name] for w in written if victim.name in w], victim.size
        )
    )
    (tmp / victim.name).write_bytes((tmp / victim.name).read_bytes()[:-1])  # truncated: refused by name
    with pytest.raises(OSError, match=f"{victim.name} ends at byte"):
        read_back(tmp, layout, 2, 3)
