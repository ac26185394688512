"""How much memory does an FSDP2 export take on each rank? Per-rank writes against the gather, on CPU ranks (gloo).

The bar (issue 20): the export's extra peak resident memory on every rank <= 2 x the rank's share of the export +
64 MB, at 4 ranks, for GPT-2 (tied embeddings, Conv1D transposes) and Llama (GQA whose KV rows do not split into
4 on head boundaries: the RoPE permutation of a head spread over two ranks). Each measurement starts ``world``
fresh processes (spawn, gloo), builds the model with the same seed on each, ``fully_shard``s it (each block, then
the root), waits at a barrier, then on every rank:

* gives free heap memory back to the kernel (``malloc_trim``) and reads ``VmRSS``: the resident memory before;
* resets the peak (``5`` into ``/proc/self/clear_refs`` resets ``VmHWM``; where that does not work, a thread
  samples ``VmRSS`` every 2 ms instead);
* runs ``HFExporter(dir).export(model, step, final=True)`` then ``close()`` (bfloat16, the default dtype; the
  background writer thread is in the same process, so its memory counts);
* reads ``VmHWM``: extra peak = peak - RSS before.

The rank's **share** is what it writes under per-rank writes: the bf16 bytes of the rows it holds (counted from
its own local snapshot, taken after the measurement: uneven shards, tied weights written once, the tensors that
are not sharded on rank 0). The **ratio** is extra peak / (2 x share + 64 MB): <= 1 meets the bar. Each
configuration is measured with ``HFEXPORT_DISTRIBUTED_WRITE`` unset (``sharded``: each rank writes its rows) and
``=gather`` (every DTensor gathered with ``full_tensor()``, rank 0 writes everything), alternating the order round
after round; the files of the two modes are compared byte for byte once per configuration.

``wall`` is the longest time any rank spent from the barrier to the end of ``close()``; ``stall`` the time rank
0's ``export()`` returned after (what the training loop waits for; the rest is written in the background).

Every allocation above 128 KB is made fresh from the kernel (``mallopt``, as in bench_stall.py) so that memory
freed earlier (the unsharded model) cannot hide the export's own in glibc's free lists.

A script, not a test (the machine's load and free memory change the times, not the memory figures):

    python benchmarks/bench_distributed.py                          # both archs, worlds 1,2,4, 2 rounds
    python benchmarks/bench_distributed.py --arch llama --worlds 4 --repeats 3
    python benchmarks/bench_distributed.py --size tiny --repeats 1  # does it run? (seconds; ratios mean nothing)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import filecmp
import gc
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

MB = 1_000_000
SLACK = 64 * MB  # the bar: extra peak <= 2 x share + 64 MB
STEP = 1000

SIZES: dict[str, dict[str, dict[str, int]]] = {
    # GPT-2 medium's shape, nanoGPT's padded vocabulary: 354M parameters, 0.71 GB in bf16.
    # Llama: 16 query heads, 2 KV heads of 64 rows (wk/wv: 128 rows, 32 per rank at 4 ranks: half a head each),
    # FFN 2736, tied output: 334M parameters, 0.67 GB in bf16.
    "full": {
        "gpt2": dict(n_layer=24, n_embd=1024, n_head=16, vocab_size=50304, block_size=1024),
        "llama": dict(dim=1024, n_layers=28, n_heads=16, n_kv_heads=2, vocab_size=32000),
    },
    # Seconds-long: does the script run? (uneven vocabulary shards; 2 KV heads of 16 rows)
    "tiny": {
        "gpt2": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1003, block_size=64),
        "llama": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1003),
    },
}


# ------------------------------------------------------------------------------------------------ one rank
def _status(field: str) -> int:
    """``field`` of /proc/self/status in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), flags=re.M)
    assert match is not None, field
    return int(match.group(1)) * 1024


