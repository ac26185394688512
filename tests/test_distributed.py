"""Two CPU processes: Lightning DDP and FSDP2 (``fully_shard``, gloo). Every rank takes part, only rank 0 writes,
the written weights are the full model's, and nothing hangs (each run is a subprocess with a timeout).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from exportkit import (
    assert_file_tensors,
    assert_reproduces,
    expected_hf_tensors,
    hf_logits,
    nanogpt_logits,
    read_safetensors,
    step_dirs,
    token_ids,
)

from hfexport import verify_directory
from hfexport.io.versions import read_latest

WORKERS = Path(__file__).parent / "dist_workers.py"
pytestmark = pytest.mark.slow


def run_worker(mode: str, out: Path, timeout: float = 240) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, str(WORKERS), mode, str(out)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{mode} did not finish in {timeout}s (a hang?): {(exc.stderr or b'')[-3000:]!r}")
    assert proc.returncode == 0, proc.stderr[-5000:]


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_lightning_ddp_two_processes_each_rank_writes_a_share(tmp_path: Path) -> None:
    run_worker("lightning_ddp", tmp_path)

    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "done": True,
            "dirpath": str(tmp_path / "hf"),
        }
    log0 = (tmp_path / "log_rank0.txt").read_text()
    assert "Exported step 2" in log0 and "Exported step 4" in log0 and "Exported step 5" in log0
    assert "Exported" not in (tmp_path / "log_rank1.txt").read_text()  # rank 0 publishes
    # The callback runs on every rank: each writes a share of DDP's whole weights (HFEXPORT_DISTRIBUTED_WRITE=auto).
    assert "each of the 2 ranks writes its own rows" in log0
    root = tmp_path / "hf"
    assert step_dirs(root) == ["step_000002", "step_000004", "step_000005"]
    assert read_latest(root) == "step_000005"
    for step in (2, 4, 5):
        expected = load(tmp_path / f"expected_{step}_rank0.pt")
        other = load(tmp_path / f"expected_{step}_rank1.pt")
        assert all(torch.equal(expected[k], other[k]) for k in expected)  # DDP kept the replicas equal
        assert verify_directory(root / f"step_{step:06d}").ok
        assert_file_tensors(root / f"step_{step:06d}", expected, torch.float32)
    assert_reproduces(root / "step_000005", load(tmp_path / "expected_5_rank0.pt"), torch.float32)


def test_fsdp2_two_processes_gathered_full_weights(tmp_path: Path) -> None:
    run_worker("fsdp2", tmp_path)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["sharded"] for r in ranks)  # the parameters really were DTensor shards
    assert ranks[0]["exported"] == [2, 4] and ranks[0]["is_writer"]
    assert ranks[1]["exported"] == [] and not ranks[1]["is_writer"]
    assert "Exported" not in (tmp_path / "log_rank1.txt").read_text()
    assert all(r["plan_keeps_shards"] for r in ranks)  # no gathered full tensor kept alive by a snapshot
    assert ranks[0]["snapshot_tensors"] == 28 and ranks[1]["snapshot_tensors"] == 0
    # if_busy="skip" with a slow write: the ranks agree on which steps to skip (else the gather would hang).
    assert ranks[0]["taken"] == ranks[1]["taken"] and len(ranks[0]["taken"]) < 5
    assert step_dirs(tmp_path / "hf_skip") == [f"step_{s:06d}" for s in ranks[0]["taken"]]
    root = tmp_path / "hf"
    assert step_dirs(root) == ["step_000002", "step_000004", "step_000005"]
    for step in (2, 4, 5):
        # The unsharded reference trained on the same data: equal up to the reduction order of the gradients.
        expected = expected_hf_tensors(load(tmp_path / f"expected_{step}.pt"), torch.float32)
        got = read_safetensors(root / f"step_{step:06d}")
        assert set(got) == set(expected)
        for name, tensor in expected.items():
            assert got[name].shape == tensor.shape and torch.allclose(got[name], tensor, atol=1e-5), name
    final = load(tmp_path / "expected_5.pt")
    bf16 = read_safetensors(tmp_path / "hf_bf16" / "step_000005")
    for name, tensor in expected_hf_tensors(final, torch.float32).items():
        assert bf16[name].dtype == torch.bfloat16
        assert torch.allclose(bf16[name].float(), tensor, rtol=1e-2, atol=1e-2), name
    ids = token_ids()
    assert (hf_logits(root / "step_000005", ids) - nanogpt_logits(final, ids)).abs().max().item() < 1e-4


def test_fsdp2_two_processes_llama_permuted_after_the_gather(tmp_path: Path) -> None:
    """A Meta-named Llama under FSDP2: q/k rows are permuted on the gathered tensors, the tie survives sharding."""
    from llama_ref import ModelArgs, Transformer
    from test_llama import assert_parity, expected_tensors

    run_worker("fsdp2_llama", tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["sharded"] for r in ranks) and ranks[0]["is_writer"] and not ranks[1]["is_writer"]
    assert "Exported" not in (tmp_path / "log_rank1.txt").read_text()
    reference = Transformer(ModelArgs(n_heads=4, n_kv_heads=2))
    reference.load_state_dict(load(tmp_path / "expected_2.pt"))
    want = expected_tensors(reference.eval(), torch.float32)
    for directory, dtype, tol in (("hf", torch.float32, 1e-5), ("hf_bf16", torch.bfloat16, 1e-2)):
        got = read_safetensors(tmp_path / directory / "step_000002")
        assert set(got) == set(want)  # tied: no lm_head.weight
        for name, tensor in want.items():
            assert got[name].dtype == dtype and torch.allclose(got[name].float(), tensor, atol=tol), name
    assert_parity(tmp_path / "hf" / "step_000002", reference)


# ------------------------------------------------------------------------ each rank writes its rows (issue 20)
def assert_identical_exports(out: Path, names: tuple[str, ...] = ("gpt2", "llama")) -> None:
    """Every file of the per-rank export equals rank 0's single-process export of the same weights (the manifest
    up to its creation time), and ``verify`` passes."""
    for name in names:
        for single, sharded in ((f"single/{name}", f"sharded/{name}"), (f"single_bf16/{name}", f"sharded/{name}_bf16")):
            a, b = out / single / "step_000003", out / sharded / "step_000003"
            files = sorted(p.name for p in a.iterdir())
            assert files == sorted(p.name for p in b.iterdir())
            assert len([f for f in files if f.endswith(".safetensors")]) > 1  # several shard files
            for file in files:
                if file == "hfexport.json":
                    left, right = json.loads((a / file).read_text()), json.loads((b / file).read_text())
                    assert {**left, "created": None} == {**right, "created": None}  # the same CRC-32s
                else:
                    assert (a / file).read_bytes() == (b / file).read_bytes(), (sharded, file)
            assert verify_directory(b).ok


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_writes_its_rows_byte_identical(tmp_path: Path, world: int) -> None:
    """FSDP2 at 2 and 4 ranks: GPT-2 (65 vocabulary rows: uneven shards, a rank with no row of some tensors; tied;
    Conv1D transposes) and Llama (GQA: 2 KV heads, half a head per rank at 4; RoPE permutation), float32 and
    bfloat16, several shard files: byte-identical to one process's export, and no gather (rank 0 says so)."""
    run_worker(f"sharded{world}", tmp_path)
    assert json.loads((tmp_path / "exitcodes.json").read_text()) == [0] * world
    for rank in range(world):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"gpt2": "ok", "llama": "ok"}
    log0 = (tmp_path / "log_rank0.txt").read_text()
    assert f"each of the {world} ranks writes its own rows" in log0 and "gathers the weights" not in log0
    assert_identical_exports(tmp_path)


