"""The atomic writer: streamed safetensors, shards, manifest, publish, stale temporaries, and a real SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import weakref
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from nanogpt import make_gpt
from safetensors import safe_open
from safetensors.torch import load_file

from hfexport import OutputExistsError, convert_checkpoint
from hfexport._util.liveness import start_time
from hfexport.errors import OutputPathError
from hfexport.io import directory as writer
from hfexport.io import publish
from hfexport.io.directory import (
    MANIFEST_NAME,
    MARKER_NAME,
    OutputTensor,
    check_output_path,
    clean_stale_temporaries,
    interrupt_outcome,
    make_temporary,
    parse_size,
    write_hf_directory,
)
from hfexport.io.safetensors import TensorRecord, read_header, write_safetensors
from hfexport.tokenizers.tokenizer import resolve_tokenizer

FILES = {"config.json": '{"model_type": "test"}\n', "README.md": "# test\n"}


def fill_from(value: torch.Tensor):  # type: ignore[no-untyped-def]
    """An ``OutputTensor.fill`` that copies rows of ``value``."""

    def fill(out: torch.Tensor, start: int, stop: int) -> None:
        out.copy_(value[start:stop] if value.dim() else value)

    return fill


def tensors_of(values: dict[str, torch.Tensor]) -> list[OutputTensor]:
    return [OutputTensor(k, v.dtype, tuple(v.shape), fill_from(v)) for k, v in values.items()]


def sample() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(8, 4, generator=gen),
        "b": torch.randn(16, generator=gen).to(torch.bfloat16),
        "c": torch.randn(3, 5, 7, generator=gen).half(),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("max_shard_size", ["5GB", 200])
def test_round_trip_with_safetensors(tmp_path: Path, max_shard_size: int | str) -> None:
    values = sample()
    result = write_hf_directory(
        tmp_path / "out", tensors_of(values), FILES, manifest={"step": 7}, max_shard_size=max_shard_size
    )
    out = tmp_path / "out"
    assert result.path == out
    assert result.tensor_count == len(values)
    assert result.tensor_bytes == sum(v.numel() * v.element_size() for v in values.values())
    loaded: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        loaded.update(load_file(str(shard)))
        with safe_open(str(shard), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
    assert set(loaded) == set(values)
    for name, value in values.items():
        assert loaded[name].dtype == value.dtype
        assert torch.equal(loaded[name], value), name
    sharded = max_shard_size == 200
    assert (out / "model.safetensors.index.json").exists() is sharded
    assert (out / "model.safetensors").exists() is not sharded
    manifest = json.loads((out / "hfexport.json").read_text())
    assert manifest["step"] == 7
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {"hfexport.json"}
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["crc32"] == result.crc32[name] == f"{zlib.crc32(data):08x}", name
    assert (out / "config.json").read_text() == FILES["config.json"]
    assert hidden(tmp_path) == []


def test_header_is_aligned_and_declares_offsets(tmp_path: Path) -> None:
    values = sample()
    write_hf_directory(tmp_path / "out", tensors_of(values), FILES)
    with open(tmp_path / "out" / "model.safetensors", "rb") as fh:
        header, start = read_header(fh)
    assert start % 8 == 0
    offset = 0
    for name, value in values.items():  # file order is the given order
        assert header[name]["data_offsets"] == [offset, offset + value.numel() * value.element_size()]
        offset = header[name]["data_offsets"][1]
    assert (tmp_path / "out" / "model.safetensors").stat().st_size == start + offset


def test_tensors_are_produced_lazily_and_released(tmp_path: Path) -> None:
    """Each tensor is produced just before it is written; when the writer asks for tensor i, every tensor before
    i-1 has been released (at most two are alive: one being written while the next is produced).

    Tensors hold no reference cycles, so reference counting frees them at once: no ``gc.collect`` needed.
    """
    produced: list[weakref.ref[torch.Tensor]] = []

    def make(i: int):  # type: ignore[no-untyped-def]
        def fill(out: torch.Tensor, start: int, stop: int) -> None:
            alive = [j for j, ref in enumerate(produced) if ref() is not None]
            assert alive == [], f"tensors {alive} still alive when t{i} is produced"
            tensor = torch.full((64,), float(i))
            produced.append(weakref.ref(tensor))
            out.copy_(tensor[start:stop])

        return fill

    tensors = [OutputTensor(f"t{i}", torch.float32, (64,), make(i)) for i in range(6)]
    write_hf_directory(tmp_path / "out", tensors, FILES)
    assert len(produced) == 6
    assert all(ref() is None for ref in produced)
    loaded = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert [float(loaded[f"t{i}"][0]) for i in range(6)] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_wrong_tensor_from_producer_is_refused_and_cleaned(tmp_path: Path) -> None:
    bad = [OutputTensor("x", torch.float32, (4,), lambda out, a, b: out.copy_(torch.zeros(5)))]
    with pytest.raises(RuntimeError, match="size of tensor a"):
        write_hf_directory(tmp_path / "out", bad, FILES)
    assert not (tmp_path / "out").exists()
    assert hidden(tmp_path) == []


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    def boom(out: torch.Tensor, start: int, stop: int) -> None:
        raise RuntimeError("disk on fire")

    tensors = [*tensors_of(sample()), OutputTensor("late", torch.float32, (2,), boom)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_hf_directory(tmp_path / "out", tensors, FILES, max_shard_size=100)
    assert list(tmp_path.iterdir()) == []


def test_duplicate_names_refused(tmp_path: Path) -> None:
    values = sample()
    with pytest.raises(ValueError, match="duplicate"):
        write_hf_directory(tmp_path / "out", tensors_of(values) + tensors_of({"a": values["a"]}), FILES)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_atomically_without_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_hf_directory(out, tensors_of({"a": torch.zeros(3)}), FILES, manifest={})
    with pytest.raises(OutputExistsError):
        write_hf_directory(out, tensors_of({"a": torch.ones(3)}), FILES)
    assert torch.equal(load_file(str(out / "model.safetensors"))["a"], torch.zeros(3))
    write_hf_directory(out, tensors_of({"b": torch.ones(3)}), FILES, force=True)
    assert set(load_file(str(out / "model.safetensors"))) == {"b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("content", ['{"a": 1', "not json", b"\xff\xfe"])
def test_a_json_file_that_is_not_json_is_refused_before_anything_is_written(tmp_path: Path, content: Any) -> None:
    with pytest.raises(ValueError, match=r"Cannot write 'config.json': it is not valid JSON"):
        write_hf_directory(tmp_path / "out", tensors_of({"a": torch.zeros(2)}), {**FILES, "config.json": content})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary, no parent, nothing


def test_tokenizer_file_cannot_clobber_model_files(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel(vocab={"a": 0, "b": 1}, unk_token="a")).save(str(tok / "tokenizer.json"))
    (tok / "config.json").write_text('{"model_type": "bert"}')  # a model config next to a tokenizer
    (tok / "model.safetensors").write_bytes(b"not ours")
    resolved = resolve_tokenizer(tok)
    assert resolved is not None
    write_hf_directory(tmp_path / "out", tensors_of({"a": torch.zeros(2)}), FILES, tokenizer_files=resolved.files)
    out = tmp_path / "out"
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab() == {"a": 0, "b": 1}
    assert (out / "config.json").read_text() == FILES["config.json"]
    assert set(load_file(str(out / "model.safetensors"))) == {"a"}
    with pytest.raises(ValueError, match=r"The tokenizer's files \['config.json'\] would replace the model's"):
        write_hf_directory(
            tmp_path / "out2", tensors_of({"a": torch.zeros(2)}), FILES, tokenizer_files={"config.json": b"{}"}
        )
    assert not (tmp_path / "out2").exists()
    assert hidden(tmp_path) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5KB", 1500), ("100", 100), (42, 42)],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1MB", 0, "0B", "inf", "1e400", "0.5", "nan", "-inf GB", True])
def test_parse_size_refuses(text: str | int) -> None:
    with pytest.raises(ValueError, match="Invalid size"):
        parse_size(text)


def test_write_safetensors_counts_and_crc(tmp_path: Path) -> None:
    """The file's CRC-32 is the one of the bytes on disk; the header places every tensor where its bytes are."""
    recs = [TensorRecord("a", torch.float32, (2,), 8), TensorRecord("b", torch.float32, (2,), 8)]
    with pytest.raises(ValueError, match="2 tensors announced, 1 given"):
        write_safetensors(tmp_path / "x.safetensors", recs, tensors_of({"a": torch.zeros(2)}))
    assert not (tmp_path / "x.safetensors").exists()
    result = write_safetensors(tmp_path / "y.safetensors", recs, tensors_of({"a": torch.zeros(2), "b": torch.ones(2)}))
    data = (tmp_path / "y.safetensors").read_bytes()
    assert result.size == len(data) and result.crc32 == zlib.crc32(data)
    header, start = read_header(open(tmp_path / "y.safetensors", "rb"))  # noqa: SIM115
    assert [header[r.name]["data_offsets"] for r in recs] == [[0, 8], [8, 16]] and len(data) == start + 16
    assert load_file(str(tmp_path / "y.safetensors"))["b"].tolist() == [1.0, 1.0]


