"""The ``hfexport`` command: in-process through ``main`` and as a real ``python -m hfexport`` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nanogpt import make_gpt
from transformers import AutoModelForCausalLM

from hfexport import CheckpointError, convert_checkpoint
from hfexport.cli import main
from hfexport.versions import set_latest


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    model = make_gpt(21, vocab_size=65, bias=False)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args(), "iter_num": 300}, path)
    return path


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_convert_success(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hf"
    rc = main(
        [
            "convert",
            str(ckpt),
            "--output_dir",
            str(out),
            "--dtype",
            "float32",
            "--model_name",
            "tiny-shakespeare",
            "--untie_embeddings",
            "--no_progress",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert f"wrote {out}" in captured.out
    assert "from_pretrained" in captured.out
    assert error_lines(captured.err) == []
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is False
    assert "tiny-shakespeare" in (out / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(str(out))


def test_convert_options_reach_the_converter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_gpt(22, vocab_size=100, activation="gelu_new")
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    out = tmp_path / "hf"
    rc = main(
        [
            "convert",
            str(path),
            "--output-dir",
            str(out),
            "--n-head",
            "4",
            "--vocab-size",
            "90",
            "--activation",
            "gelu_new",
            "--max-shard-size",
            "30KB",
            "--quiet",
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out == ""  # --quiet
    config = json.loads((out / "config.json").read_text())
    assert (config["n_head"], config["vocab_size"], config["activation_function"], config["dtype"]) == (
        4,
        90,
        "gelu_new",
        "bfloat16",
    )
    assert (out / "model.safetensors.index.json").is_file()


def _empty(tmp: Path) -> list[str]:
    (tmp / "empty.pt").write_bytes(b"")
    return ["convert", str(tmp / "empty.pt"), "--output_dir", str(tmp / "hf")]


def _missing(tmp: Path) -> list[str]:
    return ["convert", str(tmp / "nope.pt"), "--output_dir", str(tmp / "hf")]


def _no_heads(tmp: Path) -> list[str]:
    torch.save(make_gpt(0).state_dict(), tmp / "w.pt")
    return ["convert", str(tmp / "w.pt"), "--output_dir", str(tmp / "hf")]


def _busy(tmp: Path) -> list[str]:
    torch.save({"model": make_gpt(0).state_dict(), "model_args": make_gpt(0).model_args()}, tmp / "c.pt")
    (tmp / "hf").mkdir()
    (tmp / "hf" / "keep.txt").write_text("mine")
    return ["convert", str(tmp / "c.pt"), "--output_dir", str(tmp / "hf")]


def _vocab(tmp: Path) -> list[str]:
    torch.save({"model": make_gpt(0).state_dict(), "model_args": make_gpt(0).model_args()}, tmp / "c.pt")
    return ["convert", str(tmp / "c.pt"), "--output_dir", str(tmp / "hf"), "--vocab_size", "50257"]


def _bad_tokenizer(tmp: Path) -> list[str]:
    torch.save({"model": make_gpt(0).state_dict(), "model_args": make_gpt(0).model_args()}, tmp / "c.pt")
    return ["convert", str(tmp / "c.pt"), "--output_dir", str(tmp / "hf"), "--tokenizer", str(tmp / "no_tok")]


BAD_INPUT = {
    "empty": (_empty, "empty"),
    "missing": (_missing, "not found"),
    "no_n_head": (_no_heads, "--n_head"),
    "busy_output": (_busy, "--force"),
    "vocab_too_big": (_vocab, "--vocab_size 50257"),
    "tokenizer_missing": (_bad_tokenizer, "Tokenizer path"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_error_line(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, words = BAD_INPUT[case]
    argv = make(tmp_path)
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    lines = error_lines(captured.err)
    assert len(lines) == 1, captured.err
    assert captured.err.rstrip("\n").splitlines()[-1] == lines[0]
    assert words in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    hf = tmp_path / "hf"
    assert not hf.exists() or sorted(p.name for p in hf.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf.")] == []


def test_debug_raises_with_traceback(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="empty"):
        main([*_empty(tmp_path), "--debug"])


def test_argument_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["convert", "x.pt"], ["convert", "x.pt", "--output_dir", "o", "--dtype", "int8"], ["frobnicate"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_verify_exit_codes(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok")
    assert main(["verify", str(out), "--checkpoint", str(ckpt)]) == 0
    assert "max |logit diff|" in capsys.readouterr().out
    with open(out / "model.safetensors", "rb+") as fh:
        fh.seek(-10, os.SEEK_END)
        fh.write(b"\xff" * 4)
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    assert "error: model.safetensors: CRC-32" in captured.err
    assert "ok" not in captured.out.split()
    assert main(["verify", str(tmp_path / "nothing")]) == 1


def test_list_export_root(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "exports"
    for step in (100, 2000):
        convert_checkpoint(ckpt, root / f"step_{step:06d}", dtype="float32")
    (root / ".step_003000.tmp-1-deadbeef").mkdir()  # an interrupted export is not a version
    set_latest(root, "step_002000")
    assert main(["list", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("step_000100") and "latest" not in lines[0]
    assert lines[1].startswith("step_002000") and lines[1].endswith("<- latest")
    assert main(["verify", str(root)]) == 0  # an export root: its latest is checked
    assert "step_002000" in capsys.readouterr().out

    (root / "empty_root").mkdir()
    assert main(["list", str(root / "empty_root")]) == 0
    assert capsys.readouterr().out.strip() == "no versions"
    assert main(["list", str(tmp_path / "missing")]) == 2
    assert error_lines(capsys.readouterr().err)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "hfexport", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_subprocess_convert_and_error(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "hf"
    done = _run("convert", str(ckpt), "--output_dir", str(out), "--dtype", "float32")
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    assert "Traceback" not in done.stderr
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.vocab_size == 65

    # A NaN is found after the checkpoint was read (and that progress logged): stderr still holds one line.
    model = make_gpt(23)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["transformer.h.0.attn.c_attn.weight"][1, 2] = float("nan")
    torch.save({"model": state, "model_args": model.model_args()}, tmp_path / "nan.pt")
    failed = _run("convert", str(tmp_path / "nan.pt"), "--output_dir", str(tmp_path / "hf2"))
    assert failed.returncode == 2
    lines = failed.stderr.splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("error: ") and "transformer.h.0.attn.c_attn.weight" in lines[0]
    assert "--allow_nonfinite" in lines[0]
    assert not (tmp_path / "hf2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf2")] == []
