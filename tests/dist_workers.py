"""Multi-process workers for the distributed and crash-safety tests, run as scripts (``python tests/dist_workers.py
MODE OUT``) so that a hang is caught by the caller's ``subprocess.run(timeout=...)``.

Modes:
    lightning_ddp OUT   a Lightning Trainer, strategy="ddp", 2 CPU processes, HFExportCallback every 2 steps;
                        rank 0 saves the weights of each exported step to OUT/expected_<step>.pt.
    fsdp2 OUT           2 processes (gloo) with ``fully_shard``; every rank calls ``maybe_export``; rank 0 also
                        trains an unsharded copy on the same data and saves its weights to OUT/expected_<step>.pt.
    fsdp2_llama OUT     the same with llama_ref's Meta-named Llama (GQA, tied output), exporting at step 2 in
                        float32 (OUT/hf) and bfloat16 (OUT/hf_bf16); rank 0 saves the unsharded copy's weights.
    export_loop OUT     exports a ~17 MB model every step, in the background, forever (killed by the test).
    export_zygote OUT   forks an export_loop child for each "go" read from stdin (fast restarts after kills).

Each rank writes what it saw to OUT/rank<r>.json and the hfexport log to OUT/log_rank<r>.txt.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import torch
import torch.nn.functional as F
from nanogpt import make_gpt

TINY = dict(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=16)
EXPORT_STEPS = (2, 4)
MAX_STEPS = 5


def _log_to(out: Path, rank: int) -> None:
    handler = logging.FileHandler(out / f"log_rank{rank}.txt")
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    log = logging.getLogger("hfexport")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _batches(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (n, 4, 17), generator=g)


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------- Lightning DDP
def lightning_ddp(out: Path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from hfexport.lightning import HFExportCallback

    class LitGPT(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_gpt(0, **TINY).train()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return _loss(self.model, batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(_batches(1).reshape(-1, 17).repeat(8, 1)), batch_size=2)

    class Recorder(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            step = trainer.global_step
            path = out / f"expected_{step}_rank{trainer.global_rank}.pt"
            if not path.exists():
                torch.save(_weights(pl_module.model), path)

    callback = HFExportCallback(out / "hf", every_n_train_steps=2, dtype="float32")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=MAX_STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[Recorder(), callback],
    )
    _log_to(out, trainer.global_rank)
    trainer.fit(LitGPT())
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"done": True, "dirpath": str(callback.dirpath)}))


# ------------------------------------------------------------------------------------------------- FSDP2
def _fsdp2_rank(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from hfexport.training.exporter import HFExporter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    _log_to(out, rank)
    try:
        model = make_gpt(0, **TINY).train()
        reference = copy.deepcopy(model) if rank == 0 else None  # unsharded, trained identically
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5) if reference is not None else None
        data = _batches(MAX_STEPS)  # the same data on both ranks: averaged gradients equal one process's
        exported: list[int] = []
        with HFExporter(out / "hf", every_n_steps=2, dtype="float32") as exporter:
            for step in range(1, MAX_STEPS + 1):
                opt.zero_grad()
                _loss(model, data[step - 1]).backward()
                opt.step()
                if reference is not None and ref_opt is not None:
                    ref_opt.zero_grad()
                    _loss(reference, data[step - 1]).backward()
                    ref_opt.step()
                    if step in EXPORT_STEPS:
                        torch.save(_weights(reference), out / f"expected_{step}.pt")
                if exporter.maybe_export(model, step) is not None:
                    exported.append(step)
            exporter.export(model, MAX_STEPS, final=True)
        dist.barrier()
        with HFExporter(out / "hf_bf16", dtype="bfloat16") as exporter:  # cast on the shard, then gathered
            exporter.export(model, MAX_STEPS, final=True)
        if reference is not None:
            torch.save(_weights(reference), out / f"expected_{MAX_STEPS}.pt")
        is_writer = exporter.is_writer
        # The snapshot holds host copies only: no reference to a gathered full tensor stays behind.
        from hfexport.training.snapshot import plan_for_model, take_snapshot

        snap = take_snapshot(plan_for_model(model), torch.bfloat16)
        plan_keeps_shards = all(tp.source is None or type(tp.source).__name__ == "DTensor" for tp in snap.plan.tensors)
        snapshot_tensors = len(snap.tensors)
        del snap
        # if_busy="skip" with a slow write on rank 0: the ranks must agree on skipping (the gather is collective).
        from exportkit import SlowTokenizer

        taken = []  # the steps each rank took part in (other ranks' maybe_export always returns None)
        with HFExporter(out / "hf_skip", every_n_steps=1, if_busy="skip", tokenizer=SlowTokenizer(0.5)) as exporter:
            for step in range(1, 6):
                exporter.maybe_export(model, step)
                if exporter.last_step == step:
                    taken.append(step)
        (out / f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "sharded": sharded,
                    "exported": exported,
                    "is_writer": is_writer,
                    "taken": taken,
                    "plan_keeps_shards": plan_keeps_shards,
                    "snapshot_tensors": snapshot_tensors,
                }
            )
        )
    finally:
        dist.destroy_process_group()


def fsdp2(out: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp2_rank, args=(2, port, out), nprocs=2, join=True)


def _fsdp2_llama_rank(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist
    from llama_ref import make_llama
    from torch.distributed.fsdp import fully_shard

    from hfexport.training.exporter import HFExporter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    _log_to(out, rank)
    try:
        model = make_llama(0, n_heads=4, n_kv_heads=2).train()
        reference = copy.deepcopy(model) if rank == 0 else None
        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05) if reference is not None else None
        data = _batches(2)
        for step in (1, 2):
            opt.zero_grad()
            _loss(model, data[step - 1]).backward()
            opt.step()
            if reference is not None and ref_opt is not None:
                ref_opt.zero_grad()
                _loss(reference, data[step - 1]).backward()
                ref_opt.step()
        with HFExporter(out / "hf", dtype="float32") as exporter:
            exporter.export(model, 2, final=True)
        with HFExporter(out / "hf_bf16", dtype="bfloat16") as exporter:
            exporter.export(model, 2, final=True)
        if reference is not None:
            torch.save(reference.state_dict(), out / "expected_2.pt")
        (out / f"rank{rank}.json").write_text(json.dumps({"sharded": sharded, "is_writer": exporter.is_writer}))
    finally:
        dist.destroy_process_group()


def fsdp2_llama(out: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp2_llama_rank, args=(2, port, out), nprocs=2, join=True)


# ----------------------------------------------------------------------------------------- crash safety
def export_loop(out: Path) -> None:
    """Export every step, in the background, until killed (each write ~50-200 ms)."""
    from hfexport.training.exporter import HFExporter

    torch.set_num_threads(1)
    model = make_gpt(0, vocab_size=4096, n_layer=4, n_embd=256, n_head=4, block_size=64)
    exporter = HFExporter(out, every_n_steps=1, dtype="float32", keep_last_n=3)
    (out.parent / f"started-{os.getpid()}").write_text("")
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.001)
        exporter.maybe_export(model, step)


def export_zygote(out: Path) -> None:
    """Import once, then fork an :func:`export_loop` child per "go" line on stdin (restarts cost no imports).

    Before each fork the previous child (killed by the test) is reaped, so its pid is really gone when the new
    child's exporter looks for temporaries of dead processes. Prints each child's pid.
    """
    import hfexport.training.exporter  # noqa: F401 - imported before forking

    child = None
    for line in sys.stdin:
        if child is not None:
            os.waitpid(child, 0)
            child = None
        if line.strip() != "go":
            break
        child = os.fork()
        if child == 0:
            try:
                export_loop(out)
            finally:
                os._exit(1)
        print(child, flush=True)
    if child is not None:
        os.waitpid(child, 0)


# ------------------------------------------------------------------------------ per-rank writes (issue 20)
SHARDED_GPT = dict(vocab_size=65, n_layer=2, n_embd=32, n_head=4, block_size=16)  # 65 rows: uneven shards
SHARDED_LLAMA = dict(dim=48, n_heads=4, n_kv_heads=2, vocab_size=65)  # 2 KV heads: half a head per rank at 4


def _sharded_rank(rank: int, world: int, port: int, out: Path, scenario: str) -> None:
    """One rank of a per-rank-write scenario: ``identical`` (GPT-2 and Llama exports, each compared by the test
    with rank 0's single-process export of the same weights), ``killed`` (rank 1 dies in the middle of its write)
    or ``unshared`` (every rank has an output directory of its own: no shared file system, so rank 0 gathers)."""
    import signal

    import torch.distributed as dist
    from llama_ref import make_llama
    from torch.distributed.fsdp import fully_shard

    from hfexport import export_hf
    from hfexport.training import coordinator
    from hfexport.training.exporter import HFExporter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    _log_to(out, rank)
    torch.set_num_threads(1)
    report: dict[str, Any] = {}
    try:
        models = {"gpt2": make_gpt(0, **SHARDED_GPT), "llama": make_llama(0, **SHARDED_LLAMA)}
        if scenario == "killed":
            models = {"gpt2": models["gpt2"]}
            if rank == 1:
                real = coordinator.write_local

                def dies_half_way(tmp: Path, layout: Any, snapshot: Any, **kw: Any) -> Any:
                    snapshot.pieces = snapshot.pieces[: len(snapshot.pieces) // 2]
                    real(tmp, layout, snapshot, **kw)
                    os.kill(os.getpid(), signal.SIGKILL)

                coordinator.write_local = dies_half_way  # type: ignore[assignment]
        for name, model in models.items():
            if rank == 0:  # the same weights, one process: what every byte must equal
                export_hf(copy.deepcopy(model), 3, out / "single" / name, dtype="float32", max_shard_size="40KB")
                export_hf(copy.deepcopy(model), 3, out / "single_bf16" / name, max_shard_size="40KB")
            for block in model.transformer.h if name == "gpt2" else model.layers:
                fully_shard(block)
            fully_shard(model)
            root = out / (f"root{rank}" if scenario == "unshared" else "sharded")
            try:
                with HFExporter(root / name, dtype="float32", max_shard_size="40KB") as exporter:
                    exporter.export(model, 3, final=True)
                export_hf(model, 3, root / f"{name}_bf16", max_shard_size="40KB")
                report[name] = "ok"
            except Exception as exc:  # recorded for the test
                report[name] = f"{type(exc).__name__}: {exc}"
        (out / f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def _spawn_ranks(world: int, out: Path, scenario: str) -> None:
    """Start ``world`` ranks and wait for every one (a rank that dies does not stop the others, unlike mp.spawn)."""
    import multiprocessing

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_sharded_rank, args=(r, world, port, out, scenario)) for r in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    (out / "exitcodes.json").write_text(json.dumps([proc.exitcode for proc in procs]))


def sharded2(out: Path) -> None:
    _spawn_ranks(2, out, "identical")


def sharded4(out: Path) -> None:
    _spawn_ranks(4, out, "identical")


def sharded_killed(out: Path) -> None:
    _spawn_ranks(2, out, "killed")


def sharded_unshared(out: Path) -> None:
    _spawn_ranks(2, out, "unshared")


if __name__ == "__main__":
    mode, target = sys.argv[1], Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    modes = {
        "lightning_ddp": lightning_ddp,
        "fsdp2": fsdp2,
        "fsdp2_llama": fsdp2_llama,
        "export_loop": export_loop,
        "export_zygote": export_zygote,
        "sharded2": sharded2,
        "sharded4": sharded4,
        "sharded_killed": sharded_killed,
        "sharded_unshared": sharded_unshared,
    }
    modes[mode](target)
