"""Peak memory of ``hfexport convert DCP_DIR`` against the size of the checkpoint and a whole-model load.

Builds a GPT-2-shaped float32 nanoGPT (``lm_head`` tied to ``wte``) with an AdamW state for every weight (as a
training checkpoint holds: ``exp_avg``, ``exp_avg_sq``), saves it with ``torch.distributed.checkpoint.save``
(``{"model": ..., "optimizer": ...}``, one process), then runs each method in a fresh subprocess and reports its
peak resident memory (``VmHWM``) and that of the same interpreter after its imports, before it reads anything:

(a) ``hfexport``:   ``hfexport.convert_checkpoint(DCP_DIR, dtype="bfloat16")``, the CLI's call: each model tensor
                    read through DCP's reader when the writer needs it, the optimizer state never read.
(b) ``dcp_to_pt``:  ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``: torch's own way to get a
                    loadable file out of a DCP directory (what one would convert afterwards); it loads everything.

Usage::

    python benchmarks/bench_dcp.py                    # GPT-2 124M shape (~1.5 GB with the optimizer state)
    python benchmarks/bench_dcp.py --size tiny        # does it run? (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    "124M": dict(n_layer=12, n_embd=768, vocab=50304, block=1024),
    "tiny": dict(n_layer=2, n_embd=96, vocab=512, block=64),
}


def peak_rss() -> int:
    """This process's own peak resident memory (``VmHWM``; ``ru_maxrss`` may carry its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build(workdir: Path, size: str) -> Path:
    import torch
    import torch.distributed.checkpoint as dcp

    s = SIZES[size]
    d, g = s["n_embd"], torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    sd = {"transformer.wte.weight": rand(s["vocab"], d), "transformer.wpe.weight": rand(s["block"], d)}
    for i in range(s["n_layer"]):
        p = f"transformer.h.{i}."
        for name, shape in (
            ("ln_1.weight", (d,)),
            ("ln_1.bias", (d,)),
            ("attn.c_attn.weight", (3 * d, d)),
            ("attn.c_attn.bias", (3 * d,)),
            ("attn.c_proj.weight", (d, d)),
            ("attn.c_proj.bias", (d,)),
            ("ln_2.weight", (d,)),
            ("ln_2.bias", (d,)),
            ("mlp.c_fc.weight", (4 * d, d)),
            ("mlp.c_fc.bias", (4 * d,)),
            ("mlp.c_proj.weight", (d, 4 * d)),
            ("mlp.c_proj.bias", (d,)),
        ):
            sd[p + name] = rand(*shape)
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = rand(d), rand(d)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as nanoGPT
    optimizer = {
        "state": {k: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)} for k, v in sd.items()},
        "param_groups": [{"lr": 1e-3}],
    }
    ckpt = workdir / "dcp"
    dcp.save({"model": sd, "optimizer": optimizer}, checkpoint_id=str(ckpt), no_dist=True)
    return ckpt


def child(method: str, ckpt: Path, out: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch  # noqa: F401
    import torch.distributed.checkpoint.format_utils as fu

    import hfexport

    before = peak_rss()
    start = time.perf_counter()
    if method == "hfexport":
        hfexport.convert_checkpoint(ckpt, out, n_head=12, tokenizer=False, progress=False)
    else:
        fu.dcp_to_torch_save(ckpt, out / "whole.pt")
    print(
        json.dumps(
            {"method": method, "imports_rss": before, "peak_rss": peak_rss(), "seconds": time.perf_counter() - start}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="124M")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "CKPT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, ckpt, out = args.child
        child(method, Path(ckpt), Path(out))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-dcp-", dir=args.workdir))
    try:
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import bench_dcp, pathlib; bench_dcp.build(pathlib.Path({str(workdir)!r}), {args.size!r})",
            ],
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        ckpt = workdir / "dcp"
        total = sum(f.stat().st_size for f in ckpt.iterdir())
        print(f"DCP checkpoint: {total / 1e6:.0f} MB (model + AdamW state), {args.size} GPT-2 shape, float32")
        for method in ("hfexport", "dcp_to_pt"):
            out = workdir / f"out_{method}"
            if method == "dcp_to_pt":
                out.mkdir()
            done = subprocess.run(
                [sys.executable, __file__, "--child", method, str(ckpt), str(out)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            extra = r["peak_rss"] - r["imports_rss"]
            print(
                f"{method:10s} peak RSS {r['peak_rss'] / 1e6:7.0f} MB (after imports {r['imports_rss'] / 1e6:5.0f} MB; "
                f"extra {extra / 1e6:6.0f} MB = {extra / total:.2f}x the checkpoint) in {r['seconds']:.1f}s"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
