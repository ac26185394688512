"""Property-based tests: verify never raises, and never calls sound what safetensors rejects or what leaves DIR.

Two properties, each bounded (150 examples, well under a minute together):

- ``read_header`` against safetensors itself, on headers generated at random (dtypes known and unknown, shapes
  with zeros and 64-bit overflows, offsets contiguous or shifted, aliased, negative, floats, extra fields, bad
  metadata, a wrong length field, trailing or missing bytes, flipped bytes): whatever ``read_header`` accepts,
  ``safetensors.torch.load`` loads; and without a byte-level mutation or one of the few things hfexport refuses on
  purpose (dtypes outside its table, extra fields), whatever safetensors loads, ``read_header`` accepts.
- ``verify_directory`` on a tiny real export (2-layer nanoGPT → ``convert_checkpoint``, sharded so that it has an
  index) mutated at random: shard headers and sizes, ``config.json``, the index and the manifest (random JSON,
  random fields, names leaving the directory or not names at all, symlinks out). It never raises; it never
  reports sound a directory with a shard that ``safetensors.torch.load_file`` refuses, or whose index or manifest
  names a path leaving the directory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nanogpt import make_gpt
from safetensors.torch import load, load_file

from hfexport import FileFormatError, convert_checkpoint, verify_directory
from hfexport.io.safetensors import DTYPE_SIZES, read_header

SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
U64 = 2**64 - 1
DIMS = st.sampled_from([0, 1, 2, 3, 5, 2**31, 2**32, 2**62, U64, 2**64, -1])
KNOWN = sorted(DTYPE_SIZES)
REFUSED_ON_PURPOSE = ["F8_E8M0", "F8_E4M3FNUZ", "C64", "F4"]  # valid in some safetensors releases, not here
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
ESCAPE_NAMES = ["../escape.safetensors", "/etc/passwd", "a/../../escape.safetensors", "..", "./x/../../y"]
ESCAPES = st.sampled_from(ESCAPE_NAMES)
ODD_NAMES = ESCAPES | st.sampled_from(["bad\ud800", "new\nline.safetensors", "", "a//b.safetensors", "x\\y"])


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A safetensors file as bytes, and whether it stays within what both parsers must judge alike."""
    alike = True
    entries: dict[str, Any] = {}
    offset = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(KNOWN) | st.sampled_from([*REFUSED_ON_PURPOSE, "F31", "f32", 4]))
        if dtype not in DTYPE_SIZES:
            alike = False  # safetensors may know the dtype; hfexport refuses it on purpose
        shape = draw(st.lists(DIMS, max_size=3) | st.lists(st.integers(0, 4), max_size=3))
        nbytes = DTYPE_SIZES.get(dtype, 1) if isinstance(dtype, str) else 1
        for dim in shape:
            nbytes *= max(dim, 0)
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        how = draw(st.sampled_from(["keep"] * 6 + ["shift", "negative", "alias", "three", "float", "extra", "drop"]))
        if how == "shift":
            entry["data_offsets"] = [o + draw(st.integers(-8, 8)) for o in entry["data_offsets"]]
        elif how == "negative":
            entry["data_offsets"][0] = -entry["data_offsets"][0] - 1
        elif how == "alias" and any("data_offsets" in e for e in entries.values()):
            entry["data_offsets"] = list(next(e["data_offsets"] for e in entries.values() if "data_offsets" in e))
        elif how == "three":
            entry["data_offsets"].append(0)
        elif how == "float":
            entry["data_offsets"] = [float(o) for o in entry["data_offsets"]]
        elif how == "extra":
            entry["extra"] = draw(JSON)
            alike = False  # safetensors ignores unknown fields; hfexport refuses them on purpose
        elif how == "drop":
            del entry[draw(st.sampled_from(sorted(entry)))]
        entries[f"t{i}"] = entry
    metadata = draw(st.sampled_from([{"format": "pt"}, None, "absent", {"format": 1}, ["pt"]]))
    if metadata != "absent":
        entries["__metadata__"] = metadata
    body = json.dumps(entries).encode()
    body += b" " * draw(st.integers(0, 7))
    length = len(body) + draw(st.sampled_from([0] * 8 + [-1, 1, 8, -len(body), 2**63]))
    data_len = min(max(offset, 0), 4096) + draw(st.sampled_from([0] * 6 + [-1, 1, 4]))
    raw = bytearray(struct.pack("<Q", max(0, min(length, U64))) + body + bytes(max(0, data_len)))
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        alike = False  # a flipped byte may make duplicate keys or leading junk safetensors' JSON reads otherwise
    return bytes(raw), alike


