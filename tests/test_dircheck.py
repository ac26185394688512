"""check_directory: the one checker behind the writer's final verification (exact expectations) and `verify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hfexport import VerificationError
from hfexport.io.check import Expected, check_directory
from hfexport.io.directory import OutputTensor, write_hf_directory
from hfexport.io.safetensors import TensorRecord

FILES = {"config.json": b'{"model_type": "test"}\n', "README.md": b"# test\n"}
VALUES = {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5, dtype=torch.bfloat16)}


def _write(out: Path, **kwargs: object) -> Expected:
    tensors = [
        OutputTensor(k, v.dtype, tuple(v.shape), lambda out, a, b, v=v: out.copy_(v[a:b])) for k, v in VALUES.items()
    ]
    write_hf_directory(out, tensors, FILES, manifest={"step": 1}, **kwargs)  # type: ignore[arg-type]
    records = [TensorRecord(k, v.dtype, tuple(v.shape), v.nbytes, file="model.safetensors") for k, v in VALUES.items()]
    files = json.loads((out / "hfexport.json").read_text())["files"]
    return Expected(records, FILES, tuple(files))


def test_written_directory_meets_the_writers_expectations(tmp_path: Path) -> None:
    expected = _write(tmp_path / "out")
    check = check_directory(tmp_path / "out", expected)
    assert check.problems == []
    assert check.tensors == 2 and check.shapes == {"a": [3, 4], "b": [5]}
    assert check.files_checked == 0  # the writer's case: checksums were compared chunk by chunk while writing
    assert check_directory(tmp_path / "out").files_checked == len(expected.files) == 3  # verify: recomputed


def test_stricter_expectations_of_the_writer(tmp_path: Path) -> None:
    """What only the writer knows (exact records, order, small-file bytes, the file list) is compared too."""
    expected = _write(tmp_path / "out")
    a, b = expected.records
    cases = {
        "shape": (
            Expected([TensorRecord("a", a.dtype, (4, 3), a.nbytes, file=a.file), b], FILES, ()),
            "a is F32 [3, 4]",
        ),
        "order": (Expected([b, a], FILES, ()), "b lies at bytes 48:58, expected 0:10"),
        "names": (Expected([a], FILES, ()), "tensors ['b'] differ"),
        "content": (Expected([a, b], {**FILES, "README.md": b"# other\n"}, ()), "README.md does not hold what"),
        "missing": (Expected([a, b], FILES, ("tokenizer.json",)), "tokenizer.json (written) is missing"),
    }
    for case, (wanted, words) in cases.items():
        problems = check_directory(tmp_path / "out", wanted).problems
        assert any(words in p for p in problems), (case, problems)


def test_writer_refuses_to_publish_what_check_directory_rejects(tmp_path: Path) -> None:
    """A caller that hands the writer a pickle of weights among the small files: the final verification stops the
    publish."""
    tensors = [
        OutputTensor(k, v.dtype, tuple(v.shape), lambda out, a, b, v=v: out.copy_(v[a:b])) for k, v in VALUES.items()
    ]
    with pytest.raises(VerificationError, match=r"pytorch_model\.bin: a foreign weight file"):
        write_hf_directory(tmp_path / "out", tensors, {**FILES, "pytorch_model.bin": b"a pickle"}, manifest={"step": 1})
    assert list(tmp_path.iterdir()) == []  # nothing published, no temporary left


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert check_directory(tmp_path / "file").problems == [f"{str(tmp_path / 'file')!r} is not a directory"]
    assert check_directory(tmp_path / "nothing").problems == [f"{str(tmp_path / 'nothing')!r} is not a directory"]