def temporaries_of_a_dead_process(parent: Path, *names: str, tag: str = ".tmp-") -> list[Path]:
    """Real hfexport temporaries (``make_temporary``, marker included), made by a process that has exited."""
    code = (
        "import sys; from pathlib import Path; from hfexport.io.directory import make_temporary\n"
        "for name in sys.argv[3:]:\n"
        "    path = make_temporary(Path(sys.argv[1]), name, sys.argv[2])\n"
        "    (path / 'payload').mkdir(); (path / 'payload' / 'model.safetensors').write_bytes(b'partial')\n"
        "    print(path.name)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(parent), tag, *names], capture_output=True, text=True, check=True
    )
    return [parent / line for line in proc.stdout.splitlines()]


def forged(parent: Path, name: str, **changes: object) -> Path:
    """A temporary made by this process, its marker then edited (another host, PID, start time, ...)."""
    path = make_temporary(parent, name, ".tmp-")
    marker = json.loads((path / MARKER_NAME).read_text())
    marker.update(changes)
    (path / MARKER_NAME).write_text(json.dumps(marker))
    return path


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hfexport")
    stale, other = temporaries_of_a_dead_process(tmp_path, "out", "other")
    (old,) = temporaries_of_a_dead_process(tmp_path, "out", tag=".old-")
    mine = make_temporary(tmp_path, "out")  # this process is alive: maybe still writing it
    assert sorted(clean_stale_temporaries(tmp_path, "out")) == sorted([stale, old])
    assert hidden(tmp_path) == sorted([other.name, mine.name])
    assert clean_stale_temporaries(tmp_path) == [other]
    assert hidden(tmp_path) == [mine.name]


