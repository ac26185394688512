"""The end-to-end example (`examples/train_gpt2.py`) runs as a user would run it, in both training loops.

Each run trains a few steps on the shipped Hamlet corpus, exports twice, and prints a sample from `latest`;
the test then loads `latest` again with plain `transformers`, as any consumer of an export would. One more
run pushes to the session's local test Hub (conftest), never to the real one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import HubServer

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train_gpt2.py"


def run_example(*args: str, cwd: Path, offline: bool = True) -> subprocess.CompletedProcess[str]:
    # the environment conftest set up: HF_ENDPOINT is the local test Hub, HF_TOKEN a token it accepts
    env = dict(os.environ)
    # the example imports hfexport as an installed package would be; make the checkout importable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["OMP_NUM_THREADS"] = "1"  # tiny matmuls; one thread is faster when other tests share the cores
    if offline:
        env["HF_HUB_OFFLINE"] = "1"  # nothing is pushed or downloaded: make any attempt fail loudly
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=cwd,  # anything written by accident (lightning_logs/, hf_exports/) lands in tmp_path
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("loop", ["lightning", "plain"])
def test_example_trains_exports_and_generates(loop: str, tmp_path: Path) -> None:
    if loop == "lightning":
        pytest.importorskip("lightning")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exports"
    proc = run_example(
        "--loop", loop, "--max_steps", "4", "--export_every", "2", "--output_dir", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, f"the example failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "sample from" in proc.stdout
    for step in (2, 4):  # each version said as it was published, while training ran
        assert f"hfexport.training.exporter: Exported step {step} to {out / f'step_{step:06d}'}: " in proc.stderr, (
            proc.stderr
        )
    assert "verified; training stalled" in proc.stderr

    latest = out / "latest"
    assert (latest / "config.json").is_file()
    assert (out / "step_000004").is_dir()
    assert (out / "step_000002").is_dir()

    tokenizer = AutoTokenizer.from_pretrained(latest)
    model = AutoModelForCausalLM.from_pretrained(latest, dtype=torch.float32)
    assert model.config.model_type == "gpt2"
    assert model.config.vocab_size == len(tokenizer)

    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()

    generated = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape == (1, ids.shape[1] + 8)
    assert isinstance(tokenizer.decode(generated[0]), str)


def test_example_pushes_each_export_to_the_hub(hub_server: HubServer, tmp_path: Path) -> None:
    """`--push_to_hub REPO_ID` pushes every version (here to the local test Hub, never the real one)."""
    out = tmp_path / "exports"
    proc = run_example(
        "--loop", "plain", "--max_steps", "2", "--export_every", "1", "--output_dir", str(out),
        "--push_to_hub", "tester/hamlet-gpt2", cwd=tmp_path, offline=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"the example failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    repo = hub_server.repo("tester/hamlet-gpt2")
    head = repo.resolve("main")
    assert head is not None
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(head.files)
    assert {"step_000001", "step_000002"} <= set(repo.tags)  # one tagged commit per version
    assert (out / "latest" / "config.json").is_file()
