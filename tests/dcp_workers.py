"""Writers of real distributed checkpoints for tests/test_dcp.py, run as scripts (``python tests/dcp_workers.py MODE
OUT``) so that a hang is caught by the caller's ``subprocess.run(timeout=...)`` and no process group outlives them.

Modes:
    fsdp2 OUT       2 processes (gloo), a tiny nanoGPT (65-token vocabulary: uneven shards) under ``fully_shard``,
                    one AdamW step, then ``torch.distributed.checkpoint.save`` of ``{"model": ..., "optimizer": ...}``
                    to OUT/dcp (each rank writes its own shards); rank 0 saves the full weights to OUT/expected.pt.
    lightning OUT   a Lightning ``Trainer`` with ``ModelParallelStrategy`` (one CPU process, ``fully_shard`` in
                    ``configure_model``), 2 steps, ``trainer.save_checkpoint(OUT/dcp)`` (DCP files + meta.pt with the
                    hyper-parameters); the full weights to OUT/expected.pt.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
import torch.nn.functional as F
from nanogpt import make_gpt

TINY = dict(vocab_size=65, n_layer=2, n_embd=32, n_head=4, block_size=16)


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (4, 9), generator=torch.Generator().manual_seed(seed))


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    logits = logits[0] if isinstance(logits, tuple) else logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _fsdp2_rank(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        model = make_gpt(0, **TINY).train()
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        assert any(type(p).__name__ == "DTensor" for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        _loss(model, _batch()).backward()
        opt.step()
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(out / "dcp"))
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save({k: v.clone() for k, v in full.items()}, out / "expected.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def fsdp2(out: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp2_rank, args=(2, port, out), nprocs=2, join=True)


def lightning(out: Path) -> None:
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    class LitGPT(L.LightningModule):
        def __init__(self, n_head: int = 4, vocab_size: int = 65) -> None:
            super().__init__()
            self.save_hyperparameters()  # meta.pt carries n_head: no option needed to convert
            self.model = make_gpt(0, **{**TINY, "n_head": n_head, "vocab_size": vocab_size})

        def configure_model(self) -> None:
            for block in self.model.transformer.h:
                fully_shard(block, mesh=self.device_mesh)
            fully_shard(self.model, mesh=self.device_mesh)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return _loss(self.model, batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    data = torch.utils.data.DataLoader([_batch(i)[0] for i in range(4)], batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    module = LitGPT()
    trainer.fit(module, data)
    trainer.save_checkpoint(out / "dcp")
    full = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    torch.save({k: v.clone() for k, v in full.items()}, out / "expected.pt")


if __name__ == "__main__":
    mode, target = sys.argv[1], Path(sys.argv[2])
    {"fsdp2": fsdp2, "lightning": lightning}[mode](target)
