"""How long does a background export stall the training loop? GPT-2 124M (nanoGPT layout) on CPU.

The goal: the stall of ``HFExporter.maybe_export`` with the writer idle <= 1.25x a bare bf16 copy of the parameters
(``{k: v.to(torch.bfloat16)}`` over the distinct tensors, into new tensors: what any snapshot must at least do).

The stall and the bound are measured in the same memory state, one right after the other, in rotating order
(with a third figure, the floor: the same cast into tensors allocated once, i.e. into memory already resident),
and the goal is judged on the median of the per-round ratios. What "new tensors" costs depends on where their
memory comes from, so that is fixed too:

* the allocator: glibc keeps freed blocks below its *dynamic* mmap threshold (up to 32 MB) for reuse, so a "new"
  tensor was sometimes memory the process already had (a copy at ~0.08 s for GPT-2 124M) and sometimes fresh pages
  from the kernel (~0.17 s: a page fault per 4 KB), depending on what was freed before: the bound swung 2x from one
  run to the next. The script sets a fixed threshold (``mallopt``, 128 KB, glibc's default start value) so that
  every tensor of more than 128 KB is fresh memory each time, as tensors above 32 MB always are;
* free memory: on a VM that returns free memory to the host (virtio-balloon free page reporting), fresh pages may
  also cost a host fault once they have been free for ~2 s. Before each measurement ``--memory`` puts free memory in
  a defined state: ``hot`` allocates, touches and frees the snapshot's size just before, ``cold`` waits
  ``--cold-wait`` seconds (the steady state of a loop that exports every few minutes); ``both`` (default) does every
  round in each state; ``as-is`` prepares nothing.

Also measured, once per round, for the record (not part of the goal):

* stall (writer busy): with only a fake training step (one forward pass) since the previous export, so the writer
  thread is still writing and competes for the CPU (with ``if_busy="wait"`` the call may also queue);
* sync: a synchronous ``export_hf`` of the same model;
* where the stall goes: ``plan_for_model`` and ``take_snapshot`` (into new tensors) timed alone.

A script, not a test:

    python benchmarks/bench_stall.py [--repeats 5] [--memory both|hot|cold] [--dir /tmp/somewhere]
    python benchmarks/bench_stall.py --layers 2 --embd 128 --repeats 2 --memory hot   # does it run? (seconds)
    PYTHONPATH=/tmp/old python benchmarks/bench_stall.py                                # another tree's hfexport
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from nanogpt import make_gpt

from hfexport import HFExporter, export_hf

try:  # the layout since issue 19; the flat one before it, so that --old trees (PYTHONPATH=...) still run
    from hfexport.training.snapshot import plan_for_model, take_snapshot
except ImportError:
    from hfexport.snapshot import plan_for_model, take_snapshot  # type: ignore[no-redef]

GOAL = 1.25  # stall with the writer idle / a bare bf16 copy of the parameters


def distinct_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    distinct: dict[int, tuple[str, torch.Tensor]] = {}
    for k, v in model.state_dict().items():
        distinct.setdefault(v.untyped_storage().data_ptr(), (k, v))
    return list(distinct.values())


def bare_copy(model: torch.nn.Module) -> float:
    """The bound: a bf16 copy of every distinct tensor into new tensors (the state dict walk not timed)."""
    distinct = distinct_tensors(model)
    start = time.perf_counter()
    out = {k: v.to(torch.bfloat16) for k, v in distinct}
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def copy_into(model: torch.nn.Module, into: dict[str, torch.Tensor]) -> float:
    """The floor: the same cast into tensors allocated once (memory already resident)."""
    distinct = distinct_tensors(model)
    start = time.perf_counter()
    for k, v in distinct:
        into[k].copy_(v)
    return time.perf_counter() - start


def fix_malloc_threshold() -> str:
    """Make every allocation above 128 KB fresh memory from the kernel (see the module's docstring)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "mallopt unavailable (not glibc): new tensors may reuse freed memory"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 128 << 10) == 1 and mallopt(m_trim_threshold, 128 << 10) == 1
    return "malloc: fixed mmap threshold 128 KB" if ok else "mallopt failed: new tensors may reuse freed memory"


def prepare_memory(state: str, nbytes: int, cold_wait: float) -> None:
    """Put free memory in ``state`` right before a measurement (see the module's docstring).

    ``hot``: allocate, touch and free ``nbytes`` (torch's CPU allocator maps big blocks and unmaps them when freed,
    so the kernel holds that many recently freed pages); ``cold``: wait until freed pages went back to the host.
    """
    if state == "hot":
        scratch = torch.empty(nbytes, dtype=torch.uint8)
        scratch.fill_(1)
        del scratch
    elif state == "cold":
        time.sleep(cold_wait)


def fake_train_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    with torch.no_grad():
        model(ids)
        for p in model.parameters():  # the optimizer changes the weights in place
            p.add_(1e-6)
            break


def writer_state(exporter: HFExporter) -> str:
    """``writing``/``idle`` (+``queued``), read from private state of the exporter (it differs between versions)."""
    writer = getattr(exporter, "_writer", None)
    if writer is not None:  # the background writer of hfexport >= 0.1.0's refactor
        jobs = writer.pending()
        writing, queued = bool(jobs), len(jobs) > 1
    else:  # the earlier hand-made queue
        idle_event, queue = getattr(exporter, "_idle", None), getattr(exporter, "_queue", None)
        writing = idle_event is not None and not idle_event.is_set()
        queued = queue is not None and queue.full()
    return f"{'writing' if writing else 'idle'}{'+queued' if queued else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12, help="n_layer (default 12: GPT-2 124M)")
    parser.add_argument("--embd", type=int, default=768, help="n_embd (default 768; a multiple of 64)")
    parser.add_argument("--memory", choices=("both", "hot", "cold", "as-is"), default="both")
    parser.add_argument("--cold-wait", type=float, default=10.0, help="seconds waited for --memory cold")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    import hfexport

    malloc_note = fix_malloc_threshold()
    base = Path(tempfile.mkdtemp(prefix="hfexport-bench-", dir=args.dir))
    print(
        f"hfexport from {Path(hfexport.__file__).parent}; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; {malloc_note}; writing under {base}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    t = time.perf_counter()
    model = make_gpt(
        0, n_layer=args.layers, n_embd=args.embd, n_head=max(1, args.embd // 64), vocab_size=50304, block_size=1024
    )
    n_params = sum(p.numel() for p in model.parameters())
    nbytes = sum(v.numel() * 2 for _, v in distinct_tensors(model))
    print(
        f"GPT-2 shape n_layer={args.layers} n_embd={args.embd}: {n_params / 1e6:.1f}M parameters "
        f"({nbytes / 1e6:.0f} MB in bf16), built in {time.perf_counter() - t:.1f}s"
    )
    ids = torch.randint(0, 50304, (1, 64))
    resident = {k: torch.empty_like(v, dtype=torch.bfloat16) for k, v in distinct_tensors(model)}
    copy_into(model, resident)
    states = ["hot", "cold"] if args.memory == "both" else [args.memory]

    pairs: dict[str, list[tuple[float, float]]] = {state: [] for state in states}
    floor: dict[str, list[float]] = {state: [] for state in states}
    busy, sync, plan_s, snap_s, snap_busy_s = [], [], [], [], []  # type: ignore[var-annotated]
    busy_state: list[str] = []
    exporter = HFExporter(base / "async", every_n_steps=1, dtype="bfloat16", keep_last_n=1)
    step = 0

    def idle_stall() -> float:
        nonlocal step
        step += 1
        t = time.perf_counter()
        exporter.maybe_export(model, step)
        return time.perf_counter() - t

    try:
        for round_ in range(args.repeats + 1):  # round 0 warms up (first allocations, lazy inits): not counted
            for i, state in enumerate(states):
                times: dict[str, float] = {}
                shift = (round_ + i) % 3
                order = ("bare", "stall", "floor")[shift:] + ("bare", "stall", "floor")[:shift]
                for what in order:
                    exporter.wait()  # the writer is idle
                    fake_train_step(model, ids)
                    prepare_memory(state, nbytes, args.cold_wait)
                    if what == "bare":
                        times[what] = bare_copy(model)
                    elif what == "stall":
                        times[what] = idle_stall()
                    else:
                        times[what] = copy_into(model, resident)
                if round_ > 0:
                    pairs[state].append((times["bare"], times["stall"]))
                    floor[state].append(times["floor"])
                print(
                    f"  round {round_}{' (warm-up)' if round_ == 0 else ''} {state}: order {'/'.join(order)}: bare "
                    f"copy {times['bare']:.3f} s, stall {times['stall']:.3f} s "
                    f"({times['stall'] / times['bare']:.2f}x), floor {times['floor']:.3f} s",
                    flush=True,
                )

            # Where the stall goes (new tensors, as without reuse).
            exporter.wait()
            t = time.perf_counter()
            plan = plan_for_model(model)
            plan_time = time.perf_counter() - t
            t = time.perf_counter()
            snapshot = take_snapshot(plan, torch.bfloat16)
            snap_time = time.perf_counter() - t
            del snapshot, plan

            # Writer busy: only one fake training step since the previous export.
            exporter.wait()
            fake_train_step(model, ids)
            idle_stall()
            fake_train_step(model, ids)
            step += 1
            state_now = writer_state(exporter)
            t = time.perf_counter()
            exporter.maybe_export(model, step)
            busy_time = time.perf_counter() - t
            # The snapshot alone while that write runs: the CPU contention the busy stall pays.
            t = time.perf_counter()
            del_me = take_snapshot(plan_for_model(model), torch.bfloat16)
            snap_busy_time = time.perf_counter() - t
            del del_me
            exporter.wait()

            # Synchronous export of the same model.
            fake_train_step(model, ids)
            step += 1
            t = time.perf_counter()
            export_hf(model, step, base / "sync", dtype="bfloat16")
            sync_time = time.perf_counter() - t
            shutil.rmtree(base / "sync")
            if round_ > 0:
                plan_s.append(plan_time)
                snap_s.append(snap_time)
                busy.append(busy_time)
                busy_state.append(state_now)
                snap_busy_s.append(snap_busy_time)
                sync.append(sync_time)
        exporter.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med = statistics.median
    print(f"\nmedians over {args.repeats} rounds (seconds) [each round]")
    rows: list[tuple[str, list[float]]] = []
    for state in states:
        rows.append((f"bare bf16 copy, memory {state}", [b for b, _ in pairs[state]]))
        rows.append((f"stall, writer idle, memory {state}", [s for _, s in pairs[state]]))
        rows.append((f"floor (copy into resident), {state}", floor[state]))
    rows += [
        ("plan_for_model", plan_s),
        ("take_snapshot into new tensors", snap_s),
        ("stall, writer busy", busy),
        ("take_snapshot during a write", snap_busy_s),
        ("export_hf synchronous", sync),
    ]
    for name, values in rows:
        print(f"  {name:36s} {med(values):8.3f}   [{', '.join(f'{v:.3f}' for v in values)}]")
    print(f"  writer state at the busy calls: {busy_state}")
    ok = True
    print()
    for state in states:
        ratios = [s / b for b, s in pairs[state]]
        ratio = med(ratios)
        ok = ok and ratio <= GOAL
        print(
            f"stall/bare copy (writer idle), memory {state}: {ratio:.2f}x (median of the per-pair ratios "
            f"[{', '.join(f'{r:.2f}' for r in ratios)}]; ratio of the medians "
            f"{med([s for _, s in pairs[state]]) / med([b for b, _ in pairs[state]]):.2f}x)  "
            f"goal <= {GOAL:.2f}x: {'PASS' if ratio <= GOAL else 'FAIL'}"
        )
        over_floor = med([s / f for (_, s), f in zip(pairs[state], floor[state], strict=True)])
        print(f"  stall/floor (a copy into resident memory), memory {state}: {over_floor:.2f}x (median per round)")
    all_bare = [b for state in states for b, _ in pairs[state]]
    all_idle = [s for state in states for _, s in pairs[state]]
    print(f"stall/bare copy (writer busy) = {med(busy) / med(all_bare):.2f}x")
    print(f"stall/sync (writer idle) = {med(all_idle) / med(sync):.3f}, (writer busy) = {med(busy) / med(sync):.3f}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
