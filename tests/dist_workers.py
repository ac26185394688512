"""Multi-process workers for the distributed and crash-safety tests, run as scripts (``python tests/dist_workers.py
MODE OUT``) so that a hang is caught by the caller's ``subprocess.run(timeout=...)``.

Modes:
    lightning_ddp OUT   a Lightning Trainer, strategy="ddp", 2 CPU processes, HFExportCallback every 2 steps;
                        rank 0 saves the weights of each exported step to OUT/expected_<step>.pt.
    fsdp2 OUT           2 processes (gloo) with ``fully_shard``; every rank calls ``maybe_export``; rank 0 also
                        trains an unsharded copy on the same data and saves its weights to OUT/expected_<step>.pt.
    fsdp2_llama OUT     the same with llama_ref's Meta-named Llama (GQA, tied output), exporting at step 2 in
                        float32 (OUT/hf) and bfloat16 (OUT/hf_bf16); rank 0 saves the unsharded copy's weights.
    lightning_fsdp2 OUT a Lightning Trainer with ModelParallelStrategy (FSDP2: ``fully_shard`` in ``configure_model``),
                        2 CPU processes, HFExportCallback every 2 steps in float32; every batch on every rank.
    lightning_fsdp OUT  the same with FSDPStrategy (FSDP1, Lightning's defaults: one FSDP unit, use_orig_params).
                        For both: a block_size of 17 (wpe's 17 rows split 9 + 8); at each exported step every
                        rank gathers the sharded model's full weights (OUT/actual_<step>.pt from rank 0) and rank 0
                        trains an unsharded copy on the same batches (OUT/expected_<step>.pt).
    fsdp1_settings OUT  2 processes (gloo), a plain loop with FSDP1 (``FullyShardedDataParallel`` on CPU) under the
                        settings FSDPStrategy passes on: use_orig_params False, an auto-wrap policy of blocks,
                        SHARD_GRAD_OP, NO_SHARD. One SGD step each, then every rank exports (float32, OUT/<case>)
                        and gathers the full weights (OUT/expected_<case>.pt from rank 0).
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


# -------------------------------------------------------------------------------- Lightning FSDP2 / FSDP1
def _cpu_fsdp_strategy() -> Any:
    """Lightning's ``FSDPStrategy`` on CPU, changed in the one argument that keeps it off CPUs.

    Lightning 2.6 refuses ``strategy="fsdp"`` without a GPU (its accelerator connector checks for
    ``type(strategy) is FSDPStrategy``: a subclass passes), and it wraps the model with
    ``FullyShardedDataParallel(..., device_id=root_device.index)``: ``None`` for a CPU device, and torch's FSDP1
    then raises "FSDP needs a non-CPU accelerator device". This subclass wraps the model with exactly Lightning's
    arguments (sharding strategy, ``use_orig_params=True``, no auto-wrap policy: one FSDP unit) and
    ``device_id=torch.device("cpu")``, then hands the wrapped model to Lightning's own ``_setup_model`` (which
    sees it wrapped and does the rest as usual). Everything else (process group: gloo, state dicts, hooks) is
    Lightning's.
    """
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    class CPUFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
            wrapped = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
            return super()._setup_model(wrapped)

    return CPUFSDPStrategy()


def _full_weights(trainer: Any, pl_module: Any) -> dict[str, torch.Tensor]:
    """The sharded model's full weights (a collective: every rank calls it)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(trainer.strategy.model, FullyShardedDataParallel):  # FSDP1: the root wraps the LightningModule
        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
            return _weights(pl_module.model)
    state = pl_module.model.state_dict()
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}


# 17 positions: wpe's 17 rows are split 9 + 8 (uneven shards); 16 tokens per sequence are used.
LIGHTNING_GPT = {**TINY, "block_size": 17}