def _fix_malloc() -> None:
    """Every allocation above 128 KB fresh from the kernel, freed memory given back (see the docstring)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 10)  # M_TRIM_THRESHOLD


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class PeakMeter:
    """The peak of ``VmRSS`` from :meth:`reset` to :meth:`peak`: ``VmHWM`` reset through /proc/self/clear_refs,
    or, where that does not work, ``VmRSS`` sampled every 2 ms by a thread."""

    def __init__(self) -> None:
        self.how = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            works = _status("VmHWM") <= _status("VmRSS") + (4 << 20)
        except OSError:
            works = False
        if not works:
            self.how = "VmRSS sampled every 2 ms"
        self._max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        if self.how == "VmHWM":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return
        self._max = _status("VmRSS")
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _status("VmRSS"))

    def peak(self) -> int:
        if self.how == "VmHWM":
            return _status("VmHWM")
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return max(self._max, _status("VmRSS"))


def _build(arch: str, size: str) -> Any:
    if arch == "gpt2":
        from nanogpt import make_gpt

        model = make_gpt(0, **SIZES[size]["gpt2"])
        blocks = model.transformer.h
    else:
        from llama_ref import make_llama

        model = make_llama(0, **SIZES[size]["llama"])
        blocks = model.layers
    return model, blocks


def _share(model: Any, rank: int, world: int, mode: str) -> tuple[int, int]:
    """(bytes this rank writes under per-rank writes, bytes of the whole export), in bfloat16."""
    import math

    import torch

    from hfexport.training.sharded import row_share, take_local_snapshot
    from hfexport.training.snapshot import plan_for_model

    plan = plan_for_model(model)
    held = row_share(rank, world) if mode == "ddp-split" else None
    snapshot = take_local_snapshot(plan, torch.bfloat16, rank, held=held)
    mine = 0
    for piece in snapshot.pieces:
        if piece.host is not None:
            mine += piece.host.numel() * 2
        else:  # a tensor written as zeros, whole
            mine += math.prod(plan.tensors[piece.index].shape) * 2
    total = sum(math.prod(tp.shape) * 2 for tp in plan.tensors)
    for buffer in snapshot.buffers:
        buffer.close()
    return mine, total


def _rank(rank: int, world: int, port: int, arch: str, size: str, mode: str, out: str, shard: str) -> None:
    """One rank of one measurement; writes its figures to ``out/rank<r>.json``."""
    _fix_malloc()
    if mode in ("gather", "ddp-split"):
        os.environ["HFEXPORT_DISTRIBUTED_WRITE"] = mode.removeprefix("ddp-")
    else:
        os.environ.pop("HFEXPORT_DISTRIBUTED_WRITE", None)
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from hfexport.training.exporter import HFExporter

    torch.set_num_threads(1)  # 4 ranks on a 2-core machine
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=900))
    root = Path(out)
    try:
        t = time.perf_counter()
        model, blocks = _build(arch, size)
        n_params = sum(p.numel() for p in model.parameters())
        if not mode.startswith("ddp"):  # DDP: the whole weights on every rank (the wrapper changes nothing here)
            for block in blocks:
                fully_shard(block)
            fully_shard(model)
        build_s = time.perf_counter() - t
        meter = PeakMeter()
        _trim()
        dist.barrier()
        rss_before = _status("VmRSS")
        meter.reset()
        start = time.perf_counter()
        exporter = HFExporter(root / "hf", max_shard_size=shard)  # bfloat16, async write: the defaults
        exporter.export(model, STEP, final=True)
        stall = time.perf_counter() - start
        exporter.close()
        wall = time.perf_counter() - start
        peak = meter.peak()
        rss_after = _status("VmRSS")
        per_rank = exporter._per_rank  # which path really ran (private)
        dist.barrier()
        share, total = _share(model, rank, world, mode)
        (root / f"rank{rank}.json").write_text(
            json.dumps(
                dict(
                    rank=rank,
                    params=n_params,
                    build_s=build_s,
                    rss_before=rss_before,
                    peak=peak,
                    extra=peak - rss_before,
                    kept=rss_after - rss_before,
                    share=share,
                    total=total,
                    stall=stall,
                    wall=wall,
                    per_rank=per_rank,
                    meter=meter.how,
                )
            )
        )
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- the driver
def measure(arch: str, size: str, world: int, mode: str, out: Path, shard: str, timeout: float) -> list[dict[str, Any]]:
    """Start ``world`` ranks for one measurement; their figures, by rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, world, port, arch, size, mode, str(out), shard)) for r in range(world)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(1.0, deadline - time.monotonic()))
    hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    codes = [proc.exitcode for proc in procs]
    if hung or any(codes):
        raise RuntimeError(f"{arch} world {world} {mode}: rank exit codes {codes} (hung: {hung}); see above")
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    expected = mode in ("sharded", "ddp-split")
    if any(bool(r["per_rank"]) != expected for r in results):
        raise RuntimeError(f"{arch} world {world} {mode}: the exporter took the other path ({results})")
    return results