def test_hsdp_one_replica_writes_each_row(tmp_path: Path) -> None:
    """HSDP (``fully_shard`` over a 2 x 2 mesh: ``[Replicate, Shard(0)]``): the replica whose coordinate is 0 writes
    each row, the other holds the same rows and writes none (a row both wrote would cancel out of the combined
    CRC-32: the manifests would differ); byte-identical to one process's export."""
    run_worker("hsdp", tmp_path)
    assert json.loads((tmp_path / "exitcodes.json").read_text()) == [0] * 4
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["gpt2_placements"] == report["llama_placements"] == "(Replicate(), Shard(dim=0))"
    assert "each of the 4 ranks writes its own rows" in (tmp_path / "log_rank0.txt").read_text()
    assert_identical_exports(tmp_path)


def test_ddp_split_each_rank_writes_a_share_byte_identical(tmp_path: Path) -> None:
    """``HFEXPORT_DISTRIBUTED_WRITE=split`` under DDP (3 ranks: 65 rows split 22/22/21): every rank writes a share of
    every tensor's rows; the files are the single-process export's."""
    run_worker("ddp_split", tmp_path)
    assert json.loads((tmp_path / "exitcodes.json").read_text()) == [0, 0, 0]
    assert "each of the 3 ranks writes its own rows" in (tmp_path / "log_rank0.txt").read_text()
    assert_identical_exports(tmp_path)


def test_a_rank_killed_mid_write_publishes_nothing_and_nobody_hangs(tmp_path: Path) -> None:
    """Rank 1 writes half its rows, then is SIGKILLed: rank 0's export fails (named), nothing is published, its
    temporary is removed, and rank 0 finishes (the coordination times out at the latest)."""
    from exportkit import hidden_temporaries

    run_worker("sharded_killed", tmp_path, timeout=180)
    assert json.loads((tmp_path / "exitcodes.json").read_text()) == [0, -9]
    report = json.loads((tmp_path / "rank0.json").read_text())["gpt2"]
    assert report.startswith("ExportWorkerError") and "another rank died or did not answer" in report
    root = tmp_path / "sharded" / "gpt2"
    assert step_dirs(root) == [] and hidden_temporaries(root) == [] and read_latest(root) is None
    assert not (tmp_path / "sharded" / "gpt2_bf16").exists()  # export_hf was not reached: the first one raised


def test_an_unshared_output_path_falls_back_to_the_gather(tmp_path: Path) -> None:
    """Each rank has its own output directory (as node-local paths would be): rank 1 cannot see rank 0's files, so
    rank 0 warns once per exporter, says why, and gathers; the export is still the single-process one."""
    run_worker("sharded_unshared", tmp_path)
    assert json.loads((tmp_path / "exitcodes.json").read_text()) == [0, 0]
    log0 = (tmp_path / "log_rank0.txt").read_text()
    assert "rank(s) 1 do not see the files rank 0 writes" in log0 and "each of the 2 ranks" not in log0
    for name in ("gpt2", "llama"):
        single, gathered = tmp_path / "single" / name / "step_000003", tmp_path / "root0" / name / "step_000003"
        for file in single.glob("*.safetensors"):
            assert file.read_bytes() == (gathered / file.name).read_bytes()
    assert not (tmp_path / "root1" / "gpt2").exists() or step_dirs(tmp_path / "root1" / "gpt2") == []
