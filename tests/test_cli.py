"""The ``hfexport`` command: in-process through ``main`` and as a real ``python -m hfexport`` subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from nanogpt import make_gpt
from transformers import AutoModelForCausalLM

from hfexport import CheckpointError, convert_checkpoint
from hfexport.cli import main
from hfexport.io.versions import set_latest


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
    assert main(["verify", str(tmp_path / "nothing")]) == 2  # bad input, not an unsound directory
    assert "is not a directory" in capsys.readouterr().err


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


def test_argument_errors_are_one_line_with_a_help_hint(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["convert", "x.pt"],
        ["convert", "x.pt", "--output_dir", "o", "--dtype", "int8"],
        ["convert", "x.pt", "--output_dir", "o", "--n_head", "0"],
        ["convert", "x.pt", "--output_dir", "o", "--n_head", "four"],
        ["frobnicate"],
        [],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        assert err.startswith("error: ") and "--help" in err, err


# --- what --force may replace: never the user's files -------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


def _save_ckpt(path: Path, **edits: object) -> Path:
    model = make_gpt(0)
    args = {**model.model_args(), **edits}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_args": args}, path)
    return path


def test_force_never_replaces_the_directory_holding_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _save_ckpt(tmp_path / "t1" / "ckpt.pt")
    (tmp_path / "t1" / "notes.txt").write_text("days of work")
    before = _tree(tmp_path)
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "t1"), "--force"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == err.splitlines() and len(err.splitlines()) == 1, err
    assert "ckpt.pt" in err and "being read" in err
    assert _tree(tmp_path) == before


def test_force_never_replaces_the_working_directory_or_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _save_ckpt(tmp_path / "elsewhere" / "ckpt.pt")
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text("print('mine')")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    before = _tree(tmp_path)
    for output_dir, words in (("", "empty string"), (".", "working directory"), ("~", "home directory")):
        assert main(["convert", str(ckpt), "--output_dir", output_dir, "--force", "--no_progress"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and words in err, err
    assert _tree(tmp_path) == before


def test_force_replaces_an_earlier_export_but_not_a_user_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _save_ckpt(tmp_path / "ckpt.pt")
    out = tmp_path / "hf"
    assert main(["convert", str(ckpt), "--output_dir", str(out), "--quiet", "--no_progress"]) == 0
    assert main(["convert", str(ckpt), "--output_dir", str(out), "--force", "--quiet", "--no_progress"]) == 0
    (out / "my_eval.json").write_text("{}")
    before = _tree(tmp_path)
    assert main(["convert", str(ckpt), "--output_dir", str(out), "--force", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "my_eval.json" in err and "hfexport wrote" in err, err
    assert _tree(tmp_path) == before


# --- every expected failure is one line, and leaves nothing -------------------------------------------------------


def _n_head(value: object) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return ["convert", str(_save_ckpt(tmp / "c.pt", n_head=value)), "--output_dir", str(tmp / "out" / "hf")]

    return make


def _shard_size(size: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        ckpt = _save_ckpt(tmp / "c.pt")
        return ["convert", str(ckpt), "--output_dir", str(tmp / "out" / "hf"), "--max_shard_size", size]

    return make


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "pipe.pt")
    return ["convert", str(tmp / "pipe.pt"), "--output_dir", str(tmp / "out" / "hf")]


def _dev_zero(tmp: Path) -> list[str]:
    return ["convert", "/dev/zero", "--output_dir", str(tmp / "out" / "hf")]


def _one_dim_wte(tmp: Path) -> list[str]:
    model = make_gpt(0)
    state = model.state_dict()
    state["transformer.wte.weight"] = state["transformer.wte.weight"][:, 0].clone()
    torch.save({"model": state, "model_args": model.model_args()}, tmp / "c.pt")
    return ["convert", str(tmp / "c.pt"), "--output_dir", str(tmp / "out" / "hf")]


def _under_a_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["convert", str(_save_ckpt(tmp / "c.pt")), "--output_dir", str(tmp / "afile" / "sub" / "hf")]


def _symlinked_output(tmp: Path) -> list[str]:
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    return ["convert", str(_save_ckpt(tmp / "c.pt")), "--output_dir", str(tmp / "link")]


def _non_utf8_output(tmp: Path) -> list[str]:
    name = os.fsdecode(bytes(tmp / "out") + b"/\xff\xfe")
    return ["convert", str(_save_ckpt(tmp / "c.pt")), "--output_dir", name]


def _nan_deep_output(tmp: Path) -> list[str]:
    model = make_gpt(0)
    state = model.state_dict()
    state["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")
    torch.save({"model": state, "model_args": model.model_args()}, tmp / "c.pt")
    return ["convert", str(tmp / "c.pt"), "--output_dir", str(tmp / "new" / "deeper" / "hf")]


ONE_LINE = {
    "n_head_0": (_n_head(0), "n_head=0"),
    "n_head_str": (_n_head("4"), "n_head='4' (str) is not a positive integer"),
    "n_head_float": (_n_head(4.0), "n_head=4.0 (float)"),
    "n_head_negative": (_n_head(-4), "n_head=-4"),
    "shard_inf": (_shard_size("inf"), "not a finite number"),
    "shard_1e400": (_shard_size("1e400"), "not a finite number"),
    "shard_half_byte": (_shard_size("0.5"), "at least 1 byte"),
    "fifo": (_fifo, "is a FIFO"),
    "dev_zero": (_dev_zero, "is a character device"),
    "one_dim_wte": (_one_dim_wte, "transformer.wte.weight has shape (96,), expected a matrix"),
    "under_a_file": (_under_a_file, "is a file, not a directory"),
    "symlinked_output": (_symlinked_output, "is a symlink"),
    "non_utf8_output": (_non_utf8_output, "not valid UTF-8"),
    "nan_in_new_parents": (_nan_deep_output, "NaN"),
}


@pytest.mark.parametrize("case", list(ONE_LINE))
def test_expected_failures_are_one_line_and_leave_nothing(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, words = ONE_LINE[case]
    argv = make(tmp_path)
    before = _tree(tmp_path)
    rc = main([*argv, "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert words in err, err
    assert "unexpected" not in err
    assert _tree(tmp_path) == before  # nothing written, no parent directory left behind


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)


@pytest.mark.parametrize(
    ("options", "words"), [("size=1m", "No space left on device"), ("ro", "Read-only file system")]
)
def test_environment_failures_exit_1_with_one_line(
    tmp_path: Path, options: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_gpt(0, vocab_size=4096, n_embd=64)  # ~2 MB of float32 weights: more than the 1 MB disk
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, tmp_path / "c.pt")
    with _tmpfs(tmp_path / "disk", options) as disk:
        out = disk / "new" / "hf"
        rc = main(["convert", str(tmp_path / "c.pt"), "--output_dir", str(out), "--dtype", "float32", "--no_progress"])
        err = capsys.readouterr().err
        assert rc == 1, err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
        assert "unexpected" not in err and "--output_dir" in err
        assert list(disk.iterdir()) == []  # no partial export, no parent left


def test_verify_reports_malformed_files_with_exit_1(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed JSON and a manifest naming a file outside DIR: problems (exit 1), not an "unexpected" crash."""
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    (out / "config.json").write_text("[]")
    manifest = json.loads((out / "hfexport.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"size": 1, "crc32": "00000000"}
    (out / "hfexport.json").write_text(json.dumps(manifest))
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "error: config.json is a JSON list, not an object" in err
    assert any(line.startswith("error: '../../etc/passwd' (listed in hfexport.json) is not a plain") for line in err)
    assert all(line.startswith("error: ") and "unexpected" not in line for line in err), err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="direct I/O: Linux")
def test_convert_io_option_reaches_the_writer(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--io picks how the weights are written (auto by default); HFEXPORT_DIRECT_IO overrides it; bad values exit 2."""
    from hfexport.io import chunkio, directio

    made: list[bool] = []
    real_init = directio.DirectWriter.__init__

    def spy(self: directio.DirectWriter, *args: object, **kwargs: object) -> None:
        made.append(True)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(directio.DirectWriter, "__init__", spy)
    monkeypatch.delenv("HFEXPORT_DIRECT_IO", raising=False)
    seen = {}
    runs = [("default", []), ("buffered", ["--io", "buffered"]), ("direct", ["--io", "direct"]), ("large", [])]
    for name, extra in runs:
        made.clear()
        if name == "large":  # the same checkpoint, once the threshold lies below its size
            monkeypatch.setattr(chunkio, "DIRECT_MIN_BYTES", 0)
        assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / name), "--quiet", *extra]) == 0
        seen[name] = list(made)
    # default: auto, i.e. the page cache for this small file, direct I/O for a large one
    assert seen == {"default": [], "buffered": [], "direct": [True], "large": [True]}
    assert (tmp_path / "direct" / "model.safetensors").read_bytes() == (
        tmp_path / "buffered" / "model.safetensors"
    ).read_bytes()

    monkeypatch.setenv("HFEXPORT_DIRECT_IO", "0")
    made.clear()
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "env"), "--quiet", "--io", "direct"]) == 0
    assert made == []
    monkeypatch.setenv("HFEXPORT_DIRECT_IO", "maybe")
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "bad_env")]) == 2
    assert "HFEXPORT_DIRECT_IO='maybe'" in error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "bad_env").exists()
    with pytest.raises(SystemExit) as info:
        main(["convert", str(ckpt), "--output_dir", str(tmp_path / "bad"), "--io", "fast"])
    assert info.value.code == 2 and "--io" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["a" * 256, "é" * 128, "x" * 400], ids=["256-ascii", "256-bytes-utf8", "400-ascii"])
def test_an_output_dir_name_over_255_bytes_is_one_line_and_nothing_is_written(
    tmp_path: Path, ckpt: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exports" / name
    (tmp_path / "exports").mkdir()
    rc = main(["convert", str(ckpt), "--output_dir", str(out), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"is {len(name.encode())} bytes long; file systems take names of at most 255 bytes" in err
    assert "Choose a shorter --output_dir" in err and "unexpected" not in err
    assert list((tmp_path / "exports").iterdir()) == []  # nothing written, not even a temporary
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "exports" / ("a" * 255)), "-q"]) == 0


def test_cli_and_python_api_errors_name_the_output_dir_as_each_caller_spells_it(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("a file")
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "taken"), "--no_progress"]) == 2
    assert "Choose another --output_dir." in capsys.readouterr().err
    with pytest.raises(FileExistsError) as info:
        convert_checkpoint(ckpt, tmp_path / "taken")
    assert "Choose another output_dir." in str(info.value) and "--output_dir" not in str(info.value)


def test_a_model_name_with_a_newline_is_refused_by_the_cli(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "--model_name", "mine\n# injected"])
    assert info.value.code == 2 and not (tmp_path / "hf").exists()
    assert "--model_name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="model_name='mine\\\\n# injected': expected one line of printable text"):
        convert_checkpoint(ckpt, tmp_path / "hf", model_name="mine\n# injected")


@pytest.mark.parametrize("value", ["inf", "nan", "0", "1e9"])
def test_push_timeout_must_be_finite_and_bounded(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["push", str(tmp_path), "--repo_id", "me/run", "--timeout_s", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--timeout_s" in err and "expected a finite number > 0 and <= 86400" in err, err
