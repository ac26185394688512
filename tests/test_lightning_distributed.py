"""HFExportCallback under Lightning's sharded strategies, with a real Trainer: 2 CPU processes (gloo).

- ``ModelParallelStrategy`` (FSDP2): the LightningModule applies ``fully_shard`` in ``configure_model``; its
  parameters are ``Shard(0)`` DTensors. Lightning 2.6 runs it on CPU as it is (gloo, a CPU device mesh).
- ``FSDPStrategy`` (FSDP1, Lightning's defaults: one FSDP unit, ``use_orig_params=True``): the export reads
  FSDP's sharded state dict as ``Shard(0)`` DTensors. Lightning refuses ``strategy="fsdp"`` without a GPU and
  gives FSDP1 ``device_id=None`` on CPU, which torch refuses: the worker's ``CPUFSDPStrategy`` changes only the
  device (see ``tests/dist_workers.py``).

Each run is a subprocess with a timeout (a hang fails the test). The model has 17 positions: wpe's rows are split
unevenly (9 + 8). Every rank gathers the sharded model's full weights at each exported step (``actual_<step>.pt``):
the float32 files must equal them bit for bit; rank 0 also trains an unsharded copy on the same batches
(``expected_<step>.pt``): equal up to the order in which the gradients were reduced. The final version loads in
transformers with the logits of both, and ``hfexport verify --checkpoint`` passes. A third test runs FSDP1 in a
plain loop under the settings ``FSDPStrategy`` passes on to FSDP (``use_orig_params``, wrapping, sharding).
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
from test_distributed import load, run_worker

from hfexport import verify_directory
from hfexport.io.versions import read_latest

pytestmark = pytest.mark.slow
STEPS = (2, 4, 5)  # every 2 steps, and the final step 5


def check_run(out: Path, *, params_are_dtensors: bool) -> None:
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for info in ranks:
        assert info["done"]
        assert info["sharded_params"] == [params_are_dtensors] * 5
        # What the export reads: every source a Shard(0) DTensor, on every rank (what the per-rank writer takes).
        assert info["plan_sources"] == info["plan_dtensors"] == 28 and info["placements"] == ["(Shard(dim=0),)"]
    log0 = (out / "log_rank0.txt").read_text()
    assert all(f"Exported step {step} " in log0 for step in STEPS)
    assert "Exported" not in (out / "log_rank1.txt").read_text()  # rank 1 writes its rows; rank 0 publishes
    assert "each of the 2 ranks writes its own rows" in log0 and "gathers the weights" not in log0  # no gather
    root = out / "hf"
    assert step_dirs(root) == [f"step_{step:06d}" for step in STEPS] and read_latest(root) == "step_000005"
    for step in STEPS:
        version = root / f"step_{step:06d}"
        assert verify_directory(version).ok
        assert_file_tensors(version, load(out / f"actual_{step}.pt"), torch.float32)  # bit for bit
        reference = expected_hf_tensors(load(out / f"expected_{step}.pt"), torch.float32)
        got = read_safetensors(version)
        for name, tensor in reference.items():
            assert torch.allclose(got[name], tensor, atol=1e-5), name
    assert_reproduces(root / "step_000005", load(out / "actual_5.pt"), torch.float32, block_size=17)
    ids = token_ids()
    reference = nanogpt_logits(load(out / "expected_5.pt"), ids, block_size=17)
    assert (hf_logits(root / "step_000005", ids) - reference).abs().max() < 1e-4
    # The command line's verify, with the logits of the sharded model's own weights.
    command = [sys.executable, "-m", "hfexport", "verify", str(root), "--checkpoint", str(out / "actual_5.pt")]
    proc = subprocess.run([*command, "--n_head", "4", "--activation", "gelu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lightning_model_parallel_fsdp2_exports_the_full_weights(tmp_path: Path) -> None:
    run_worker("lightning_fsdp2", tmp_path, timeout=180)
    check_run(tmp_path, params_are_dtensors=True)


def test_lightning_fsdp1_exports_through_the_sharded_state_dict(tmp_path: Path) -> None:
    """Before: the export read FSDP1's flat-parameter pieces (``transformer.wte.weight has shape (2048,)`` on rank
    0, ``(0,)`` on rank 1) and training stopped with a ConversionError at the first export."""
    run_worker("lightning_fsdp", tmp_path, timeout=180)
    check_run(tmp_path, params_are_dtensors=False)
    for rank in (0, 1):  # the module inside the wrapper is refused, naming the fix, on every rank
        refused = json.loads((tmp_path / f"rank{rank}.json").read_text())["refused"]
        assert "flat-parameter pieces" in refused and "Pass the FullyShardedDataParallel module itself" in refused


def test_fsdp1_settings_that_change_the_flat_parameters(tmp_path: Path) -> None:
    """FSDP1 in a plain loop (the wrapper given to ``HFExporter``) under the settings ``FSDPStrategy`` passes on:
    flat parameters (``use_orig_params=False``: no tie in ``named_parameters``), one unit per block, SHARD_GRAD_OP,
    NO_SHARD (replicated weights: plain tensors, as under DDP). Before, every rank took FSDP's default full state
    dict: the whole model on every rank."""
    run_worker("fsdp1_settings", tmp_path, timeout=180)
    sharded = {"flat_params": ["DTensor"], "wrapped_blocks": ["DTensor"], "shard_grad_op": ["DTensor"]}
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {**sharded, "no_shard": ["Tensor"]}
    assert "Exported" not in (tmp_path / "log_rank1.txt").read_text()
    for case in (*sharded, "no_shard"):
        assert verify_directory(tmp_path / case / "step_000001").ok
        assert_file_tensors(tmp_path / case / "step_000001", load(tmp_path / f"expected_{case}.pt"), torch.float32)