def weights_files(root: Path) -> dict[str, Path]:
    """The safetensors files and index of the one version under ``root``."""
    versions = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith("step_")]
    assert len(versions) == 1, versions
    return {
        p.name: p for p in versions[0].iterdir() if p.name.endswith(".safetensors") or p.name.endswith(".index.json")
    }


def identical(a: Path, b: Path) -> str:
    """Whether the weights files of the versions under ``a`` and ``b`` are the same bytes, and the CRC-32 each
    manifest records for them is the files' (per-rank writes combine it from every rank's ranges)."""
    from hfexport._util.checksum import crc32_file

    fa, fb = weights_files(a), weights_files(b)
    if sorted(fa) != sorted(fb):
        return f"DIFFERENT files: {sorted(fa)} vs {sorted(fb)}"
    differ = [name for name in sorted(fa) if not filecmp.cmp(fa[name], fb[name], shallow=False)]
    size = sum(p.stat().st_size for p in fa.values())
    if differ:
        return f"DIFFERENT bytes in {differ}"
    wrong = []
    for files in (fa, fb):
        manifest = json.loads((next(iter(files.values())).parent / "hfexport.json").read_text())["files"]
        wrong += [str(p) for name, p in files.items() if manifest[name]["crc32"] != f"{crc32_file(p):08x}"]
    if wrong:
        return f"byte-identical, but the manifest's CRC-32 is wrong for {wrong}"
    return f"byte-identical, CRC-32s right ({len(fa)} files, {size / MB:.0f} MB)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--arch", choices=("gpt2", "llama", "both"), default="both")
    parser.add_argument("--worlds", default="1,2,4", help="world sizes, comma-separated (default 1,2,4)")
    parser.add_argument(
        "--modes",
        default="sharded,gather",
        help="FSDP2: sharded,gather (default both); DDP (whole weights on every rank): ddp-rank0 (rank 0 writes all, "
        "the default there), ddp-split (HFEXPORT_DISTRIBUTED_WRITE=split: each rank writes a share)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds per configuration (default 2)")
    parser.add_argument(
        "--max-shard-size", default="5GB", help="the exporter's max_shard_size (default 5GB: one file at the full size)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one measurement may take")
    args = parser.parse_args()
    archs = ["gpt2", "llama"] if args.arch == "both" else [args.arch]
    worlds = [int(w) for w in args.worlds.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if set(modes) - {"sharded", "gather", "ddp-rank0", "ddp-split"} or not modes:
        parser.error("--modes: sharded, gather, ddp-rank0, ddp-split")

    import torch

    import hfexport

    base = Path(tempfile.mkdtemp(prefix="hfexport-bench-dist-", dir=args.dir))
    print(
        f"hfexport from {Path(hfexport.__file__).parent}; torch {torch.__version__}; {os.cpu_count()} CPUs; "
        f"writing under {base}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"MemAvailable {_meminfo('MemAvailable') / 1e9:.1f} GB",
        flush=True,
    )
    rows: dict[tuple[str, int, str], list[list[dict[str, Any]]]] = {}
    checks: dict[tuple[str, int], str] = {}
    try:
        for arch in archs:
            for world in worlds:
                for round_ in range(args.repeats):
                    order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
                    for mode in order:
                        out = base / f"{arch}_w{world}_r{round_}_{mode}"
                        t = time.perf_counter()
                        results = measure(arch, args.size, world, mode, out, args.max_shard_size, args.timeout)
                        rows.setdefault((arch, world, mode), []).append(results)
                        extras = ", ".join(f"{r['extra'] / MB:.0f}" for r in results)
                        shares = ", ".join(f"{r['share'] / MB:.0f}" for r in results)
                        print(
                            f"  {arch} world {world} round {round_} {mode:7s}: extra peak MB by rank "
                            f"[{extras}], share [{shares}], wall "
                            f"{max(r['wall'] for r in results):.2f} s, stall {results[0]['stall']:.2f} s "
                            f"({time.perf_counter() - t:.0f} s with start and build; load "
                            f"{os.getloadavg()[0]:.2f})",
                            flush=True,
                        )
                    if round_ == 0 and len(modes) == 2:  # once per configuration: the two paths' files
                        a, b = (base / f"{arch}_w{world}_r0_{m}" / "hf" for m in modes)
                        checks[(arch, world)] = identical(a, b)
                        print(f"  {arch} world {world}: sharded vs gather: {checks[(arch, world)]}", flush=True)
                    for mode in modes:  # free the disk
                        shutil.rmtree(base / f"{arch}_w{world}_r{round_}_{mode}" / "hf", ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    first = next(iter(rows.values()))[0][0]
    print(
        f"\npeak measured with {first['meter']}; medians over {args.repeats} round(s); MB = 10^6 bytes; "
        f"ratio = extra / (2 x share + 64 MB), <= 1 meets the bar"
    )
    head = (
        f"{'arch':5s} {'world':>5s} {'mode':7s} {'rank':>4s} {'share MB':>8s} {'extra MB':>8s} {'ratio':>6s} "
        f"{'kept MB':>7s} {'wall s':>6s} {'stall s':>7s}"
    )
    print(head)
    print("-" * len(head))
    verdicts: list[str] = []
    ok_all = True
    med = statistics.median
    for arch in archs:
        for world in worlds:
            worst: dict[str, float] = {}
            for mode in modes:
                runs = rows[(arch, world, mode)]
                wall = med([max(r["wall"] for r in run) for run in runs])
                stall = med([run[0]["stall"] for run in runs])
                for rank in range(world):
                    share = runs[0][rank]["share"]
                    extra = med([run[rank]["extra"] for run in runs])
                    kept = med([run[rank]["kept"] for run in runs])
                    ratio = extra / (2 * share + SLACK)
                    worst[mode] = max(worst.get(mode, 0.0), ratio)
                    times = f"{wall:6.2f} {stall:7.2f}" if rank == 0 else ""
                    print(
                        f"{arch:5s} {world:5d} {mode:7s} {rank:4d} {share / MB:8.1f} {extra / MB:8.1f} {ratio:6.2f} "
                        f"{kept / MB:7.1f} {times}"
                    )
            total = rows[(arch, world, modes[0])][0][0]["total"]
            params = rows[(arch, world, modes[0])][0][0]["params"]
            verdict = f"{arch} ({params / 1e6:.0f}M params, {total / MB:.0f} MB bf16) world {world}: "
            if "sharded" in worst:
                passed = worst["sharded"] <= 1.0
                ok_all = ok_all and (passed or world != 4)
                verdict += f"sharded worst ratio {worst['sharded']:.2f} {'MEETS' if passed else 'MISSES'} the bar"
            if "gather" in worst:
                verdict += f"; gather worst ratio {worst['gather']:.2f}"
            for mode in ("ddp-rank0", "ddp-split"):  # DDP: no bar; which is faster, and what rank 0 holds
                if mode in worst:
                    runs = rows[(arch, world, mode)]
                    wall = med([max(r["wall"] for r in run) for run in runs])
                    verdict += f"; {mode} wall {wall:.2f} s, worst ratio {worst[mode]:.2f}"
            if (arch, world) in checks:
                verdict += f"; files {checks[(arch, world)]}"
            verdicts.append(verdict.replace(": ; ", ": "))
    print()
    for verdict in verdicts:
        print(verdict)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    same = all(c.startswith("byte-identical") for c in checks.values())
    return 0 if ok_all and same else 1


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), flags=re.M)
    return int(match.group(1)) * 1024 if match else 0


if __name__ == "__main__":
    raise SystemExit(main())
