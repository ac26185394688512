"""read_header: the one safetensors parser, as strict as safetensors itself (the fuzz test compares them at random)."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from safetensors.torch import load, save

from hfexport import FileFormatError
from hfexport.io.safetensors import DTYPE_SIZES, read_header


def _file(header: object, data: bytes = b"", *, length: int | None = None) -> io.BytesIO:
    body = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return io.BytesIO(struct.pack("<Q", len(body) if length is None else length) + body + data)


def test_every_accepted_dtype_loads_through_safetensors_and_torch() -> None:
    """Whatever read_header accepts, the installed safetensors and torch load (the other direction is fuzzed)."""
    for dtype, size in DTYPE_SIZES.items():
        raw = _file(
            {"__metadata__": {"format": "pt"}, "t": {"dtype": dtype, "shape": [2, 3], "data_offsets": [0, 6 * size]}},
            bytes(6 * size),
        )
        header, start = read_header(raw)
        assert header["t"]["dtype"] == dtype and start == len(raw.getvalue()) - 6 * size
        tensor = load(raw.getvalue())["t"]
        assert tensor.shape == (2, 3) and tensor.element_size() == size, dtype


def test_a_file_written_by_safetensors_is_read() -> None:
    raw = save({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16), "c": torch.zeros(0)})
    header, start = read_header(io.BytesIO(raw))
    assert {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()} == {"a": 24, "b": 8, "c": 0}
    assert start + 32 == len(raw)


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD = {
    "short": (io.BytesIO(b"\x01\x00"), "shorter than the 8-byte header length"),
    "too_long": (_file({}, length=100_000_001), "exceeds the format's limit"),
    "past_end": (_file({}, length=50), "runs past the end of the file"),
    "not_utf8": (_file(b'{"\xff": 1}'), "not valid UTF-8"),
    "not_json": (_file(b"{nope}  "), "not valid JSON"),
    "nan": (_file(b'{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}'), "not valid JSON"),
    "duplicate_key": (
        _file(b'{"t": {"dtype": "F32", "dtype": "F32", "shape": [], "data_offsets": [0, 4]}}'),
        "duplicate key",
    ),
    "lone_surrogate": (
        _file(b'{"\\ud800": {"dtype": "U8", "shape": [], "data_offsets": [0, 1]}}', b"x"),
        "unpaired surrogate",
    ),
    "list": (_file([1]), "a JSON list, not an object"),
    "metadata_not_strings": (_file({"__metadata__": {"format": 1}}), "is int, not a string"),
    "entry_not_object": (_file({"t": [1]}), "not an object"),
    "extra_field": (_file({"t": {**ENTRY, "x": 1}}, bytes(8)), "unexpected ['x']"),
    "missing_field": (_file({"t": {"dtype": "F32", "shape": [2]}}, bytes(8)), "missing ['data_offsets']"),
    "unknown_dtype": (_file({"t": {**ENTRY, "dtype": "F8_E8M0"}}, bytes(8)), "unknown dtype"),
    "float_dim": (_file({"t": {**ENTRY, "shape": [2.0]}}, bytes(8)), "is not a list of non-negative"),
    "bool_dim": (_file({"t": {**ENTRY, "shape": [True, 2]}}, bytes(8)), "is not a list of non-negative"),
    "minus_zero": (_file(b'{"t": {"dtype": "F32", "shape": [-0], "data_offsets": [0, 0]}}'), "non-negative"),
    "dim_past_u64": (_file({"t": {**ENTRY, "shape": [2**64, 0], "data_offsets": [0, 0]}}), "non-negative 64-bit"),
    "three_offsets": (_file({"t": {**ENTRY, "data_offsets": [0, 8, 8]}}, bytes(8)), "is not [begin, end]"),
    "end_before_begin": (_file({"t": {**ENTRY, "data_offsets": [8, 0]}}, bytes(8)), "end before they begin"),
    "gap": (_file({"t": {**ENTRY, "data_offsets": [4, 12]}}, bytes(12)), "leaves a gap"),
    "trailing_bytes": (_file({"t": ENTRY}, bytes(9)), "(trailing bytes)"),
    "truncated": (_file({"t": ENTRY}, bytes(7)), "(truncated?)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_headers_are_refused_with_the_reason(case: str) -> None:
    raw, words = BAD[case]
    with pytest.raises(FileFormatError) as info:
        read_header(raw)
    assert words in str(info.value)
