"""Time and peak memory of ``hfexport convert`` against a lower bound and the classic approach.

Builds a GPT-2-shaped float32 checkpoint in nanoGPT's layout (``{'model': state_dict, 'model_args', ...}``,
``torch.compile`` key prefix, ``lm_head`` tied to ``wte`` and so stored once), then runs each method as a fresh
subprocess, alternating the methods round after round, so each gets its own peak RSS:

(a) ``bound``:    mmap-load (``torch.load(weights_only=True, mmap=True)``), cast each distinct tensor to bfloat16,
                  write its bytes to one file, fsync. No transposes, no checks: the work no converter can avoid.
(b) ``hfexport``: ``hfexport.convert_checkpoint(..., dtype="bfloat16")`` with its defaults, i.e. what the CLI
                  does (transposes, finiteness checks, CRC-32, fsync, structural verification, atomic publish).
(c) ``classic``:  plain ``torch.load`` (no mmap), strip the prefix, transpose the four Conv1D weights, clone
                  ``lm_head`` apart from ``wte``, ``.contiguous()``, cast to bfloat16, ``safetensors.torch.save_file``
                  (then fsync, so that all three pay for durability alike).

Times are measured inside each child, from before the checkpoint is opened to after the last fsync (interpreter
start and ``import torch`` excluded, equal for all). Every method reads a warm page cache: the checkpoint is read
once before each run (dropping the cache would need root and make the numbers depend on the disk). Free memory is
put in the same state before every run (``--memory``, see :func:`prepare_memory`): on a VM that returns free
memory to the host, writing into fresh page-cache pages otherwise costs 2.5x more or less depending on what ran
just before.

Usage::

    python benchmarks/bench_convert.py                      # GPT-2 774M shape (~3.1 GB), 3 rounds, cold + hot
    python benchmarks/bench_convert.py --memory cold --methods bound,hfexport,hfexport_buffered
    python benchmarks/bench_convert.py --size 124M --repeats 5
    python benchmarks/bench_convert.py --size tiny --repeats 1 --memory as-is   # does it run? (seconds)
    python benchmarks/bench_convert.py --compare-src /tmp/old   # + "hfexport_src": the tree in /tmp/old, same rounds
    HFEXPORT_BENCH_SRC=/tmp/old python benchmarks/bench_convert.py   # every hfexport method from /tmp/old instead
    python benchmarks/bench_convert.py --workdir /tmp/bench --keep   # reuse the checkpoint next time
    python benchmarks/bench_convert.py --size 124M --phases          # where hfexport's time goes, per phase
    python benchmarks/bench_convert.py --size 124M --profile         # cProfile of one hfexport run (main thread)
    python benchmarks/bench_convert.py --arch llama                  # Llama 3.2 1B shape (~4.9 GB), llama2.c layout

``--arch llama`` builds a Llama-shaped float32 checkpoint in llama2.c's ``train.py`` layout (Meta's names,
``output`` tied to ``tok_embeddings``, grouped-query attention) instead; hfexport then also permutes the rows of
``wq``/``wk`` per head (interleaved RoPE → halves), and the classic method does the same permutation with
``view/transpose/reshape`` as transformers' ``convert_llama_weights_to_hf.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # name: (n_layer, n_embd, n_head)
    "774M": (36, 1280, 20),
    "355M": (24, 1024, 16),
    "124M": (12, 768, 12),
    "tiny": (2, 64, 4),
}
#: Llama shapes: name → (n_layers, dim, n_heads, n_kv_heads, hidden_dim, vocab_size)
LLAMA_SIZES = {
    "1B": (16, 2048, 32, 8, 8192, 128256),  # Llama 3.2 1B: 1.24B parameters, ~4.9 GB float32
    "tiny": (2, 64, 4, 2, 176, 512),
}
DEFAULT_SIZE = {"gpt2": "774M", "llama": "1B"}
VOCAB = 50257
BLOCK = 1024
METHODS = ("bound", "hfexport", "classic")
# hfexport with HFEXPORT_DIRECT_IO=0 (the page cache only) / =1 (direct I/O for every shard), with the checkpoint's
# pages kept mapped (no madvise), with zlib's CRC-32, without the cache: what each of those parts brings.
EXTRA_METHODS = (
    "hfexport_buffered",
    "hfexport_direct",
    "hfexport_keep_pages",
    "hfexport_zlib_crc",
    "hfexport_no_cache",
)
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GOAL_TIME = 1.10  # (b) / (a)
GOAL_RSS = 1.15  # peak RSS (b) / checkpoint size


# --- the checkpoint ----------------------------------------------------------------------------------------------


def build_checkpoint(path: Path, size: str) -> None:
    import torch

    n_layer, n_embd, n_head = SIZES[size]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.empty(shape).normal_(0.0, 0.02, generator=gen)

    sd: dict[str, torch.Tensor] = {}
    p = "_orig_mod."  # nanoGPT's train.py saves the compiled model's state dict
    wte = rand(VOCAB, n_embd)
    sd[p + "transformer.wte.weight"] = wte
    sd[p + "transformer.wpe.weight"] = rand(BLOCK, n_embd)
    for i in range(n_layer):
        h = f"{p}transformer.h.{i}."
        sd[h + "ln_1.weight"], sd[h + "ln_1.bias"] = torch.ones(n_embd), torch.zeros(n_embd)
        sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"] = rand(3 * n_embd, n_embd), rand(3 * n_embd)
        sd[h + "attn.c_proj.weight"], sd[h + "attn.c_proj.bias"] = rand(n_embd, n_embd), rand(n_embd)
        sd[h + "ln_2.weight"], sd[h + "ln_2.bias"] = torch.ones(n_embd), torch.zeros(n_embd)
        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"] = rand(4 * n_embd, n_embd), rand(4 * n_embd)
        sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"] = rand(n_embd, 4 * n_embd), rand(n_embd)
    sd[p + "transformer.ln_f.weight"], sd[p + "transformer.ln_f.bias"] = torch.ones(n_embd), torch.zeros(n_embd)
    sd[p + "lm_head.weight"] = wte  # tied: stored once
    model_args = dict(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=BLOCK, bias=True, vocab_size=VOCAB, dropout=0.0
    )
    tmp = path.with_suffix(".partial")
    torch.save(
        {
            "model": sd,
            "optimizer": {},
            "model_args": model_args,
            "iter_num": 0,
            "best_val_loss": torch.tensor(9.0),
            "config": {"bench": True},
        },
        tmp,
    )
    os.replace(tmp, path)


def build_llama_checkpoint(path: Path, size: str) -> None:
    """A Llama-shaped checkpoint as llama2.c's ``train.py`` saves it (``output`` tied to ``tok_embeddings``)."""
    import torch

    n_layers, dim, n_heads, n_kv_heads, hidden, vocab = LLAMA_SIZES[size]
    head_dim = dim // n_heads
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.empty(shape).normal_(0.0, 0.02, generator=gen)

    sd: dict[str, torch.Tensor] = {}
    embed = rand(vocab, dim)
    sd["tok_embeddings.weight"] = embed
    for i in range(n_layers):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = rand(n_heads * head_dim, dim)
        sd[p + "attention.wk.weight"] = rand(n_kv_heads * head_dim, dim)
        sd[p + "attention.wv.weight"] = rand(n_kv_heads * head_dim, dim)
        sd[p + "attention.wo.weight"] = rand(dim, n_heads * head_dim)
        sd[p + "feed_forward.w1.weight"] = rand(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = rand(dim, hidden)
        sd[p + "feed_forward.w3.weight"] = rand(hidden, dim)
        sd[p + "attention_norm.weight"], sd[p + "ffn_norm.weight"] = torch.ones(dim), torch.ones(dim)
    sd["norm.weight"] = torch.ones(dim)
    sd["output.weight"] = embed  # tied: stored once
    model_args = dict(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=vocab,
        hidden_dim=hidden,
        multiple_of=256,
        max_seq_len=2048,
        dropout=0.0,
    )
    tmp = path.with_suffix(".partial")
    torch.save({"model": sd, "optimizer": {}, "model_args": model_args, "iter_num": 0, "config": {}}, tmp)
    os.replace(tmp, path)


def prepare_memory(state: str, workdir: Path, size: int) -> None:
    """Put the machine's free memory in the same state before every run, whatever ran before.

    On a virtual machine whose free memory goes back to the host (virtio-balloon free page reporting, which this
    project's machines have), memory the guest freed more than ~2 s ago costs a host page fault on its next use:
    writing 1.5 GB into fresh page-cache pages then takes 3-4 s instead of 0.4 s. Which state a run meets would
    otherwise depend on the method before it (one that wrote through the page cache and was deleted leaves
    recently freed, "hot" pages behind). ``cold``: wait 10 s, so every freed page has gone back to the host (the
    steady state of a machine that was not just writing gigabytes). ``hot``: write and delete a scratch file of
    half the checkpoint's size just before the run (what a run right after another big write meets).
    """
    if state == "cold":
        time.sleep(10)
    elif state == "hot":
        scratch = workdir / "scratch.bin"
        block = b"\1" * (64 << 20)
        with open(scratch, "wb") as fh:
            for _ in range(max(1, size // 2 // len(block) + 1)):
                fh.write(block)
        scratch.unlink()


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


# --- the methods (each runs in its own child process) ------------------------------------------------------------


def tensor_bytes(tensor):  # type: ignore[no-untyped-def]
    """A zero-copy byte view of a contiguous CPU tensor (the benchmark's own: no hfexport internals)."""
    import torch

    if tensor.numel() == 0:
        return memoryview(b"")
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B")


def run_bound(ckpt: Path, out: Path) -> None:
    import torch

    obj = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    seen: set[int] = set()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "weights.bin", "wb") as fh:
        for tensor in obj["model"].values():
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen:  # the tied lm_head
                continue
            seen.add(ptr)
            fh.write(tensor_bytes(tensor.to(torch.bfloat16)))
        fh.flush()
        os.fsync(fh.fileno())


def run_hfexport(ckpt: Path, out: Path) -> None:
    from hfexport import convert_checkpoint

    convert_checkpoint(ckpt, out, dtype="bfloat16", progress=False)


def run_hfexport_buffered(ckpt: Path, out: Path) -> None:
    os.environ["HFEXPORT_DIRECT_IO"] = "0"  # the override, understood by old and new trees alike
    run_hfexport(ckpt, out)


def run_hfexport_direct(ckpt: Path, out: Path) -> None:
    os.environ["HFEXPORT_DIRECT_IO"] = "1"
    run_hfexport(ckpt, out)


def run_hfexport_keep_pages(ckpt: Path, out: Path) -> None:
    import hfexport.convert

    class KeepPages:  # what MappedCheckpoint is where madvise does not exist: nothing is released
        released = 0

        def __init__(self, path: object) -> None:
            pass

        def __bool__(self) -> bool:
            return False

    hfexport.convert.MappedCheckpoint = KeepPages  # type: ignore[assignment, misc]
    run_hfexport(ckpt, out)


def run_hfexport_zlib_crc(ckpt: Path, out: Path) -> None:
    import zlib

    import hfexport._util.checksum

    hfexport._util.checksum.crc32 = zlib.crc32  # what the CRC-32s cost without ISA-L (the isal package)
    run_hfexport(ckpt, out)


def run_hfexport_no_cache(ckpt: Path, out: Path) -> None:
    os.environ["HFEXPORT_CACHE"] = ""  # GPT-2's tokenizer built in this process, as on a first conversion
    run_hfexport(ckpt, out)


def run_classic(ckpt: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    if "tok_embeddings.weight" in obj["model"]:
        return _classic_llama(obj, out)
    sd = {k.removeprefix("_orig_mod."): v for k, v in obj["model"].items()}
    for k in list(sd):
        if k.endswith(TRANSPOSED):
            sd[k] = sd[k].t()
    sd["lm_head.weight"] = sd["lm_head.weight"].clone()
    sd = {k: v.contiguous().to(torch.bfloat16) for k, v in sd.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    with open(out / "model.safetensors", "rb") as fh:
        os.fsync(fh.fileno())


def _classic_llama(obj: dict, out: Path) -> None:
    """transformers' convert_llama_weights_to_hf.py, in short: rename, permute wq/wk, cast, save_file."""
    import torch
    from safetensors.torch import save_file

    sd, args = obj["model"], obj["model_args"]
    n_heads, n_kv, dim = args["n_heads"], args["n_kv_heads"], args["dim"]
    names = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w3": "mlp.up_proj",
        "feed_forward.w2": "mlp.down_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }

    def permute(w: torch.Tensor, n: int) -> torch.Tensor:
        return w.view(n, w.shape[0] // n // 2, 2, dim).transpose(1, 2).reshape(w.shape[0], dim)

    hf = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(args["n_layers"]):
        for src, dst in names.items():
            w = sd[f"layers.{i}.{src}.weight"]
            w = permute(w, n_heads) if src == "attention.wq" else permute(w, n_kv) if src == "attention.wk" else w
            hf[f"model.layers.{i}.{dst}.weight"] = w
    hf = {k: v.contiguous().to(torch.bfloat16) for k, v in hf.items()}  # output is tied: not written
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(out / "model.safetensors"), metadata={"format": "pt"})
    with open(out / "model.safetensors", "rb") as fh:
        os.fsync(fh.fileno())


def run_phases(ckpt: Path, out: Path) -> None:
    """hfexport's work, one phase at a time over the whole model (no overlap), to show where time goes."""

    import torch

    from hfexport._util.checksum import crc32
    from hfexport.convert import _all_finite, plan_conversion
    from hfexport.families import transpose_into
    from hfexport.sources import load_checkpoint

    clock: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        value = fn()
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - start
        return value

    ckpt_obj = timed("load (mmap) + strip prefixes", lambda: load_checkpoint(ckpt))
    plan = timed("plan", lambda: plan_conversion(ckpt_obj.state_dict, ckpt_obj.facts))
    out.mkdir(parents=True, exist_ok=True)
    crc = 0
    with open(out / "model.bin", "wb") as fh:
        for tp in plan.tensors:
            if tp.source is not None and not tp.transpose:
                tensor = timed("cast (not transposed)", lambda tp=tp: tp.materialize(torch.bfloat16))
            elif tp.source is not None:  # the four Conv1D weights: cast and transpose in one banded pass
                tensor = torch.empty(tp.shape, dtype=torch.bfloat16)
                timed("cast + transpose (4 Conv1D weights)", lambda tp=tp, t=tensor: transpose_into(t, tp.source))
            else:
                tensor = tp.materialize(torch.bfloat16)
            timed("NaN/inf check (sum)", lambda t=tensor: _all_finite(t))
            data = tensor_bytes(tensor)
            timed("write to page cache", lambda d=data: fh.write(d))
            crc = timed("CRC-32 (at write)", lambda d=data, c=crc: crc32(d, c))
            del data, tensor
        fh.flush()
        timed("fsync", lambda: os.fsync(fh.fileno()))
    with open(out / "model.bin", "rb", buffering=0) as fh:
        buffer = memoryview(bytearray(8 << 20))

        def reread() -> None:
            c = 0
            while n := fh.readinto(buffer):
                c = crc32(buffer[:n], c)

        timed("read back + CRC-32 (what hfexport verify does)", reread)
    total = sum(clock.values())
    for name, seconds in clock.items():
        print(f"  {name:40s} {seconds:7.2f}s  {seconds / total:6.1%}", file=sys.stderr)
    print(f"  {'sum of phases (serial)':40s} {total:7.2f}s", file=sys.stderr)


RUNNERS = {
    "bound": run_bound,
    "hfexport": run_hfexport,
    "hfexport_buffered": run_hfexport_buffered,
    "hfexport_direct": run_hfexport_direct,
    "hfexport_keep_pages": run_hfexport_keep_pages,
    "hfexport_zlib_crc": run_hfexport_zlib_crc,
    "hfexport_no_cache": run_hfexport_no_cache,
    "hfexport_src": run_hfexport,  # from --compare-src's tree (see spawn)
    "classic": run_classic,
    "phases": run_phases,
}


def child(method: str, ckpt: Path, out: Path, profile: bool) -> None:
    import torch  # noqa: F401  (imported before the clock starts, for every method alike)

    src = os.environ.get("HFEXPORT_BENCH_SRC")
    if src:  # time another source tree's hfexport (e.g. an older commit: git archive REV hfexport | tar -x -C DIR)
        import importlib.util

        init = Path(src) / "hfexport" / "__init__.py"
        spec = importlib.util.spec_from_file_location("hfexport", init, submodule_search_locations=[str(init.parent)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["hfexport"] = module
        spec.loader.exec_module(module)
    import hfexport  # noqa: F401

    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.runcall(RUNNERS[method], ckpt, out)
        seconds = time.perf_counter() - start
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(18)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        RUNNERS[method](ckpt, out)
        seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = 0.0 if profile else (usage.ru_utime + usage.ru_stime) - (before.ru_utime + before.ru_stime)
    print(json.dumps({"method": method, "seconds": seconds, "cpu": cpu, "peak_rss": peak_rss_bytes(usage)}))


def peak_rss_bytes(usage: resource.struct_rusage) -> int:
    """This process's own peak resident memory.

    ``ru_maxrss`` is not: on Linux it keeps the high-water mark of the process it was forked from (``exec`` carries
    it over), so a child of a parent that built or read the checkpoint reported the parent's few GB.
    ``VmHWM`` in ``/proc/self/status`` belongs to this process's memory alone.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return usage.ru_maxrss * 1024  # KiB on Linux; a bound from above elsewhere


def spawn(method: str, ckpt: Path, out: Path, profile: bool = False, src: Path | None = None) -> dict[str, float]:
    """Run ``method`` in a child; ``hfexport_src`` is ``hfexport`` with the package loaded from ``src``."""
    env = dict(os.environ)
    if method == "hfexport_src":
        assert src is not None
        env["HFEXPORT_BENCH_SRC"] = str(src)
    cmd = [sys.executable, __file__, "--child", method, "--ckpt", str(ckpt), "--out", str(out)]
    if profile:
        cmd.append("--profile")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    if profile or method == "phases":
        print(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the parent --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=list(DEFAULT_SIZE), default="gpt2", help="model family (default: gpt2)")
    parser.add_argument(
        "--size",
        choices=sorted(set(SIZES) | set(LLAMA_SIZES)),
        default=None,
        help="model shape (default: 774M, ~3.1 GB, for gpt2; 1B, ~4.9 GB, for llama)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; every round runs each method once")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods to run (default: {','.join(METHODS)}; also: {','.join(EXTRA_METHODS)}); "
        "bound and hfexport are always run",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoint and outputs go")
    parser.add_argument(
        "--memory",
        choices=["both", "cold", "hot", "as-is"],
        default="both",
        help="free memory before each run: cold (10 s idle), hot (just freed), both (every round in each state; "
        "default), as-is (no preparation)",
    )
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the checkpoint in --workdir")
    parser.add_argument(
        "--compare-src",
        type=Path,
        default=None,
        help="also run method hfexport_src: hfexport loaded from this source tree (a directory holding hfexport/, "
        "e.g. from `git archive main hfexport | tar -x -C DIR`), in the same rounds as the others",
    )
    parser.add_argument("--profile", action="store_true", help="one cProfile'd run of hfexport (main thread)")
    parser.add_argument(
        "--phases", action="store_true", help="hfexport's work phase by phase, serially, with the time of each"
    )
    parser.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.ckpt, args.out, args.profile)
        return

    args.size = args.size or DEFAULT_SIZE[args.arch]
    shapes = LLAMA_SIZES if args.arch == "llama" else SIZES
    if args.size not in shapes:
        raise SystemExit(f"--size {args.size} is not a {args.arch} shape; choose from {list(shapes)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hfexport-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / f"{args.arch}-{args.size}-fp32.pt"
    try:
        if not ckpt.is_file():
            print(f"building {ckpt} ...", flush=True)
            start = time.perf_counter()
            (build_llama_checkpoint if args.arch == "llama" else build_checkpoint)(ckpt, args.size)
            print(f"  built in {time.perf_counter() - start:.1f}s", flush=True)
        size = ckpt.stat().st_size
        n_layer, n_embd = shapes[args.size][:2]
        print(f"checkpoint: {args.arch} {args.size} (layers {n_layer}, width {n_embd}), {size / 1e9:.2f} GB float32")
        print("page cache: warm (the checkpoint is read once before every round; no cache drop)")
        print("durability: every method fsyncs its output (hfexport's convention; the bound pays for it too)")
        print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}\n")

        if args.phases:
            warm(ckpt)
            out = workdir / "out-phases"
            shutil.rmtree(out, ignore_errors=True)
            print("hfexport's phases, run one after the other (no overlap), bf16:")
            spawn("phases", ckpt, out)
            shutil.rmtree(out, ignore_errors=True)
            return
        if args.profile:
            warm(ckpt)
            out = workdir / "out-profile"
            shutil.rmtree(out, ignore_errors=True)
            spawn("hfexport", ckpt, out, profile=True)
            shutil.rmtree(out, ignore_errors=True)
            return

        chosen = ["bound", "hfexport", *args.methods.split(",")]
        if args.compare_src is not None:
            if not (args.compare_src / "hfexport" / "__init__.py").is_file():
                raise SystemExit(f"--compare-src {args.compare_src}: no hfexport/__init__.py there")
            chosen.append("hfexport_src")
        methods = tuple(dict.fromkeys(chosen))
        unknown = [m for m in methods if m not in (*METHODS, *EXTRA_METHODS, "hfexport_src")]
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; choose from {METHODS + EXTRA_METHODS}")
        states = ("cold", "hot") if args.memory == "both" else (args.memory,)
        print(f"free memory before each run: {', '.join(states)} (see --memory)\n")
        results: dict[str, dict[str, list[dict[str, float]]]] = {st: {m: [] for m in methods} for st in states}
        for r in range(args.repeats):
            order = methods if r % 2 == 0 else methods[::-1]  # alternate, so no method always goes first
            for state in states:
                for method in order:
                    warm(ckpt)
                    out = workdir / f"out-{method}"
                    shutil.rmtree(out, ignore_errors=True)
                    prepare_memory(state, workdir, size)
                    res = spawn(method, ckpt, out, src=args.compare_src)
                    shutil.rmtree(out, ignore_errors=True)
                    results[state][method].append(res)
                    print(
                        f"round {r + 1} {state:4s} {method:19s} {res['seconds']:7.2f}s  cpu {res['cpu']:7.2f}s  "
                        f"peak RSS {res['peak_rss'] / 1e9:6.2f} GB",
                        flush=True,
                    )
        for state in states:
            print(f"\n--- free memory {state} ---")
            report(results[state], size)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not args.keep:
            ckpt.unlink(missing_ok=True)


def report(results: dict[str, list[dict[str, float]]], size: int) -> None:
    if not results["bound"]:
        return
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items()}
    cpu = {m: statistics.median(r["cpu"] for r in rs) for m, rs in results.items()}
    rss = {m: max(r["peak_rss"] for r in rs) for m, rs in results.items()}
    # The ratio of each round (methods run back to back) is steadier than the ratio of medians on a shared machine.
    per_round = {
        m: statistics.median(r["seconds"] / b["seconds"] for r, b in zip(rs, results["bound"], strict=True))
        for m, rs in results.items()
    }
    print(
        f"\n{'method':19s} {'median s':>9s} {'vs bound':>9s} {'per round':>10s} {'cpu s':>8s} {'vs bound':>9s} "
        f"{'peak RSS GB':>12s} {'RSS/ckpt':>9s}"
    )
    for m in results:
        print(
            f"{m:19s} {med[m]:9.2f} {med[m] / med['bound']:8.2f}x {per_round[m]:9.2f}x {cpu[m]:8.2f} "
            f"{cpu[m] / cpu['bound']:8.2f}x {rss[m] / 1e9:12.2f} {rss[m] / size:8.2f}x"
        )
    print("(per round: the median over rounds of the method's time divided by the bound's time in the same round)")
    print()
    for m in ("hfexport", "hfexport_src"):
        if m not in results:
            continue
        t_ratio = med[m] / med["bound"]
        r_ratio = rss[m] / size
        print(f"goal time  {m}/bound <= {GOAL_TIME:.2f}x: {t_ratio:.3f}x  {'PASS' if t_ratio <= GOAL_TIME else 'FAIL'}")
        print(f"goal RSS   {m}/ckpt  <= {GOAL_RSS:.2f}x: {r_ratio:.3f}x  {'PASS' if r_ratio <= GOAL_RSS else 'FAIL'}")


if __name__ == "__main__":
    main()