def test_cleanup_never_touches_what_hfexport_did_not_provably_create(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hfexport")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    foreign = {  # other programs' hidden directories, and a look-alike of ours without the marker
        ".data.old-2024": "a dataset backup",
        ".venv.tmp-build": "a virtual environment",
        f".step_000004.tmp-{pid}-deadbeef": "no marker: nothing proves hfexport made it",
        f".out.old-{pid}-0badf00d": "no marker either",
    }
    for name, text in foreign.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text(text)
    (tmp_path / ".notes.tmp-12-abcdef12").write_text("a file named like a temporary")
    parent = os.getppid()
    kept = [
        forged(tmp_path, "out", host="another-node"),  # shared storage: that PID means nothing here
        forged(tmp_path, "out", pid_namespace="pid:[1]"),  # another container on this host
        forged(tmp_path, "out", boot_id="0" * 36),  # another machine with this name, or before a reboot
        forged(tmp_path, "out", pid=parent, start_time=start_time(parent)),  # alive: the same process
    ]
    reused = forged(tmp_path, "out", pid=parent, start_time=(start_time(parent) or 0) + 12345)  # PID reused
    assert clean_stale_temporaries(tmp_path) == [reused]
    expected = sorted([*foreign, ".notes.tmp-12-abcdef12", *(p.name for p in kept)])
    assert hidden(tmp_path) == expected
    for name, text in foreign.items():
        assert (tmp_path / name / "keep.txt").read_text() == text
    assert "Leaving" in caplog.text and "no hfexport marker" in caplog.text and "another host" in caplog.text


