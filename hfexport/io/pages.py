"""Giving back the memory of a memory-mapped checkpoint as its tensors are consumed.

``torch.load(mmap=True)`` maps the checkpoint file; every page a conversion reads stays mapped, and counts in the
process's resident memory, until the mapping goes away, so converting a 3 GB checkpoint would end with 3 GB
resident. Once every output made from a source tensor has been written, its pages are not needed any more:
:class:`MappedCheckpoint` drops them from the process (``madvise(MADV_DONTNEED)``). The data stays in the
kernel's page cache, and a later read of the tensor simply maps it again, so this never loses anything.

Only pages of a private mapping of the checkpoint file itself are dropped (checked against ``/proc/self/maps``):
a tensor held in ordinary memory (a file in PyTorch's legacy format, which cannot be mapped) is never touched,
since dropping anonymous pages would zero them. The mapping is copy-on-write: a page someone had modified in
place would go back to the file's contents, which is why only the converter, which never writes to the tensors
it loaded, uses this. Linux only; elsewhere nothing happens.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import sys
import threading
from pathlib import Path

import torch

from hfexport._util.fs import libc_function

logger = logging.getLogger(__name__)

__all__ = ["MappedCheckpoint"]

_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


class MappedCheckpoint:
    """The address ranges where a checkpoint file is mapped, and the means to drop pages of its tensors.

    Args:
        path: The checkpoint file, after it was loaded with ``mmap=True``.

    Example:
        >>> mapped = MappedCheckpoint(ckpt_path)  # doctest: +SKIP
        >>> mapped.release(state_dict["transformer.wte.weight"])  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.released = 0
        self._lock = threading.Lock()
        self._madvise = None
        if not sys.platform.startswith("linux"):
            return
        self._madvise = libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
        try:
            st = os.stat(path)
            self.ranges = _private_mappings(st.st_dev, st.st_ino)
        except OSError as exc:
            logger.debug("cannot release checkpoint pages (%s)", exc)

    def __bool__(self) -> bool:
        return bool(self.ranges) and self._madvise is not None

    def release(self, tensor: torch.Tensor) -> int:
        """Drop the whole pages of ``tensor``'s storage that lie in the checkpoint's mapping; returns the bytes.

        Pages shared with a neighbouring tensor at either end are kept.
        """
        if not self or tensor.device.type != "cpu":
            return 0
        storage = tensor.untyped_storage()
        start = storage.data_ptr()
        end = start + storage.nbytes()
        lo = -(-start // _PAGE) * _PAGE
        hi = end - end % _PAGE
        if hi <= lo or not any(a <= lo and hi <= b for a, b in self.ranges):
            return 0
        assert self._madvise is not None
        if self._madvise(lo, hi - lo, _MADV_DONTNEED) != 0:
            logger.debug("madvise(MADV_DONTNEED) failed: %s", os.strerror(ctypes.get_errno()))
            return 0
        with self._lock:
            self.released += hi - lo
        return hi - lo


def _private_mappings(dev: int, inode: int) -> list[tuple[int, int]]:
    """Address ranges of private mappings of the file ``(dev, inode)`` in this process."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        addresses, perms, _offset, device, ino = fields[:5]
        if int(ino) != inode or perms[3] != "p":
            continue
        major, minor = (int(x, 16) for x in device.split(":"))
        if os.makedev(major, minor) != dev:
            continue
        a, b = (int(x, 16) for x in addresses.split("-"))
        ranges.append((a, b))
    return ranges
