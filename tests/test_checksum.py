"""The CRC-32 of a file on disk."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from hfexport.checksum import crc32_file


def test_crc32_file(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # three whole buffers and a partial one
    (tmp_path / "f").write_bytes(data)
    assert crc32_file(tmp_path / "f", chunk=1 << 20) == zlib.crc32(data)
    (tmp_path / "empty").write_bytes(b"")
    assert crc32_file(tmp_path / "empty") == 0