@pytest.mark.parametrize(
    "name", ["x" * 255, "\u20ac" * 85, "model-" + "\u00e9" * 124], ids=["ascii", "3-byte-chars", "2-byte-chars"]
)
def test_every_valid_output_name_works(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(os.fsencode(name)) <= 255
    seen: list[Path] = []
    real_verify = writer._verify

    def recording_verify(tmp: Path, *args: Any) -> None:  # sees where the write happens: <temporary>/payload
        seen.append(tmp.parent)
        real_verify(tmp, *args)

    monkeypatch.setattr(writer, "_verify", recording_verify)
    out = tmp_path / name
    write_hf_directory(out, tensors_of({"a": torch.ones(3)}), FILES)
    assert load_file(str(out / "model.safetensors"))["a"].tolist() == [1.0, 1.0, 1.0]
    assert hidden(tmp_path) == []
    (temporary,) = seen
    assert temporary.parent == tmp_path and len(os.fsencode(temporary.name)) <= 255
    assert temporary.name.startswith(".") and f".tmp-{os.getpid()}-" in temporary.name
    # a killed write of that name is recognised and removed later
    (stale,) = temporaries_of_a_dead_process(tmp_path, name)
    assert len(os.fsencode(stale.name)) <= 255
    assert json.loads((stale / MARKER_NAME).read_text())["target"] == name
    assert clean_stale_temporaries(tmp_path, name) == [stale]


@pytest.mark.parametrize("when", ["before", "after"])
def test_keyboard_interrupt_goes_through_and_says_whether_it_was_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    real_publish = writer.publish_directory

    def interrupted_publish(tmp: Path, target: Path, **kwargs: Any) -> None:  # Ctrl-C before / after the rename
        if when == "before":
            raise KeyboardInterrupt
        real_publish(tmp, target, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "publish_directory", interrupted_publish)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt) as info:
        write_hf_directory(out, tensors_of({"a": torch.ones(3)}), FILES)
    assert type(info.value) is KeyboardInterrupt
    assert hidden(tmp_path) == []
    if when == "before":
        assert not out.exists()
        assert interrupt_outcome(info.value) == "nothing was published"
    else:
        assert load_file(str(out / "model.safetensors"))["a"].tolist() == [1.0, 1.0, 1.0]
        assert interrupt_outcome(info.value) == f"{out} was published (complete) before the interrupt"
        assert "nothing" not in interrupt_outcome(info.value)


# --- what --force may replace, and a target that fills up while the export is written --------------------------


def an_export(path: Path, value: float = 0.0) -> Path:
    write_hf_directory(path, tensors_of({"a": torch.full((3,), value)}), FILES, manifest={"step": 1})
    return path


def _extra_file(out: Path) -> None:
    (out / "notes.txt").write_text("mine")


def _changed_file(out: Path) -> None:
    (out / "README.md").write_text("# my own model card, longer than the one written\n")


def _symlink(out: Path) -> None:
    (out / "link").symlink_to("/etc")