def _lightning_sharded(out: Path, kind: str) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from hfexport.lightning import HFExportCallback
    from hfexport.training.snapshot import plan_for_model

    data = _batches(MAX_STEPS)  # 5 batches of 4 sequences: every rank sees all of them, in order

    class LitGPT(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_gpt(0, **LIGHTNING_GPT).train()

        def configure_model(self) -> None:
            if kind != "fsdp2":
                return
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for block in self.model.transformer.h:
                fully_shard(block, mesh=mesh)
            fully_shard(self.model, mesh=mesh)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return _loss(self.model, batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(data.reshape(-1, 17)), batch_size=4)

    exported = (2, 4, MAX_STEPS)

    class Recorder(pl.Callback):
        """Before the export of the same hook: the sharded model's full weights, and the unsharded copy's."""

        def __init__(self) -> None:
            self.reference = make_gpt(0, **LIGHTNING_GPT).train()
            self.opt = torch.optim.SGD(self.reference.parameters(), lr=0.5)
            self.sharded: list[bool] = []

        def on_train_batch_end(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.opt.zero_grad()
            _loss(self.reference, batch[0]).backward()
            self.opt.step()
            step = trainer.global_step
            self.sharded.append(any(type(p).__name__ == "DTensor" for p in pl_module.parameters()))
            if step in exported:
                full = _full_weights(trainer, pl_module)
                if trainer.global_rank == 0:
                    torch.save(full, out / f"actual_{step}.pt")
                    torch.save(_weights(self.reference), out / f"expected_{step}.pt")

    if kind == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy: Any = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    else:
        strategy = _cpu_fsdp_strategy()
    recorder = Recorder()
    callback = HFExportCallback(out / "hf", every_n_train_steps=2, dtype="float32")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=MAX_STEPS,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[recorder, callback],
    )
    _log_to(out, trainer.global_rank)
    module = LitGPT()
    trainer.fit(module)
    # What an export of the trained model reads (a collective under FSDP1: every rank calls it).
    target = trainer.strategy.model if kind == "fsdp" else module
    plan = plan_for_model(target)
    sources = [tp.source for tp in plan.tensors if tp.source is not None]
    dtensors = [s for s in sources if type(s).__name__ == "DTensor"]
    placements = sorted({str(tuple(s.placements)) for s in dtensors})  # type: ignore[attr-defined]
    refused = None  # FSDP1: the LightningModule without its wrapper holds flat-parameter pieces, not weights
    if kind == "fsdp":
        from hfexport.errors import ConversionError

        try:
            plan_for_model(module)
        except ConversionError as exc:
            refused = str(exc)
    (out / f"rank{trainer.global_rank}.json").write_text(
        json.dumps(
            {
                "done": True,
                "sharded_params": recorder.sharded,
                "plan_sources": len(sources),
                "plan_dtensors": len(dtensors),
                "placements": placements,
                "refused": refused,
            }
        )
    )


def lightning_fsdp2(out: Path) -> None:
    _lightning_sharded(out, "fsdp2")


def lightning_fsdp(out: Path) -> None:
    _lightning_sharded(out, "fsdp")


def _fsdp1_settings_rank(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist
    from nanogpt import Block
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from hfexport.training.exporter import HFExporter
    from hfexport.training.snapshot import plan_for_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    _log_to(out, rank)
    blocks = ModuleWrapPolicy({Block})
    cases: dict[str, dict[str, Any]] = {
        "flat_params": dict(use_orig_params=False),
        "wrapped_blocks": dict(use_orig_params=True, auto_wrap_policy=blocks),
        "shard_grad_op": dict(use_orig_params=False, auto_wrap_policy=blocks, sharding_strategy="SHARD_GRAD_OP"),
        "no_shard": dict(use_orig_params=True, sharding_strategy="NO_SHARD"),
    }
    seen: dict[str, list[str]] = {}
    try:
        for case, kwargs in cases.items():
            kwargs = {**kwargs, "sharding_strategy": ShardingStrategy[kwargs.get("sharding_strategy", "FULL_SHARD")]}
            model = FullyShardedDataParallel(
                make_gpt(0, **LIGHTNING_GPT).train(), device_id=torch.device("cpu"), **kwargs
            )
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            _loss(model, _batches(1)[0]).backward()
            opt.step()
            with HFExporter(out / case, dtype="float32") as exporter:
                exporter.export(model, 1, final=True)
            plan = plan_for_model(model)
            seen[case] = sorted({type(tp.source).__name__ for tp in plan.tensors if tp.source is not None})
            with FullyShardedDataParallel.summon_full_params(model, writeback=False):
                full = _weights(model.module)
            if rank == 0:
                torch.save(full, out / f"expected_{case}.pt")
        (out / f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


def fsdp1_settings(out: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp1_settings_rank, args=(2, port, out), nprocs=2, join=True)


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
    os.environ["HFEXPORT_DIST_TIMEOUT_S"] = "60"  # a dead rank is usually seen at once (a closed connection)
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
            os.environ.pop("HFEXPORT_DISTRIBUTED_WRITE", None)  # split mode: every rank would have to call these
            if rank == 0:  # the same weights, one process: what every byte must equal
                export_hf(copy.deepcopy(model), 3, out / "single" / name, dtype="float32", max_shard_size="40KB")
                export_hf(copy.deepcopy(model), 3, out / "single_bf16" / name, max_shard_size="40KB")
            if scenario == "split":  # DDP: whole weights on every rank, each writes a share of every tensor's rows
                os.environ["HFEXPORT_DISTRIBUTED_WRITE"] = "split"
                model = torch.nn.parallel.DistributedDataParallel(model)
            else:
                mesh = None
                if scenario == "hsdp":  # 2 replicas x 2 shards: [Replicate, Shard(0)] placements
                    from torch.distributed.device_mesh import init_device_mesh

                    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
                for block in model.transformer.h if name == "gpt2" else model.layers:
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
                if rank == 0 and mesh is not None:
                    report[f"{name}_placements"] = str(next(model.parameters()).placements)
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


def ddp_split(out: Path) -> None:
    _spawn_ranks(3, out, "split")


def hsdp(out: Path) -> None:
    _spawn_ranks(4, out, "hsdp")


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
        "lightning_fsdp2": lightning_fsdp2,
        "lightning_fsdp": lightning_fsdp,
        "fsdp1_settings": fsdp1_settings,
        "export_loop": export_loop,
        "export_zygote": export_zygote,
        "sharded2": sharded2,
        "sharded4": sharded4,
        "sharded_killed": sharded_killed,
        "ddp_split": ddp_split,
        "hsdp": hsdp,
        "sharded_unshared": sharded_unshared,
    }
    modes[mode](target)
