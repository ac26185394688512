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


def test_lightning_ddp_two_processes_rank0_writes(tmp_path: Path) -> None:
    run_worker("lightning_ddp", tmp_path)

    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "done": True,
            "dirpath": str(tmp_path / "hf"),
        }
    log0 = (tmp_path / "log_rank0.txt").read_text()
    assert "Exported step 2" in log0 and "Exported step 4" in log0 and "Exported step 5" in log0
    assert "Exported" not in (tmp_path / "log_rank1.txt").read_text()  # rank 1 never writes
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