def _empty_subdir(out: Path) -> None:
    (out / "runs").mkdir()


def _nested_file(out: Path) -> None:
    (out / "runs").mkdir()
    (out / "runs" / "events.log").write_text("mine")


def _no_manifest(out: Path) -> None:
    (out / MANIFEST_NAME).unlink()


def _bad_manifest(out: Path) -> None:
    (out / MANIFEST_NAME).write_text('["not", "a", "manifest"]')


FOREIGN = {
    "extra_file": (_extra_file, "does not list (notes.txt)"),
    "changed_file": (_changed_file, "changed since hfexport wrote them (README.md)"),
    "symlink": (_symlink, "does not list (link)"),
    "empty_subdir": (_empty_subdir, "does not list (runs/)"),
    "nested_file": (_nested_file, "does not list (runs/events.log)"),
    "no_manifest": (_no_manifest, "no hfexport.json"),
    "bad_manifest": (_bad_manifest, "unreadable hfexport.json"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_force_replaces_only_what_hfexport_wrote(tmp_path: Path, case: str) -> None:
    spoil, words = FOREIGN[case]
    out = an_export(tmp_path / "out")
    spoil(out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="only replaces a directory that hfexport wrote") as info:
        write_hf_directory(out, tensors_of({"b": torch.ones(3)}), FILES, manifest={}, force=True)
    assert words in str(info.value)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert hidden(tmp_path) == []


def test_force_never_replaces_protected_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The working directory, its ancestors, home, a root and a directory holding the checkpoint: never, even empty
    or an earlier export."""
    work = an_export(tmp_path / "work")
    monkeypatch.chdir(work)
    home = an_export(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    holder = an_export(tmp_path / "holder")
    cases = {
        "": "empty string",
        ".": "is the working directory",
        str(work): "is the working directory",
        str(tmp_path): "an ancestor of the working directory",
        "~": "is the home directory",
        "/": "file-system root",
        str(holder): "which is being read",
    }
    for path, words in cases.items():
        with pytest.raises(OutputPathError, match=words):
            check_output_path(path, force=True, protected=[holder / "model.safetensors"])
    with pytest.raises(OutputPathError, match="which is being read"):
        write_hf_directory(holder, tensors_of({"b": torch.ones(3)}), FILES, force=True, protected=[holder / "x.pt"])
    assert (holder / MANIFEST_NAME).is_file()
    assert (work / MANIFEST_NAME).is_file() and (home / MANIFEST_NAME).is_file()


def test_unusable_output_paths_are_refused_before_writing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    cases = {
        tmp_path / "file" / "sub" / "out": "is a file, not a directory",
        tmp_path / "link": "is a symlink",
        Path(os.fsdecode(bytes(tmp_path) + b"/\xff\xfe")): "not valid UTF-8",
    }
    for path, words in cases.items():
        with pytest.raises(OutputPathError, match=words):
            write_hf_directory(path, tensors_of({"a": torch.zeros(2)}), FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link", "real"]
    assert list(real.iterdir()) == []


def _fill_before_publish(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Another program writes into the target once the export is written, just before it is renamed into place
    (right after the writer's last fsync of its temporary)."""
    real_fsync_tree = writer.fsync_tree

    def fsync_then_another_program(path: Path) -> None:
        real_fsync_tree(path)
        target.mkdir(exist_ok=True)
        (target / "user.txt").write_text("written meanwhile")

    monkeypatch.setattr(writer, "fsync_tree", fsync_then_another_program)


def _without_renameat2(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a system without renameat2 (macOS, old kernels, file systems without RENAME_NOREPLACE/EXCHANGE)."""
    monkeypatch.setattr(publish, "_renameat2", lambda a, b, flags: None)


@pytest.mark.parametrize("renameat2", [True, False])
@pytest.mark.parametrize("exists", [False, True])
def test_target_filled_during_the_write_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool, renameat2: bool
) -> None:
    if not renameat2:
        _without_renameat2(monkeypatch)
    out = tmp_path / "out" / "x"
    if exists:
        out.mkdir(parents=True)  # empty when the export starts: fine to use
    _fill_before_publish(monkeypatch, out)
    with pytest.raises(OutputExistsError, match="appeared or was filled while the export was written"):
        write_hf_directory(out, tensors_of({"a": torch.zeros(2)}), FILES, manifest={})
    assert sorted(p.name for p in out.iterdir()) == ["user.txt"]
    assert (out / "user.txt").read_text() == "written meanwhile"
    assert hidden(out.parent) == []


@pytest.mark.parametrize("renameat2", [True, False])
def test_forced_target_spoiled_during_the_write_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    if not renameat2:
        _without_renameat2(monkeypatch)
    out = an_export(tmp_path / "out", 5.0)
    _fill_before_publish(monkeypatch, out)
    with pytest.raises(OutputExistsError, match="only replaces a directory that hfexport wrote"):
        write_hf_directory(out, tensors_of({"a": torch.ones(2)}), FILES, manifest={}, force=True)
    assert (out / "user.txt").read_text() == "written meanwhile"
    assert torch.equal(load_file(str(out / "model.safetensors"))["a"], torch.full((3,), 5.0))
    assert hidden(tmp_path) == []


def test_forced_swap_is_undone_when_the_old_version_changed_at_the_last_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file lands in the old version between the publish-time check and the swap: the swap is undone."""
    out = an_export(tmp_path / "out", 5.0)
    real_exchange = publish._exchange
    calls = []

    def exchange_after_a_write(a: Path, b: Path) -> bool:
        if not calls:
            (out / "user.txt").write_text("written at the last moment")
        calls.append((a, b))
        return real_exchange(a, b)

    monkeypatch.setattr(publish, "_exchange", exchange_after_a_write)
    with pytest.raises(OutputExistsError, match=r"changed while the export was written.*user\.txt"):
        write_hf_directory(out, tensors_of({"a": torch.ones(2)}), FILES, manifest={}, force=True)
    assert len(calls) == 2  # swapped, then swapped back
    assert (out / "user.txt").read_text() == "written at the last moment"
    assert torch.equal(load_file(str(out / "model.safetensors"))["a"], torch.full((3,), 5.0))
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False])
def test_force_replaces_an_export_and_removes_only_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    if not renameat2:
        _without_renameat2(monkeypatch)
    out = an_export(tmp_path / "out", 5.0)
    write_hf_directory(out, tensors_of({"b": torch.ones(2)}), FILES, manifest={}, force=True)
    assert set(load_file(str(out / "model.safetensors"))) == {"b"}
    assert hidden(tmp_path) == []


def test_failed_write_removes_the_parents_it_created(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    out = tmp_path / "existing" / "new" / "deeper" / "out"
    values = {"a": torch.zeros(2)}
    with pytest.raises(ValueError, match="duplicate"):
        write_hf_directory(out, tensors_of(values) + tensors_of(values), FILES)
    assert list((tmp_path / "existing").iterdir()) == []  # "existing" was there before: kept


# --- a real kill in the middle of a conversion -----------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_conversion_leaves_nothing_visible(tmp_path: Path) -> None:
    model = make_gpt(0, n_embd=384, n_layer=6, n_head=6, block_size=64)  # ~43 MB in float32
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    del model
    exports = tmp_path / "exports"
    exports.mkdir()
    out = exports / "hf"
    cmd = [
        sys.executable,
        "-m",
        "hfexport",
        "convert",
        str(ckpt),
        "--output_dir",
        str(out),
        "--dtype",
        "float32",
        "--max_shard_size",
        "400KB",
        "--no_progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            temps = [p for p in exports.iterdir() if p.name.startswith(".hf.tmp-")]
            if temps and len(list(temps[0].glob("payload/*.safetensors"))) >= 3:
                break
            assert proc.poll() is None, "the conversion finished before it could be killed; make it bigger"
            time.sleep(0.005)
        else:
            pytest.fail("no temporary directory appeared")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in exports.iterdir() if not p.name.startswith(".")] == []
    (stale,) = [p for p in exports.iterdir() if p.name.startswith(".hf.tmp-")]
    assert list(stale.glob("payload/*.safetensors"))  # it really was mid-write
    assert json.loads((stale / MARKER_NAME).read_text())["pid"] == proc.pid

    result = convert_checkpoint(ckpt, out, dtype="bfloat16", max_shard_size="20MB")
    assert (result / "model.safetensors.index.json").is_file()
    assert sorted(p.name for p in exports.iterdir()) == ["hf"]  # the stale temporary is gone


@pytest.mark.parametrize("name", ["../escaped.json", "/tmp/absolute.json", "a/../../b.json", ""])
def test_small_file_names_never_lead_out_of_the_directory(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out" / "model"
    with pytest.raises(ValueError, match="name"):
        write_hf_directory(out, [], {name: "{}"})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []  # nothing written anywhere


def test_a_dead_writers_temporary_holding_a_replaced_export_with_user_files_is_kept(tmp_path: Path) -> None:
    (stale,) = temporaries_of_a_dead_process(tmp_path, "out")  # a --force swap interrupted by a kill
    payload = stale / "payload"
    (payload / "model.safetensors").unlink()
    (payload / "config.json").write_text("{}")
    manifest = {"files": {"config.json": {"size": 2, "crc32": "00000000"}}}
    (payload / MANIFEST_NAME).write_text(json.dumps(manifest))
    (payload / "notes.txt").write_text("the user's")  # appeared in the old version just before the swap
    assert clean_stale_temporaries(tmp_path) == []
    assert (payload / "notes.txt").read_text() == "the user's"
    (payload / "notes.txt").unlink()  # now it is only what hfexport wrote
    assert clean_stale_temporaries(tmp_path) == [stale]
    assert hidden(tmp_path) == []


def test_a_pointer_temporary_of_a_dead_writer_on_this_host_is_removed_and_nothing_else(tmp_path: Path) -> None:
    """A kill between creating ``latest``'s replacement link and renaming it leaves ``.latest.tmp-...``: removed at
    the next start when its name proves it is a dead hfexport writer's on this host; anything else is left."""
    from hfexport.io.directory import pointer_temporary

    root = tmp_path / "root"
    (root / "step_000001").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    mine = pointer_temporary(root, "latest").name
    assert mine.startswith(f".latest.tmp-{os.getpid()}-")
    where = mine.split("-")[3]  # .latest.tmp-PID-START-WHERE-TOKEN
    stale = root / f".latest.tmp-{dead}-0-{where}-0123abcd"
    stale.symlink_to("step_000001", target_is_directory=True)
    stale_text = root / f".latest.tmp-{dead}-0-{where}-4567abcd"
    stale_text.write_text("step_000001\n")  # the text fallback where symlinks are unavailable
    kept = {
        root / mine: "symlink",  # this process is alive
        root / f".latest.tmp-{dead}-0-00000000-89abcdef": "symlink",  # another host, boot or PID namespace
        root / f".latest.tmp-{dead}-0-{where}-cdef0123": "dir",  # not a pointer: never deleted as one
        root / f".latest.tmp-{dead}-0123abcd": "symlink",  # the old name, which proves nothing
    }
    for path, kind in kept.items():
        if kind == "dir":
            (path / "data").mkdir(parents=True)
        else:
            path.symlink_to("step_000001", target_is_directory=True)

    removed = clean_stale_temporaries(root)

    assert sorted(removed) == sorted([stale, stale_text])
    assert all(os.path.lexists(path) for path in kept)
    assert (root / "step_000001").is_dir()  # what the pointers pointed at is untouched