@SETTINGS
@given(headers())
def test_read_header_is_exactly_as_strict_as_safetensors(case: tuple[bytes, bool]) -> None:
    raw, alike = case
    try:
        read_header(io.BytesIO(raw))
        ours = True
    except FileFormatError:
        ours = False
    try:
        load(raw)
        theirs = True
    except Exception:  # whatever safetensors raises on a bad file
        theirs = False
    if ours:
        assert theirs, "read_header accepted a file safetensors refuses"
    if alike:
        assert ours == theirs, "read_header refused a file safetensors loads"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fuzz")  # pytest's: not left in the temporary directory if setting up fails
    model = make_gpt(3)
    ckpt = root / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args(), "iter_num": 7}, ckpt)
    out = convert_checkpoint(ckpt, root / "hf", dtype="float32", max_shard_size="40KB")
    assert len(list(out.glob("model-*.safetensors"))) >= 2 and verify_directory(out).ok
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _mutate_header(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size])
    except (struct.error, ValueError):
        return  # an earlier mutation broke it already
    names = sorted(k for k, v in header.items() if isinstance(v, dict)) if isinstance(header, dict) else []
    if not names:
        return
    name = data.draw(st.sampled_from(names))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "whole"]))
    if field == "dtype":
        header[name]["dtype"] = data.draw(st.sampled_from([*KNOWN, *REFUSED_ON_PURPOSE, "F31"]))
    elif field == "shape":
        header[name]["shape"] = data.draw(st.lists(DIMS, max_size=3))
    elif field == "data_offsets":
        other = header[data.draw(st.sampled_from(names))].get("data_offsets")
        if not (isinstance(other, list) and len(other) == 2 and all(type(o) is int for o in other)):
            other = [0, 4]
        header[name]["data_offsets"] = data.draw(
            st.sampled_from([list(other), [o - 4 for o in other], [-1, other[1]]]) | st.lists(DIMS, max_size=3)
        )
    elif field == "entry":
        header[name] = data.draw(JSON)
    else:
        header = data.draw(JSON)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + size :])


def _mutate_json(path: Path, data: st.DataObject) -> None:
    value = json.loads(path.read_text())
    how = data.draw(st.sampled_from(["replace", "field", "escape"]))
    if how == "replace" or not isinstance(value, dict) or not value:
        value = data.draw(JSON)
    elif how == "field":
        key = data.draw(st.sampled_from(sorted(value)))
        inner = value[key]
        if isinstance(inner, dict) and inner and data.draw(st.booleans()):
            inner[data.draw(st.sampled_from(sorted(inner)))] = data.draw(JSON)
        else:
            value[key] = data.draw(JSON)
    else:
        files = value.get("weight_map") if path.name.endswith(".index.json") else value.get("files")
        if isinstance(files, dict) and files:
            key = data.draw(st.sampled_from(sorted(files)))
            if path.name.endswith(".index.json"):
                files[key] = data.draw(ODD_NAMES)
            else:
                files[data.draw(ODD_NAMES)] = files.pop(key)
    path.write_text(json.dumps(value))


def _leaves(out: Path) -> bool:
    """Whether the index or the manifest names a path leaving ``out``, or a shard is a symlink out of it."""
    for name, field, names in [
        ("model.safetensors.index.json", "weight_map", lambda m: m.values()),
        ("hfexport.json", "files", lambda m: m.keys()),
    ]:
        value = json.loads((out / name).read_text())
        mapping = value.get(field) if isinstance(value, dict) else None
        if isinstance(mapping, dict) and any(n in ESCAPE_NAMES for n in names(mapping)):
            return True
    return any(p.is_symlink() for p in out.iterdir())


@SETTINGS
@given(data=st.data())
def test_verify_never_raises_and_never_calls_unsound_sound(pristine: Path, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="hfexport-fuzz-case-") as tmp:
        out = Path(tmp) / "hf"
        shutil.copytree(pristine, out)
        shards = sorted(p.name for p in out.glob("model-*.safetensors"))
        (Path(tmp) / "escape.safetensors").write_bytes((out / shards[0]).read_bytes())
        for _ in range(data.draw(st.integers(1, 3))):
            target = data.draw(st.sampled_from(["shard", "size", "symlink", "json"]))
            if target == "shard":
                _mutate_header(out / data.draw(st.sampled_from(shards)), data)
            elif target == "size":
                with open(out / data.draw(st.sampled_from(shards)), "rb+") as fh:
                    size = fh.seek(0, os.SEEK_END)
                    fh.truncate(max(0, size + data.draw(st.sampled_from([-size, -9, -1, 1, 8]))))
            elif target == "symlink":
                shard = out / data.draw(st.sampled_from(shards))
                shard.unlink()
                shard.symlink_to(Path(tmp) / "escape.safetensors")
            else:
                name = data.draw(st.sampled_from(["config.json", "model.safetensors.index.json", "hfexport.json"]))
                _mutate_json(out / name, data)
        report = verify_directory(out)  # must not raise
        refused = []
        for shard in shards:
            try:
                load_file(str(out / shard))
            except Exception:  # whatever safetensors raises on a bad file
                refused.append(shard)
        if refused:
            assert not report.ok, f"sound, yet safetensors refuses {refused}"
        if _leaves(out):
            assert not report.ok, "sound, yet a name or symlink leaves the directory"
