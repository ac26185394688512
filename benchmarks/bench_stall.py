"""How long does a background export stall the training loop? GPT-2 124M (nanoGPT layout) on CPU.

Measures, in one run and alternating so that machine load affects all alike:

* stall (writer idle): time inside ``HFExporter.maybe_export`` (async, bfloat16) when the previous write is done;
* stall (writer busy): the same with only a fake training step (one forward pass) since the previous export, so the
  writer thread is still writing and competes for the CPU (with ``if_busy="wait"`` the call may also queue);
* sync: a synchronous ``export_hf`` of the same model (what the stall is compared with);
* bare copy: ``{k: v.to(torch.bfloat16)}`` over the distinct tensors, the lower bound of any snapshot;
* where the stall goes: ``plan_for_model`` and ``take_snapshot`` timed alone.

Prints medians, the ratio stall (writer idle) / bare copy (goal <= 1.25: PASS/FAIL, the exit status) and
stall/sync. A script, not a test:

    python benchmarks/bench_stall.py [--repeats 5] [--dir /tmp/somewhere]
    python benchmarks/bench_stall.py --layers 2 --embd 128 --repeats 2    # does it run? (seconds)
    PYTHONPATH=/tmp/old python benchmarks/bench_stall.py                  # another tree's hfexport
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from nanogpt import make_gpt

from hfexport.exporter import HFExporter, export_hf
from hfexport.snapshot import plan_for_model, take_snapshot

GOAL = 1.25  # stall with the writer idle / a bare bf16 copy of the parameters


def bare_copy(model: torch.nn.Module) -> float:
    distinct = {}
    for k, v in model.state_dict().items():
        distinct.setdefault(v.untyped_storage().data_ptr(), (k, v))
    start = time.perf_counter()
    out = {k: v.to(torch.bfloat16) for k, v in distinct.values()}
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def fake_train_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    with torch.no_grad():
        model(ids)
        for p in model.parameters():  # the optimizer changes the weights in place
            p.add_(1e-6)
            break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12, help="n_layer (default 12: GPT-2 124M)")
    parser.add_argument("--embd", type=int, default=768, help="n_embd (default 768; a multiple of 64)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="hfexport-bench-", dir=args.dir))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, writing under {base}")
    t = time.perf_counter()
    model = make_gpt(
        0, n_layer=args.layers, n_embd=args.embd, n_head=max(1, args.embd // 64), vocab_size=50304, block_size=1024
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"GPT-2 shape n_layer={args.layers} n_embd={args.embd}: {n_params / 1e6:.1f}M parameters, "
        f"built in {time.perf_counter() - t:.1f}s"
    )
    ids = torch.randint(0, 50304, (1, 64))

    idle, busy, sync, bare, plan_s, snap_s, forward_s = [], [], [], [], [], [], []
    busy_state: list[str] = []
    snap_busy_s: list[float] = []
    exporter = HFExporter(base / "async", every_n_steps=1, dtype="bfloat16", keep_last_n=1)
    step = 0
    try:
        for round_ in range(args.repeats + 1):
            if round_ == 1:  # the first round warms up (first allocations, lazy inits); it is not counted
                for values in (idle, busy, sync, bare, plan_s, snap_s, forward_s, busy_state, snap_busy_s):
                    values.clear()
            bare.append(bare_copy(model))

            t = time.perf_counter()
            plan = plan_for_model(model)
            plan_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            snapshot = take_snapshot(plan, torch.bfloat16)
            snap_s.append(time.perf_counter() - t)
            del snapshot, plan

            # Writer idle: the previous background write has finished.
            exporter.wait()
            t = time.perf_counter()
            fake_train_step(model, ids)
            forward_s.append(time.perf_counter() - t)
            step += 1
            t = time.perf_counter()
            exporter.maybe_export(model, step)
            idle.append(time.perf_counter() - t)

            # Writer busy: only one fake training step since the previous export.
            fake_train_step(model, ids)
            step += 1
            # private state of the exporter, read only for the report (it differs between versions)
            writer = getattr(exporter, "_writer", None)
            if writer is not None:  # the background writer of hfexport >= 0.1.0's refactor
                jobs = writer.pending()
                writing, queued = bool(jobs), len(jobs) > 1
            else:  # the earlier hand-made queue
                idle_event, queue = getattr(exporter, "_idle", None), getattr(exporter, "_queue", None)
                writing = idle_event is not None and not idle_event.is_set()
                queued = queue is not None and queue.full()
            t = time.perf_counter()
            exporter.maybe_export(model, step)
            busy.append(time.perf_counter() - t)
            busy_state.append(f"{'writing' if writing else 'idle'}{'+queued' if queued else ''}")
            # The snapshot alone while that write runs: the CPU contention the busy stall pays.
            t = time.perf_counter()
            del_me = take_snapshot(plan_for_model(model), torch.bfloat16)
            snap_busy_s.append(time.perf_counter() - t)
            del del_me
            exporter.wait()

            # Synchronous export of the same model (alternating with the async measurements).
            fake_train_step(model, ids)
            step += 1
            t = time.perf_counter()
            export_hf(model, step, base / "sync", dtype="bfloat16")
            sync.append(time.perf_counter() - t)
            shutil.rmtree(base / "sync")
        exporter.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med = statistics.median
    rows = [
        ("bare bf16 copy (lower bound)", bare),
        ("plan_for_model", plan_s),
        ("take_snapshot (cast + copy)", snap_s),
        ("fake train step (forward)", forward_s),
        ("maybe_export stall, writer idle", idle),
        ("maybe_export stall, writer busy", busy),
        ("take_snapshot during a write", snap_busy_s),
        ("export_hf synchronous", sync),
    ]
    print(f"\nmedians over {args.repeats} runs (seconds)")
    for name, values in rows:
        print(f"  {name:34s} {med(values):8.3f}   [{', '.join(f'{v:.3f}' for v in values)}]")
    print(f"  writer state at the busy calls: {busy_state}")
    ratio = med(idle) / med(bare)
    print(f"\nstall/bare-copy (writer idle) = {ratio:.2f}x  goal <= {GOAL:.2f}x: {'PASS' if ratio <= GOAL else 'FAIL'}")
    print(f"stall/bare-copy (writer busy) = {med(busy) / med(bare):.2f}x")
    print(f"stall/sync (writer idle) = {med(idle) / med(sync):.3f}, (writer busy) = {med(busy) / med(sync):.3f}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
